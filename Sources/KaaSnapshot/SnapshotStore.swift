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
        /// Retention keeps this many newest published versions per model (plus aliased ones):
        /// versions uploaded with their version, signed or not. Drafts (versions this node gave
        /// to unsigned drafts) never count here, so no number of draft uploads pushes a
        /// published version out. Node setting `retain_versions`.
        public var retainVersions: Int
        /// Retention keeps this many newest drafts per model (plus aliased ones), counted apart
        /// from the published versions. Node setting `retain_drafts`.
        public var retainDrafts: Int
        /// The largest model file one snapshot may declare, checked from the manifest before
        /// anything is decompressed. The node loads the whole model to check it at upload and
        /// to serve it, so this bounds what one model costs in memory. 1 GiB by default. Node
        /// setting `max_model_bytes`.
        public var maxModelBytes: UInt64
        /// The largest sum of file sizes one snapshot may declare. 4 GiB by default: a model of
        /// up to ``maxModelBytes`` with its extra files (vocabularies, label tables), which is
        /// what one snapshot of the small models Kaa serves should ever need; an upload can
        /// make the node write this much to its disk (twice while a draft is given its
        /// version), so the default is not the format's 64 GiB. Node setting
        /// `max_content_bytes`.
        public var maxContentBytes: UInt64
        /// The most uploads received at once; one more is refused with
        /// ``SnapshotError/Code/busy`` (HTTP 503). Each holds a temporary file of up to
        /// ``maxArchiveBytes``, two descriptors and about 5 MiB of LZ4 buffers. Node setting
        /// `max_concurrent_uploads`.
        public var maxConcurrentIngests: Int
        /// Whether reconciliation re-verifies every cataloged archive (slow) instead of checking
        /// that it exists with the recorded size.
        public var verifyAllOnStart: Bool

        public init(
            directory: String, trustedKeys: Set<PublisherPublicKey> = [], retainVersions: Int = 5, retainDrafts: Int = 5,
            maxModelBytes: UInt64 = 1 << 30, maxContentBytes: UInt64 = 4 << 30, maxConcurrentIngests: Int = 16,
            verifyAllOnStart: Bool = false
        ) {
            self.directory = directory
            self.trustedKeys = trustedKeys
            self.retainVersions = retainVersions
            self.retainDrafts = retainDrafts
            self.maxModelBytes = maxModelBytes
            self.maxContentBytes = maxContentBytes
            self.maxConcurrentIngests = maxConcurrentIngests
            self.verifyAllOnStart = verifyAllOnStart
        }

        /// The largest compressed archive of a snapshot within these limits: the container
        /// (header, a manifest of up to 16 MiB, ``SnapshotManifest/maxFiles`` entry headers
        /// and names, ``maxContentBytes`` of files, signature, end) plus LZ4's worst-case
        /// growth of incompressible data (1/255) and 1 MiB for frame and block headers. An
        /// upload longer than this is refused; an HTTP body limit for uploads is this.
        public var maxArchiveBytes: UInt64 {
            let perFile = UInt64(ContainerFormat.entryHeaderSize + EntryPath.maxLength)
            let overhead = UInt64(16 << 20) + UInt64(SnapshotManifest.maxFiles) * perFile + (1 << 20)
            let (container, o1) = maxContentBytes.addingReportingOverflow(overhead)
            let (archive, o2) = container.addingReportingOverflow(container / 255)
            return o1 || o2 ? .max : archive
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
        VerificationPolicy(trustedKeys: configuration.trustedKeys, allowDraft: true, maxContentBytes: configuration.maxContentBytes,
                           maxModelBytes: configuration.maxModelBytes)
    }

    /// Uploads being received now (sessions begun and not yet finished, failed or aborted).
    public var uploadsInProgress: Int { shared.activeIngests }

    // MARK: Reading

    /// Every snapshot, or those of model `name`, ordered by name then version.
    public func list(name: String? = nil) throws(SnapshotError) -> [SnapshotRecord] {
        let dir = configuration.directory
        return try catalog.run("list") {
            try catalog.pool.read { db in
                let rows: [Row]
                if let name {
                    rows = try Row.fetchAll(db, sql: "SELECT \(SnapshotCatalog.recordColumns) FROM snapshot WHERE name = ? ORDER BY version", arguments: [name])
                } else {
                    rows = try Row.fetchAll(db, sql: "SELECT \(SnapshotCatalog.recordColumns) FROM snapshot ORDER BY name, version")
                }
                return rows.compactMap { SnapshotCatalog.record($0, directory: dir) }
            }
        }
    }

    /// The record of `id`, or `nil`.
    public func record(_ id: SnapshotID) throws(SnapshotError) -> SnapshotRecord? {
        let dir = configuration.directory
        return try catalog.run("read") {
            try catalog.pool.read { db in
                try Row.fetchOne(db, sql: "SELECT \(SnapshotCatalog.recordColumns) FROM snapshot WHERE name = ? AND version = ?", arguments: [id.name, id.version])
                    .flatMap { SnapshotCatalog.record($0, directory: dir) }
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

    /// The next version `ingest` would assign to a draft of `name`; a
    /// ``SnapshotError/Code/conflict`` when the name's highest version is already
    /// ``SnapshotNaming/maxVersion``.
    public func nextVersion(name: String) throws(SnapshotError) -> Int {
        try SnapshotNaming.validateModelName(name)
        let stored = try list(name: name).last?.id.version ?? 0
        let highest = max(stored, shared.highestReservation(name))
        guard highest < SnapshotNaming.maxVersion else { throw LockedState.versionsExhausted(name) }
        return highest + 1
    }

    // MARK: Aliases

    /// The aliases of model `name` (not including the implicit `latest`).
    public func aliases(name: String) throws(SnapshotError) -> [String: Int] {
        try catalog.run("read aliases") {
            try catalog.pool.read { db in
                var out: [String: Int] = [:]
                for row in try Row.fetchAll(db, sql: "SELECT alias, version FROM alias WHERE name = ? AND version IS NOT NULL",
                                            arguments: [name]) {
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
                for row in try Row.fetchAll(db, sql: "SELECT name, alias, version FROM alias WHERE version IS NOT NULL") {
                    out[row["name"], default: [:]][row["alias"]] = row["version"]
                }
                return out
            }
        }
    }

    /// The whole alias register, removals included: what a node spreads to the cluster.
    public func aliasRecords() throws(SnapshotError) -> [AliasRecord] {
        try catalog.run("read aliases") {
            try catalog.pool.read { db in
                try Row.fetchAll(db, sql: "SELECT \(Self.aliasColumns) FROM alias ORDER BY name, alias").map(Self.aliasRecord)
            }
        }
    }

    /// Points `alias` of model `name` at `version`, which MUST be stored here (a single node's
    /// rule; a node in a cluster checks the version's holders and calls
    /// ``writeAlias(name:alias:version:author:)``). Moving an alias is atomic. `latest` cannot
    /// be set.
    public func setAlias(name: String, alias: String, version: Int) throws(SnapshotError) {
        try SnapshotNaming.validateAlias(alias)
        let id = try SnapshotID(name: name, version: version)
        guard let r = try record(id) else { throw try notFound(id) }
        guard r.state == .ready else {
            throw SnapshotError(.notFound, "\(id) is being retired and cannot receive alias `\(alias)`")
        }
        try writeAlias(name: name, alias: alias, version: version, author: "")
    }

    /// Removes an alias; removing one that does not exist is a ``SnapshotError/Code/notFound``.
    public func removeAlias(name: String, alias: String) throws(SnapshotError) {
        try writeAlias(name: name, alias: alias, version: nil, author: "")
    }

    /// Sets (`version`) or removes (nil) an alias as a new write by `author` (a node id): its
    /// stamp is the wall clock in milliseconds, and at least one more than the stamp it
    /// replaces, so a write made after another always wins, whatever the clocks say. The
    /// version need not be stored here. Removing an alias that does not exist is a
    /// ``SnapshotError/Code/notFound``. Returns the record written.
    @discardableResult
    public func writeAlias(name: String, alias: String, version: Int?, author: String) throws(SnapshotError) -> AliasRecord {
        try SnapshotNaming.validateModelName(name)
        try SnapshotNaming.validateAlias(alias)
        if let version { try SnapshotNaming.validateVersion(version, of: name) }
        let now = UInt64(max(0, Date().timeIntervalSince1970 * 1000))
        let written = try catalog.run("write alias") {
            try catalog.pool.write { db -> AliasRecord? in
                let old = try storedAlias(name: name, alias: alias, db)
                if version == nil && old?.version == nil { return nil }
                let record = AliasRecord(name: name, alias: alias, version: version, stamp: max(now, (old?.stamp ?? 0) + 1), author: author)
                try upsert(record, db)
                return record
            }
        }
        guard let written else { throw SnapshotError(.notFound, "model `\(name)` has no alias `\(alias)`") }
        logger.info(version == nil ? "alias removed" : "alias set",
                    metadata: ["model.name": "\(name)", "model.alias": "\(alias)", "model.version": "\(version.map(String.init) ?? "none")"])
        return written
    }

    /// Takes the records (from other nodes) that supersede what the register holds, in one
    /// transaction; returns those it took. The versions need not be stored here.
    public func applyAliases(_ records: [AliasRecord]) throws(SnapshotError) -> [AliasRecord] {
        let valid = records.filter { r in
            (try? SnapshotNaming.validateModelName(r.name)) != nil && (try? SnapshotNaming.validateAlias(r.alias)) != nil
                && (r.version.map { (try? SnapshotNaming.validateVersion($0, of: r.name)) != nil } ?? true)
                && r.stamp <= UInt64(Int64.max)
        }
        guard !valid.isEmpty else { return [] }
        return try catalog.run("apply aliases") {
            try catalog.pool.write { db -> [AliasRecord] in
                var taken: [AliasRecord] = []
                for r in valid {
                    if let old = try storedAlias(name: r.name, alias: r.alias, db), !r.supersedes(old) { continue }
                    try upsert(r, db)
                    taken.append(r)
                }
                return taken
            }
        }
    }

    private static let aliasColumns = "name, alias, version, stamp, author"

    private static func aliasRecord(_ row: Row) -> AliasRecord {
        AliasRecord(name: row["name"], alias: row["alias"], version: row["version"], stamp: UInt64(max(0, row["stamp"] as Int64)),
                    author: row["author"])
    }

    private func storedAlias(name: String, alias: String, _ db: Database) throws -> AliasRecord? {
        try Row.fetchOne(db, sql: "SELECT \(Self.aliasColumns) FROM alias WHERE name = ? AND alias = ?", arguments: [name, alias])
            .map(Self.aliasRecord)
    }

    private func upsert(_ r: AliasRecord, _ db: Database) throws {
        try db.execute(sql: """
            INSERT INTO alias (name, alias, version, stamp, author) VALUES (?, ?, ?, ?, ?)
            ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version, stamp = excluded.stamp, author = excluded.author
            """, arguments: [r.name, r.alias, r.version, Int64(r.stamp), r.author])
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

    /// Deletes a stored snapshot; refused while it is leased or, unless `evenIfAliased` (a
    /// node handing its copy over to the holders placement chose), an alias points at it.
    public func remove(_ id: SnapshotID, evenIfAliased: Bool = false) throws(SnapshotError) {
        guard try record(id) != nil else { throw try notFound(id) }
        if !evenIfAliased, let alias = try aliases(name: id.name).first(where: { $0.value == id.version })?.key {
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

    /// Keeps the newest ``Configuration/retainVersions`` published versions and the newest
    /// ``Configuration/retainDrafts`` drafts of every model, counted apart, plus every aliased
    /// version; deletes the others unless leased, which become `retiring` and are deleted by a
    /// later pass once released. A draft never takes a published version's place.
    ///
    /// With `name`, the pass covers that model and every model with a `retiring` version only,
    /// so a publish costs the same with 10 or 10,000 models in the store.
    @discardableResult
    public func applyRetention(name: String? = nil) throws(SnapshotError) -> RetentionReport {
        var report = RetentionReport()
        let keepPublished = max(1, configuration.retainVersions)
        let keepDrafts = max(1, configuration.retainDrafts)
        var records: [SnapshotRecord]
        if let name {
            records = try list(name: name)
            for other in try namesWithRetiringVersions() where other != name { records += try list(name: other) }
        } else {
            records = try list()
        }
        let byName = Dictionary(grouping: records, by: { $0.id.name })
        for name in byName.keys.sorted() {
            let versions = byName[name, default: []].sorted { $0.id.version > $1.id.version }
            let aliased = Set(try aliases(name: name).values)
            // Each version's rank among the newest of its kind (published or draft).
            var seen = (published: 0, drafts: 0)
            var kept = Set<Int>()
            for r in versions {
                if r.isDraft {
                    if seen.drafts < keepDrafts { kept.insert(r.id.version) }
                    seen.drafts += 1
                } else {
                    if seen.published < keepPublished { kept.insert(r.id.version) }
                    seen.published += 1
                }
            }
            for r in versions where !kept.contains(r.id.version) && !aliased.contains(r.id.version) {
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
            for r in versions where r.state == .retiring && (kept.contains(r.id.version) || aliased.contains(r.id.version)) {
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

    static let retiringNamesQuery = "SELECT DISTINCT name FROM snapshot WHERE state = ? ORDER BY name"

    private func namesWithRetiringVersions() throws(SnapshotError) -> [String] {
        try catalog.run("list retiring") {
            try catalog.pool.read { db in
                try String.fetchAll(db, sql: Self.retiringNamesQuery, arguments: [SnapshotRecord.State.retiring.rawValue])
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

/// The store's in-memory state: leases, version reservations, the count of uploads in
/// progress, the commit lock.
///
/// `@unchecked Sendable`: every mutable field is read and written only while `lock` is held,
/// and `commitLock` serialises the short commit step (final checks, rename, catalog row).
final class LockedState: @unchecked Sendable {
    private let lock = NSLock()
    private let commitLock = NSLock()
    private var leases: [SnapshotID: Set<UInt64>] = [:]
    private var nextToken: UInt64 = 1
    /// For each name, the versions uploads in flight hold, with how many hold each.
    private var reservations: [String: [Int: Int]] = [:]
    private var ingests = 0
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

    // MARK: Uploads in progress

    var activeIngests: Int {
        lock.lock()
        defer { lock.unlock() }
        return ingests
    }

    /// Takes one of `limit` slots for an upload; ``SnapshotError/Code/busy`` when all are taken.
    func acquireIngestSlot(limit: Int) throws(SnapshotError) {
        lock.lock()
        defer { lock.unlock() }
        guard ingests < max(1, limit) else {
            throw SnapshotError(.busy, "this node is receiving \(ingests) uploads already, its limit (the node's `max_concurrent_uploads` setting); retry when one has finished")
        }
        ingests += 1
    }

    func releaseIngestSlot() {
        lock.lock()
        defer { lock.unlock() }
        precondition(ingests > 0, "upload slot released twice")
        ingests -= 1
    }

    // MARK: Version reservations

    static func versionsExhausted(_ name: String) -> SnapshotError {
        SnapshotError(.conflict, "model `\(name)` has reached the highest version, \(SnapshotNaming.maxVersion), so a draft cannot be given the next one; upload it with an unused version of your choice, or under a new name")
    }

    func highestReservation(_ name: String) -> Int {
        lock.lock()
        defer { lock.unlock() }
        return reservations[name]?.keys.max() ?? 0
    }

    /// Reserves the version after both `stored` and every version held by an upload in flight.
    func reserveNext(_ name: String, after stored: Int) throws(SnapshotError) -> Int {
        lock.lock()
        defer { lock.unlock() }
        let highest = max(stored, reservations[name]?.keys.max() ?? 0)
        // Every stored or held version is at most maxVersion, so `+ 1` cannot overflow.
        guard highest < SnapshotNaming.maxVersion else { throw Self.versionsExhausted(name) }
        reservations[name, default: [:]][highest + 1] = 1
        return highest + 1
    }

    /// Reserves exactly `version` for a draft; false when an upload in flight holds it.
    func reserve(_ name: String, exactly version: Int) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard reservations[name]?[version] == nil else { return false }
        reservations[name, default: [:]][version] = 1
        return true
    }

    /// Holds `version` for an upload of that very version; several may hold it at once.
    func hold(_ name: String, _ version: Int) {
        lock.lock()
        defer { lock.unlock() }
        reservations[name, default: [:]][version, default: 0] += 1
    }

    /// Ends one reservation or hold of `version`.
    func unreserve(_ name: String, _ version: Int) {
        lock.lock()
        defer { lock.unlock() }
        guard let count = reservations[name]?[version] else {
            preconditionFailure("\(name)@\(version) released without a reservation")
        }
        reservations[name]![version] = count > 1 ? count - 1 : nil
        if reservations[name]?.isEmpty == true { reservations[name] = nil }
    }

    /// Versions reserved or held now, for tests and diagnostics.
    var reservationCount: Int {
        lock.lock()
        defer { lock.unlock() }
        return reservations.values.reduce(0) { $0 + $1.values.reduce(0, +) }
    }

    func withCommitLock<T>(_ body: () throws(SnapshotError) -> T) throws(SnapshotError) -> T {
        commitLock.lock()
        defer { commitLock.unlock() }
        return try body()
    }
}
