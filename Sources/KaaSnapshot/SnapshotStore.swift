import Foundation
public import Logging
import GRDB

/// A node's snapshot store: archives under `<directory>/snapshots/<name>/<version>.kaa` and a
/// SQLite catalog `<directory>/catalog.sqlite` of what is there.
///
/// Invariants: a catalog row exists only for a fully verified archive that is durably on disk
/// (temp file, fsync, rename, fsync of the directory, then the row); an archive never changes
/// once stored (same `name@version` with other content is a ``SnapshotError/Code/conflict``);
/// nothing leased is deleted. At start the store reconciles files with the catalog.
///
/// All methods are thread-safe and block on file and database I/O: call them off the event
/// loop. One process per directory.
public final class SnapshotStore: Sendable {
    public struct Configuration: Sendable {
        /// The node's data directory.
        public var directory: String
        /// When non-empty, every snapshot MUST be signed by one of these keys.
        public var trustedKeys: Set<PublisherPublicKey>
        /// Retention keeps this many newest versions per model (plus aliased ones).
        public var retainVersions: Int
        /// The largest sum of file sizes one snapshot may declare.
        public var maxContentBytes: UInt64
        /// Whether reconciliation re-verifies every cataloged archive (slow) instead of checking
        /// that it exists with the recorded size.
        public var verifyAllOnStart: Bool

        public init(
            directory: String, trustedKeys: Set<PublisherPublicKey> = [], retainVersions: Int = 5,
            maxContentBytes: UInt64 = 64 << 30, verifyAllOnStart: Bool = false
        ) {
            self.directory = directory
            self.trustedKeys = trustedKeys
            self.retainVersions = retainVersions
            self.maxContentBytes = maxContentBytes
            self.verifyAllOnStart = verifyAllOnStart
        }
    }

    public let configuration: Configuration
    /// What the reconciliation at start found and repaired.
    public var startupRepairs: ReconcileReport { shared.startupReport }
    let catalog: SnapshotCatalog
    let logger: Logger
    let shared = LockedState()

    var snapshotsDirectory: String { configuration.directory + "/snapshots" }
    var tempDirectory: String { configuration.directory + "/snapshots/.tmp" }
    var quarantineDirectory: String { configuration.directory + "/snapshots/.quarantine" }

    static func archivePath(directory: String, name: String, version: Int) -> String {
        "\(directory)/snapshots/\(name)/\(version).kaa"
    }

    func archivePath(_ id: SnapshotID) -> String {
        Self.archivePath(directory: configuration.directory, name: id.name, version: id.version)
    }

    /// Opens (creating if needed) the store and reconciles its files with its catalog.
    public init(configuration: Configuration, logger: Logger) throws(SnapshotError) {
        self.configuration = configuration
        self.logger = logger
        try PosixFile.makeDirectories(configuration.directory + "/snapshots/.tmp")
        try PosixFile.makeDirectories(configuration.directory + "/snapshots/.quarantine")
        catalog = try SnapshotCatalog(path: configuration.directory + "/catalog.sqlite")
        shared.startupReport = try reconcile()
    }

    var policy: VerificationPolicy {
        VerificationPolicy(trustedKeys: configuration.trustedKeys, allowDraft: true, maxContentBytes: configuration.maxContentBytes)
    }

    // MARK: Reading

    /// Every snapshot, or those of model `name`, ordered by name then version.
    public func list(name: String? = nil) throws(SnapshotError) -> [SnapshotRecord] {
        let dir = configuration.directory
        return try catalog.run("list") {
            try catalog.pool.read { db in
                let rows: [Row]
                if let name {
                    rows = try Row.fetchAll(db, sql: "SELECT * FROM snapshot WHERE name = ? ORDER BY version", arguments: [name])
                } else {
                    rows = try Row.fetchAll(db, sql: "SELECT * FROM snapshot ORDER BY name, version")
                }
                return rows.map { SnapshotCatalog.record($0, directory: dir) }
            }
        }
    }

    /// The record of `id`, or `nil`.
    public func record(_ id: SnapshotID) throws(SnapshotError) -> SnapshotRecord? {
        let dir = configuration.directory
        return try catalog.run("read") {
            try catalog.pool.read { db in
                try Row.fetchOne(db, sql: "SELECT * FROM snapshot WHERE name = ? AND version = ?", arguments: [id.name, id.version])
                    .map { SnapshotCatalog.record($0, directory: dir) }
            }
        }
    }

    /// The manifest of a stored snapshot (kept in the catalog; no archive read).
    public func manifest(_ id: SnapshotID) throws(SnapshotError) -> SnapshotManifest {
        let bytes: [UInt8]? = try catalog.run("read") {
            try catalog.pool.read { db in
                try Row.fetchOne(db, sql: "SELECT manifest FROM snapshot WHERE name = ? AND version = ?", arguments: [id.name, id.version])
                    .map { Array(($0["manifest"] as Data)) }
            }
        }
        guard let bytes else { throw try notFound(id) }
        return try SnapshotManifest.decode(bytes)
    }

    /// The manifest's exact bytes (the JSON whose SHA-256 is the digest).
    public func manifestBytes(_ id: SnapshotID) throws(SnapshotError) -> [UInt8] {
        let bytes: [UInt8]? = try catalog.run("read") {
            try catalog.pool.read { db in
                try Row.fetchOne(db, sql: "SELECT manifest FROM snapshot WHERE name = ? AND version = ?", arguments: [id.name, id.version])
                    .map { Array(($0["manifest"] as Data)) }
            }
        }
        guard let bytes else { throw try notFound(id) }
        return bytes
    }

    func notFound(_ id: SnapshotID) throws(SnapshotError) -> SnapshotError {
        let versions = try list(name: id.name).map { String($0.id.version) }
        if versions.isEmpty { return SnapshotError(.notFound, "model `\(id.name)` is not stored on this node") }
        return SnapshotError(.notFound, "model `\(id.name)` has no version \(id.version); versions: \(versions.joined(separator: ", "))")
    }

    /// Resolves `name`, `name@version`, `name@alias` or `name@latest` to a stored snapshot.
    public func resolve(_ reference: SnapshotReference) throws(SnapshotError) -> SnapshotRecord {
        let all = try list(name: reference.name)
        guard let newest = all.last else {
            throw SnapshotError(.notFound, "model `\(reference.name)` is not stored on this node")
        }
        switch reference.selector {
        case .latest:
            return newest
        case .version(let v):
            guard let r = all.first(where: { $0.id.version == v }) else {
                throw SnapshotError(.notFound, "model `\(reference.name)` has no version \(v); versions: \(all.map { String($0.id.version) }.joined(separator: ", "))")
            }
            return r
        case .alias(let a):
            let aliases = try aliases(name: reference.name)
            guard let v = aliases[a], let r = all.first(where: { $0.id.version == v }) else {
                let known = (["latest"] + aliases.keys.sorted()).joined(separator: ", ")
                throw SnapshotError(.notFound, "model `\(reference.name)` has no alias `\(a)`; aliases: \(known)")
            }
            return r
        }
    }

    /// The next version `ingest` would assign to a draft of `name`.
    public func nextVersion(name: String) throws(SnapshotError) -> Int {
        try SnapshotNaming.validateModelName(name)
        let stored = try list(name: name).last?.id.version ?? 0
        return max(stored, shared.highestReservation(name)) + 1
    }

    // MARK: Aliases

    /// The aliases of model `name` (not including the implicit `latest`).
    public func aliases(name: String) throws(SnapshotError) -> [String: Int] {
        try catalog.run("read aliases") {
            try catalog.pool.read { db in
                var out: [String: Int] = [:]
                for row in try Row.fetchAll(db, sql: "SELECT alias, version FROM alias WHERE name = ?", arguments: [name]) {
                    out[row["alias"]] = row["version"]
                }
                return out
            }
        }
    }

    /// Every alias of every model, in one read (for a node's start).
    public func allAliases() throws(SnapshotError) -> [String: [String: Int]] {
        try catalog.run("read aliases") {
            try catalog.pool.read { db in
                var out: [String: [String: Int]] = [:]
                for row in try Row.fetchAll(db, sql: "SELECT name, alias, version FROM alias") {
                    out[row["name"], default: [:]][row["alias"]] = row["version"]
                }
                return out
            }
        }
    }

    /// Points `alias` of model `name` at `version`, which MUST be stored here. Moving an alias
    /// is atomic. `latest` cannot be set.
    public func setAlias(name: String, alias: String, version: Int) throws(SnapshotError) {
        try SnapshotNaming.validateAlias(alias)
        let id = try SnapshotID(name: name, version: version)
        guard let r = try record(id) else { throw try notFound(id) }
        guard r.state == .ready else {
            throw SnapshotError(.notFound, "\(id) is being retired and cannot receive alias `\(alias)`")
        }
        try catalog.run("set alias") {
            try catalog.pool.write { db in
                try db.execute(sql: """
                    INSERT INTO alias (name, alias, version, updated_at) VALUES (?, ?, ?, ?)
                    ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at
                    """, arguments: [name, alias, version, Date().timeIntervalSince1970])
            }
        }
        logger.info("alias set", metadata: ["model.name": "\(name)", "model.alias": "\(alias)", "model.version": "\(version)"])
    }

    /// Removes an alias; removing one that does not exist is a ``SnapshotError/Code/notFound``.
    public func removeAlias(name: String, alias: String) throws(SnapshotError) {
        let changed = try catalog.run("remove alias") {
            try catalog.pool.write { db -> Int in
                try db.execute(sql: "DELETE FROM alias WHERE name = ? AND alias = ?", arguments: [name, alias])
                return db.changesCount
            }
        }
        guard changed > 0 else { throw SnapshotError(.notFound, "model `\(name)` has no alias `\(alias)`") }
    }

    // MARK: Leases

    /// Marks `id` as in use (the serving layer calls this when it loads a snapshot), and returns
    /// the lease with the snapshot's record, read under the same lock. A leased version is never
    /// deleted. Release with ``releaseLease(_:)`` exactly once.
    public func acquireLease(_ id: SnapshotID) throws(SnapshotError) -> (lease: SnapshotLease, record: SnapshotRecord) {
        // Under the commit lock, so a concurrent delete either sees the lease or has finished.
        try shared.withCommitLock { () throws(SnapshotError) -> (lease: SnapshotLease, record: SnapshotRecord) in
            guard let r = try record(id) else { throw try notFound(id) }
            return (shared.acquire(r.id), r)
        }
    }

    /// Ends a lease from ``acquireLease(_:)``. Releasing twice is a programming error.
    public func releaseLease(_ lease: SnapshotLease) {
        shared.release(lease)
    }

    /// How many leases hold `id`.
    public func leaseCount(_ id: SnapshotID) -> Int { shared.leaseCount(id) }

    // MARK: Removal and retention

    /// Deletes a stored snapshot; refused while it is leased or an alias points at it.
    public func remove(_ id: SnapshotID) throws(SnapshotError) {
        guard try record(id) != nil else { throw try notFound(id) }
        if let alias = try aliases(name: id.name).first(where: { $0.value == id.version })?.key {
            throw SnapshotError(.inUse, "\(id) is the target of alias `\(alias)`; move the alias first")
        }
        try delete(id)
    }

    /// Deletes the file (then fsyncs its directory), then the row: a crash in between leaves
    /// a row without a file, which reconciliation drops, never a resurrected file.
    private func delete(_ id: SnapshotID) throws(SnapshotError) {
        try shared.withCommitLock { () throws(SnapshotError) in
            guard shared.leaseCount(id) == 0 else {
                throw SnapshotError(.inUse, "\(id) is in use (\(shared.leaseCount(id)) lease(s)); it is deleted once released")
            }
            let path = archivePath(id)
            PosixFile.unlinkIfPresent(path)
            try PosixFile.syncDirectory(snapshotsDirectory + "/" + id.name)
            try catalog.run("delete") {
                try catalog.pool.write { db in
                    try db.execute(sql: "DELETE FROM snapshot WHERE name = ? AND version = ?", arguments: [id.name, id.version])
                }
            }
        }
        logger.info("snapshot deleted", metadata: ["snapshot": "\(id)"])
    }

    /// Keeps the newest ``Configuration/retainVersions`` versions of every model plus every
    /// aliased version; deletes the others unless leased, which become `retiring` and are
    /// deleted by a later pass once released.
    ///
    /// With `name`, the pass covers that model and every model with a `retiring` version only,
    /// so a publish costs the same with 10 or 10,000 models in the store.
    @discardableResult
    public func applyRetention(name: String? = nil) throws(SnapshotError) -> RetentionReport {
        var report = RetentionReport()
        let keep = max(1, configuration.retainVersions)
        var records: [SnapshotRecord]
        if let name {
            records = try list(name: name)
            for other in try namesWithRetiringVersions() where other != name { records += try list(name: other) }
        } else {
            records = try list()
        }
        let byName = Dictionary(grouping: records, by: { $0.id.name })
        for name in byName.keys.sorted() {
            let versions = byName[name]!.sorted { $0.id.version > $1.id.version }
            let aliased = Set(try aliases(name: name).values)
            for (i, r) in versions.enumerated() where i >= keep && !aliased.contains(r.id.version) {
                if shared.leaseCount(r.id) > 0 {
                    if r.state != .retiring {
                        try setState(r.id, .retiring)
                    }
                    report.deferred.append(r.id)
                    continue
                }
                do {
                    try delete(r.id)
                    report.deleted.append(r.id)
                } catch where error.code == .inUse {
                    try setState(r.id, .retiring)
                    report.deferred.append(r.id)
                }
            }
            // A retiring version that is kept again (an alias now points at it) is ready again.
            for (i, r) in versions.enumerated() where r.state == .retiring && (i < keep || aliased.contains(r.id.version)) {
                try setState(r.id, .ready)
            }
        }
        if !report.deleted.isEmpty || !report.deferred.isEmpty {
            logger.info("retention applied", metadata: [
                "snapshots.deleted": "\(report.deleted.map(\.description))",
                "snapshots.deferred": "\(report.deferred.map(\.description))",
            ])
        }
        return report
    }

    private func namesWithRetiringVersions() throws(SnapshotError) -> [String] {
        try catalog.run("list retiring") {
            try catalog.pool.read { db in
                try String.fetchAll(db, sql: "SELECT DISTINCT name FROM snapshot WHERE state = ? ORDER BY name",
                                    arguments: [SnapshotRecord.State.retiring.rawValue])
            }
        }
    }

    private func setState(_ id: SnapshotID, _ state: SnapshotRecord.State) throws(SnapshotError) {
        try catalog.run("update state") {
            try catalog.pool.write { db in
                try db.execute(sql: "UPDATE snapshot SET state = ? WHERE name = ? AND version = ?", arguments: [state.rawValue, id.name, id.version])
            }
        }
    }
}

/// A hold on a snapshot by the serving layer; see ``SnapshotStore/acquireLease(_:)``.
public struct SnapshotLease: Hashable, Sendable {
    public let id: SnapshotID
    let token: UInt64
}

/// What ``SnapshotStore/applyRetention()`` did.
public struct RetentionReport: Sendable, Equatable {
    /// Versions deleted.
    public var deleted: [SnapshotID] = []
    /// Versions due for deletion but leased; marked `retiring`.
    public var deferred: [SnapshotID] = []
}

/// The store's in-memory state: leases, version reservations for drafts, the commit lock.
///
/// `@unchecked Sendable`: every mutable field is read and written only while `lock` is held,
/// and `commitLock` serialises the short commit step (final checks, rename, catalog row).
final class LockedState: @unchecked Sendable {
    private let lock = NSLock()
    private let commitLock = NSLock()
    private var leases: [SnapshotID: Set<UInt64>] = [:]
    private var nextToken: UInt64 = 1
    private var reservations: [String: Set<Int>] = [:]
    private var _startupReport = ReconcileReport()

    var startupReport: ReconcileReport {
        get { lock.lock(); defer { lock.unlock() }; return _startupReport }
        set { lock.lock(); defer { lock.unlock() }; _startupReport = newValue }
    }

    func acquire(_ id: SnapshotID) -> SnapshotLease {
        lock.lock()
        defer { lock.unlock() }
        let token = nextToken
        nextToken += 1
        leases[id, default: []].insert(token)
        return SnapshotLease(id: id, token: token)
    }

    func release(_ lease: SnapshotLease) {
        lock.lock()
        defer { lock.unlock() }
        let removed = leases[lease.id]?.remove(lease.token)
        precondition(removed != nil, "lease on \(lease.id) released twice or never acquired")
        if leases[lease.id]?.isEmpty == true { leases[lease.id] = nil }
    }

    func leaseCount(_ id: SnapshotID) -> Int {
        lock.lock()
        defer { lock.unlock() }
        return leases[id]?.count ?? 0
    }

    func highestReservation(_ name: String) -> Int {
        lock.lock()
        defer { lock.unlock() }
        return reservations[name]?.max() ?? 0
    }

    /// Reserves the first version > `stored` not reserved by a concurrent ingest.
    func reserve(_ name: String, after stored: Int) -> Int {
        lock.lock()
        defer { lock.unlock() }
        let v = max(stored, reservations[name]?.max() ?? 0) + 1
        reservations[name, default: []].insert(v)
        return v
    }

    /// Reserves exactly `version`; false when a concurrent ingest holds it.
    func reserve(_ name: String, exactly version: Int) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        return reservations[name, default: []].insert(version).inserted
    }

    func unreserve(_ name: String, _ version: Int) {
        lock.lock()
        defer { lock.unlock() }
        reservations[name]?.remove(version)
        if reservations[name]?.isEmpty == true { reservations[name] = nil }
    }

    func withCommitLock<T>(_ body: () throws(SnapshotError) -> T) throws(SnapshotError) -> T {
        commitLock.lock()
        defer { commitLock.unlock() }
        return try body()
    }
}
