import Foundation
import Glibc
import KaaCore
import KaaSnapshot
import KaaTestSupport
import Testing

/// Placement and replication on five real nodes on loopback (replication 2): a publish to one
/// node ends on exactly the table's holders; a killed node's copies are made again after the
/// repair grace; when it comes back with its data, the cluster moves copies back without any
/// snapshot ever having fewer than two ready copies.
@Suite(.serialized) struct ReplicationLiveTests {
    /// The placement as node `port` sees it.
    static func placement(_ port: UInt16) -> [String: Any]? {
        guard let c = try? RawSocket(port: port, timeout: 10),
              (try? c.send("GET /kaa/v1/placement HTTP/1.1\r\nHost: x\r\n\r\n")) != nil,
              let r = try? c.readResponse(), r.status == 200 else { return nil }
        return try? JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any]
    }

    /// Per snapshot key: its table holders, and the live nodes with a ready copy.
    static func copies(_ placement: [String: Any]) -> [String: (holders: [String], ready: Set<String>)] {
        var out: [String: (holders: [String], ready: Set<String>)] = [:]
        for s in placement["snapshots"] as? [[String: Any]] ?? [] {
            let key = "\(s["name"] as? String ?? "?")@\(s["version"] as? Int ?? 0)"
            let holders = s["holders"] as? [[String: Any]] ?? [], others = s["others"] as? [[String: Any]] ?? []
            let ready = (holders + others).filter { $0["state"] as? String == "ready" }.compactMap { $0["name"] as? String }
            out[key] = (holders.compactMap { $0["name"] as? String }, Set(ready))
        }
        return out
    }

    /// Every snapshot on exactly its table holders, ready, and every node with the same table.
    /// Node `port`'s `/metrics`, sample by sample (name with labels → value).
    static func metrics(_ port: UInt16) -> [String: Double] {
        guard let c = try? RawSocket(port: port, timeout: 30), (try? c.send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")) != nil,
              let body = try? c.readResponse().body else { return [:] }
        var out: [String: Double] = [:]
        for line in String(decoding: body, as: UTF8.self).split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
            out[String(line[..<space])] = value
        }
        return out
    }

    static func atRest(_ ports: [UInt16], expecting count: Int) -> Bool { whyNotAtRest(ports, expecting: count) == nil }

    /// What keeps the cluster from being at rest, nil when it is.
    static func whyNotAtRest(_ ports: [UInt16], expecting count: Int) -> String? {
        let views = ports.map { placement($0) }
        guard let first = views.first ?? nil, let digest = first["digest"] as? String else { return "no placement from the first node" }
        for (port, view) in zip(ports, views) {
            guard let view else { return "no placement from :\(port)" }
            if (view["digest"] as? String) != digest { return ":\(port) has table \(view["digest"] ?? "?"), the first \(digest)" }
            if (view["digests_agree"] as? Bool) != true { return ":\(port) has not heard the same table from every peer" }
        }
        let c = copies(first)
        if c.count != count { return "\(c.count) snapshots in the table, not \(count)" }
        for (key, v) in c.sorted(by: { $0.key < $1.key }) where v.holders.count != 2 || Set(v.holders) != v.ready {
            return "\(key): holders \(v.holders), ready copies on \(v.ready.sorted())"
        }
        return nil
    }

    @Test func fiveNodesKeepTwoCopiesThroughAKillAndARejoin() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let key = dir.path + "/cluster.key"
        #expect(try KaaProcess.run(["keys", "cluster", "--out", key]).0 == 0)
        let generated = Int(ProcessInfo.processInfo.environment["KAA_LIVE_SNAPSHOTS"] ?? "") ?? 1_000
        // The samples, and `generated` small snapshots of the iris model under other names,
        // built in this process.
        let repo = ServingTests.repo
        let out = dir.path + "/snapshots"
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        for i in 0..<generated {
            _ = try SnapshotBuilder.build(SnapshotBuildRequest(modelPath: repo + "/snapshots/iris-logreg/model.onnx", name: "gen-\(i)",
                                                               version: 1, createdAt: Date(timeIntervalSince1970: 0)),
                                          to: out + "/gen-\(i).kaa")
        }
        var samples = 0
        for sample in try FileManager.default.contentsOfDirectory(atPath: repo + "/snapshots").sorted()
        where FileManager.default.fileExists(atPath: "\(repo)/snapshots/\(sample)/model.onnx") {
            var args = ["snapshot", "build", "--model", "\(repo)/snapshots/\(sample)/model.onnx", "--name", sample, "--version", "1",
                        "--out", "\(out)/\(sample).kaa"]
            if FileManager.default.fileExists(atPath: "\(repo)/snapshots/\(sample)/pipeline.yaml") {
                args += ["--pipeline", "\(repo)/snapshots/\(sample)/pipeline.yaml"]
            }
            let built = try KaaProcess.run(args)
            #expect(built.0 == 0, "\(built.2)")
            samples += 1
        }
        let total = generated + samples

        // A leave timeout well past what a handover takes on a loaded machine: the test watches
        // for 180 s that the copies are handed over, and would see the ones a timeout left behind.
        let extra = ["--replication", "2", "--repair-grace", "3s", "--placement-settle", "5s", "--leave-timeout", "170s"]
        var nodes = [try GossipLiveTests.start("n1", in: dir, seeds: [], keyFile: key, extra: extra, logLevel: "info")]
        for i in 2...5 {
            nodes.append(try GossipLiveTests.start("n\(i)", in: dir, seeds: [nodes[0].peer], keyFile: key, extra: extra, logLevel: "info"))
        }
        defer {
            // All at once: nodes stopping together have no one to hand their copies to.
            for n in nodes { n.process.signal(SIGTERM) }
            for n in nodes { n.process.wait(timeout: 60) }
        }
        #expect(GossipLiveTests.within(30) { nodes.allSatisfy { GossipLiveTests.view($0.http).values.filter { $0.0 == "alive" }.count == 5 } } != nil)

        // Publish everything to one node; each publish answers once two holders have it.
        let published = try KaaProcess.run(["publish", out, "--to", "http://127.0.0.1:\(nodes[0].http)", "--timeout", "120"], timeout: 900)
        try #require(published.0 == 0, "\(published.1)\(published.2)")
        #expect(published.1.contains("\(total) stored, 0 already present, 0 failed"), "\(published.1)")
        let settled = GossipLiveTests.within(120) { ReplicationLiveTests.atRest(nodes.map(\.http), expecting: total) }
        try #require(settled != nil, "the cluster did not settle: \(ReplicationLiveTests.whyNotAtRest(nodes.map(\.http), expecting: total) ?? "")")
        // Each node's store holds exactly what the table gives it.
        let table = ReplicationLiveTests.copies(try #require(ReplicationLiveTests.placement(nodes[0].http)))
        for n in nodes {
            let c = try RawSocket(port: n.http, timeout: 30)
            try c.send("GET /kaa/v1/snapshots HTTP/1.1\r\nHost: x\r\n\r\n")
            let listed = try #require(try JSONSerialization.jsonObject(with: Data(c.readResponse().body)) as? [String: Any])
            let stored = Set((listed["snapshots"] as? [[String: Any]] ?? []).map { "\($0["name"] as? String ?? "?")@\($0["version"] as? Int ?? 0)" })
            let expected = Set(table.filter { $0.value.holders.contains(n.name) }.map(\.key))
            #expect(stored == expected, "\(n.name) holds \(stored.count), its share is \(expected.count)")
        }

        // What the cluster's own traffic cost is counted: gossip and holdings anti-entropy.
        for n in nodes {
            let m = ReplicationLiveTests.metrics(n.http)
            #expect((m["kaa_holdings_exchange_bytes_total{direction=\"sent\"}"] ?? 0) > 0, "\(n.name)")
            #expect((m["kaa_holdings_exchange_bytes_total{direction=\"received\"}"] ?? 0) > 0, "\(n.name)")
            #expect((m["kaa_gossip_bytes_total{direction=\"sent\",channel=\"udp\"}"] ?? 0) > 0, "\(n.name)")
            #expect((m["kaa_loop_lag_seconds_count"] ?? 0) > 0, "\(n.name)")
        }

        // SIGKILL one node: after the grace, every snapshot is back at two ready copies.
        let victim = nodes[2]
        victim.process.signal(SIGKILL)
        victim.process.wait()
        let survivors = nodes.filter { $0.name != victim.name }
        let killedAt = Date()
        #expect(GossipLiveTests.within(60) { survivors.allSatisfy { GossipLiveTests.view($0.http)[victim.name]?.0 == "dead" } } != nil)
        let repaired = GossipLiveTests.within(180) { ReplicationLiveTests.atRest(survivors.map(\.http), expecting: total) }
        #expect(repaired != nil, "no repair: \(ReplicationLiveTests.whyNotAtRest(survivors.map(\.http), expecting: total) ?? "")")
        print("replication: \(total) snapshots back at 2 copies \(String(format: "%.1f", Date().timeIntervalSince(killedAt))) s after a SIGKILL (repair grace 3 s)")

        // It comes back with its data: copies move back, and sampling every 100 ms never shows
        // a snapshot with fewer than two ready copies.
        nodes[2] = try GossipLiveTests.start(victim.name, in: dir, seeds: [nodes[0].peer], keyFile: key, peerPort: victim.peer,
                                             extra: extra, logLevel: "info")
        var lowest = Int.max, samplesTaken = 0
        var lowKey: String?
        let rebalanced = GossipLiveTests.within(180) {
            if let p = ReplicationLiveTests.placement(nodes[0].http) {
                samplesTaken += 1
                for (key, c) in ReplicationLiveTests.copies(p) where c.ready.count < lowest {
                    lowest = c.ready.count
                    if lowest < 2 {
                        Issue.record("\(key) had \(c.ready.count) ready copies during the rebalance: holders \(c.holders), ready \(c.ready.sorted())")
                        lowKey = key
                        let row = (p["snapshots"] as? [[String: Any]] ?? []).first { "\($0["name"] ?? "")@\($0["version"] ?? "")" == key }
                        print("n1's row of \(key): \(row.map { "\($0)" } ?? "none"); members as n1 sees them: \(GossipLiveTests.view(nodes[0].http))")
                    }
                }
            }
            return ReplicationLiveTests.atRest(nodes.map(\.http), expecting: total)
                && GossipLiveTests.view(nodes[0].http)[victim.name]?.0 == "alive"
        }
        #expect(rebalanced != nil, "the rejoined node did not get its share back: \(ReplicationLiveTests.whyNotAtRest(nodes.map(\.http), expecting: total) ?? "")")
        #expect(lowest >= 2 && samplesTaken > 0, "lowest \(lowest) over \(samplesTaken) samples")
        if let lowKey {
            // What each node did with it, for the failure's reader.
            for n in nodes {
                let lines = n.process.stderr.split(separator: "\n").filter { $0.contains("snapshot=\(lowKey) ") || $0.hasSuffix("snapshot=\(lowKey)") }
                print("\(n.name) on \(lowKey):\n" + lines.suffix(20).joined(separator: "\n"))
            }
        }

        // A graceful stop hands the node's copies over first: no snapshot has fewer than two
        // ready copies on live nodes at any sample, before or after it is gone.
        let leaver = nodes[3]
        leaver.process.signal(SIGTERM)
        let started = Date()
        lowest = Int.max
        samplesTaken = 0
        var exited = false
        while Date().timeIntervalSince(started) < 180 && !exited {
            if let p = ReplicationLiveTests.placement(nodes[0].http) {
                samplesTaken += 1
                for (key, c) in ReplicationLiveTests.copies(p) where c.ready.count < lowest {
                    lowest = c.ready.count
                    if lowest < 2 { Issue.record("\(key) had \(c.ready.count) ready copies while \(leaver.name) left") }
                }
            }
            exited = !leaver.process.process.isRunning
            usleep(100_000)
        }
        #expect(exited, "\(leaver.name) did not stop within 180 s")
        print("replication: a graceful stop handed \(leaver.name)'s copies over and exited in \(String(format: "%.1f", Date().timeIntervalSince(started))) s")
        let remaining = nodes.filter { $0.name != leaver.name }
        #expect(GossipLiveTests.within(60) { ReplicationLiveTests.atRest(remaining.map(\.http), expecting: total) } != nil,
                "after the leave: \(ReplicationLiveTests.whyNotAtRest(remaining.map(\.http), expecting: total) ?? "")")
        #expect(lowest >= 2 && samplesTaken > 0, "lowest \(lowest) over \(samplesTaken) samples while a node left")
        #expect(leaver.process.stderr.contains("leaving: every copy is on other nodes"), "\(leaver.process.stderr.suffix(2000))")
    }
}
