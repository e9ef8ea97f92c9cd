import Foundation
import Glibc
import KaaCore
import KaaSnapshot
import KaaTestSupport
import Synchronization
import Testing

/// Dead letters on three real nodes (replication 2): a call whose deadline passes at the holder
/// becomes one dead letter, durable and copied to a second node, listed once from any node,
/// readable with its payload; replaying it after the cause is gone runs it once, even when two
/// nodes are asked at the same time; a call for a model whose holders are gone gets 503 and a
/// dead letter.
@Suite(.serialized) struct DeadLetterLiveTests {
    static func json(_ r: RawResponse?) -> [String: Any] {
        guard let r else { return [:] }
        return (try? JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any]) ?? [:]
    }

    @Test func callsThatCannotBeAnsweredBecomeDeadLettersAndReplayOnce() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        var cluster = try LiveCluster(in: dir)
        try cluster.build("digits-mlp", as: "digits")
        try cluster.build("iris-logreg", as: "iris")
        try cluster.start(["n1", "n2", "n3"])
        defer { cluster.stop() }
        let nodes = cluster.nodes
        try cluster.publish()
        try #require(cluster.whenEveryNode { c in LiveCluster.onItsHolders(c["digits@1"]) && LiveCluster.onItsHolders(c["iris@1"]) })
        let table = try cluster.table()
        let digitsHolders = try #require(table["digits@1"]?.holders)
        let outsider = try #require(nodes.first { !digitsHolders.contains($0.name) })

        // A cold model and a 1 ms deadline, through a node that holds nothing of it: 504 and a dead letter.
        let row = "[" + (0..<64).map { String($0 % 16) }.joined(separator: ",") + "]"
        let body = Array(#"{"id":"call-1","inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":\#(row)}]}"#.utf8)
        let late = try #require(ForwardingLiveTests.call(outsider.http, "POST", "/v2/models/digits/infer", body,
                                                         headers: "Content-Type: application/json\r\nKaa-Deadline-Ms: 1\r\n"))
        #expect(late.status == 504, "\(late.text)")
        let id = try #require(DeadLetterLiveTests.json(late)["dead_letter"] as? String, "\(late.text)")
        #expect(late.headers["kaa-dead-letter"] == id)

        // Listed once from every node (the copy on a second node counts once), with its reason.
        #expect(GossipLiveTests.within(10) {
            ServingTests.value("kaa_dead_letter_copies_total", in: (try? ServingTests.metrics(RawSocket(port: outsider.http))) ?? "") == 1
        } != nil, "no copy reached a second node")
        for n in nodes {
            let listed = DeadLetterLiveTests.json(ForwardingLiveTests.call(n.http, "GET", "/kaa/v1/deadletters?model=digits"))
            let letters = listed["dead_letters"] as? [[String: Any]] ?? []
            #expect(letters.map { $0["id"] as? String } == [id], "\(n.name): \(listed)")
            #expect(letters.first?["reason"] as? String == "deadline" && letters.first?["request_id"] as? String == "call-1", "\(listed)")
        }
        let cli = try KaaProcess.run(["deadletters", "list", "--reason", "deadline", "--to", "http://127.0.0.1:\(nodes[0].http)"])
        #expect(cli.0 == 0 && cli.1.hasPrefix("\(id)\t") && cli.1.contains("\tdigits\tdeadline\tdead\taccepted by \(outsider.name)\t"), "\(cli)")
        // Read whole on the node that accepted it: the payload as sent, the holder tried.
        let record = DeadLetterLiveTests.json(ForwardingLiveTests.call(outsider.http, "GET", "/kaa/v1/deadletters/\(id)"))
        #expect(record["accepted_by"] as? String == outsider.name)
        #expect((record["payload"] as? String).flatMap { Data(base64Encoded: $0) }.map(Array.init) == body)
        #expect(((record["attempts"] as? [[String: Any]]) ?? []).compactMap { $0["node"] as? String }.allSatisfy(digitsHolders.contains))
        #expect(record["version"] as? Int == 1 && record["model"] as? String == "digits", "\(record)")
        #expect((record["digest"] as? String)?.hasPrefix("sha256:") == true, "\(record)")

        // The cause is gone (no short deadline in a replay): two nodes asked at once, it runs once.
        let askers = [outsider, nodes.first { $0.name != outsider.name }!]
        let answers = Locked<[[String: Any]]>([])
        DispatchQueue.concurrentPerform(iterations: 2) { i in
            let a = DeadLetterLiveTests.json(ForwardingLiveTests.call(askers[i].http, "POST", "/kaa/v1/deadletters/\(id)/replay"))
            answers.withLock { $0.append(a) }
        }
        let replayed = answers.withLock { $0 }
        #expect(replayed.map { $0["status"] as? Int } == [200, 200], "\(replayed)")
        #expect(replayed.filter { $0["ran_now"] as? Bool == true }.count == 1, "\(replayed)")
        #expect(Set(replayed.compactMap { $0["body"] as? String }).count == 1)
        let again = try KaaProcess.run(["deadletters", "replay", id, "--to", "http://127.0.0.1:\(nodes[2].http)"])
        #expect(again.0 == 0 && again.1.hasPrefix("\(id)\tHTTP 200\treplayed before, by "), "\(again)")
        let runs = nodes.map { ServingTests.value("kaa_dead_letter_replays_total", in: (try? ServingTests.metrics(RawSocket(port: $0.http))) ?? "") ?? 0 }
        #expect(runs.reduce(0, +) == 1, "\(runs)")

        // Both holders of iris gone: the call through the third node gets 503 and a dead letter.
        let irisHolders = try #require(table["iris@1"]?.holders)
        let survivor = try #require(nodes.first { !irisHolders.contains($0.name) })
        for n in nodes where irisHolders.contains(n.name) {
            n.process.signal(SIGKILL)
            n.process.wait()
        }
        let iris = Array(#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}"#.utf8)
        let lost = try #require(ForwardingLiveTests.call(survivor.http, "POST", "/v2/models/iris/infer", iris))
        #expect(lost.status == 503, "\(lost.text)")
        let lostID = try #require(DeadLetterLiveTests.json(lost)["dead_letter"] as? String, "\(lost.text)")
        let lostRecord = DeadLetterLiveTests.json(ForwardingLiveTests.call(survivor.http, "GET", "/kaa/v1/deadletters/\(lostID)"))
        #expect(["unreachable", "no-holder"].contains(lostRecord["reason"] as? String ?? ""), "\(lostRecord)")
        // A model that does not exist is a 404 and no dead letter.
        #expect(ForwardingLiveTests.call(survivor.http, "POST", "/v2/models/nope/infer", iris)?.status == 404)
        let all = DeadLetterLiveTests.json(ForwardingLiveTests.call(survivor.http, "GET", "/kaa/v1/deadletters"))
        #expect(((all["dead_letters"] as? [[String: Any]]) ?? []).compactMap { $0["id"] as? String }.contains(lostID), "\(all)")
        // Replayed by a filter while the cause remains: it fails again, kept in the same record, no new one.
        let to = ["--to", "http://127.0.0.1:\(survivor.http)"]
        let failing = try KaaProcess.run(["deadletters", "replay", "--model", "iris"] + to)
        #expect(failing.0 != 0 && failing.1.hasPrefix("\(lostID)\tHTTP 503\tran now"), "\(failing)")
        let after = DeadLetterLiveTests.json(ForwardingLiveTests.call(survivor.http, "GET", "/kaa/v1/deadletters?model=iris"))
        #expect(((after["dead_letters"] as? [[String: Any]]) ?? []).map { $0["replay_status"] as? Int } == [503], "\(after)")
        // Purged by a filter: gone from the listing.
        let purged = try KaaProcess.run(["deadletters", "purge", "--model", "iris"] + to)
        #expect(purged.0 == 0 && purged.1.hasPrefix("purged "), "\(purged)")
        let none = DeadLetterLiveTests.json(ForwardingLiveTests.call(survivor.http, "GET", "/kaa/v1/deadletters?model=iris"))
        #expect(((none["dead_letters"] as? [[String: Any]]) ?? []).isEmpty, "\(none)")
    }

    /// A holder killed with SIGKILL while two client threads send 2,000 calls through a node
    /// that holds nothing: every call the client saw is answered or names a dead letter that
    /// exists exactly once, and no answered call has one.
    @Test func underAKilledHolderEveryCallIsAnsweredOrDeadLettered() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        var cluster = try LiveCluster(in: dir)
        try cluster.build("digits-mlp", as: "iris")
        try cluster.start(["n1", "n2", "n3"])
        defer { cluster.stop() }
        let nodes = cluster.nodes
        try cluster.publish()
        try #require(cluster.whenEveryNode { LiveCluster.onItsHolders($0["iris@1"]) })
        let holders = try #require(try cluster.table()["iris@1"]?.holders)
        let entry = try #require(nodes.first { !holders.contains($0.name) })
        let victim = try #require(nodes.first { $0.name == holders[0] })

        // 32 rows of the digits model: long enough that calls are often running at the holder when it dies.
        let row = "[" + (0..<64).map { String($0 % 16) }.joined(separator: ",") + "]"
        let body = Array(#"{"inputs":[{"name":"input","shape":[32,64],"datatype":"FP32","data":[\#(Array(repeating: row, count: 32).joined(separator: ","))]}]}"#.utf8)
        let outcomes = Locked<[String: (status: Int, deadLetter: String?)]>([:])
        let sent = Atomic<Int>(0)
        let perThread = 1_000
        DispatchQueue.concurrentPerform(iterations: 3) { thread in
            if thread == 2 {
                // The killer: a third of the way in.
                while sent.load(ordering: .relaxed) < 2 * perThread / 3 { usleep(1_000) }
                victim.process.signal(SIGKILL)
                return
            }
            var c = try? RawSocket(port: entry.http, timeout: 30)
            for i in 0..<perThread {
                let id = "t\(thread)-\(i)"
                let request = "POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nKaa-Request-Id: \(id)\r\nContent-Length: \(body.count)\r\n\r\n"
                var response: RawResponse?
                if let socket = c, (try? socket.send(Array(request.utf8) + body)) != nil { response = try? socket.readResponse() }
                if response == nil { // the client's own connection failed: reconnect and record it as unanswered
                    c = try? RawSocket(port: entry.http, timeout: 30)
                }
                let status = response?.status ?? 0
                let deadLetter = response.flatMap { DeadLetterLiveTests.json($0)["dead_letter"] as? String }
                outcomes.withLock { $0[id] = (status, deadLetter) }
                sent.add(1, ordering: .relaxed)
            }
        }
        victim.process.wait()
        let seen = outcomes.withLock { $0 }
        #expect(seen.count == 2 * perThread)
        // The client's own connection to the entry node never failed, so each call has an answer.
        #expect(seen.values.allSatisfy { $0.status != 0 }, "\(seen.filter { $0.value.status == 0 }.keys.sorted().prefix(5))")
        let answered = Set(seen.filter { $0.value.status == 200 }.keys)
        let lettered = seen.filter { $0.value.deadLetter != nil }
        #expect(answered.count + lettered.count == seen.count,
                "neither answered nor dead-lettered: \(seen.filter { $0.value.status != 200 && $0.value.deadLetter == nil }.prefix(5))")
        #expect(lettered.allSatisfy { $0.value.status == 503 || $0.value.status == 504 })
        // Every dead letter the cluster lists, page by page.
        var listed: [[String: Any]] = []
        var after: String?
        repeat {
            let page = DeadLetterLiveTests.json(ForwardingLiveTests.call(nodes.first { $0.name != victim.name }!.http, "GET",
                                                                         "/kaa/v1/deadletters?limit=1000" + (after.map { "&after=\($0)" } ?? "")))
            listed += page["dead_letters"] as? [[String: Any]] ?? []
            after = page["next"] as? String
        } while after != nil
        let ids = listed.compactMap { $0["id"] as? String }
        #expect(ids.count == Set(ids).count, "a dead letter listed twice")
        #expect(Set(ids) == Set(lettered.values.compactMap(\.deadLetter)), "listed \(ids.count), the client saw \(lettered.count)")
        let letteredRequests = Set(listed.compactMap { $0["request_id"] as? String })
        #expect(letteredRequests.isDisjoint(with: answered), "answered and dead-lettered: \(letteredRequests.intersection(answered).prefix(5))")
        print("dead letters: \(answered.count) of \(seen.count) calls answered, \(lettered.count) dead-lettered, with a holder killed during the load")
    }
}
