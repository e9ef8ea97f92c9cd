import Crypto
public import KaaCore

/// Where each snapshot lives: for every snapshot, its ordered holders. A pure function of the
/// live members, the cluster's snapshots and the replication factor: no sockets, no clock, no
/// randomness, and only integer arithmetic and SHA-256, so every node that sees the same
/// members and catalog computes the same table (and the same ``Table/digest``), whatever its
/// process, build or CPU.
///
/// The method is consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam,
/// "Consistent Hashing with Bounded Loads", SODA 2018), weighted by capacity:
///
/// - Each node puts `weight × tokensPerWeight` tokens on a 64-bit ring, at positions derived from
///   its id (SHA-256 of the id seeds a SplitMix64 sequence). A snapshot's position is the
///   SHA-256 of `name@version`; its preference list is the nodes met walking the ring clockwise
///   from there. A join or a leave changes only the arcs next to the tokens it adds or removes,
///   so it moves about its own share of snapshots and no more.
/// - Bounded loads: a node takes a snapshot only while its bytes stay within `(1 + loadSlack)`
///   times its fair share (its weight over the total weight, of all snapshots' bytes times the
///   replication factor); a snapshot passes over a full node to the next on its list. So no
///   node holds more than 1.25 times its share (with the default slack), whatever the hash did.
///   Which snapshots a full node gives up is decided by deferred acceptance, so the outcome
///   does not depend on the order snapshots are considered in. A node keeps the snapshots
///   nearest its tokens (by ring distance from the snapshot's position to the token where its
///   walk meets the node) and gives up the farthest: a rank that is geometry, like the ring,
///   so a join or a leave changes it only next to the tokens it adds or removes.
/// - Zones: the holders of a snapshot are in distinct zones whenever the eligible nodes span at
///   least `replication` zones.
/// - GPUs: a snapshot that requires a GPU is placed only on nodes with one (and is reported
///   ``Table/unplaceable`` when there are none); one that prefers a GPU is placed on GPU nodes
///   while they have room, then on others.
///
/// Why a ring rather than weighted rendezvous hashing: rendezvous needs a score per node per
/// snapshot and a logarithm per score to weight it, 5 million logarithms for 10,000 snapshots
/// on 500 nodes, and a libm logarithm may round differently on another machine, which would
/// split the cluster's view. The ring needs one binary search per snapshot and integers only.
public enum Placement {
    /// A live member as placement sees it.
    public struct Node: Sendable, Hashable {
        public var id: NodeID
        public var zone: String
        /// Relative capacity, at least 1 (e.g. GiB of memory).
        public var weight: Int
        public var gpus: Int

        public init(id: NodeID, zone: String = "", weight: Int = 1, gpus: Int = 0) {
            self.id = id
            self.zone = zone
            self.weight = max(1, weight)
            self.gpus = max(0, gpus)
        }
    }

    /// What a snapshot asks of its holders' accelerators.
    public enum Accelerator: Sendable, Hashable {
        case none
        /// Placed on GPU nodes while they have room, then on others.
        case prefersGPU
        /// Placed only on GPU nodes.
        case requiresGPU
    }

    /// A snapshot as placement sees it.
    public struct Snapshot: Sendable, Hashable {
        public var name: String
        public var version: Int
        public var bytes: UInt64
        public var accelerator: Accelerator

        public init(name: String, version: Int, bytes: UInt64, accelerator: Accelerator = .none) {
            self.name = name
            self.version = version
            self.bytes = bytes
            self.accelerator = accelerator
        }

        /// `name@version`.
        public var key: String { "\(name)@\(version)" }
    }

    public struct Settings: Sendable, Hashable {
        /// Holders per snapshot.
        public var replication = 2
        /// A node holds at most `1 + loadSlack` times its fair share of bytes.
        public var loadSlackPercent = 25
        /// Ring tokens per unit of weight: more tokens, a smoother spread before the cap.
        public var tokensPerWeight = 40
        public init(replication: Int = 2, loadSlackPercent: Int = 25, tokensPerWeight: Int = 40) {
            self.replication = max(1, replication)
            self.loadSlackPercent = max(0, loadSlackPercent)
            self.tokensPerWeight = max(1, tokensPerWeight)
        }
    }

    /// The outcome: each snapshot's holders, best first.
    public struct Table: Sendable {
        /// Holders by snapshot key (`name@version`), in preference order.
        public var holders: [String: [NodeID]]
        /// Snapshots that got fewer than `replication` holders (fewer eligible nodes than that).
        public var underReplicated: Set<String>
        /// Snapshots that need a GPU when no node has one.
        public var unplaceable: Set<String>
        /// SHA-256 (hex) of the table's canonical text: equal digests, equal tables.
        public var digest: String
        /// Bytes each node is to hold.
        public var load: [NodeID: UInt64]

        public init(holders: [String: [NodeID]], underReplicated: Set<String>, unplaceable: Set<String>, digest: String,
                    load: [NodeID: UInt64]) {
            self.holders = holders
            self.underReplicated = underReplicated
            self.unplaceable = unplaceable
            self.digest = digest
            self.load = load
        }

        /// The table of an empty cluster.
        public static let empty = Table(holders: [:], underReplicated: [], unplaceable: [], digest: Placement.hex(SHA256()), load: [:])
    }

    /// Computes the table. Nodes and snapshots may come in any order; duplicate node ids count once.
    public static func compute(nodes: [Node], snapshots: [Snapshot], settings: Settings = .init()) -> Table {
        var planner = Planner()
        return planner.compute(nodes: nodes, snapshots: snapshots, settings: settings)
    }

    /// Computes tables as ``Placement/compute(nodes:snapshots:settings:)`` does, and the same
    /// ones, keeping what two computations share: the ring of the last node set and each
    /// snapshot's position on it (a SHA-256 each). A node that plans on every change of the
    /// cluster's holdings keeps one.
    public struct Planner: Sendable {
        private var positions: [String: UInt64] = [:]
        private var ring: (nodes: [Node], tokensPerWeight: Int, ring: Ring)?

        public init() {}

        public mutating func compute(nodes given: [Node], snapshots: [Snapshot], settings: Settings = .init()) -> Table {
            let (nodes, ring) = self.ring(of: given, settings)
            // Positions of snapshots no longer asked for go once they outnumber the rest.
            if positions.count > 2 * snapshots.count + 1_000 { positions = [:] }
            var keys: [String] = []
            keys.reserveCapacity(snapshots.count)
            let positioned = snapshots.map { s -> (position: UInt64, snapshot: Snapshot) in
                let key = s.key
                keys.append(key)
                if let p = positions[key] { return (p, s) }
                let p = Placement.position(of: key)
                positions[key] = p
                return (p, s)
            }
            return Placement.place(nodes: nodes, ring: ring, positioned: positioned, keys: keys, settings: settings)
        }

        /// The nodes a snapshot not yet in the catalog asks first: the first `replication`
        /// eligible ones on its ring walk, in distinct zones when there are enough, GPU nodes
        /// first when it prefers one. These are its holders once it is in the table unless a
        /// node's load cap turns it away (then the table names the next one on the walk). A node
        /// receiving a publish streams it to these at once, before the table is recomputed.
        public mutating func preference(for snapshot: Snapshot, nodes given: [Node], settings: Settings = .init()) -> [NodeID] {
            let (nodes, ring) = self.ring(of: given, settings)
            let eligible = { (i: Int) in snapshot.accelerator != .requiresGPU || nodes[i].gpus > 0 }
            let want = min(settings.replication, nodes.indices.filter(eligible).count)
            guard want > 0 else { return [] }
            let distinct = Set(nodes.map(\.zone)).count >= want
            var chosen: [Int] = []
            func take(_ i: Int) {
                if chosen.count < want && !(distinct && chosen.contains(where: { nodes[$0].zone == nodes[i].zone })) { chosen.append(i) }
            }
            // A GPU preference reorders the whole walk; otherwise the walk stops once it has them.
            var walk: [Int] = []
            var visits = Ring.Visits(nodeCount: nodes.count)
            ring.walk(from: Placement.position(of: snapshot.key), visits: &visits) { i in
                guard eligible(i) else { return true }
                if snapshot.accelerator == .prefersGPU { walk.append(i) } else { take(i) }
                return chosen.count < want
            }
            if snapshot.accelerator == .prefersGPU {
                for i in walk.filter({ nodes[$0].gpus > 0 }) + walk.filter({ nodes[$0].gpus == 0 }) { take(i) }
            }
            // The eligible nodes span too few zones: the rest as the table takes them, heaviest
            // first, then in canonical order.
            if chosen.count < want {
                let rest = nodes.indices.filter { eligible($0) && !chosen.contains($0) }
                    .sorted { a, b in (nodes[b].weight, a) < (nodes[a].weight, b) }
                chosen += rest.prefix(want - chosen.count)
            }
            return chosen.map { nodes[$0].id }
        }

        /// `given` in canonical order (by id, one entry per id) and its ring, kept between calls.
        private mutating func ring(of given: [Node], _ settings: Settings) -> ([Node], Ring) {
            var seen = Set<NodeID>()
            let nodes = given.sorted { $0.id < $1.id }.filter { seen.insert($0.id).inserted }
            if ring == nil || ring!.nodes != nodes || ring!.tokensPerWeight != settings.tokensPerWeight {
                ring = (nodes, settings.tokensPerWeight, Ring(nodes: nodes, tokensPerWeight: settings.tokensPerWeight))
            }
            return (nodes, ring!.ring)
        }
    }

    /// A snapshot's position on the ring: the first 8 bytes of SHA-256 of a prefix and its key.
    static func position(of key: String) -> UInt64 { hash64(Array("kaa placement snapshot ".utf8) + Array(key.utf8)) }

    /// The table for canonically ordered `nodes`, their ring, and the snapshots with their
    /// positions and keys (`keys[i]` is `unsorted[i].snapshot.key`).
    static func place(nodes: [Node], ring: Ring, positioned unsorted: [(position: UInt64, snapshot: Snapshot)], keys unsortedKeys: [String],
                      settings: Settings) -> Table {
        let gpuNodes = nodes.indices.filter { nodes[$0].gpus > 0 }
        let totalWeight = nodes.reduce(0) { $0 + $1.weight }
        let gpuWeight = gpuNodes.reduce(0) { $0 + nodes[$1].weight }

        // Fair shares, in bytes, of what the eligible nodes hold in all.
        var caps = [UInt64](repeating: 0, count: nodes.count)
        // Ring order, the key breaking a tie: sorting (position, index) pairs moves no strings.
        var order = unsorted.indices.map { (position: unsorted[$0].position, index: $0) }
        order.sort { a, b in a.position != b.position ? a.position < b.position : unsortedKeys[a.index] < unsortedKeys[b.index] }
        let positioned = order.map { unsorted[$0.index] }
        let keys = order.map { unsortedKeys[$0.index] }
        // Holders each snapshot gets: the factor, or every eligible node when there are fewer.
        let want = positioned.map { min(settings.replication, $0.snapshot.accelerator == .requiresGPU ? gpuNodes.count : nodes.count) }
        if totalWeight > 0 {
            var general: UInt64 = 0, gpuOnly: UInt64 = 0
            for (k, (_, s)) in positioned.enumerated() {
                let (b, o) = s.bytes.multipliedReportingOverflow(by: UInt64(want[k]))
                let add = o ? UInt64.max / 4 : b
                if s.accelerator == .requiresGPU { gpuOnly &+= add } else { general &+= add }
            }
            for i in nodes.indices {
                let w = UInt64(nodes[i].weight)
                var share = general / UInt64(totalWeight) * w
                if nodes[i].gpus > 0, gpuWeight > 0 { share &+= gpuOnly / UInt64(gpuWeight) * w }
                caps[i] = share + share / 100 * UInt64(settings.loadSlackPercent)
            }
        }

        return assign(nodes: nodes, ring: ring, positioned: positioned, keys: keys, want: want, caps: caps, settings: settings)
    }

    /// Deferred acceptance: snapshots ask the nodes on their ring walk in turn; a node over its
    /// cap gives up the snapshots it ranks lowest, which ask their next node. The outcome does
    /// not depend on the order of asking.
    ///
    /// A node ranks a snapshot by the ring distance from the snapshot's position to the token
    /// where the snapshot's walk meets the node, nearer first (a GPU node ranks what needs a GPU
    /// first, then what prefers one). The rank is geometry rather than a hash of node and
    /// snapshot: what a node gives up is the far end of its arcs, so the snapshots a joining
    /// node's tokens take from an arc are those its owner gave up first, and a copy spilled
    /// past a full node arrives at the next one from farther than the snapshots whose walks
    /// start there. On 500 nodes a join or a leave moves fewer bytes than with a hash rank,
    /// though still more than its share (docs/placement.md, "Figures", says how much and why).
    static func assign(nodes: [Node], ring: Ring, positioned: [(position: UInt64, snapshot: Snapshot)], keys: [String], want: [Int],
                       caps: [UInt64], settings: Settings) -> Table {
        let count = positioned.count
        let zoneIndex: [Int] = {
            var map: [String: Int] = [:]
            return nodes.map { n in
                if let z = map[n.zone] { return z }
                map[n.zone] = map.count
                return map.count - 1
            }
        }()
        let zones = Set(zoneIndex).count
        let gpuCount = nodes.filter { $0.gpus > 0 }.count
        // Each snapshot's candidates in preference order: the first few on its ring walk, the
        // whole walk only when those are used up (``complete``). Asking down a short list and
        // then the rest is the same as asking down the whole list: a 500-node walk per snapshot
        // is what made tables of 10,000 snapshots slow.
        var candidates = [[Int32]](repeating: [], count: count)
        // `distances[k][j]`: from snapshot k's position to the token where its walk meets `candidates[k][j]`.
        var distances = [[UInt64]](repeating: [], count: count)
        var complete = [Bool](repeating: false, count: count)
        var visits = Ring.Visits(nodeCount: nodes.count)
        func walk(_ k: Int, limit: Int) -> (nodes: [Int32], distances: [UInt64]) {
            let (position, s) = positioned[k]
            var list: [Int32] = [], distance: [UInt64] = []
            list.reserveCapacity(min(limit, nodes.count))
            distance.reserveCapacity(min(limit, nodes.count))
            ring.walkWithTokens(from: position, visits: &visits) { i, token in
                if s.accelerator != .requiresGPU || nodes[i].gpus > 0 {
                    list.append(Int32(i))
                    distance.append(token &- position)
                }
                return list.count < limit
            }
            if s.accelerator == .prefersGPU {
                let order = list.indices.filter { nodes[Int(list[$0])].gpus > 0 } + list.indices.filter { nodes[Int(list[$0])].gpus == 0 }
                return (order.map { list[$0] }, order.map { distance[$0] })
            }
            return (list, distance)
        }
        for (k, (_, s)) in positioned.enumerated() {
            // A GPU preference reorders the whole walk.
            let limit = s.accelerator == .prefersGPU ? Int.max : max(8, 4 * want[k])
            (candidates[k], distances[k]) = walk(k, limit: limit)
            complete[k] = limit == Int.max || candidates[k].count < limit
        }
        var holding = [[Int32]](repeating: [], count: count)
        var rejectedBy = [Set<Int32>](repeating: [], count: count)
        var accepted = [[(rank: UInt64, snapshot: Int)]](repeating: [], count: nodes.count)
        var loads = [UInt64](repeating: 0, count: nodes.count)
        var queue = Array(0..<count)
        while let k = queue.popLast() {
            let s = positioned[k].snapshot
            let distinct = zones >= want[k]
            for (place, candidate) in candidates[k].enumerated() where holding[k].count < want[k] {
                let n = Int(candidate)
                if holding[k].contains(candidate) || rejectedBy[k].contains(candidate) { continue }
                if distinct && holding[k].contains(where: { zoneIndex[Int($0)] == zoneIndex[n] }) { continue }
                // Highest kept: a GPU node keeps what needs a GPU, then what prefers one, before
                // the rest (the top 2 bits); then the nearer the snapshot is to the node's token.
                let tier: UInt64 = nodes[n].gpus == 0 ? 0 : s.accelerator == .requiresGPU ? 2 : s.accelerator == .prefersGPU ? 1 : 0
                let rank = tier << 62 | ~distances[k][place] >> 2
                holding[k].append(candidate)
                accepted[n].append((rank, k))
                loads[n] &+= s.bytes
                // Over the cap: give up the lowest-ranked until within it (keeping at least one).
                while loads[n] > caps[n] && accepted[n].count > 1 {
                    // The lowest rank; on a tie (a distance equal in its top 62 bits), the
                    // snapshot earlier in ring order.
                    let worst = accepted[n].indices.min { a, b in
                        (accepted[n][a].rank, accepted[n][a].snapshot) < (accepted[n][b].rank, accepted[n][b].snapshot)
                    }!
                    let (_, loser) = accepted[n].remove(at: worst)
                    loads[n] &-= positioned[loser].snapshot.bytes
                    holding[loser].removeAll { $0 == candidate }
                    rejectedBy[loser].insert(candidate)
                    if loser != k { queue.append(loser) }
                }
            }
            if holding[k].count < want[k] && !complete[k] {
                (candidates[k], distances[k]) = walk(k, limit: .max)
                complete[k] = true
                queue.append(k)
            }
        }
        // A snapshot every eligible node turned away (all full, which the slack makes rare): the
        // least loaded for their weight take it, past their caps, in zones it is not in yet first.
        for k in positioned.indices where holding[k].count < want[k] {
            let s = positioned[k].snapshot
            var rest = candidates[k].filter { !holding[k].contains($0) }
            rest.sort { a, b in
                let la = (loads[Int(a)] &+ s.bytes).multipliedFullWidth(by: UInt64(nodes[Int(b)].weight))
                let lb = (loads[Int(b)] &+ s.bytes).multipliedFullWidth(by: UInt64(nodes[Int(a)].weight))
                return (la.high, la.low, a) < (lb.high, lb.low, b)
            }
            for zoned in zones >= want[k] ? [true, false] : [false] {
                for n in rest where holding[k].count < want[k] && !holding[k].contains(n) {
                    if zoned && holding[k].contains(where: { zoneIndex[Int($0)] == zoneIndex[Int(n)] }) { continue }
                    holding[k].append(n)
                    loads[Int(n)] &+= s.bytes
                }
            }
        }
        var holders: [String: [NodeID]] = [:]
        holders.reserveCapacity(positioned.count)
        var under = Set<String>(), unplaceable = Set<String>()
        var hash = SHA256()
        for (k, (_, s)) in positioned.enumerated() {
            // In the snapshot's own order of preference: where each stands on its walk.
            var ordered = holding[k]
            if ordered.count > 1 {
                let rank = { (n: Int32) in candidates[k].firstIndex(of: n) ?? .max }
                ordered.sort { rank($0) < rank($1) }
            }
            let list = ordered.map { nodes[Int($0)].id }
            let key = keys[k]
            holders[key] = list
            digestLine(&hash, key, list)
            if list.count < settings.replication { under.insert(key) }
            if s.accelerator == .requiresGPU && gpuCount == 0 { unplaceable.insert(key) }
        }
        var load: [NodeID: UInt64] = [:]
        for i in nodes.indices { load[nodes[i].id] = loads[i] }
        return Table(holders: holders, underReplicated: under, unplaceable: unplaceable, digest: hex(hash), load: load)
    }

    /// The digest is SHA-256 of `key holder,holder\n` lines in ring order (the snapshot's
    /// position, then its key): the order placement computes them in, so no sort is needed.
    static func digestLine(_ hash: inout SHA256, _ key: String, _ holders: [NodeID]) {
        func update(_ text: String) {
            var text = text
            text.withUTF8 { hash.update(bufferPointer: UnsafeRawBufferPointer($0)) }
        }
        let space: UInt8 = 0x20, comma: UInt8 = 0x2C, newline: UInt8 = 0x0A
        update(key)
        withUnsafeBytes(of: space) { hash.update(bufferPointer: $0) }
        for (i, node) in holders.enumerated() {
            if i > 0 { withUnsafeBytes(of: comma) { hash.update(bufferPointer: $0) } }
            update(node.rawValue)
        }
        withUnsafeBytes(of: newline) { hash.update(bufferPointer: $0) }
    }

    /// The hash's digest in lowercase hex.
    static func hex(_ hash: SHA256) -> String { hash.finalize().map { String(format: "%02x", $0) }.joined() }

    /// The first 8 bytes of SHA-256 of `bytes`, big-endian.
    static func hash64(_ bytes: [UInt8]) -> UInt64 {
        SHA256.hash(data: bytes).prefix(8).reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// The tokens of every node on the 64-bit ring, sorted.
    struct Ring: Sendable {
        /// (position, node index), by position then index.
        let tokens: [(position: UInt64, node: Int)]
        let nodeCount: Int

        init(nodes: [Node], tokensPerWeight: Int) {
            var tokens: [(position: UInt64, node: Int)] = []
            tokens.reserveCapacity(nodes.reduce(0) { $0 + min($1.weight * tokensPerWeight, 1 << 14) })
            for (i, node) in nodes.enumerated() {
                var state = Placement.hash64(Array("kaa placement node ".utf8) + Array(node.id.rawValue.utf8))
                for _ in 0..<min(node.weight * tokensPerWeight, 1 << 14) {
                    tokens.append((splitMix(&state), i))
                }
            }
            tokens.sort { ($0.position, $0.node) < ($1.position, $1.node) }
            self.tokens = tokens
            nodeCount = nodes.count
        }

        /// Which nodes one walk has met, kept between walks: a walk marks a node with its own
        /// number, so the next needs no clearing.
        struct Visits {
            var mark: [UInt32]
            var walk: UInt32 = 0
            init(nodeCount: Int) { mark = [UInt32](repeating: 0, count: nodeCount) }
        }

        /// Calls `visit` with each node once, in ring order from `position`, while it returns true.
        func walk(from position: UInt64, visits: inout Visits, _ visit: (Int) -> Bool) {
            walkWithTokens(from: position, visits: &visits) { node, _ in visit(node) }
        }

        /// As ``walk(from:visits:_:)``, with the position of the token where the walk meets each node.
        func walkWithTokens(from position: UInt64, visits: inout Visits, _ visit: (_ node: Int, _ token: UInt64) -> Bool) {
            guard !tokens.isEmpty else { return }
            var lo = 0, hi = tokens.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if tokens[mid].position < position { lo = mid + 1 } else { hi = mid }
            }
            if visits.walk == .max {
                visits.walk = 0
                for i in visits.mark.indices { visits.mark[i] = 0 }
            }
            visits.walk += 1
            let stamp = visits.walk
            var distinct = 0
            var i = lo == tokens.count ? 0 : lo
            for _ in 0..<tokens.count {
                let n = tokens[i].node
                if visits.mark[n] != stamp {
                    visits.mark[n] = stamp
                    distinct += 1
                    if !visit(n, tokens[i].position) { return }
                    if distinct == nodeCount { return }
                }
                i += 1
                if i == tokens.count { i = 0 }
            }
        }
    }

    /// SplitMix64: the next value of a deterministic sequence.
    static func splitMix(_ state: inout UInt64) -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension Placement {
    /// The nodes placement sees in a members view (this node's own record included): reachable
    /// members, and dead ones still within `repairGrace` of their death, so that a node back
    /// within the grace causes no copy. Members in `leaving` (handing their copies over) and
    /// members that left are out at once. Weight is GiB of memory (1 to 256).
    public static func nodes(members: [Member], leaving: Set<NodeID>, repairGrace: Duration, now: Instant) -> [Node] {
        members.compactMap { m -> Node? in
            guard !leaving.contains(m.id) else { return nil }
            let counted = m.status.isReachable || (m.status == .dead && now - m.statusChangedAt < repairGrace)
            guard counted else { return nil }
            let gib = Int(min(m.info.capacity.memoryBytes >> 30, 256))
            return Node(id: m.id, zone: m.info.zone, weight: max(1, gib), gpus: Int(m.info.capacity.gpuCount))
        }
    }
}
