import KaaCluster
import KaaCore

/// What `GET /kaa/v1/placement` answers: taken on the loop as plain values, written as JSON
/// off it. With 10,000 snapshots the answer is megabytes, and the loop that would write it
/// also answers gossip probes: a probe answered seconds late reads as a dead node elsewhere.
struct PlacementReport: Sendable {
    struct Copy: Sendable {
        var node: NodeID
        /// `fetching`, `ready`, `draining`; for a holder also `missing` (no copy yet) or `down`.
        var state: String
    }

    struct Row: Sendable {
        var key: String
        var name: String
        var version: Int
        var holders: [Copy]
        /// Live nodes with a copy that the table does not name (moving in or draining).
        var others: [Copy]
        var ready: Int
        var replicated: Bool
    }

    var digest: String
    var replication: Int
    var settled: Bool
    var digestsAgree: Bool
    var snapshotsTotal: Int
    var underReplicated: Int
    var fetching: Int
    var rows: [Row]
    /// Bytes each node is to hold, by node.
    var load: [NodeID: UInt64]
    var names: [NodeID: String]
    var httpAddresses: [NodeID: String]
    /// The alias register's live aliases (removed ones left out): model, alias, version.
    var aliases: [(name: String, alias: String, version: Int)] = []

    /// The JSON object, keys in sorted order, snapshots by key.
    func json() -> [UInt8] {
        var w = JSONWriter(capacity: 64 + rows.count * 300 + aliases.count * 40)
        // `{"model": {"alias": version, ...}, ...}`, models and aliases in order.
        w.raw("{\"aliases\":{")
        var model: String?
        for a in aliases.sorted(by: { ($0.name, $0.alias) < ($1.name, $1.alias) }) {
            if a.name != model {
                if model != nil { w.raw("},") }
                w.string(a.name); w.raw(":{")
                model = a.name
            } else {
                w.byte(UInt8(ascii: ","))
            }
            w.string(a.alias); w.byte(UInt8(ascii: ":")); w.integer(a.version)
        }
        if model != nil { w.byte(UInt8(ascii: "}")) }
        w.raw("},\"digest\":"); w.string(digest)
        w.raw(",\"digests_agree\":"); w.bool(digestsAgree)
        w.raw(",\"fetching\":"); w.integer(fetching)
        w.raw(",\"load\":{")
        for (i, (node, bytes)) in load.map({ (name(of: $0.key), $0.value) }).sorted(by: { $0.0 < $1.0 }).enumerated() {
            if i > 0 { w.byte(UInt8(ascii: ",")) }
            w.string(node); w.byte(UInt8(ascii: ":")); w.integer(bytes)
        }
        w.raw("},\"replication\":"); w.integer(replication)
        w.raw(",\"settled\":"); w.bool(settled)
        w.raw(",\"snapshots\":[")
        for (i, row) in rows.sorted(by: { $0.key < $1.key }).enumerated() {
            if i > 0 { w.byte(UInt8(ascii: ",")) }
            w.raw("{\"holders\":[")
            for (j, copy) in row.holders.enumerated() {
                if j > 0 { w.byte(UInt8(ascii: ",")) }
                w.raw("{\"http_addr\":"); w.string(httpAddresses[copy.node] ?? "")
                write(copy, to: &w)
            }
            w.raw("],\"name\":"); w.string(row.name)
            w.raw(",\"others\":[")
            for (j, copy) in row.others.enumerated() {
                if j > 0 { w.byte(UInt8(ascii: ",")) }
                w.byte(UInt8(ascii: "{"))
                write(copy, to: &w, first: true)
            }
            w.raw("],\"ready\":"); w.integer(row.ready)
            w.raw(",\"replicated\":"); w.bool(row.replicated)
            w.raw(",\"version\":"); w.integer(row.version)
            w.byte(UInt8(ascii: "}"))
        }
        w.raw("],\"snapshots_total\":"); w.integer(snapshotsTotal)
        w.raw(",\"under_replicated\":"); w.integer(underReplicated)
        w.byte(UInt8(ascii: "}"))
        return w.bytes
    }

    private func name(of node: NodeID) -> String { names[node] ?? node.rawValue }

    /// `"id", "name", "state"` and the closing brace, after an opening brace (`first`) or
    /// after other keys.
    private func write(_ copy: Copy, to w: inout JSONWriter, first: Bool = false) {
        w.raw(first ? "\"id\":" : ",\"id\":"); w.string(copy.node.rawValue)
        w.raw(",\"name\":"); w.string(name(of: copy.node))
        w.raw(",\"state\":"); w.string(copy.state)
        w.byte(UInt8(ascii: "}"))
    }
}
