public import Foundation
import GRDB

/// One snapshot a node holds, as its catalog records it.
public struct SnapshotRecord: Sendable, Equatable {
    /// `ready`: verified, stored, servable. `retiring`: retention chose to delete it but it was
    /// leased; it is deleted by a later retention pass once no lease holds it.
    public enum State: String, Sendable, Codable { case ready, retiring }

    public var id: SnapshotID
    public var digest: SnapshotDigest
    /// Size of the archive file, in bytes.
    public var size: UInt64
    public var state: State
    public var receivedAt: Date
    /// The key that signed it, when it was signed.
    public var signerKeyID: String?
    /// Whether this node gave it its version (an unsigned draft). Retention keeps drafts apart
    /// from published versions, so drafts never push a published version out.
    public var isDraft: Bool
    /// The archive's path on disk.
    public var path: String
    /// What its manifest asks of a holder's accelerators (placement honours it).
    public var accelerator: SnapshotManifest.Requirements.Accelerator = .none
    /// Whether its manifest carries a quality gate (docs/quality-gate.md).
    public var hasGate = false
}

/// The SQLite catalog (WAL) of a store: tables `snapshot` and `alias` (the alias register).
struct SnapshotCatalog: Sendable {
    let pool: DatabasePool

    init(path: String) throws(SnapshotError) {
        do {
            var config = Configuration()
            config.foreignKeysEnabled = true
            config.busyMode = .timeout(10)
            pool = try DatabasePool(path: path, configuration: config)
            var migrator = DatabaseMigrator()
            migrator.registerMigration("v1") { db in
                try db.execute(sql: """
                    CREATE TABLE snapshot (
                        name TEXT NOT NULL,
                        version INTEGER NOT NULL CHECK (version > 0),
                        digest TEXT NOT NULL,
                        size INTEGER NOT NULL,
                        state TEXT NOT NULL,
                        received_at DOUBLE NOT NULL,
                        signer TEXT,
                        manifest BLOB NOT NULL,
                        PRIMARY KEY (name, version)
                    );
                    CREATE TABLE alias (
                        name TEXT NOT NULL,
                        alias TEXT NOT NULL,
                        version INTEGER NOT NULL,
                        updated_at DOUBLE NOT NULL,
                        PRIMARY KEY (name, alias),
                        FOREIGN KEY (name, version) REFERENCES snapshot (name, version) ON DELETE RESTRICT
                    );
                    """)
            }
            // Which versions the node gave to drafts. Rows from before are counted as published:
            // retention then never deletes them because of drafts.
            migrator.registerMigration("v2-draft") { db in
                try db.execute(sql: "ALTER TABLE snapshot ADD COLUMN draft INTEGER NOT NULL DEFAULT 0")
            }
            // Aliases become cluster state: a last-writer-wins register per (name, alias), stamped
            // with milliseconds and the node that wrote it, a removal kept as a row without a
            // version so it wins everywhere. The version need not be stored on this node.
            migrator.registerMigration("v3-alias-register") { db in
                try db.execute(sql: """
                    CREATE TABLE alias_register (
                        name TEXT NOT NULL,
                        alias TEXT NOT NULL,
                        version INTEGER,
                        stamp INTEGER NOT NULL,
                        author TEXT NOT NULL DEFAULT '',
                        PRIMARY KEY (name, alias)
                    );
                    INSERT INTO alias_register (name, alias, version, stamp, author)
                        SELECT name, alias, version, CAST(updated_at * 1000 AS INTEGER), '' FROM alias;
                    DROP TABLE alias;
                    ALTER TABLE alias_register RENAME TO alias;
                    """)
            }
            // Retention looks for models with retiring versions after every stored snapshot;
            // without an index that read the whole table (manifests included) each time, 10 MB
            // with 10,000 snapshots.
            migrator.registerMigration("v4-state-index") { db in
                try db.execute(sql: "CREATE INDEX snapshot_by_state ON snapshot (state, name)")
            }
            try migrator.migrate(pool)
        } catch {
            throw SnapshotError(.io, "cannot open the snapshot catalog `\(path)`: \(error)")
        }
    }

    func run<T>(_ what: String, _ body: () throws -> T) throws(SnapshotError) -> T {
        do { return try body() } catch let e as SnapshotError { throw e } catch {
            throw SnapshotError(.io, "catalog \(what) failed: \(error)")
        }
    }

    /// The record of a row, or `nil` when the row is not one this Kaa could have written: a
    /// name or version out of the rules (an older build stored versions up to `Int.max`), a
    /// negative size. Such rows are never listed or served; reconciliation drops them at start
    /// and quarantines their files.
    static func record(_ row: Row, directory: String) -> SnapshotRecord? {
        guard case .valid(let id, let size) = check(row) else { return nil }
        let digestText: String = row["digest"]
        return SnapshotRecord(
            id: id,
            digest: (try? SnapshotDigest(parsing: digestText)) ?? SnapshotDigest(bytes: [UInt8](repeating: 0, count: 32)),
            size: size,
            state: SnapshotRecord.State(rawValue: row["state"]) ?? .ready,
            receivedAt: Date(timeIntervalSince1970: row["received_at"]),
            signerKeyID: row["signer"],
            isDraft: row["draft"] ?? false,
            path: SnapshotStore.archivePath(directory: directory, name: id.name, version: id.version),
            accelerator: (row["accelerator"] as String?).flatMap(SnapshotManifest.Requirements.Accelerator.init(rawValue:)) ?? .none,
            hasGate: (row["gated"] as Bool?) ?? false)
    }

    /// The columns of a record: the row, its manifest's accelerator requirement, and whether
    /// the manifest carries a quality gate.
    static let recordColumns = """
        *, CASE WHEN json_valid(CAST(manifest AS TEXT)) THEN json_extract(CAST(manifest AS TEXT), '$.requirements.accelerator') END AS accelerator,
        CASE WHEN json_valid(CAST(manifest AS TEXT)) THEN json_type(CAST(manifest AS TEXT), '$.gate') IS NOT NULL ELSE 0 END AS gated
        """

    enum RowCheck {
        case valid(SnapshotID, size: UInt64)
        /// The row's name and version as stored (for dropping it), and what is wrong.
        case invalid(name: String?, version: Int64?, reason: String)
    }

    /// Whether a row's identity and size are ones this Kaa writes (see ``record(_:directory:)``).
    /// Reads the raw values, so a value of an unexpected type is reported, not a crash.
    static func check(_ row: Row) -> RowCheck {
        let nameValue: DatabaseValue = row["name"], versionValue: DatabaseValue = row["version"], sizeValue: DatabaseValue = row["size"]
        var name: String?
        var version: Int64?
        if case .string(let n) = nameValue.storage { name = n }
        if case .int64(let v) = versionValue.storage { version = v }
        guard let name, let version, case .int64(let size) = sizeValue.storage else {
            return .invalid(name: name, version: version, reason: "its name, version or size is missing or of the wrong type")
        }
        do throws(SnapshotError) {
            try SnapshotNaming.validateModelName(name)
            guard let v = Int(exactly: version) else { throw SnapshotError(.invalidName, "version \(version) does not fit an Int") }
            try SnapshotNaming.validateVersion(v, of: name)
            guard let bytes = UInt64(exactly: size) else { throw SnapshotError(.io, "its size is \(size)") }
            return .valid(SnapshotID(validName: name, version: v), size: bytes)
        } catch {
            return .invalid(name: name, version: version, reason: error.message)
        }
    }
}
