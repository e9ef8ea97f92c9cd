public import KaaCluster
public import KaaCore

/// Membership and placement together under churn, as the nodes run them: every node computes
/// its placement table from its own members view (``Placement/nodes(members:leaving:repairGrace:now:)``,
/// the function a node uses), while nodes crash, join, leave and pause. The run checks that
/// once the churn stops every live node's table is the same, and that this table keeps the
/// placement invariants.
public struct PlacementChurn {
    public struct Options: Sendable {
        public var nodes = 1000
        public var snapshots = 10_000
        public var seed: UInt64 = 1
        /// Faults, one every `spacing`, cycling through crash, join, leave, pause.
        public var events = 40
        public var spacing: Duration = .seconds(2)
        public var pauseLength: Duration = .seconds(3)
        public var repairGrace: Duration = .seconds(30)
        public var replication = 2
        public var swim = SWIMSettings()
        public init() {}
    }

    public struct Report: Sendable {
        public var formed: Bool
        public var crashed = 0, joined = 0, left = 0, paused = 0
        /// Views sampled each second of the churn: how many distinct ones the live nodes had at
        /// most, and in how many samples they all agreed.
        public var samples = 0, samplesAgreeing = 0, mostDistinctViews = 0
        /// Seconds from the last fault until every live node's view, and so its table, is the
        /// same and names exactly the live nodes; nil when that never happened within the limit.
        public var secondsToAgree: Double?
        public var liveAtEnd = 0
        public var digest = ""
        public var violations: [String] = []
        /// Bytes of copies the final table has that the table before the churn did not (what
        /// the cluster copies), and bytes the nodes that crashed or left held before it.
        public var bytesMoved: UInt64 = 0, bytesDeparted: UInt64 = 0
        /// Nodes holding more than their cap (share plus slack), and the most any node holds
        /// per unit of weight over the mean.
        public var nodesOverCap = 0
        public var imbalance = 0.0
    }

    /// Runs the scenario; `progress` gets a line now and then.
    public static func run(_ o: Options, progress: (String) -> Void = { _ in }) -> Report {
        let sim = ClusterSimulation(seed: o.seed)
        var report = Report(formed: false)
        guard let formedIn = sim.formCluster(o.nodes, settings: o.swim, spacing: .milliseconds(5)) else { return report }
        report.formed = true
        progress("\(o.nodes) nodes formed a cluster in \((formedIn.seconds * 10).rounded() / 10) s simulated")

        let catalog = PlacementScenario(nodes: 0, snapshots: o.snapshots, seed: o.seed).snapshots
        let sizes = Dictionary(uniqueKeysWithValues: catalog.map { ($0.key, $0.bytes) })
        let settings = Placement.Settings(replication: o.replication)
        var planner = Placement.Planner()
        let startView = view(of: 0, sim, o)
        let before = planner.compute(nodes: Array(startView), snapshots: catalog, settings: settings)

        // The churn: a fault every `spacing`, the views sampled every second.
        var rng = SeededRandom(seed: o.seed &+ 77)
        var departed = Set<NodeID>()
        let kinds = ["crash", "join", "leave", "pause"]
        let churnStart = sim.now
        for e in 0..<o.events {
            let at = churnStart + o.spacing * e
            sim.schedule(at: at) {
                // Node 0 is every joiner's seed: it stays.
                let candidates = sim.nodes.indices.filter { $0 != 0 && sim.nodes[$0].state == .up }
                switch kinds[e % kinds.count] {
                case "crash":
                    guard let v = candidates.randomElement(using: &rng) else { return }
                    departed.insert(sim.id(of: v))
                    sim.crash(v)
                    report.crashed += 1
                case "join":
                    let i = sim.addNode(settings: o.swim)
                    sim.start(i, seeds: [0])
                    report.joined += 1
                case "leave":
                    guard let v = candidates.randomElement(using: &rng) else { return }
                    departed.insert(sim.id(of: v))
                    sim.leave(v)
                    // A node that left stops; it sends nothing more.
                    sim.schedule(at: sim.now + .seconds(1)) { sim.crash(v) }
                    report.left += 1
                default:
                    guard let v = candidates.randomElement(using: &rng) else { return }
                    sim.pause(v)
                    sim.schedule(at: sim.now + o.pauseLength) { sim.resume(v) }
                    report.paused += 1
                }
            }
        }
        let churnEnd = churnStart + o.spacing * (o.events - 1)
        while sim.now < churnEnd {
            sim.run(for: .seconds(1))
            let live = sim.liveNodes
            var views: [Set<Placement.Node>: Int] = [:]
            for i in live { views[view(of: i, sim, o), default: 0] += 1 }
            report.samples += 1
            if views.count == 1 { report.samplesAgreeing += 1 }
            report.mostDistinctViews = max(report.mostDistinctViews, views.count)
        }
        progress("churn over: \(report.crashed) crashed, \(report.joined) joined, \(report.left) left, \(report.paused) paused; "
                 + "views agreed in \(report.samplesAgreeing) of \(report.samples) samples, at most \(report.mostDistinctViews) distinct")

        // Until every live node sees exactly the live nodes (the dead ones past the grace).
        var agreedView: Set<Placement.Node>?
        let agreed = sim.run(step: .seconds(1), limit: .seconds(600)) {
            let live = sim.liveNodes
            let liveIDs = Set(live.map { sim.id(of: $0) })
            let first = view(of: live[0], sim, o)
            guard Set(first.map(\.id)) == liveIDs, live.allSatisfy({ view(of: $0, sim, o) == first }) else { return false }
            agreedView = first
            return true
        }
        report.liveAtEnd = sim.liveNodes.count
        guard agreed, let final = agreedView else {
            report.violations.append("the live nodes' views did not agree within 600 s of the last fault")
            return report
        }
        report.secondsToAgree = (sim.now - churnEnd).seconds
        let nodes = Array(final)
        // The copies on nodes still there stay where they are, as the nodes' books would say.
        let table = planner.compute(nodes: nodes, snapshots: catalog, current: before.holders, settings: settings)
        report.digest = table.digest
        report.violations = violations(table, nodes: nodes, snapshots: catalog, settings: settings)
        report.bytesMoved = PlacementScenario.bytesMoved(from: before, to: table, sizes: sizes)
        for (key, holders) in before.holders { report.bytesDeparted += UInt64(holders.filter { departed.contains($0) }.count) * (sizes[key] ?? 0) }
        report.imbalance = PlacementScenario.imbalance(table, nodes)
        report.nodesOverCap = overCap(table, nodes: nodes, snapshots: catalog, settings: settings)
        return report
    }

    /// The nodes placement sees from node `i`'s members view.
    static func view(of i: Int, _ sim: ClusterSimulation, _ o: Options) -> Set<Placement.Node> {
        let instance = sim.nodes[i].instance
        return Set(Placement.nodes(members: [instance.myselfMember] + instance.members, leaving: [], repairGrace: o.repairGrace, now: sim.now))
    }

    /// What a table must keep, as text for each breach: every snapshot on `replication`
    /// distinct nodes of the table's node set (every eligible node when fewer), in distinct
    /// zones when there are enough zones, and one that needs a GPU only on nodes with one.
    public static func violations(_ table: Placement.Table, nodes: [Placement.Node], snapshots: [Placement.Snapshot],
                                  settings: Placement.Settings) -> [String] {
        var out: [String] = []
        let byID = Dictionary(nodes.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        let zones = Set(nodes.map(\.zone)).count
        let gpuNodes = nodes.filter { $0.gpus > 0 }.count
        for s in snapshots {
            let holders = table.holders[s.key] ?? []
            let want = min(settings.replication, s.accelerator == .requiresGPU ? gpuNodes : nodes.count)
            if holders.count != want { out.append("\(s.key): \(holders.count) holders, \(want) wanted") }
            if Set(holders).count != holders.count { out.append("\(s.key): a node holds it twice") }
            let known = holders.compactMap { byID[$0] }
            if known.count != holders.count { out.append("\(s.key): a holder is not a live node") }
            if zones >= want && Set(known.map(\.zone)).count != known.count { out.append("\(s.key): two holders in one zone") }
            if s.accelerator == .requiresGPU && known.contains(where: { $0.gpus == 0 }) { out.append("\(s.key): needs a GPU, placed on a node without one") }
        }
        if out.count > 20 { out = Array(out.prefix(20)) + ["... \(out.count - 20) more"] }
        return out
    }

        public var bytesMoved: UInt64 = 0, bytesDeparted: UInt64 = 0
        /// Nodes holding more than their cap, as placement sets it: their weight's share of the
    /// bytes the table places (the GPU nodes also of what needs a GPU), plus the slack. Only the
    /// fallback for a snapshot every eligible node turned away goes past a cap.
    static func overCap(_ table: Placement.Table, nodes: [Placement.Node], snapshots: [Placement.Snapshot], settings: Placement.Settings) -> Int {
        var general = 0.0, gpuOnly = 0.0
        for s in snapshots {
            let copies = Double(table.holders[s.key]?.count ?? 0) * Double(s.bytes)
            if s.accelerator == .requiresGPU { gpuOnly += copies } else { general += copies }
        }
        let weight = Double(nodes.reduce(0) { $0 + $1.weight })
        let gpuWeight = Double(nodes.filter { $0.gpus > 0 }.reduce(0) { $0 + $1.weight })
        let slack = 1 + Double(settings.loadSlackPercent) / 100
        return nodes.filter { n in
            var share = general / weight * Double(n.weight)
            if n.gpus > 0 && gpuWeight > 0 { share += gpuOnly / gpuWeight * Double(n.weight) }
            return Double(table.load[n.id] ?? 0) > share * slack * (1 + 1e-9)
        }.count
    }
}
