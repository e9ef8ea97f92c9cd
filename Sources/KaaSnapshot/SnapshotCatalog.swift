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
    /// The archive's path on disk.
    public var path: String
}

/// The SQLite catalog (WAL) of a store: tables `snapshot` and `alias`.
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

    static func record(_ row: Row, directory: String) -> SnapshotRecord {
        let name: String = row["name"]
        let version: Int = row["version"]
        let digestText: String = row["digest"]
        return SnapshotRecord(
            id: try! SnapshotID(name: name, version: version),
            digest: (try? SnapshotDigest(parsing: digestText)) ?? SnapshotDigest(bytes: [UInt8](repeating: 0, count: 32)),
            size: UInt64(row["size"] as Int64),
            state: SnapshotRecord.State(rawValue: row["state"]) ?? .ready,
            receivedAt: Date(timeIntervalSince1970: row["received_at"]),
            signerKeyID: row["signer"],
            path: SnapshotStore.archivePath(directory: directory, name: name, version: version))
    }
}
