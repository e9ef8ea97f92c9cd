import Foundation
import GRDB
import KaaCore

/// A call the cluster accepted and could not answer: kept durably so an operator can inspect
/// it and replay it.
struct DeadLetter: Codable, Sendable, Equatable {
    /// Why the call ended here.
    enum Reason: String, Codable, Sendable, CaseIterable {
        /// The deadline passed: at the holder, or while no holder had answered.
        case deadline
        /// No live node had the version ready, or every holder refused it.
        case noHolder = "no-holder"
        /// Every holder was unreachable.
        case unreachable
        /// A holder failed while running it.
        case holderFailed = "holder-failed"
        /// The node stopped past its shutdown grace while the call was running.
        case shutdown
    }

    /// One try at one node.
    struct Attempt: Codable, Sendable, Equatable {
        var node: String
        /// Milliseconds since the epoch.
        var start: Int64
        var end: Int64
        var outcome: String
    }

    enum State: String, Codable, Sendable { case dead, replaying, replayed }

    /// What a replay got.
    struct Replay: Codable, Sendable, Equatable {
        var status: Int
        /// The answer's body, as text (a replayed call's JSON answer, or the error).
        var body: String
        var at: Int64
        var by: String
    }

    /// A ULID: sortable by the time it was written.
    var id: String
    var requestID: String
    var model: String
    /// The version or alias the call asked for (nil: the model's default).
    var asked: String?
    /// The version it resolved to, and that snapshot's digest, when known.
    var version: Int?
    var digest: String?
    /// The request as received: its target, the headers that shape its body, the body.
    var target: String
    var contentType: String?
    var headers: [[String]]
    /// The body as received (base64 in JSON).
    var payload: Data
    var reason: Reason
    var message: String
    var attempts: [Attempt]
    /// The node that accepted the call from its client.
    var acceptedBy: String
    /// Milliseconds since the epoch.
    var createdAt: Int64
    var state: State = .dead
    var replay: Replay?

    enum CodingKeys: String, CodingKey {
        case id, model, asked, version, digest, target, headers, payload, reason, message, attempts, state, replay
        case requestID = "request_id", contentType = "content_type", acceptedBy = "accepted_by", createdAt = "created_at"
    }
}

/// Identifiers that sort by time: 48 bits of milliseconds and 80 random bits, in Crockford's
/// base 32 (26 characters), as ULIDs are written.
enum ULID {
    static let alphabet = Array("0123456789ABCDEFGHJKMNPQRSTVWXYZ".utf8)

    static func make(milliseconds: UInt64, random: inout some RandomNumberGenerator) -> String {
        var high = milliseconds & 0xFFFF_FFFF_FFFF // 48 bits
        let r1 = random.next() as UInt64, r2 = random.next() as UInt64
        // 128 bits: time (48) then randomness (80), written 5 bits at a time from the top (130 bits, the first 2 zero).
        var bits = [UInt8](repeating: 0, count: 16)
        for i in 0..<6 { bits[5 - i] = UInt8(high & 0xFF); high >>= 8 }
        for i in 0..<8 { bits[6 + i] = UInt8(truncatingIfNeeded: r1 >> (56 - 8 * UInt64(i))) }
        for i in 0..<2 { bits[14 + i] = UInt8(truncatingIfNeeded: r2 >> (56 - 8 * UInt64(i))) }
        var out: [UInt8] = []
        out.reserveCapacity(26)
        for index in 0..<26 {
            let bit = index * 5 - 2 // the first character carries 3 bits
            var value = 0
            for b in 0..<5 {
                let position = bit + b
                guard position >= 0 else { continue }
                let byte = bits[position / 8], shift = 7 - position % 8
                value = value << 1 | Int((byte >> UInt8(shift)) & 1)
            }
            out.append(alphabet[value])
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func make() -> String {
        var rng = SystemRandomNumberGenerator()
        return make(milliseconds: UInt64(max(0, Date().timeIntervalSince1970 * 1000)), random: &rng)
    }
}

/// The dead letters a node keeps, in `<data_dir>/deadletters.sqlite` (WAL): the ones it
/// accepted, and copies of other nodes' (so losing one disk loses none). Every method blocks
/// on SQLite: call it off the loop.
final class DeadLetterStore: Sendable {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    private let pool: DatabasePool

    init(path: String) throws(Failure) {
        do {
            var config = Configuration()
            config.busyMode = .timeout(10)
            pool = try DatabasePool(path: path, configuration: config)
            var migrator = DatabaseMigrator()
            migrator.registerMigration("v1") { db in
                try db.execute(sql: """
                    CREATE TABLE dead_letter (
                        id TEXT PRIMARY KEY NOT NULL,
                        request_id TEXT NOT NULL,
                        model TEXT NOT NULL,
                        reason TEXT NOT NULL,
                        created_at INTEGER NOT NULL,
                        accepted_by TEXT NOT NULL,
                        state TEXT NOT NULL,
                        lease_until INTEGER NOT NULL DEFAULT 0,
                        bytes INTEGER NOT NULL,
                        record BLOB NOT NULL
                    );
                    CREATE INDEX dead_letter_model ON dead_letter (model, id);
                    CREATE INDEX dead_letter_created ON dead_letter (created_at);
                    """)
            }
            try migrator.migrate(pool)
        } catch {
            throw Failure(description: "cannot open the dead-letter store `\(path)`: \(error)")
        }
    }

    private func run<T>(_ what: String, _ body: () throws -> T) throws(Failure) -> T {
        do { return try body() } catch let e as Failure { throw e } catch {
            throw Failure(description: "dead letters: \(what) failed: \(error)")
        }
    }

    /// Writes `letter` durably (SQLite commits in WAL mode with the default synchronous
    /// setting): returns once it is on disk. A copy already there is kept.
    func write(_ letter: DeadLetter) throws(Failure) {
        let record = try run("encode") { try JSONEncoder().encode(letter) }
        try run("write") {
            try pool.write { db in
                try db.execute(sql: """
                    INSERT INTO dead_letter (id, request_id, model, reason, created_at, accepted_by, state, bytes, record)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING
                    """, arguments: [letter.id, letter.requestID, letter.model, letter.reason.rawValue, letter.createdAt,
                                     letter.acceptedBy, letter.state.rawValue, letter.payload.count, record])
            }
        }
    }

    func get(_ id: String) throws(Failure) -> DeadLetter? {
        try run("read") {
            try pool.read { db in
                try Data.fetchOne(db, sql: "SELECT record FROM dead_letter WHERE id = ?", arguments: [id])
            }.map { try JSONDecoder().decode(DeadLetter.self, from: $0) }
        }
    }

    struct Filter: Sendable {
        var model: String?
        var reason: String?
        /// Only those written at or after this many milliseconds since the epoch.
        var since: Int64?
        /// Only those with an id after this one (the next page).
        var after: String?
        var limit = 100
    }

    /// Oldest first.
    func list(_ filter: Filter) throws(Failure) -> [DeadLetter] {
        let (clause, arguments) = DeadLetterStore.whereClause([("model = ?", filter.model), ("reason = ?", filter.reason),
                                                               ("created_at >= ?", filter.since), ("id > ?", filter.after)])
        let sql = "SELECT record FROM dead_letter\(clause) ORDER BY id LIMIT \(max(1, min(filter.limit, 1000)))"
        return try run("list") {
            try pool.read { db in
                try Data.fetchAll(db, sql: sql, arguments: arguments).map {
                    try JSONDecoder().decode(DeadLetter.self, from: $0)
                }
            }
        }
    }

    /// ` WHERE a AND b ...` of the conditions that have a value (empty when none) and those values.
    private static func whereClause(_ conditions: [(sql: String, value: (any DatabaseValueConvertible)?)]) -> (String, StatementArguments) {
        let given = conditions.compactMap { c in c.value.map { (c.sql, $0) } }
        return (given.isEmpty ? "" : " WHERE " + given.map(\.0).joined(separator: " AND "), StatementArguments(given.map(\.1)))
    }

    /// Counts by reason, for `/metrics`.
    func countsByReason() throws(Failure) -> [String: Int] {
        try run("count") {
            try pool.read { db in
                var out: [String: Int] = [:]
                for row in try Row.fetchAll(db, sql: "SELECT reason, COUNT(*) AS n FROM dead_letter GROUP BY reason") {
                    out[row["reason"]] = row["n"]
                }
                return out
            }
        }
    }

    /// The dead letters of calls `node` accepted (not the copies of other nodes' it keeps):
    /// how many by reason, and the `limit` newest, newest first. For the node's stats.
    func accepted(by node: String, newest limit: Int) throws(Failure) -> (byReason: [String: Int], newest: [DeadLetter]) {
        try run("count") {
            try pool.read { db in
                var counts: [String: Int] = [:]
                for row in try Row.fetchAll(db, sql: "SELECT reason, COUNT(*) AS n FROM dead_letter WHERE accepted_by = ? GROUP BY reason",
                                            arguments: [node]) {
                    counts[row["reason"]] = row["n"]
                }
                let newest = try Data.fetchAll(db, sql: "SELECT record FROM dead_letter WHERE accepted_by = ? ORDER BY id DESC LIMIT ?",
                                               arguments: [node, max(0, min(limit, 1000))]).map {
                    try JSONDecoder().decode(DeadLetter.self, from: $0)
                }
                return (counts, newest)
            }
        }
    }

    /// Deletes one; returns whether it was there.
    @discardableResult
    func delete(_ id: String) throws(Failure) -> Bool {
        try run("delete") {
            try pool.write { db in
                try db.execute(sql: "DELETE FROM dead_letter WHERE id = ?", arguments: [id])
                return db.changesCount > 0
            }
        }
    }

    /// Deletes every record of `model`, of `reason`, written before `before` (each when given);
    /// returns how many went.
    @discardableResult
    func purge(model: String?, reason: String?, before: Int64?) throws(Failure) -> Int {
        let (clause, arguments) = DeadLetterStore.whereClause([("model = ?", model), ("reason = ?", reason), ("created_at < ?", before)])
        return try run("purge") {
            try pool.write { db in
                try db.execute(sql: "DELETE FROM dead_letter\(clause)", arguments: arguments)
                return db.changesCount
            }
        }
    }

    /// Deletes those written before `cutoff` (milliseconds since the epoch), then the oldest
    /// while the payloads kept exceed `maxBytes`; returns how many went.
    @discardableResult
    func applyRetention(olderThan cutoff: Int64, maxBytes: Int64) throws(Failure) -> Int {
        try run("retention") {
            try pool.write { db in
                try db.execute(sql: "DELETE FROM dead_letter WHERE created_at < ?", arguments: [cutoff])
                var removed = db.changesCount
                var total = try Int64.fetchOne(db, sql: "SELECT COALESCE(SUM(bytes), 0) FROM dead_letter") ?? 0
                while total > maxBytes {
                    guard let row = try Row.fetchOne(db, sql: "SELECT id, bytes FROM dead_letter ORDER BY id LIMIT 1") else { break }
                    try db.execute(sql: "DELETE FROM dead_letter WHERE id = ?", arguments: [row["id"] as String])
                    total -= row["bytes"] as Int64
                    removed += 1
                }
                return removed
            }
        }
    }

    /// What a replay of `id` should do: run it (this caller claimed it: dead → replaying, with
    /// a lease until `leaseUntil`), or nothing, because it was replayed (its kept result) or
    /// another replay holds a live lease on it.
    enum Claim: Equatable {
        case run(DeadLetter)
        case replayed(DeadLetter)
        case busy
        case missing
    }

    func claim(_ id: String, now: Int64, leaseUntil: Int64) throws(Failure) -> Claim {
        try run("claim") {
            try pool.write { db -> Claim in
                guard let row = try Row.fetchOne(db, sql: "SELECT state, lease_until, record FROM dead_letter WHERE id = ?", arguments: [id]) else {
                    return .missing
                }
                var letter = try JSONDecoder().decode(DeadLetter.self, from: row["record"] as Data)
                let state = DeadLetter.State(rawValue: row["state"]) ?? .dead
                if state == .replayed { return .replayed(letter) }
                if state == .replaying && (row["lease_until"] as Int64) > now { return .busy }
                letter.state = .replaying
                try db.execute(sql: "UPDATE dead_letter SET state = 'replaying', lease_until = ?, record = ? WHERE id = ?",
                               arguments: [leaseUntil, try JSONEncoder().encode(letter), id])
                return .run(letter)
            }
        }
    }

    /// Ends a claimed replay with its result, kept for any later replay of the same id.
    func finishReplay(_ id: String, _ replay: DeadLetter.Replay) throws(Failure) -> DeadLetter? {
        try run("finish replay") {
            try pool.write { db -> DeadLetter? in
                guard let data = try Data.fetchOne(db, sql: "SELECT record FROM dead_letter WHERE id = ?", arguments: [id]) else { return nil }
                var letter = try JSONDecoder().decode(DeadLetter.self, from: data)
                letter.state = .replayed
                letter.replay = replay
                try db.execute(sql: "UPDATE dead_letter SET state = 'replayed', lease_until = 0, record = ? WHERE id = ?",
                               arguments: [try JSONEncoder().encode(letter), id])
                return letter
            }
        }
    }
}
