import Foundation
import GRDB
import Logging

/// What reconciliation found at start and what it did about it.
public struct ReconcileReport: Sendable, Equatable {
    public struct Quarantined: Sendable, Equatable {
        /// Where the file was, relative to the data directory.
        public var path: String
        public var reason: String
    }

    /// Temporary files of interrupted writes, removed.
    public var removedTempFiles: [String] = []
    /// Catalog rows whose archive was missing, dropped (with the aliases that pointed at them).
    public var droppedRows: [SnapshotID] = []
    /// Archives without a row that verified and were recorded again.
    public var readded: [SnapshotID] = []
    /// Files that could not be trusted, moved to `snapshots/.quarantine`.
    public var quarantined: [Quarantined] = []

    public var isClean: Bool { removedTempFiles.isEmpty && droppedRows.isEmpty && readded.isEmpty && quarantined.isEmpty }
}

extension SnapshotStore {
    /// Brings files and catalog into agreement (see ``ReconcileReport``). Runs at start.
    func reconcile() throws(SnapshotError) -> ReconcileReport {
        var report = ReconcileReport()
        let fm = FileManager.default
        let root = configuration.directory

        for name in ((try? fm.contentsOfDirectory(atPath: tempDirectory)) ?? []).sorted() {
            PosixFile.unlinkIfPresent(tempDirectory + "/" + name)
            report.removedTempFiles.append("snapshots/.tmp/" + name)
            logger.info("removed temporary file of an interrupted write", metadata: ["file": "snapshots/.tmp/\(name)"])
        }

        var known = Set<String>()
        for r in try list() {
            let rel = "snapshots/\(r.id.name)/\(r.id.version).kaa"
            var problem: String?
            if let size = PosixFile.size(r.path) {
                if size != r.size { problem = "its size is \(size) bytes, the catalog says \(r.size)" }
            } else {
                problem = "missing"
            }
            if problem == nil, configuration.verifyAllOnStart {
                do {
                    let v = try SnapshotArchive.verify(path: r.path, policy: .init(trustedKeys: configuration.trustedKeys, expectedDigest: r.digest, allowDraft: false))
                    if v.manifest.name != r.id.name || v.manifest.version != r.id.version {
                        problem = "it holds \(v.manifest.name)@\(v.manifest.version)"
                    }
                } catch {
                    problem = error.message
                }
            }
            guard let problem else {
                known.insert("\(r.id.name)/\(r.id.version).kaa")
                continue
            }
            if problem != "missing" {
                let reason = "archive of cataloged \(r.id) is damaged: \(problem)"
                try quarantine(r.path, relative: rel, reason: reason, into: &report)
            }
            try dropRow(r.id)
            report.droppedRows.append(r.id)
            logger.info("dropped catalog row without a usable archive", metadata: ["snapshot": "\(r.id)", "reason": "\(problem)"])
        }

        for name in ((try? fm.contentsOfDirectory(atPath: snapshotsDirectory)) ?? []).sorted() where !name.hasPrefix(".") {
            let dir = snapshotsDirectory + "/" + name
            var isDir: ObjCBool = false
            guard fm.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
                try quarantine(dir, relative: "snapshots/\(name)", reason: "unexpected file in the snapshots directory", into: &report)
                continue
            }
            for file in ((try? fm.contentsOfDirectory(atPath: dir)) ?? []).sorted() where !known.contains("\(name)/\(file)") {
                let path = dir + "/" + file
                let rel = "snapshots/\(name)/\(file)"
                guard file.hasSuffix(".kaa"), let version = Int(file.dropLast(4)), version > 0,
                      let id = try? SnapshotID(name: name, version: version) else {
                    try quarantine(path, relative: rel, reason: "file name is not <version>.kaa under a model name", into: &report)
                    continue
                }
                do throws(SnapshotError) {
                    let v = try SnapshotArchive.verify(path: path, policy: .init(trustedKeys: configuration.trustedKeys, allowDraft: false, maxContentBytes: configuration.maxContentBytes))
                    guard v.manifest.name == id.name, v.manifest.version == id.version else {
                        throw SnapshotError(.invalidManifest, "it holds \(v.manifest.name)@\(v.manifest.version), not \(id)")
                    }
                    try insertRow(id, v)
                    report.readded.append(id)
                    logger.info("recorded an archive that had no catalog row", metadata: ["snapshot": "\(id)", "snapshot.digest": "\(v.digest)"])
                } catch {
                    try quarantine(path, relative: rel, reason: "archive without a catalog row failed verification: \(error.message)", into: &report)
                }
            }
        }
        if report.isClean {
            logger.debug("snapshot store is consistent", metadata: ["store.dir": "\(root)"])
        }
        return report
    }

    private func quarantine(_ path: String, relative: String, reason: String, into report: inout ReconcileReport) throws(SnapshotError) {
        let flat = relative.replacingOccurrences(of: "/", with: "_")
        let target = quarantineDirectory + "/\(Int(Date().timeIntervalSince1970))-\(UInt32.random(in: 0...UInt32.max))-\(flat)"
        try PosixFile.rename(path, target)
        try PosixFile.syncDirectory(quarantineDirectory)
        report.quarantined.append(.init(path: relative, reason: reason))
        logger.info("quarantined a snapshot file", metadata: ["file": "\(relative)", "reason": "\(reason)", "quarantine": "\(target)"])
    }

    private func dropRow(_ id: SnapshotID) throws(SnapshotError) {
        try catalog.run("drop row") {
            try catalog.pool.write { db in
                try db.execute(sql: "DELETE FROM alias WHERE name = ? AND version = ?", arguments: [id.name, id.version])
                try db.execute(sql: "DELETE FROM snapshot WHERE name = ? AND version = ?", arguments: [id.name, id.version])
            }
        }
    }

    private func insertRow(_ id: SnapshotID, _ v: VerifiedArchive) throws(SnapshotError) {
        try catalog.run("insert row") {
            try catalog.pool.write { db in
                try db.execute(sql: """
                    INSERT INTO snapshot (name, version, digest, size, state, received_at, signer, manifest)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                    """, arguments: [id.name, id.version, v.digest.description, Int64(v.archiveBytes),
                                     SnapshotRecord.State.ready.rawValue, Date().timeIntervalSince1970,
                                     v.signerKeyID, Data(v.manifestBytes)])
            }
        }
    }
}
