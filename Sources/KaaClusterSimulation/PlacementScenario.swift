public import KaaCluster

/// A seeded cluster and catalog for placement tests and figures: nodes of mixed capacity in
/// three zones with about 10% GPU nodes, and snapshots of mixed sizes (log-uniform from 10 KB to
/// 50 MB), a few needing or preferring a GPU.
public struct PlacementScenario: Sendable {
    public var nodes: [Placement.Node]
    public var snapshots: [Placement.Snapshot]

    public init(nodes: Int, snapshots: Int, seed: UInt64, zones: Int = 3) {
        var rng = SeededRandom(seed: seed)
        self.nodes = (0..<nodes).map { i in
            Placement.Node(id: NodeID("node-\(seed)-\(i)"), zone: "zone-\(i % max(1, zones))",
                           weight: Int.random(in: 1...8, using: &rng),
                           // One node in ten, and at least one when there are fewer than ten.
                           gpus: i % 10 == 9 || (nodes < 10 && i == nodes - 1) ? Int.random(in: 1...4, using: &rng) : 0)
        }
        self.snapshots = (0..<snapshots).map { i in
            let exponent = Double.random(in: 4...7.7, using: &rng) // 10 KB .. 50 MB
            var bytes: Double = 1
            for _ in 0..<Int(exponent) { bytes *= 10 }
            bytes *= 1 + (exponent - exponent.rounded(.down)) * 9
            let roll = Int.random(in: 0..<100, using: &rng)
            let accelerator: Placement.Accelerator = roll < 2 ? .requiresGPU : roll < 7 ? .prefersGPU : .none
            return Placement.Snapshot(name: "model-\(i)", version: 1 + i % 3, bytes: UInt64(bytes), accelerator: accelerator)
        }
    }

    /// Held bytes per unit of weight: the most any node holds over the cluster's mean (all bytes
    /// held over all weight).
    public static func imbalance(_ table: Placement.Table, _ nodes: [Placement.Node]) -> Double {
        let held = nodes.reduce(0.0) { $0 + Double(table.load[$1.id] ?? 0) }
        let weight = nodes.reduce(0.0) { $0 + Double($1.weight) }
        let most = nodes.map { Double(table.load[$0.id] ?? 0) / Double($0.weight) }.max() ?? 0
        return most / max(held / max(weight, 1), 1)
    }

    /// Bytes of copies present in `after` and not in `before` (what the cluster must copy).
    public static func bytesMoved(from before: Placement.Table, to after: Placement.Table,
                                  sizes: [String: UInt64]) -> UInt64 {
        var moved: UInt64 = 0
        for (key, holders) in after.holders {
            let was = Set(before.holders[key] ?? [])
            for h in holders where !was.contains(h) { moved += sizes[key] ?? 0 }
        }
        return moved
    }

    /// The moves as the nodes make them, from the copies `held` (by key) on `nodes`: each round
    /// the table is computed from what is held (a copy being fetched counts), a quarter of the
    /// copies it names that nobody has yet arrive (in a seeded order), and a key's copies the
    /// table no longer names go once every holder it names has one (make before break); until
    /// what is held is the table. Returns the bytes fetched and the table reached. Copies on
    /// nodes not in `nodes` are gone.
    public static func settle(nodes: [Placement.Node], snapshots: [Placement.Snapshot], held start: [String: [NodeID]],
                              settings: Placement.Settings = .init(), seed: UInt64, maxRounds: Int = 200)
        -> (fetched: UInt64, table: Placement.Table) {
        let sizes = Dictionary(snapshots.map { ($0.key, $0.bytes) }, uniquingKeysWith: { a, _ in a })
        let alive = Set(nodes.map(\.id))
        var held = start.mapValues { $0.filter(alive.contains) }
        var planner = Placement.Planner()
        var rng = SeededRandom(seed: seed)
        var fetched: UInt64 = 0, rounds = 0
        var table = planner.compute(nodes: nodes, snapshots: snapshots, current: held, settings: settings)
        while rounds < maxRounds {
            var missing: [(key: String, node: NodeID)] = []
            var extra = false
            for (key, holders) in table.holders {
                let has = held[key] ?? []
                for h in holders where !has.contains(h) { missing.append((key, h)) }
                if has.contains(where: { !holders.contains($0) }) { extra = true }
            }
            if missing.isEmpty && !extra { break }
            rounds += 1
            missing.sort { ($0.key, $0.node) < ($1.key, $1.node) }
            missing.shuffle(using: &rng)
            for (key, node) in missing.prefix(max(1, (missing.count + 3) / 4)) {
                held[key, default: []].append(node)
                fetched += sizes[key] ?? 0
            }
            for (key, has) in held {
                let holders = table.holders[key] ?? []
                if !holders.isEmpty && holders.allSatisfy(has.contains) { held[key] = holders }
            }
            table = planner.compute(nodes: nodes, snapshots: snapshots, current: held, settings: settings)
        }
        return (fetched, table)
    }
}
