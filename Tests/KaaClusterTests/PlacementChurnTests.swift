import KaaCluster
import KaaClusterSimulation
import KaaCore
import Testing

/// Membership and placement together, in the deterministic simulation: each node's table from
/// its own members view, through crashes, joins, leaves and pauses.
@Suite struct PlacementChurnTests {
    @Test func afterChurnEveryLiveNodeComputesTheSameTableAndItKeepsTheInvariants() {
        var o = PlacementChurn.Options()
        o.nodes = 40
        o.snapshots = 400
        o.events = 20
        o.seed = 3
        let r = PlacementChurn.run(o)
        #expect(r.formed)
        #expect(r.crashed == 5 && r.joined == 5 && r.left == 5 && r.paused == 5)
        #expect(r.secondsToAgree != nil)
        #expect(r.liveAtEnd == 40 - 5 - 5 + 5)
        #expect(r.violations == [])
        #expect(r.nodesOverCap == 0)
        // Faults every 2 s keep the views apart now and then: the table waits for them to agree.
        #expect(r.samples > 0 && r.mostDistinctViews >= 1)
    }

    @Test func theCheckNamesATableThatBreaksAnInvariant() {
        let s = PlacementScenario(nodes: 6, snapshots: 50, seed: 9)
        let settings = Placement.Settings(replication: 2)
        let table = Placement.compute(nodes: s.nodes, snapshots: s.snapshots, settings: settings)
        #expect(PlacementChurn.violations(table, nodes: s.nodes, snapshots: s.snapshots, settings: settings) == [])
        // The same table judged against the cluster after a node died: its copies are on a node
        // that is not live.
        let gone = s.nodes[0].id
        let held = table.holders.filter { $0.value.contains(gone) }.count
        #expect(held > 0)
        let found = PlacementChurn.violations(table, nodes: Array(s.nodes.dropFirst()), snapshots: s.snapshots, settings: settings)
        #expect(found.filter { $0.hasSuffix("a holder is not a live node") }.count == min(held, 20))
        // One holder short.
        var short = table
        let key = s.snapshots[0].key
        short.holders[key] = Array(short.holders[key]!.prefix(1))
        #expect(PlacementChurn.violations(short, nodes: s.nodes, snapshots: s.snapshots, settings: settings) == ["\(key): 1 holders, 2 wanted"])
    }
}
