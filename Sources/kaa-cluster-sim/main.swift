// Prints the membership figures for the closing note, measured in the deterministic simulation.
// Usage: swift run kaa-cluster-sim [detection|false-dead|false-dead10|dissemination|bandwidth|join|placement|placement-churn|placement-cost|all]
// Results are deterministic (seeded); the build mode only changes how long they take.
// KAA_SIM_VERBOSE=1 prints convergence progress; KAA_SIM_N sets the size for `join`;
// KAA_SIM_MINUTES the length of the false-dead runs.
import KaaCluster
import KaaClusterSimulation
import KaaCore
#if canImport(Glibc)
import Glibc
#endif

let which = CommandLine.arguments.dropFirst().first ?? "all"

// `placement-digest NODES SNAPSHOTS SEED`: the digest of a seeded scenario's table, for the test
// that checks another process computes the same one.
if which == "placement-digest" {
    let args = CommandLine.arguments.dropFirst(2).compactMap { Int($0) }
    guard args.count == 3 else { fatalError("usage: kaa-cluster-sim placement-digest NODES SNAPSHOTS SEED") }
    let s = PlacementScenario(nodes: args[0], snapshots: args[1], seed: UInt64(args[2]))
    print(Placement.compute(nodes: s.nodes, snapshots: s.snapshots).digest)
    exit(0)
}

/// Default settings, with overrides for tuning runs: KAA_SIM_PROBE_MS, KAA_SIM_SUSPICION_MULT,
/// KAA_SIM_SUSPICION_MAX_MULT, KAA_SIM_CONFIRMATIONS, KAA_SIM_LAMBDA.
func simSettings() -> SWIMSettings {
    var s = SWIMSettings()
    func env(_ name: String) -> Double? {
        guard let p = getenv(name) else { return nil }
        return Double(String(cString: p))
    }
    if let v = env("KAA_SIM_PROBE_MS") { s.probeInterval = .milliseconds(Int64(v)) }
    if let v = env("KAA_SIM_SUSPICION_MULT") { s.suspicionMultiplier = v }
    if let v = env("KAA_SIM_SUSPICION_MAX_MULT") { s.suspicionMaxMultiplier = v }
    if let v = env("KAA_SIM_CONFIRMATIONS") { s.suspicionConfirmations = Int(v) }
    if let v = env("KAA_SIM_LAMBDA") { s.retransmitMultiplier = Int(v) }
    return s
}
let settings = simSettings()
let minutes = Int(getenv("KAA_SIM_MINUTES").map { String(cString: $0) } ?? "10") ?? 10

func percentile(_ values: [Double], _ p: Double) -> Double {
    let s = values.sorted()
    guard !s.isEmpty else { return .nan }
    let i = min(s.count - 1, Int((p * Double(s.count)).rounded(.up)) - 1)
    return s[max(0, i)]
}

func fmt(_ x: Double) -> String {
    let r = (x * 100).rounded() / 100
    return "\(r)"
}

/// Starts `n` nodes through node 0, `spacing` apart, and runs until all see each other.
func formCluster(_ sim: ClusterSimulation, n: Int, spacing: Duration) -> Duration? {
    let verbose = getenv("KAA_SIM_VERBOSE") != nil
    let t0 = sim.now
    var lastReport = sim.now
    return sim.formCluster(n, settings: settings, spacing: spacing) {
        guard verbose && sim.now - lastReport >= .seconds(5) else { return }
        lastReport = sim.now
        let counts = sim.nodes.map { $0.instance.reachableCount }
        let pending = sim.nodes.map { $0.instance.pendingBroadcasts }
        print("  t=\(fmt((sim.now - t0).seconds)) s events=\(sim.eventsProcessed) min view=\(counts.min()!) mean view=\(counts.reduce(0, +) / n) max queue=\(pending.max()!)")
    }
}

func detection(trials: Int, n: Int) {
    var first: [Double] = [], everyone: [Double] = []
    for trial in 0..<trials {
        let sim = ClusterSimulation(seed: UInt64(1000 + trial))
        guard formCluster(sim, n: n, spacing: .milliseconds(50)) != nil else { print("trial \(trial): no convergence"); continue }
        sim.run(for: .seconds(10) + .milliseconds(Int64(trial * 37 % 1000)))
        let victim = 1 + trial % (n - 1)
        let victimID = sim.id(of: victim)
        let crashAt = sim.now
        var firstDead: Instant?
        var seenDead = Set<Int>()
        var lastDead: Instant?
        sim.onEvent = { node, event, time in
            if case .dead(let m) = event, m.id == victimID {
                if firstDead == nil { firstDead = time }
                if seenDead.insert(node).inserted && seenDead.count == n - 1 { lastDead = time }
            }
        }
        sim.crash(victim)
        sim.run(step: .milliseconds(100), limit: .seconds(60)) { lastDead != nil }
        if let f = firstDead { first.append((f - crashAt).seconds) }
        if let l = lastDead { everyone.append((l - crashAt).seconds) }
    }
    print("failure detection, \(n) nodes, default settings, \(trials) crashes:")
    print("  first node declares dead: p50 \(fmt(percentile(first, 0.5))) s, p99 \(fmt(percentile(first, 0.99))) s")
    print("  every node declares dead: p50 \(fmt(percentile(everyone, 0.5))) s, p99 \(fmt(percentile(everyone, 0.99))) s (\(everyone.count)/\(trials) complete)")
}

func falseDead(n: Int, loss: Double, minutes: Int, seed: UInt64) {
    var network = ClusterSimulation.Network()
    network.loss = loss
    let sim = ClusterSimulation(seed: seed, network: network)
    guard formCluster(sim, n: n, spacing: .milliseconds(20)) != nil else { print("no convergence at \(loss) loss"); return }
    var falseDead = 0, falseSuspect = 0
    sim.onEvent = { _, event, _ in
        switch event {
        case .dead: falseDead += 1
        case .suspect: falseSuspect += 1
        default: break
        }
    }
    sim.run(for: .seconds(Int64(minutes * 60)))
    print("loss \(Int(loss * 100))%, \(n) healthy nodes, \(minutes) simulated minutes: \(falseDead) dead declarations (false), \(falseSuspect) suspicions (all refuted)")
}

func dissemination(n: Int, seed: UInt64) {
    let sim = ClusterSimulation(seed: seed)
    guard let t = formCluster(sim, n: n, spacing: .milliseconds(5)) else { print("no convergence"); return }
    print("join: \(n) nodes started 5 ms apart through one seed converged after \(fmt(t.seconds)) s simulated")
    sim.run(for: .seconds(30))
    var periods: [Double] = []
    for round in 0..<5 {
        let origin = (round * 211) % n
        let zone = "moved-\(round)"
        sim.updateMetadata(origin) { $0.zone = zone }
        let originID = sim.id(of: origin)
        let start = sim.now
        let ok = sim.run(step: .milliseconds(50), limit: .seconds(120)) {
            sim.nodes.indices.allSatisfy { $0 == origin || sim.nodes[$0].instance.member(originID)?.info.zone == zone }
        }
        let interval = settings.probeInterval.seconds
        if ok { periods.append((sim.now - start).seconds / interval) }
        sim.run(for: .seconds(10))
    }
    let goal = 3 * (Double(n).exponent + 1)
    print("dissemination, \(n) nodes: one metadata update reached every node in \(periods.map { fmt($0) }.joined(separator: ", ")) protocol periods (goal ≤ 3·log2(n) ≈ \(Int(goal)))")
}

func bandwidth(n: Int, seed: UInt64) {
    var network = ClusterSimulation.Network()
    network.measureBytes = true
    let sim = ClusterSimulation(seed: seed, network: network)
    guard formCluster(sim, n: n, spacing: .milliseconds(20)) != nil else { print("no convergence"); return }
    sim.run(for: .seconds(120))  // let the join's backlog drain
    let before = sim.nodes.map { $0.bytesSent }
    let beforePushPull = sim.nodes.map { $0.pushPullBytesSent }
    let beforePackets = sim.nodes.map { $0.packetsSent }
    let seconds = 60.0
    sim.run(for: .seconds(60))
    let bytes = zip(sim.nodes, before).map { Double($0.bytesSent - $1) / seconds }
    let packets = zip(sim.nodes, beforePackets).map { Double($0.packetsSent - $1) / seconds }
    let mean = bytes.reduce(0, +) / Double(n)
    let pushPull = zip(sim.nodes, beforePushPull).map { Double($0.pushPullBytesSent - $1) / seconds }
    print("gossip bandwidth, \(n) nodes, steady state, encrypted UDP payload bytes sent per node: mean \(Int(mean)) B/s, p99 \(Int(percentile(bytes, 0.99))) B/s, \(fmt(packets.reduce(0, +) / Double(n))) packets/s")
    print("push-pull TCP, same nodes and window: mean \(Int(pushPull.reduce(0, +) / Double(n))) B/s per node sent")
    // Churn: one metadata update per second somewhere in the cluster.
    let before2 = sim.nodes.map { $0.bytesSent }
    for s in 0..<60 {
        sim.updateMetadata(s * 7 % n) { $0.capacity.cores += 1 }
        sim.run(for: .seconds(1))
    }
    let churn = zip(sim.nodes, before2).map { Double($0.bytesSent - $1) / seconds }
    print("gossip bandwidth, \(n) nodes, one metadata update per second: mean \(Int(churn.reduce(0, +) / Double(n))) B/s per node")
}

if which == "detection" || which == "all" { detection(trials: 200, n: 5) }
if which == "false-dead10" { falseDead(n: 100, loss: 0.10, minutes: minutes, seed: 10) }
if which == "false-dead" || which == "all" {
    falseDead(n: 100, loss: 0.05, minutes: minutes, seed: 5)
    falseDead(n: 100, loss: 0.10, minutes: minutes, seed: 10)
}
if which == "dissemination" || which == "all" { dissemination(n: 1000, seed: 42) }
if which == "bandwidth" || which == "all" { bandwidth(n: 100, seed: 7) }

if which == "join" {
    let n = Int(getenv("KAA_SIM_N").map { String(cString: $0) } ?? "300") ?? 300
    let sim = ClusterSimulation(seed: 42)
    var counts: [String: Int] = [:]
    sim.onEvent = { _, e, _ in
        let k = "\(e)".split(separator: " ")[0]
        counts[String(k), default: 0] += 1
    }
    let t = formCluster(sim, n: n, spacing: .milliseconds(5))
    print("converged: \(t.map { fmt($0.seconds) } ?? "no") events: \(counts.sorted { $0.key < $1.key })")
}

/// One seeded join and leave: `n` nodes, then one more (and back), with the snapshots that do
/// not care about GPUs. The max/mean spread of the `n` nodes' table; the bytes the join moves
/// over the newcomer's ideal share, as one table gives them (the table after the join against
/// the one before) and as the nodes make them (``PlacementScenario/settle``: the table
/// recomputed from what is held as the copies arrive); what the newcomer then holds over its
/// share; and the bytes its leave moves over its own bytes, both ways.
struct Movement {
    var imbalance = 0.0, join = 0.0, joinSettled = 0.0, newcomer = 0.0, leave = 0.0, leaveSettled = 0.0, afterwards = 0.0
    /// Whether one zone has more than half of the weight, before or after the join: it can hold
    /// one copy of each snapshot at most, so the other zones hold more than their share.
    var zoneOverHalf = false
}

/// Whether one zone of `nodes` has more than half of their weight.
func zoneOverHalf(_ nodes: [Placement.Node]) -> Bool {
    var weight: [String: Int] = [:]
    for n in nodes { weight[n.zone, default: 0] += n.weight }
    return 2 * (weight.values.max() ?? 0) > nodes.reduce(0) { $0 + $1.weight }
}

func placementMovement(nodes n: Int, seed: UInt64, settings: Placement.Settings) -> Movement {
    let s = PlacementScenario(nodes: n + 1, snapshots: 10_000, seed: seed)
    let general = s.snapshots.filter { $0.accelerator == .none }
    let sizes = Dictionary(uniqueKeysWithValues: general.map { ($0.key, $0.bytes) })
    let small = Array(s.nodes.prefix(n))
    let total = Double(general.reduce(UInt64(0)) { $0 + $1.bytes } * 2)
    let ideal = total * Double(s.nodes[n].weight) / Double(s.nodes.reduce(0) { $0 + $1.weight })
    var m = Movement()
    m.zoneOverHalf = zoneOverHalf(small) || zoneOverHalf(s.nodes)
    let before = Placement.compute(nodes: small, snapshots: general, settings: settings)
    m.imbalance = PlacementScenario.imbalance(before, small)
    let after = Placement.compute(nodes: s.nodes, snapshots: general, current: before.holders, settings: settings)
    m.join = Double(PlacementScenario.bytesMoved(from: before, to: after, sizes: sizes)) / ideal
    let joined = PlacementScenario.settle(nodes: s.nodes, snapshots: general, held: before.holders, settings: settings, seed: seed)
    m.joinSettled = Double(joined.fetched) / ideal
    m.newcomer = Double(joined.table.load[s.nodes[n].id] ?? 0) / ideal
    // The newcomer leaves again, from a table reached through its join.
    let own = Double(joined.table.load[s.nodes[n].id] ?? 0)
    let left = Placement.compute(nodes: small, snapshots: general, current: joined.table.holders, settings: settings)
    m.leave = Double(PlacementScenario.bytesMoved(from: joined.table, to: left, sizes: sizes)) / own
    let leftSettled = PlacementScenario.settle(nodes: small, snapshots: general, held: joined.table.holders, settings: settings, seed: seed)
    m.leaveSettled = Double(leftSettled.fetched) / own
    m.afterwards = max(PlacementScenario.imbalance(joined.table, s.nodes), PlacementScenario.imbalance(leftSettled.table, small))
    return m
}

/// Placement figures: the load spread, what a join and a leave move, and the time to compute a
/// table of 10,000 snapshots on 500 nodes (median of 5; run a release build for this figure).
/// KAA_SIM_SEEDS=k adds, for each size, the spread of the figures over k more seeded scenarios
/// (seeds n·31 + 1000·i, i = 1...k); KAA_SIM_SIZES picks the sizes (5,50,500).
func placementFigures() {
    var settings = Placement.Settings()
    if let t = getenv("KAA_SIM_TOKENS").flatMap({ Int(String(cString: $0)) }) { settings.tokensPerWeight = t }
    if let e = getenv("KAA_SIM_SLACK").flatMap({ Int(String(cString: $0)) }) { settings.loadSlackPercent = e }
    if let e = getenv("KAA_SIM_PLACE").flatMap({ Int(String(cString: $0)) }) { settings.placeSlackPercent = e }
    let seeds = getenv("KAA_SIM_SEEDS").flatMap { Int(String(cString: $0)) } ?? 0
    let sizes = getenv("KAA_SIM_SIZES").map { String(cString: $0).split(separator: ",").compactMap { Int($0) } } ?? [5, 50, 500]
    print("placement, 10,000 snapshots of mixed sizes (10 KB-50 MB), replication 2, nodes of weight 1-8 in 3 zones, 10% with GPUs:")
    for n in sizes {
        let m = placementMovement(nodes: n, seed: UInt64(n) &* 31, settings: settings)
        print("  \(n) nodes: max/mean bytes per unit of capacity \(fmt(m.imbalance)) (\(fmt(m.afterwards)) after the join and the leave); "
              + "a join moves \(fmt(m.join))x the newcomer's ideal share (\(fmt(m.joinSettled))x as the nodes make the moves; "
              + "the newcomer then holds \(fmt(m.newcomer))x its share); its leave moves \(fmt(m.leave))x its own bytes (\(fmt(m.leaveSettled))x)")
        guard seeds > 0 else { continue }
        let runs = (1...seeds).map { placementMovement(nodes: n, seed: UInt64(n) &* 31 &+ UInt64($0) &* 1000, settings: settings) }
        func spread(_ values: [Double]) -> String {
            "median \(fmt(percentile(values, 0.5)))x, p90 \(fmt(percentile(values, 0.9)))x, worst \(fmt(values.max() ?? 0))x"
        }
        print("    over \(seeds) more seeds: a join \(spread(runs.map(\.join))) (as made: \(spread(runs.map(\.joinSettled)))); "
              + "a leave \(spread(runs.map(\.leave))) (as made: \(spread(runs.map(\.leaveSettled)))); "
              + "the newcomer holds median \(fmt(percentile(runs.map(\.newcomer), 0.5)))x its share, least \(fmt(runs.map(\.newcomer).min() ?? 0))x; "
              + "max/mean at most \(fmt(runs.map(\.imbalance).max() ?? 0)) (\(fmt(runs.map(\.afterwards).max() ?? 0)) after), "
              + "\(fmt(runs.filter { !$0.zoneOverHalf }.map { max($0.imbalance, $0.afterwards) }.max() ?? 0)) where no zone has over half the weight "
              + "(\(runs.filter(\.zoneOverHalf).count) of \(seeds) have one)")
    }
    let s = PlacementScenario(nodes: 501, snapshots: 10_000, seed: 500)
    let base = Array(s.nodes.prefix(500))
    let previous = Placement.compute(nodes: base, snapshots: s.snapshots)
    var scratch: [Double] = [], joined: [Double] = []
    for _ in 0..<5 {
        var t0 = ContinuousClock.now
        _ = Placement.compute(nodes: base, snapshots: s.snapshots)
        scratch.append((ContinuousClock.now - t0).seconds * 1000)
        t0 = ContinuousClock.now
        _ = Placement.compute(nodes: s.nodes, snapshots: s.snapshots, current: previous.holders)
        joined.append((ContinuousClock.now - t0).seconds * 1000)
    }
    print("  table of 10,000 snapshots on 500 nodes: \(fmt(percentile(scratch, 0.5))) ms from scratch, "
          + "\(fmt(percentile(joined, 0.5))) ms from the holders before a join (medians of 5, one core)")
}
if which == "placement" || which == "all" { placementFigures() }

/// What a node pays to recompute its table while a publish adds snapshots one at a time: five
/// nodes of equal capacity, KAA_SIM_SNAPSHOTS (10,000) snapshots of equal size, one planner kept
/// across computations as a node keeps it, each table computed from where the last one put
/// the copies.
if which == "placement-cost" {
    let count = getenv("KAA_SIM_SNAPSHOTS").flatMap { Int(String(cString: $0)) } ?? 10_000
    let nodes = (1...5).map { Placement.Node(id: NodeID("n\($0)")) }
    var snapshots = (0..<count).map { Placement.Snapshot(name: "r\($0)", version: 1, bytes: 917) }
    var planner = Placement.Planner()
    var table = planner.compute(nodes: nodes, snapshots: snapshots)
    var times: [Double] = []
    for i in 0..<20 {
        snapshots.append(Placement.Snapshot(name: "added\(i)", version: 1, bytes: 917))
        // The copies are where the last table put them, as a node's book says.
        let t0 = ContinuousClock.now
        table = planner.compute(nodes: nodes, snapshots: snapshots, current: table.holders)
        times.append((ContinuousClock.now - t0).seconds * 1000)
    }
    print("placement recompute, 5 nodes, \(count) snapshots, one added each time: median \(fmt(percentile(times, 0.5))) ms, "
          + "p90 \(fmt(percentile(times, 0.9))) ms (20 computations, one core)")
}

/// Membership and placement under churn on 1,000 nodes (KAA_SIM_N) with 10,000 snapshots
/// (KAA_SIM_SNAPSHOTS): each node's table from its own view; exits 1 on a violated invariant.
if which == "placement-churn" {
    var o = PlacementChurn.Options()
    o.swim = settings
    if let n = getenv("KAA_SIM_N").flatMap({ Int(String(cString: $0)) }) { o.nodes = n }
    if let n = getenv("KAA_SIM_SNAPSHOTS").flatMap({ Int(String(cString: $0)) }) { o.snapshots = n }
    print("placement under churn: \(o.nodes) nodes in 3 zones (one in four with a GPU), \(o.snapshots) snapshots, replication \(o.replication), "
          + "\(o.events) faults \(fmt(o.spacing.seconds)) s apart (crash, join, leave, pause \(fmt(o.pauseLength.seconds)) s), repair grace \(fmt(o.repairGrace.seconds)) s")
    let clock = ContinuousClock.now
    let r = PlacementChurn.run(o) { print("  " + $0) }
    guard r.formed else { print("  the cluster did not form"); exit(1) }
    print("  after the last fault: every live node's view and table agreed after \(r.secondsToAgree.map { fmt($0) + " s simulated" } ?? "never") "
          + "(\(r.liveAtEnd) live nodes, table \(r.digest.prefix(16)))")
    print("  copies the churn moved: \(fmt(Double(r.bytesMoved) / 1e9)) GB; the departed nodes held \(fmt(Double(r.bytesDeparted) / 1e9)) GB; "
          + "max/mean bytes per unit of capacity \(fmt(r.imbalance)), \(r.nodesOverCap) nodes over their cap")
    print("  invariants: \(r.violations.isEmpty ? "all hold" : "\(r.violations.count) violated:")")
    for v in r.violations { print("    - " + v) }
    print("  (\(fmt((ContinuousClock.now - clock).seconds)) s of wall time)")
    exit(r.violations.isEmpty ? 0 : 1)
}
