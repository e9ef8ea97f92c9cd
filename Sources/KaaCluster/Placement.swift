import Crypto
public import KaaCore

/// Where each snapshot lives: for every snapshot, its ordered holders. A pure function of the
/// live members, the cluster's snapshots, the replication factor and where the copies are now:
/// no sockets, no clock, no randomness, and only integer arithmetic and SHA-256, so every node
/// that sees the same members, catalog and holdings computes the same table (and the same
/// ``Table/digest``), whatever its process, build or CPU.
///
/// The method is consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam,
/// "Consistent Hashing with Bounded Loads", SODA 2018), weighted by capacity, with the copies
/// that exist kept where they are:
///
/// - Each node puts `weight × tokensPerWeight` tokens on a 64-bit ring, at positions derived from
///   its id (SHA-256 of the id seeds a SplitMix64 sequence). A snapshot's position is the
///   SHA-256 of `name@version`; its preference list is the nodes met walking the ring clockwise
///   from there. A join or a leave changes only the arcs next to the tokens it adds or removes.
/// - Bounded loads: no node holds more than `(1 + loadSlack)` times its fair share (its weight
///   over the total weight, of all snapshots' bytes times the replication factor), the hard
///   cap, 1.25 by default, whatever the hash did; a snapshot passes over a full node to the
///   next on its list. Which snapshots a full node gives up is decided by deferred acceptance,
///   so the outcome does not depend on the order snapshots are considered in (``Rule``).
/// - Hysteresis: every cap is a share of the total weight, so a join lowers them all (a leave
///   raises them), and a table that depended on the members alone would move, at every full
///   node, what the cap change took off or gave back: on 500 nodes twice the newcomer's share.
///   So a copy that exists stays on its node while the node is within the hard cap; a node
///   takes a new copy only within a lower cap (its share for a snapshot its arcs prefer, 1.20
///   of it for one that spilled), and the rule is applied to its own outcome until the
///   table names the holders it was computed from. A join then moves about the newcomer's
///   share, a leave the leaver's copies, and a table at rest stays put.
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
        /// A node holds at most `1 + loadSlack` times its fair share of bytes (the hard cap,
        /// which copies it holds already are kept within).
        public var loadSlackPercent = 25
        /// A node takes a copy it does not hold yet only while within `1 + placeSlack` times its
        /// share (at most the load slack): the margin between the two is what lets a table keep
        /// the copies where they are when the caps move with the total weight.
        public var placeSlackPercent = 20
        /// Ring tokens per unit of weight: more tokens, a smoother spread before the cap.
        public var tokensPerWeight = 40
        /// How many times the rule is applied to its own outcome, at most, to reach a table that
        /// names the holders it is computed from (``Placement/compute(nodes:snapshots:current:settings:)``).
        public var passes = 4
        public init(replication: Int = 2, loadSlackPercent: Int = 25, placeSlackPercent: Int = 20, tokensPerWeight: Int = 40,
                    passes: Int = 4) {
            self.replication = max(1, replication)
            self.loadSlackPercent = max(0, loadSlackPercent)
            self.placeSlackPercent = max(0, placeSlackPercent)
            self.tokensPerWeight = max(1, tokensPerWeight)
            self.passes = max(1, passes)
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

    /// Computes the table. Nodes and snapshots may come in any order; duplicate node ids count
    /// once. `current` names, by snapshot key, the nodes that hold a copy now (in any order;
    /// ids that are not among `nodes` are ignored): a copy stays where it is while its node is
    /// within the hard cap, so the table moves what a change of members or catalog asks for and
    /// little else. Empty, the table is placed from scratch.
    public static func compute(nodes: [Node], snapshots: [Snapshot], current: [String: [NodeID]] = [:],
                               settings: Settings = .init()) -> Table {
        var planner = Planner()
        return planner.compute(nodes: nodes, snapshots: snapshots, current: current, settings: settings)
    }

    /// Computes tables as ``Placement/compute(nodes:snapshots:current:settings:)`` does, and the same
    /// ones, keeping what two computations share: the ring of the last node set and each
    /// snapshot's position on it (a SHA-256 each). A node that plans on every change of the
    /// cluster's holdings keeps one.
    public struct Planner: Sendable {
        private var positions: [String: UInt64] = [:]
        private var ring: (nodes: [Node], tokensPerWeight: Int, ring: Ring)?

        public init() {}

        public mutating func compute(nodes given: [Node], snapshots: [Snapshot], current: [String: [NodeID]] = [:],
                                     settings: Settings = .init()) -> Table {
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
            return Placement.place(nodes: nodes, ring: ring, positioned: positioned, keys: keys, current: current, settings: settings)
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

    /// The table for canonically ordered `nodes`, their ring, the snapshots with their positions
    /// and keys (`keys[i]` is `unsorted[i].snapshot.key`), and where copies are now.
    static func place(nodes: [Node], ring: Ring, positioned unsorted: [(position: UInt64, snapshot: Snapshot)], keys unsortedKeys: [String],
                      current: [String: [NodeID]], settings: Settings) -> Table {
        // Ring order, the key breaking a tie: sorting (position, index) pairs moves no strings.
        var order = unsorted.indices.map { (position: unsorted[$0].position, index: $0) }
        order.sort { a, b in a.position != b.position ? a.position < b.position : unsortedKeys[a.index] < unsortedKeys[b.index] }
        let positioned = order.map { unsorted[$0.index] }
        let keys = order.map { unsortedKeys[$0.index] }
        var rule = Rule(nodes: nodes, ring: ring, positioned: positioned, settings: settings)
        var indexOf: [NodeID: Int32] = [:]
        for (i, n) in nodes.enumerated() { indexOf[n.id] = Int32(i) }
        var held = positioned.indices.map { k in rule.held(k, current[keys[k]] ?? [], indexOf) }
        // The rule applied to its own outcome until that stops changing: at the outcome, the
        // holders the table names hold it, and the table names them again.
        var outcome = rule.pass(held)
        var passes = 1
        while passes < settings.passes && outcome.holding != held {
            held = outcome.holding
            outcome = rule.pass(held)
            passes += 1
        }
        var holders: [String: [NodeID]] = [:]
        holders.reserveCapacity(positioned.count)
        var under = Set<String>(), unplaceable = Set<String>()
        let gpuCount = nodes.filter { $0.gpus > 0 }.count
        var hash = SHA256()
        for (k, (_, s)) in positioned.enumerated() {
            let list = outcome.holding[k].map { nodes[Int($0)].id }
            holders[keys[k]] = list
            digestLine(&hash, keys[k], list)
            if list.count < settings.replication { under.insert(keys[k]) }
            if s.accelerator == .requiresGPU && gpuCount == 0 { unplaceable.insert(keys[k]) }
        }
        var load: [NodeID: UInt64] = [:]
        for i in nodes.indices { load[nodes[i].id] = outcome.loads[i] }
        return Table(holders: holders, underReplicated: under, unplaceable: unplaceable, digest: hex(hash), load: load)
    }

    /// One application of the placement rule, and what its applications share: the nodes' caps
    /// and each snapshot's ring walk.
    ///
    /// Each snapshot asks nodes in turn, and each ask carries a class that sets the cap the node
    /// applies to it:
    ///
    /// 0. its preferred holders (the first `want` eligible nodes of its walk, in distinct zones
    ///    when there are enough) that hold it now: the hard cap, `(1 + loadSlack)` × the share;
    /// 1. its preferred holders that do not: the pull cap, 1 × the share (a node below its share
    ///    takes what its arcs of the ring bring it, which is how a newcomer fills);
    /// 2. the other nodes that hold it now: the hard cap (a copy stays where it is);
    /// 3. the rest of its walk: the place cap, `(1 + placeSlack)` × the share.
    ///
    /// A node ranks what it is asked: copies it holds first, then a GPU node what needs a GPU,
    /// then what prefers one, then the nearer to its token on the ring. It keeps the longest
    /// prefix of that ranking in which every copy's cumulative bytes are within the cap of its
    /// class, and turns the rest away (deferred acceptance: the outcome does not depend on the
    /// order of asking). Copies stay while their node is within the hard cap; new copies come
    /// only within the pull or the place cap, below it: so a table reached from the last one
    /// moves what the change of members or catalog asks for, and little else.
    struct Rule {
        struct Ask { var node: Int32; var cls: Int8; var place: Int32 }
        struct Kept {
            var rank: UInt64
            var bytes: UInt64
            var snapshot: Int32
            var cls: Int8
            /// Whether this ranks above `other`: the higher rank; on a tie, the snapshot later in ring order.
            func above(_ other: Kept) -> Bool { rank != other.rank ? rank > other.rank : snapshot > other.snapshot }
        }

        /// What one node keeps, highest rank first, in blocks of at most 64 with each block's
        /// bytes and, for each kind of cap, the cumulative bytes within the block up to its last
        /// copy under that cap: on a small cluster a node keeps thousands of copies, most of
        /// them held (ranked first, so each insert lands among them), and an insert or a check
        /// of the caps then costs a block and a pass over the blocks rather than the whole list.
        struct KeptList {
            struct Block {
                var entries: [Kept]
                var bytes: UInt64 = 0
                /// By kind (hard, pull, place): the bytes up to and with its last copy of that kind.
                var last: (UInt64, UInt64, UInt64) = (0, 0, 0)
                /// Bit k: the block has a copy of kind k.
                var kinds: UInt8 = 0

                init(_ entries: [Kept]) {
                    self.entries = entries
                    var sum: UInt64 = 0
                    for e in entries {
                        sum &+= e.bytes
                        switch KeptList.kind(e.cls) {
                        case 0: last.0 = sum
                        case 1: last.1 = sum
                        default: last.2 = sum
                        }
                        kinds |= 1 << KeptList.kind(e.cls)
                    }
                    bytes = sum
                }
            }
            typealias Position = (block: Int, index: Int)
            private(set) var blocks: [Block] = []

            /// 0: the hard cap (classes 0 and 2), 1: the pull cap (class 1), 2: the place cap (class 3).
            static func kind(_ cls: Int8) -> Int { cls == 1 ? 1 : cls == 3 ? 2 : 0 }

            /// Inserts `e` in rank order; returns where it went.
            mutating func insert(_ e: Kept) -> Position {
                guard !blocks.isEmpty else {
                    blocks = [Block([e])]
                    return (0, 0)
                }
                var lo = 0, hi = blocks.count
                while lo < hi {
                    let mid = (lo + hi) / 2
                    if blocks[mid].entries[blocks[mid].entries.count - 1].above(e) { lo = mid + 1 } else { hi = mid }
                }
                var b = min(lo, blocks.count - 1)
                var entries = blocks[b].entries
                var i = 0, j = entries.count
                while i < j {
                    let mid = (i + j) / 2
                    if entries[mid].above(e) { i = mid + 1 } else { j = mid }
                }
                entries.insert(e, at: i)
                if entries.count > 64 {
                    blocks[b] = Block(Array(entries[..<32]))
                    blocks.insert(Block(Array(entries[32...])), at: b + 1)
                    if i >= 32 {
                        b += 1
                        i -= 32
                    }
                } else {
                    blocks[b] = Block(entries)
                }
                return (b, i)
            }

            /// The first position at or after `from` whose copy's cumulative bytes (with all copies
            /// ranked above it) pass the cap of its kind; the very first copy always stays.
            func firstOverCap(from: Position, caps: (hard: UInt64, pull: UInt64, place: UInt64)) -> Position? {
                func cap(_ cls: Int8) -> UInt64 { cls == 1 ? caps.pull : cls == 3 ? caps.place : caps.hard }
                var offset: UInt64 = 0
                for b in 0..<from.block { offset &+= blocks[b].bytes }
                let first = blocks[from.block].entries
                var cumulative = offset
                for j in 0..<from.index { cumulative &+= first[j].bytes }
                for j in from.index..<first.count {
                    cumulative &+= first[j].bytes
                    if (from.block > 0 || j > 0) && cumulative > cap(first[j].cls) { return (from.block, j) }
                }
                offset &+= blocks[from.block].bytes
                for b in (from.block + 1)..<blocks.count {
                    let block = blocks[b]
                    let over = (block.kinds & 1 != 0 && offset &+ block.last.0 > caps.hard)
                        || (block.kinds & 2 != 0 && offset &+ block.last.1 > caps.pull)
                        || (block.kinds & 4 != 0 && offset &+ block.last.2 > caps.place)
                    if over {
                        var cumulative = offset
                        for (j, e) in block.entries.enumerated() {
                            cumulative &+= e.bytes
                            if cumulative > cap(e.cls) { return (b, j) }
                        }
                    }
                    offset &+= block.bytes
                }
                return nil
            }

            /// Removes the copies from `at` on and returns them, highest rank first.
            mutating func removeAll(from at: Position) -> [Kept] {
                var removed = Array(blocks[at.block].entries[at.index...])
                for b in (at.block + 1)..<blocks.count { removed += blocks[b].entries }
                blocks.removeSubrange((at.block + 1)...)
                if at.index == 0 {
                    blocks.removeLast()
                } else {
                    blocks[at.block] = Block(Array(blocks[at.block].entries[..<at.index]))
                }
                return removed
            }
        }

        let nodes: [Node]
        let ring: Ring
        let positioned: [(position: UInt64, snapshot: Snapshot)]
        /// Holders each snapshot gets: the factor, or every eligible node when there are fewer.
        let want: [Int]
        let zoneIndex: [Int]
        let zones: Int
        let hard: [UInt64], pull: [UInt64], placeCap: [UInt64]
        /// Each snapshot's first eligible nodes on its walk (the whole walk once ``complete``),
        /// and from its position to the token where the walk meets each.
        var candidates: [[Int32]]
        var distances: [[UInt64]]
        var complete: [Bool]
        var visits: Ring.Visits

        init(nodes: [Node], ring: Ring, positioned: [(position: UInt64, snapshot: Snapshot)], settings: Settings) {
            self.nodes = nodes
            self.ring = ring
            self.positioned = positioned
            let gpuNodes = nodes.indices.filter { nodes[$0].gpus > 0 }
            want = positioned.map { min(settings.replication, $0.snapshot.accelerator == .requiresGPU ? gpuNodes.count : nodes.count) }
            var zoneOf: [String: Int] = [:]
            zoneIndex = nodes.map { n in
                if let z = zoneOf[n.zone] { return z }
                zoneOf[n.zone] = zoneOf.count
                return zoneOf.count - 1
            }
            zones = zoneOf.count
            var share = [UInt64](repeating: 0, count: nodes.count)
            if !nodes.isEmpty {
                // All bytes held, and the most one zone can hold (one copy of each snapshot).
                var general: UInt64 = 0, gpuOnly: UInt64 = 0, generalOnce: UInt64 = 0, gpuOnce: UInt64 = 0
                for (k, (_, s)) in positioned.enumerated() where want[k] > 0 {
                    let (b, o) = s.bytes.multipliedReportingOverflow(by: UInt64(want[k]))
                    let all = o ? UInt64.max / 4 : b, once = min(s.bytes, UInt64.max / 4)
                    if s.accelerator == .requiresGPU { gpuOnly &+= all; gpuOnce &+= once } else { general &+= all; generalOnce &+= once }
                }
                let distinct = zones >= settings.replication
                let generalShare = Placement.zoneShares(total: general, bound: generalOnce, members: Array(nodes.indices), nodes: nodes,
                                                        zoneIndex: zoneIndex, distinct: distinct)
                let gpuShare = Placement.zoneShares(total: gpuOnly, bound: gpuOnce, members: gpuNodes, nodes: nodes, zoneIndex: zoneIndex,
                                                    distinct: distinct)
                for i in nodes.indices { share[i] = generalShare[i] &+ gpuShare[i] }
            }
            func cap(_ s: UInt64, _ percent: Int) -> UInt64 { s / 100 * UInt64(100 + percent) }
            hard = share.map { cap($0, settings.loadSlackPercent) }
            pull = share
            placeCap = share.map { cap($0, min(settings.placeSlackPercent, settings.loadSlackPercent)) }
            candidates = [[Int32]](repeating: [], count: positioned.count)
            distances = [[UInt64]](repeating: [], count: positioned.count)
            complete = [Bool](repeating: false, count: positioned.count)
            visits = Ring.Visits(nodeCount: nodes.count)
            for (k, (_, s)) in positioned.enumerated() {
                // A GPU preference reorders the whole walk; otherwise the first few, and the
                // whole walk only when those are used up (a 500-node walk per snapshot is what
                // would make tables of 10,000 snapshots slow).
                walk(k, limit: s.accelerator == .prefersGPU ? .max : max(8, 4 * want[k]))
            }
        }

        mutating func walk(_ k: Int, limit: Int) {
            let (position, s) = positioned[k]
            var list: [Int32] = [], distance: [UInt64] = []
            list.reserveCapacity(min(limit, nodes.count))
            distance.reserveCapacity(min(limit, nodes.count))
            let nodes = self.nodes
            ring.walkWithTokens(from: position, visits: &visits) { i, token in
                if s.accelerator != .requiresGPU || nodes[i].gpus > 0 {
                    list.append(Int32(i))
                    distance.append(token &- position)
                }
                return list.count < limit
            }
            if s.accelerator == .prefersGPU {
                let order = list.indices.filter { nodes[Int(list[$0])].gpus > 0 } + list.indices.filter { nodes[Int(list[$0])].gpus == 0 }
                list = order.map { list[$0] }
                distance = order.map { distance[$0] }
            }
            complete[k] = limit == .max || list.count < limit
            candidates[k] = list
            distances[k] = distance
        }

        /// Twice as far along snapshot `k`'s walk: asking down a longer list only adds asks after
        /// the ones already made.
        mutating func extend(_ k: Int) { walk(k, limit: candidates[k].count >= nodes.count / 2 ? .max : 2 * candidates[k].count) }

        /// The eligible nodes among `ids` (snapshot `k`'s holders now), once each, in walk order.
        mutating func held(_ k: Int, _ ids: [NodeID], _ indexOf: [NodeID: Int32]) -> [Int32] {
            guard !ids.isEmpty else { return [] }
            var out: [Int32] = []
            for id in ids {
                guard let i = indexOf[id], !out.contains(i),
                      positioned[k].snapshot.accelerator != .requiresGPU || nodes[Int(i)].gpus > 0 else { continue }
                out.append(i)
            }
            while !complete[k] && out.contains(where: { !candidates[k].contains($0) }) { extend(k) }
            return inWalkOrder(k, out)
        }

        func inWalkOrder(_ k: Int, _ list: [Int32]) -> [Int32] {
            guard list.count > 1 else { return list }
            let place = { (n: Int32) in candidates[k].firstIndex(of: n) ?? .max }
            return list.sorted { place($0) < place($1) }
        }

        /// Snapshot `k`'s asks, in order, given its holders now.
        func asks(_ k: Int, _ held: [Int32]) -> [Ask] {
            let distinct = zones >= want[k]
            var preferred: [Int32] = []
            for c in candidates[k] where preferred.count < want[k] {
                if distinct && preferred.contains(where: { zoneIndex[Int($0)] == zoneIndex[Int(c)] }) { continue }
                preferred.append(c)
            }
            var list: [Ask] = []
            list.reserveCapacity(candidates[k].count + held.count + preferred.count)
            for (j, n) in candidates[k].enumerated() where preferred.contains(n) && held.contains(n) { list.append(Ask(node: n, cls: 0, place: Int32(j))) }
            for (j, n) in candidates[k].enumerated() where preferred.contains(n) && !held.contains(n) { list.append(Ask(node: n, cls: 1, place: Int32(j))) }
            for (j, n) in candidates[k].enumerated() where !preferred.contains(n) && held.contains(n) { list.append(Ask(node: n, cls: 2, place: Int32(j))) }
            for (j, n) in candidates[k].enumerated() where !held.contains(n) { list.append(Ask(node: n, cls: 3, place: Int32(j))) }
            return list
        }

        func cap(_ cls: Int8, _ n: Int) -> UInt64 { cls == 1 ? pull[n] : cls == 3 ? placeCap[n] : hard[n] }

        /// One application: each snapshot's holders (in walk order) and each node's bytes.
        mutating func pass(_ held: [[Int32]]) -> (holding: [[Int32]], loads: [UInt64]) {
            let count = positioned.count
            var asks = (0..<count).map { self.asks($0, held[$0]) }
            var holding = [[Int32]](repeating: [], count: count)
            // Per snapshot, the (node << 2 | class) asks turned away.
            var rejected = [[Int32]](repeating: [], count: count)
            // Per node, what it keeps, highest rank first.
            var kept = [KeptList](repeating: KeptList(), count: nodes.count)
            var loads = [UInt64](repeating: 0, count: nodes.count)
            // Per node, how many copies it keeps of each class.
            var classes = [[Int]](repeating: [0, 0, 0, 0], count: nodes.count)
            var queue = Array((0..<count).reversed())
            while let k = queue.popLast() {
                let s = positioned[k].snapshot
                let distinct = zones >= want[k]
                var i = 0
                while i < asks[k].count && holding[k].count < want[k] {
                    let ask = asks[k][i]
                    i += 1
                    let n = Int(ask.node)
                    if holding[k].contains(ask.node) || rejected[k].contains(ask.node << 2 | Int32(ask.cls)) { continue }
                    if distinct && holding[k].contains(where: { zoneIndex[Int($0)] == zoneIndex[n] }) { continue }
                    let isHeld: UInt64 = ask.cls == 0 || ask.cls == 2 ? 1 : 0
                    let tier: UInt64 = nodes[n].gpus == 0 ? 0 : s.accelerator == .requiresGPU ? 2 : s.accelerator == .prefersGPU ? 1 : 0
                    let entry = Kept(rank: isHeld << 63 | tier << 61 | ~distances[k][Int(ask.place)] >> 3, bytes: s.bytes,
                                     snapshot: Int32(k), cls: ask.cls)
                    let at = kept[n].insert(entry)
                    classes[n][Int(ask.cls)] += 1
                    holding[k].append(ask.node)
                    loads[n] &+= s.bytes
                    // Within the smallest cap of the classes it keeps, every prefix is within its cap.
                    let smallest = classes[n][1] > 0 ? pull[n] : classes[n][3] > 0 ? placeCap[n] : hard[n]
                    if loads[n] <= smallest { continue }
                    // The longest prefix in which every copy is within its class's cap (the first always kept).
                    guard let cut = kept[n].firstOverCap(from: at, caps: (hard: hard[n], pull: pull[n], place: placeCap[n])) else { continue }
                    for e in kept[n].removeAll(from: cut) {
                        let loser = Int(e.snapshot)
                        loads[n] &-= e.bytes
                        classes[n][Int(e.cls)] -= 1
                        holding[loser].removeAll { $0 == ask.node }
                        rejected[loser].append(ask.node << 2 | Int32(e.cls))
                        // The asker itself starts over: an ask of an earlier class may have room again.
                        if loser != k { queue.append(loser) } else { i = 0 }
                    }
                }
                if holding[k].count < want[k] && !complete[k] {
                    extend(k)
                    asks[k] = self.asks(k, held[k])
                    queue.append(k)
                }
            }
            // Every eligible node turned it away (all full, which the slack makes rare): its holders
            // now keep it, so that the rule's outcome stays its outcome, then the least loaded
            // for their weight, past their caps, in zones it is not in yet first.
            for k in positioned.indices where holding[k].count < want[k] {
                let s = positioned[k].snapshot
                var rest = candidates[k].filter { !holding[k].contains($0) }
                rest.sort { a, b in
                    let ha = held[k].contains(a) ? 0 : 1, hb = held[k].contains(b) ? 0 : 1
                    if ha != hb { return ha < hb }
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
            for k in positioned.indices { holding[k] = inWalkOrder(k, holding[k]) }
            return (holding, loads)
        }
    }

    /// Fair shares the zone rule lets the nodes reach. With copies in distinct zones a zone holds
    /// at most one copy of each snapshot (`bound` bytes), so a zone whose weight would give it
    /// more is held to `bound` and the rest is spread over the other zones by weight
    /// (water-filling); within a zone, by weight. Integers only. Nodes not in `members` get 0.
    static func zoneShares(total: UInt64, bound: UInt64, members: [Int], nodes: [Node], zoneIndex: [Int], distinct: Bool) -> [UInt64] {
        var out = [UInt64](repeating: 0, count: nodes.count)
        let zoneCount = (zoneIndex.max() ?? -1) + 1
        var zoneWeight = [UInt64](repeating: 0, count: zoneCount)
        for i in members { zoneWeight[zoneIndex[i]] += UInt64(nodes[i].weight) }
        var zoneShare = [UInt64](repeating: 0, count: zoneCount)
        var held = [Bool](repeating: false, count: zoneCount)
        var remaining = total
        while true {
            let weight = zoneWeight.indices.filter { !held[$0] }.reduce(UInt64(0)) { $0 + zoneWeight[$1] }
            guard weight > 0 else { break }
            var changed = false
            if distinct {
                for z in zoneWeight.indices where !held[z] && remaining / weight * zoneWeight[z] > bound {
                    held[z] = true
                    zoneShare[z] = bound
                    remaining = remaining > bound ? remaining - bound : 0
                    changed = true
                }
            }
            if !changed {
                for z in zoneWeight.indices where !held[z] { zoneShare[z] = remaining / weight * zoneWeight[z] }
                break
            }
        }
        for i in members where zoneWeight[zoneIndex[i]] > 0 {
            out[i] = zoneShare[zoneIndex[i]] / zoneWeight[zoneIndex[i]] * UInt64(nodes[i].weight)
        }
        return out
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
