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

        // Rows this Kaa would not write (an older build stored versions up to Int.max) are never
        // listed; drop them here, with their aliases. Their files have no row then, and the
        // scan below quarantines them by their name.
        for bad in try invalidRows() {
            try catalog.run("drop invalid row") {
                try catalog.pool.write { db in
                    try db.execute(sql: "DELETE FROM alias WHERE name = ? AND version = ?", arguments: [bad.name, bad.version])
                    try db.execute(sql: "DELETE FROM snapshot WHERE rowid = ?", arguments: [bad.rowid])
                }
            }
            report.droppedRows.append(SnapshotID(validName: bad.shownName, version: bad.shownVersion))
            logger.info("dropped a catalog row this Kaa would not write", metadata: [
                "snapshot": "\(bad.shownName)@\(bad.shownVersion)", "reason": "\(bad.reason)",
            ])
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
                guard file.hasSuffix(".kaa"), let version = SnapshotNaming.parseVersion(file.dropLast(4)),
                      let id = try? SnapshotID(name: name, version: version) else {
                    let reason = "file name is not <version>.kaa (a version from 1 to \(SnapshotNaming.maxVersion) in plain digits) under a model name"
                    try quarantine(path, relative: rel, reason: reason, into: &report)
                    continue
                }
                do throws(SnapshotError) {
                    // The format's limits, not this node's upload limits: the file was stored
                    // here, perhaps under larger ones.
                    let v = try SnapshotArchive.verify(path: path, policy: .init(trustedKeys: configuration.trustedKeys, allowDraft: false))
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

    /// A catalog row that ``SnapshotCatalog/check(_:)`` refuses.
    private struct InvalidRow {
        var rowid: Int64
        var name: DatabaseValue
        var version: DatabaseValue
        var reason: String
        var shownName: String
        var shownVersion: Int
    }

    private func invalidRows() throws(SnapshotError) -> [InvalidRow] {
        try catalog.run("check rows") {
            try catalog.pool.read { db in
                try Row.fetchAll(db, sql: "SELECT rowid, name, version, size FROM snapshot").compactMap { row -> InvalidRow? in
                    guard case .invalid(let name, let version, let reason) = SnapshotCatalog.check(row) else { return nil }
                    return InvalidRow(rowid: row["rowid"], name: row["name"], version: row["version"], reason: reason,
                                      shownName: name ?? "?", shownVersion: version.map { Int(clamping: $0) } ?? 0)
                }
            }
        }
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
