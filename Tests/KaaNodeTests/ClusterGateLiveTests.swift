import Foundation
import Glibc
import KaaTestSupport
import Testing

/// The quality gate in a cluster of three real nodes (replication 2): the node that takes a
/// `stable` move runs the gate only with both versions on its own disk; a node without them
/// refuses (409) naming the nodes that hold each, and fetches nothing; a version without a gate
/// moves from any node, as the cluster's holdings say it has none.
@Suite(.serialized) struct ClusterGateLiveTests {
    @Test func aNodeWithoutBothVersionsNamesTheirHolders() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        var cluster = try LiveCluster(in: dir)
        // Version 1: the sample; version 2: the sample again, with a gate it passes.
        let v1 = try AliasGateTests.build(dir, version: 1, shifted: false, gate: nil)
        let v2 = try AliasGateTests.build(dir, version: 2, shifted: false, gate: "agreement>=0.99")
        let v3 = try AliasGateTests.build(dir, version: 3, shifted: false, gate: nil)
        for file in [v1, v2, v3] { try FileManager.default.moveItem(atPath: file, toPath: cluster.snapshots + "/" + (file as NSString).lastPathComponent) }
        try cluster.start(["n1", "n2", "n3"])
        defer { cluster.stop() }
        let nodes = cluster.nodes
        try cluster.publish()
        #expect(cluster.whenEveryNode { c in (1...3).allSatisfy { LiveCluster.onItsHolders(c["iris@\($0)"]) } })
        let table = try cluster.table()
        let holders1 = try #require(table["iris@1"]?.holders), holders2 = try #require(table["iris@2"]?.holders)
        #expect(ClusterAliasLiveTests.request(nodes[0].http, "PUT", "/kaa/v1/models/iris/aliases/stable", "1")?.status == 200)
        #expect(GossipLiveTests.within(15) { nodes.allSatisfy { ClusterAliasLiveTests.aliases($0.http, "iris") == ["stable": 1] } } != nil)

        // Two sets of two among three nodes: one node holds both, another lacks one or both.
        let both = try #require(nodes.first { holders1.contains($0.name) && holders2.contains($0.name) })
        let lacking = try #require(nodes.first { !(holders1.contains($0.name) && holders2.contains($0.name)) })
        let refused = try #require(ClusterAliasLiveTests.request(lacking.http, "PUT", "/kaa/v1/models/iris/aliases/stable", "2"))
        #expect(refused.status == 409, "\(refused.text)")
        #expect(refused.text.contains("this node cannot run iris@2's quality gate here"), "\(refused.text)")
        #expect(refused.text.contains("iris@1 on \(holders1.sorted().joined(separator: ", ")); iris@2 on \(holders2.sorted().joined(separator: ", "))"),
                "\(refused.text)")
        #expect(ClusterAliasLiveTests.aliases(lacking.http, "iris") == ["stable": 1])

        // On a node with both, the gate runs, passes, and the move spreads as any other.
        let moved = try #require(ClusterAliasLiveTests.request(both.http, "PUT", "/kaa/v1/models/iris/aliases/stable", "2"))
        #expect(moved.status == 200, "\(moved.text)")
        _ = try both.process.waitForLog("quality gate passed .*alias.from=1 alias.to=2")
        #expect(GossipLiveTests.within(15) { nodes.allSatisfy { ClusterAliasLiveTests.aliases($0.http, "iris") == ["stable": 2] } } != nil)

        // Version 3 has no gate: a node without a copy of it moves `stable` there.
        let holders3 = try #require(table["iris@3"]?.holders)
        let outsider = try #require(nodes.first { !holders3.contains($0.name) })
        let third = try #require(ClusterAliasLiveTests.request(outsider.http, "PUT", "/kaa/v1/models/iris/aliases/stable", "3"))
        #expect(third.status == 200, "\(outsider.name), without iris@3: \(third.text)")
        #expect(GossipLiveTests.within(15) { nodes.allSatisfy { ClusterAliasLiveTests.aliases($0.http, "iris") == ["stable": 3] } } != nil)
    }
}
