import Foundation
import Glibc
import KaaCore
import KaaSnapshot
import KaaTestSupport
import Testing

/// Aliases and accelerator requirements as cluster state, on three real nodes (replication 2):
/// an alias set on any node, even one holding nothing of the model, takes effect on every
/// node; concurrent moves end alike everywhere; an alias does not move to a version whose
/// holders are not ready (409 naming them); a snapshot that requires a GPU lives only on the
/// node that has one.
@Suite(.serialized) struct ClusterAliasLiveTests {
    static func request(_ port: UInt16, _ method: String, _ path: String, _ body: String = "") -> RawResponse? {
        guard let c = try? RawSocket(port: port, timeout: 10),
              (try? c.send("\(method) \(path) HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")) != nil else {
            return nil
        }
        return try? c.readResponse()
    }

    /// The aliases of `name` as node `port` lists them.
    static func aliases(_ port: UInt16, _ name: String) -> [String: Int]? {
        guard let r = request(port, "GET", "/kaa/v1/models/\(name)/aliases"), r.status == 200,
              let object = try? JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any] else { return nil }
        return object["aliases"] as? [String: Int]
    }

    @Test func aliasesAndGPURequirementsAreClusterState() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        var cluster = try LiveCluster(in: dir)
        let model = ServingTests.repo + "/snapshots/iris-logreg/model.onnx"
        let out = cluster.snapshots
        for v in 1...2 { try cluster.build("iris-logreg", as: "iris", version: v, createdAt: Double(v), file: "iris-\(v)") }
        for (name, flag) in [("needs-gpu", "--requires"), ("likes-gpu", "--prefers")] {
            let built = try KaaProcess.run(["snapshot", "build", "--model", model, "--name", name, "--version", "1", flag, "gpu",
                                            "--out", "\(out)/\(name).kaa"])
            #expect(built.0 == 0, "\(built.2)")
        }
        let refused = try KaaProcess.run(["snapshot", "build", "--model", model, "--name", "x", "--requires", "tpu", "--out", "\(out)/x.kaa"])
        #expect(refused.0 != 0 && refused.2.contains("the only accelerator placement knows is `gpu`"), "\(refused.2)")

        // A long repair grace (LiveCluster's): a killed holder stays in the table, so the alias check names it.
        try cluster.start(["n1", "n2", "n3"], more: ["n3": ["--gpus", "1"]])
        defer { cluster.stop() }
        let nodes = cluster.nodes
        try cluster.publish()

        // The GPU node is the only holder of what requires one (under-replicated, said so), and
        // a holder of what prefers one.
        // (Every node has heard of every ready copy: an alias check on a node reads its own view.)
        let placed = cluster.whenEveryNode { c in
            c["needs-gpu@1"]?.ready == ["n3"] && LiveCluster.onItsHolders(c["iris@1"]) && LiveCluster.onItsHolders(c["iris@2"])
                && LiveCluster.onItsHolders(c["likes-gpu@1"])
        }
        let table = try cluster.table()
        #expect(placed, "\(table)")
        #expect(table["needs-gpu@1"]?.holders == ["n3"])
        #expect(table["likes-gpu@1"]?.holders.contains("n3") == true, "\(table)")

        // An alias set on a node that holds no copy of iris@1 takes effect on every node.
        let holders1 = try #require(table["iris@1"]?.holders)
        let outsider = nodes.first { !holders1.contains($0.name) } ?? nodes[0]
        let set = try #require(ClusterAliasLiveTests.request(outsider.http, "PUT", "/kaa/v1/models/iris/aliases/stable", "1"))
        #expect(set.status == 200, "\(set.text) \(table)")
        #expect(GossipLiveTests.within(15) { nodes.allSatisfy { ClusterAliasLiveTests.aliases($0.http, "iris") == ["stable": 1] } } != nil)

        // Two nodes move the same alias at once: every node ends with the same target.
        let moves = [(nodes[0].http, "2"), (nodes[1].http, "1")]
        let statuses = Locked<[Int]>([])
        DispatchQueue.concurrentPerform(iterations: moves.count) { i in
            let r = ClusterAliasLiveTests.request(moves[i].0, "PUT", "/kaa/v1/models/iris/aliases/canary", moves[i].1)
            statuses.withLock { $0.append(r?.status ?? 0) }
        }
        #expect(statuses.withLock { $0 } == [200, 200])
        let agreed = GossipLiveTests.within(15) {
            let views = nodes.map { ClusterAliasLiveTests.aliases($0.http, "iris")?["canary"] }
            return views[0] != nil && Set(views).count == 1
        }
        #expect(agreed != nil, "\(nodes.map { ClusterAliasLiveTests.aliases($0.http, "iris") ?? [:] })")

        // A removal on one node removes it everywhere.
        #expect(ClusterAliasLiveTests.request(nodes[2].http, "DELETE", "/kaa/v1/models/iris/aliases/canary")?.status == 204)
        #expect(GossipLiveTests.within(15) { nodes.allSatisfy { ClusterAliasLiveTests.aliases($0.http, "iris") == ["stable": 1] } } != nil)
        let missing = try #require(ClusterAliasLiveTests.request(nodes[0].http, "PUT", "/kaa/v1/models/iris/aliases/stable", "9"))
        #expect(missing.status == 404 && missing.text.contains("has no version 9 in the cluster; versions: 1, 2"), "\(missing.text)")

        // A holder of iris@2 dies: the alias does not move there until both holders are ready.
        let holders2 = try #require(table["iris@2"]?.holders)
        let victim = try #require(nodes.first { holders2.contains($0.name) && $0.name != "n1" })
        let asker = try #require(nodes.first { $0.name != victim.name })
        victim.process.signal(SIGKILL)
        victim.process.wait()
        #expect(GossipLiveTests.within(60) { GossipLiveTests.view(asker.http)[victim.name]?.0 == "dead" } != nil)
        let conflict = try #require(ClusterAliasLiveTests.request(asker.http, "PUT", "/kaa/v1/models/iris/aliases/stable", "2"))
        #expect(conflict.status == 409, "\(conflict.text)")
        #expect(conflict.text.contains("iris@2 has 1 of the 2 ready holders it needs; missing: \(victim.name) (down)"), "\(conflict.text)")
        #expect(ClusterAliasLiveTests.aliases(asker.http, "iris") == ["stable": 1])
    }
}
