import Foundation
import Glibc
import KaaCore
import KaaSnapshot
import KaaTestSupport
import Testing

/// Any node answers for any model, on three real nodes (replication 2, so each model has one
/// node that does not hold it): calls, metadata, readiness and the repository index through a
/// node that holds nothing of the model, JSON and binary; a call whose first holder is gone
/// goes to the next; a model the cluster does not have is still a 404.
@Suite(.serialized) struct ForwardingLiveTests {
    static func call(_ port: UInt16, _ method: String, _ path: String, _ body: [UInt8] = [], headers: String = "") -> RawResponse? {
        guard let c = try? RawSocket(port: port, timeout: 20),
              (try? c.send("\(method) \(path) HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.count)\r\n\(headers)\r\n")) != nil,
              (try? c.send(body)) != nil else { return nil }
        return try? c.readResponse()
    }

    static let irisBody = Array(#"{"inputs":[{"name":"input","shape":[3,4],"datatype":"FP32","data":\#(ServingTests.irisRows)}]}"#.utf8)

    @Test func aNodeThatHoldsNothingAnswersThroughAHolder() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        var cluster = try LiveCluster(in: dir)
        let names = (0..<6).map { "m\($0)" }
        for name in names { try cluster.build("iris-logreg", as: name) }
        try cluster.start(["n1", "n2", "n3"])
        defer { cluster.stop() }
        let nodes = cluster.nodes
        try cluster.publish()
        // Every node has heard of every ready copy.
        try #require(cluster.whenEveryNode { c in names.allSatisfy { LiveCluster.onItsHolders(c["\($0)@1"]) } })
        let table = try cluster.table()

        for name in names {
            let holders = try #require(table["\(name)@1"]?.holders)
            let outsider = try #require(nodes.first { !holders.contains($0.name) })
            // Inference, JSON: the holder's answer, and who served it.
            let r = try #require(ForwardingLiveTests.call(outsider.http, "POST", "/v2/models/\(name)/infer", ForwardingLiveTests.irisBody,
                                                          headers: "Content-Type: application/json\r\nKaa-Request-Id: req-\(name)\r\n"))
            #expect(r.status == 200, "\(name) through \(outsider.name): \(r.text)")
            #expect(holders.contains(r.headers["kaa-served-by"] ?? ""), "\(r.headers)")
            let answer = try ServingTests.json(r)
            #expect(answer["model_name"] as? String == name)
            #expect(answer["id"] == nil || answer["id"] as? String == "req-\(name)")
            let labels = (answer["outputs"] as? [[String: Any]])?.first { $0["name"] as? String == "output_label" }?["data"] as? [Int]
            #expect(labels == [0, 2, 1], "\(answer)")
            // Metadata and readiness, by name and by version.
            let meta = try #require(ForwardingLiveTests.call(outsider.http, "GET", "/v2/models/\(name)"))
            #expect(meta.status == 200, "\(meta.text)")
            #expect(try ServingTests.json(meta)["name"] as? String == name, "\(meta.text)")
            #expect(ForwardingLiveTests.call(outsider.http, "GET", "/v2/models/\(name)/versions/1/ready")?.status == 200)
        }

        // Binary tensors both ways, through a node that does not hold the model.
        let binaryName = names[0]
        let outsider = try #require(nodes.first { !(table["\(binaryName)@1"]?.holders ?? []).contains($0.name) })
        let floats: [Float] = [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3]
        var blob: [UInt8] = []
        for f in floats { withUnsafeBytes(of: f.bitPattern.littleEndian) { blob += $0 } }
        let header = #"{"inputs":[{"name":"input","shape":[2,4],"datatype":"FP32","parameters":{"binary_data_size":32}}],"outputs":[{"name":"output_label","parameters":{"binary_data":true}}]}"#
        let binary = try #require(ForwardingLiveTests.call(outsider.http, "POST", "/v2/models/\(binaryName)/infer", Array(header.utf8) + blob,
                                                           headers: "Inference-Header-Content-Length: \(header.utf8.count)\r\n"))
        #expect(binary.status == 200, "\(binary.text)")
        let jsonLength = try #require(Int(binary.headers["inference-header-content-length"] ?? ""))
        let labels = binary.body[jsonLength...].withUnsafeBytes { raw in
            (0..<2).map { Int64(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self)) }
        }
        #expect(labels == [0, 2])

        // The repository index of any node lists every model of the cluster.
        let index = try #require(ForwardingLiveTests.call(nodes[0].http, "POST", "/v2/repository/index"))
        let listed = try #require(try JSONSerialization.jsonObject(with: Data(index.body)) as? [[String: Any]])
        #expect(Set(listed.compactMap { $0["name"] as? String }) == Set(names), "\(index.text)")
        #expect(listed.allSatisfy { $0["state"] as? String == "READY" })

        // What the cluster does not have is a 404 from any node, as on one node.
        let unknown = try #require(ForwardingLiveTests.call(outsider.http, "POST", "/v2/models/nope/infer", ForwardingLiveTests.irisBody))
        #expect(unknown.status == 404 && unknown.text.contains("model `nope` does not exist"), "\(unknown.text)")

        // A holder dies: until the others notice, calls still reach the other holder.
        let target = names[1]
        let holders = try #require(table["\(target)@1"]?.holders)
        let caller = try #require(nodes.first { !holders.contains($0.name) })
        let victim = try #require(nodes.first { $0.name == holders[0] })
        victim.process.signal(SIGKILL)
        victim.process.wait()
        usleep(300_000)
        for i in 0..<10 {
            let r = try #require(ForwardingLiveTests.call(caller.http, "POST", "/v2/models/\(target)/infer", ForwardingLiveTests.irisBody))
            #expect(r.status == 200, "call \(i): \(r.text)")
            #expect(r.headers["kaa-served-by"] == holders[1])
        }
    }

    /// A node that has just started knows nothing of the models held elsewhere: a call to it
    /// waits until its first exchange with a peer instead of hearing 404, and the node turns
    /// ready only once it knows them (the proof harness found the 404s after every restart).
    @Test func aNodeJustStartedAnswersForModelsHeldElsewhereOnceItKnowsThem() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        var cluster = try LiveCluster(in: dir)
        let names = (0..<3).map { "early\($0)" }
        for name in names { try cluster.build("iris-logreg", as: name) }
        try cluster.start(["n1", "n2"])
        defer { cluster.stop() }
        try cluster.publish()
        try #require(cluster.whenEveryNode { c in names.allSatisfy { LiveCluster.onItsHolders(c["\($0)@1"]) } })

        // n3 holds nothing, and is asked the moment its HTTP listener is up.
        let n3 = try GossipLiveTests.start("n3", in: dir, seeds: [cluster.nodes[0].peer], keyFile: cluster.key,
                                           extra: LiveCluster.flags, logLevel: "info")
        defer {
            n3.process.signal(SIGTERM)
            n3.process.wait(timeout: 60)
        }
        let first = try #require(ForwardingLiveTests.call(n3.http, "POST", "/v2/models/\(names[0])/infer", ForwardingLiveTests.irisBody,
                                                          headers: "Content-Type: application/json\r\n"))
        #expect(first.status == 200, "the first call to a node just started: \(first.text)")
        // Ready means it knows the cluster's models: every one answers at once.
        #expect(GossipLiveTests.within(30) { ForwardingLiveTests.call(n3.http, "GET", "/v2/health/ready")?.status == 200 } != nil)
        for name in names {
            let r = try #require(ForwardingLiveTests.call(n3.http, "POST", "/v2/models/\(name)/infer", ForwardingLiveTests.irisBody,
                                                          headers: "Content-Type: application/json\r\n"))
            #expect(r.status == 200, "\(name) on n3 once ready: \(r.text)")
        }
        #expect(ForwardingLiveTests.call(n3.http, "POST", "/v2/models/nope/infer", ForwardingLiveTests.irisBody)?.status == 404)
    }

    /// A holder paused (SIGSTOP) mid-call: a call it does not answer within its try limit goes
    /// to the other holder as well, within the budget, and the client gets one answer; when the
    /// paused holder wakes, its late answer goes nowhere.
    @Test func aCallAPausedHolderSitsOnGoesToTheOtherHolder() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        var cluster = try LiveCluster(in: dir)
        try cluster.build("iris-logreg", as: "m")
        try cluster.start(["n1", "n2", "n3"])
        defer { cluster.stop() }
        try cluster.publish()
        // The copies exactly on the table's holders, as every node sees them: the node that took
        // the publish may keep a copy for a while, and a node with a copy serves it itself.
        try #require(cluster.whenEveryNode { LiveCluster.onItsHolders($0["m@1"]) })
        let holders = try #require(try cluster.table()["m@1"]?.holders)
        let outsider = try #require(cluster.nodes.first { !holders.contains($0.name) })
        let send = { () -> RawResponse? in
            ForwardingLiveTests.call(outsider.http, "POST", "/v2/models/m/infer", ForwardingLiveTests.irisBody,
                                     headers: "Content-Type: application/json\r\nKaa-Deadline-Ms: 5000\r\n")
        }
        // The outsider learns how long a try usually takes.
        for _ in 0..<20 { #expect(send()?.status == 200) }

        let paused = try #require(cluster.nodes.first { $0.name == holders[0] })
        paused.process.signal(SIGSTOP)
        try #require(GossipLiveTests.within(10) { LiveCluster.isStopped(paused.process.pid) } != nil, "\(paused.name) did not stop")
        var answered = 0, deadLettered = 0, slowThenAnswered = 0
        let calls = 30
        for i in 0..<calls {
            let started = Date()
            let r = try #require(send())
            let took = Date().timeIntervalSince(started)
            if r.status == 200 {
                answered += 1
                #expect(r.headers["kaa-served-by"] == holders[1], "call \(i) answered by \(r.headers["kaa-served-by"] ?? "?") while \(holders[0]) was paused (stopped: \(LiveCluster.isStopped(paused.process.pid)), outsider \(outsider.name))")
                if took >= 0.1 { slowThenAnswered += 1 }
            } else {
                #expect(r.status == 504 && r.headers["kaa-dead-letter"] != nil, "call \(i): \(r.status) \(r.text)")
                deadLettered += 1
            }
        }
        paused.process.signal(SIGCONT)
        let metrics = (try? ServingTests.metrics(RawSocket(port: outsider.http))) ?? ""
        let resent = ServingTests.value("kaa_call_slow_retries_total", in: metrics) ?? -1
        print("paused holder: \(answered) of \(calls) answered (\(slowThenAnswered) after a slow try), \(deadLettered) dead letters, \(Int(resent)) sent on")
        #expect(answered + deadLettered == calls)
        #expect(slowThenAnswered >= 1 && resent >= 1, "no call was sent on from the paused holder")
        // The budget: one token to start, a tenth per call since.
        #expect(resent <= 1 + Double(20 + calls) / 10)
        // The paused holder's late answers reach no one, and it serves again.
        #expect(GossipLiveTests.within(30) { send()?.status == 200 && send()?.status == 200 } != nil)
    }

    /// A publish to a node that is not a holder: the node verifies the upload and streams it
    /// to the two GPU nodes the snapshot needs, answers once both have it, and never stores a
    /// copy itself; calls to it go to a holder.
    @Test func aPublishToANodeThatIsNotAHolderLeavesNoCopyThere() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        var cluster = try LiveCluster(in: dir)
        let built = try KaaProcess.run(["snapshot", "build", "--model", ServingTests.repo + "/snapshots/iris-logreg/model.onnx", "--name", "g",
                                        "--version", "1", "--requires", "gpu", "--out", cluster.snapshots + "/g.kaa"])
        try #require(built.0 == 0, "\(built.2)")
        try cluster.start(["n1", "n2", "n3"], more: ["n2": ["--gpus", "1"], "n3": ["--gpus", "1"]])
        defer { cluster.stop() }
        let entry = cluster.nodes[0]
        let archive = try Array(Data(contentsOf: URL(fileURLWithPath: cluster.snapshots + "/g.kaa")))
        let put = try #require(ForwardingLiveTests.call(entry.http, "PUT", "/kaa/v1/snapshots/g/1", archive))
        #expect(put.status == 201, "\(put.text)")
        let answer = try ServingTests.json(put)
        #expect(Set(answer["holders"] as? [String] ?? []) == ["n2", "n3"], "\(put.text)")
        #expect(Set(answer["ready_holders"] as? [String] ?? []) == ["n2", "n3"], "\(put.text)")
        #expect(answer["replicated"] as? Bool == true && answer["outcome"] as? String == "stored", "\(put.text)")
        // At the answer: the holders have it, n1 has nothing and never stored it.
        #expect(ForwardingLiveTests.call(entry.http, "GET", "/kaa/v1/snapshots")?.text.contains("\"g\"") == false)
        let metrics = ReplicationLiveTests.metrics(entry.http)
        #expect(metrics["kaa_publish_uploads_passed_on_total"] == 1, "\(metrics.filter { $0.key.hasPrefix("kaa_publish") })")
        #expect(metrics["kaa_publish_copies_sent_total{outcome=\"stored\"}"] == 2)
        #expect(metrics["kaa_publish_copies_sent_total{outcome=\"failed\"}"] == 0)
        #expect(metrics["kaa_copies_dropped_total"] == 0)
        #expect(!entry.process.stderr.contains("snapshot stored"), "n1 stored a copy")
        #expect(!entry.process.stderr.contains("snapshot upload aborted"), "n1's log calls the passed-on upload aborted")
        _ = try entry.process.waitForLog("snapshot passed on to its holders .*holders=n[23],n[23]")
        for holder in cluster.nodes.dropFirst() {
            #expect(ForwardingLiveTests.call(holder.http, "GET", "/kaa/v1/snapshots")?.text.contains("\"g\"") == true, "\(holder.name)")
            #expect(ReplicationLiveTests.metrics(holder.http)["kaa_publish_copies_received_total"] == 1, "\(holder.name)")
        }
        let r = try #require(ForwardingLiveTests.call(entry.http, "POST", "/v2/models/g/infer", ForwardingLiveTests.irisBody,
                                                      headers: "Content-Type: application/json\r\n"))
        #expect(r.status == 200 && ["n2", "n3"].contains(r.headers["kaa-served-by"] ?? ""), "\(r.headers) \(r.text)")
        // The same archive again: already present on both holders, and still no copy on n1.
        let again = try #require(ForwardingLiveTests.call(entry.http, "PUT", "/kaa/v1/snapshots/g/1", archive))
        #expect(again.status == 200 && (try? ServingTests.json(again)["outcome"] as? String) == "already-present", "\(again.text)")
        #expect(ForwardingLiveTests.call(entry.http, "GET", "/kaa/v1/snapshots")?.text.contains("\"g\"") == false)
    }

    /// A node that no longer holds a copy whose model it has loaded (a GPU node joined, and the
    /// snapshot prefers a GPU): the copy still goes once the new holders have theirs (the model
    /// is let go once its calls end), and calls to that node then go to a holder.
    @Test func aCopyANodeNoLongerHoldsGoesEvenWhileItsModelIsLoaded() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        var cluster = try LiveCluster(in: dir)
        let built = try KaaProcess.run(["snapshot", "build", "--model", ServingTests.repo + "/snapshots/iris-logreg/model.onnx", "--name", "g",
                                        "--version", "1", "--prefers", "gpu", "--out", cluster.snapshots + "/g.kaa"])
        try #require(built.0 == 0, "\(built.2)")
        try cluster.start(["n1", "n2"], more: ["n2": ["--gpus", "1"]])
        defer { cluster.stop() }
        let entry = cluster.nodes[0]
        try cluster.publish(to: entry)
        // Two nodes, replication 2: n1 holds it, and serves it itself, loading the model.
        let local = try #require(ForwardingLiveTests.call(entry.http, "POST", "/v2/models/g/infer", ForwardingLiveTests.irisBody,
                                                          headers: "Content-Type: application/json\r\n"))
        #expect(local.status == 200 && local.headers["kaa-served-by"] == nil, "\(local.headers) \(local.text)")
        // A second GPU node joins: the snapshot's holders become n2 and n3.
        try cluster.start(["n3"], more: ["n3": ["--gpus", "1"]])
        var servedHere = 0, servedThere: String?
        let moved = GossipLiveTests.within(60) {
            guard let r = ForwardingLiveTests.call(entry.http, "POST", "/v2/models/g/infer", ForwardingLiveTests.irisBody,
                                                   headers: "Content-Type: application/json\r\n"), r.status == 200 else { return false }
            servedThere = r.headers["kaa-served-by"]
            if servedThere == nil { servedHere += 1 }
            return servedThere != nil
        }
        #expect(moved != nil, "n1 still serves its own copy after 60 s (\(servedHere) calls served there)")
        #expect(["n2", "n3"].contains(servedThere ?? ""), "\(servedThere ?? "none")")
        // The copy drains: once its last call ends the model is let go and the store deletes it.
        var listed = "", loaded: Double?
        let gone = GossipLiveTests.within(30) {
            listed = ForwardingLiveTests.call(entry.http, "GET", "/kaa/v1/snapshots")?.text ?? "?"
            loaded = ServingTests.value("kaa_models_loaded", in: (try? ServingTests.metrics(RawSocket(port: entry.http))) ?? "")
            return !listed.contains("\"g\"") && loaded == 0
        }
        #expect(gone != nil, "n1 still has \(listed), \(loaded.map { "\(Int($0))" } ?? "?") models loaded")
    }
}
