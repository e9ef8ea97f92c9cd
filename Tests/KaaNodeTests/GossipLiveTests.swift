import Foundation
import Glibc
import KaaCore
import KaaTestSupport
import Testing

/// Five real `kaa node` processes on loopback gossiping with encryption.
@Suite(.serialized) struct GossipLiveTests {
    struct Running {
        var process: KaaProcess
        var http: UInt16
        var peer: UInt16
        var name: String
        var dataDir: String
    }

    static func start(_ name: String, in dir: TemporaryDirectory, seeds: [UInt16], keyFile: String?,
                      peerPort: UInt16 = 0, dataDir: String? = nil, extra: [String] = [], logLevel: String = "debug") throws -> Running {
        let data = dataDir ?? dir.path + "/" + name
        var args = ["node", "--data-dir", data, "--http-addr", "127.0.0.1:0", "--peer-addr", "127.0.0.1:\(peerPort)",
                    "--node-name", name, "--log-level", logLevel] + extra
        if !seeds.isEmpty { args += ["--seeds", seeds.map { "127.0.0.1:\($0)" }.joined(separator: ",")] }
        if let keyFile { args += ["--cluster-key-file", keyFile] }
        let p = try KaaProcess(args)
        let http = UInt16(try p.waitForLog(#"node started .*http\.addr=127\.0\.0\.1:(\d+)"#))!
        let peer = UInt16(try p.waitForLog(#"node started .*peer\.addr=127\.0\.0\.1:(\d+)"#))!
        return Running(process: p, http: http, peer: peer, name: name, dataDir: data)
    }

    /// name → (status, incarnation) as node `port` sees the cluster.
    static func view(_ port: UInt16) -> [String: (String, Int)] {
        guard let c = try? RawSocket(port: port, timeout: 2) else { return [:] }
        guard (try? c.send("GET /kaa/v1/members HTTP/1.1\r\nHost: x\r\n\r\n")) != nil,
              let r = try? c.readResponse(),
              let object = try? JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any],
              let members = object["members"] as? [[String: Any]] else { return [:] }
        var out: [String: (String, Int)] = [:]
        for m in members { out[m["name"] as! String] = (m["status"] as! String, m["incarnation"] as! Int) }
        return out
    }

    /// Polls until `condition` holds or `seconds` pass; returns the seconds it took, or nil.
    static func within(_ seconds: Double, _ condition: () -> Bool) -> Double? {
        let start = Date()
        while Date().timeIntervalSince(start) < seconds {
            if condition() { return Date().timeIntervalSince(start) }
            usleep(50_000)
        }
        return nil
    }

    @Test func fiveNodesConvergeDetectACrashAndWelcomeARestartWithAHigherIncarnation() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let key = dir.path + "/cluster.key"
        #expect(try KaaProcess.run(["keys", "cluster", "--out", key]).0 == 0)
        var nodes = [try GossipLiveTests.start("n1", in: dir, seeds: [], keyFile: key)]
        for i in 2...5 { nodes.append(try GossipLiveTests.start("n\(i)", in: dir, seeds: [nodes[0].peer], keyFile: key)) }
        defer { for n in nodes { n.process.signal(SIGKILL); n.process.wait() } }
        let names = Set(nodes.map(\.name))

        let converged = GossipLiveTests.within(20) {
            nodes.allSatisfy { n in
                let v = GossipLiveTests.view(n.http)
                return Set(v.keys) == names && v.values.allSatisfy { $0.0 == "alive" }
            }
        }
        #expect(converged != nil, "views: \(nodes.map { GossipLiveTests.view($0.http) })")

        // SIGKILL n3: every other node must see it dead.
        let victim = nodes[2]
        let incarnationBefore = GossipLiveTests.view(nodes[0].http)["n3"]?.1 ?? -1
        victim.process.signal(SIGKILL)
        victim.process.wait()
        let others = nodes.filter { $0.name != "n3" }
        let detected = GossipLiveTests.within(15) {
            others.allSatisfy { GossipLiveTests.view($0.http)["n3"]?.0 == "dead" }
        }
        #expect(detected != nil, "views after the kill: \(others.map { GossipLiveTests.view($0.http)["n3"].map { "\($0)" } ?? "-" })")

        // Restart it from the same data directory: same id, alive again, higher incarnation.
        let restarted = try GossipLiveTests.start("n3", in: dir, seeds: [nodes[0].peer], keyFile: key, dataDir: victim.dataDir)
        nodes[2] = restarted
        let back = GossipLiveTests.within(15) {
            others.allSatisfy { n in
                guard let (status, incarnation) = GossipLiveTests.view(n.http)["n3"] else { return false }
                return status == "alive" && incarnation > incarnationBefore
            }
        }
        #expect(back != nil, "views after the restart: \(others.map { GossipLiveTests.view($0.http)["n3"].map { "\($0)" } ?? "-" })")
        #expect(GossipLiveTests.view(nodes[0].http).count == 5) // the same id, not a sixth member
    }

    @Test func aNodeWithTheWrongKeyIsKeptOut() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let key = dir.path + "/cluster.key", wrong = dir.path + "/wrong.key"
        #expect(try KaaProcess.run(["keys", "cluster", "--out", key]).0 == 0)
        #expect(try KaaProcess.run(["keys", "cluster", "--out", wrong]).0 == 0)
        let a = try GossipLiveTests.start("a", in: dir, seeds: [], keyFile: key)
        let b = try GossipLiveTests.start("b", in: dir, seeds: [a.peer], keyFile: key)
        let intruder = try GossipLiveTests.start("intruder", in: dir, seeds: [a.peer], keyFile: wrong)
        defer { for n in [a, b, intruder] { n.process.signal(SIGKILL); n.process.wait() } }
        #expect(GossipLiveTests.within(15) { Set(GossipLiveTests.view(b.http).keys) == ["a", "b"] } != nil)
        // Give the intruder several protocol periods and push-pull rounds to try.
        _ = try intruder.process.waitForLog("push-pull failed|bad push-pull answer|dropped gossip packet", timeout: 15)
        sleep(2)
        #expect(Set(GossipLiveTests.view(a.http).keys) == ["a", "b"])
        #expect(Set(GossipLiveTests.view(b.http).keys) == ["a", "b"])
        #expect(Set(GossipLiveTests.view(intruder.http).keys) == ["intruder"])
        #expect(a.process.stderr.contains("refused a peer connection") || a.process.stderr.contains("dropped gossip packet"))
    }

    /// Every metric docs/operations.md names (its "Metrics" section, the alert rules included)
    /// is one a node exposes: a `# TYPE` line of a running node's `/metrics`.
    @Test func theOperatorsGuideNamesOnlyMetricsANodeExposes() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let guide = try String(contentsOfFile: ServingTests.repo + "/docs/operations.md", encoding: .utf8)
        let start = try #require(guide.range(of: "\n## Metrics\n")), end = guide.range(of: "\n## ", range: start.upperBound..<guide.endIndex)
        let section = guide[start.upperBound..<(end?.lowerBound ?? guide.endIndex)]
        let regex = try NSRegularExpression(pattern: "kaa_[a-z0-9_]+")
        let text = String(section)
        let named = Set(regex.matches(in: text, range: NSRange(text.startIndex..., in: text)).compactMap { Range($0.range, in: text).map { String(text[$0]) } })
        try #require(named.count >= 20, "the guide's metrics section names \(named.count) metrics")
        let node = try GossipLiveTests.start("n1", in: dir, seeds: [], keyFile: nil, logLevel: "info")
        defer { node.process.signal(SIGKILL); node.process.wait() }
        // One call, for the series a node starts at its first call (by model and status).
        let archive = dir.path + "/m.kaa"
        let built = try KaaProcess.run(["snapshot", "build", "--model", ServingTests.repo + "/snapshots/iris-logreg/model.onnx", "--name", "m",
                                        "--version", "1", "--out", archive])
        try #require(built.0 == 0, "\(built.2)")
        let published = try KaaProcess.run(["publish", archive, "--to", "http://127.0.0.1:\(node.http)"])
        try #require(published.0 == 0, "\(published.1)\(published.2)")
        let call = ForwardingLiveTests.call(node.http, "POST", "/v2/models/m/infer", ForwardingLiveTests.irisBody,
                                            headers: "Content-Type: application/json\r\n")
        try #require(call?.status == 200, "\(call?.text ?? "no answer")")
        let metrics = try ServingTests.metrics(RawSocket(port: node.http))
        let exposed = Set(metrics.split(separator: "\n").filter { $0.hasPrefix("# TYPE ") }.compactMap { $0.split(separator: " ").dropFirst(2).first.map(String.init) })
        for name in named.sorted() {
            let base = ["_bucket", "_sum", "_count"].reduce(name) { n, suffix in n.hasSuffix(suffix) && exposed.contains(String(n.dropLast(suffix.count))) ? String(n.dropLast(suffix.count)) : n }
            #expect(exposed.contains(base), "docs/operations.md names \(name); /metrics has no such metric")
        }
    }

    /// The cluster key rotation of docs/operations.md: three rolling passes over the nodes' key
    /// files (add the new key second; move it first; remove the old), each node restarted in turn
    /// on its data. After every restart the two nodes see each other alive and the restarted one
    /// is ready, which takes a holdings exchange over the peer plane: gossip and the peer plane
    /// both work in every mixed state the procedure passes through.
    @Test func theClusterKeyRotatesInThreeRollingPasses() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        func keyLine(_ name: String) throws -> String {
            let path = dir.path + "/" + name
            #expect(try KaaProcess.run(["keys", "cluster", "--out", path]).0 == 0)
            let text = try String(contentsOfFile: path, encoding: .utf8)
            return try #require(text.split(separator: "\n").first { !$0.hasPrefix("#") && !$0.isEmpty }.map(String.init))
        }
        let old = try keyLine("old.key"), new = try keyLine("new.key")
        func write(_ file: String, _ lines: [String]) throws {
            try (lines.joined(separator: "\n") + "\n").write(toFile: file, atomically: true, encoding: .utf8)
        }
        let files = [dir.path + "/n1.key", dir.path + "/n2.key"]
        for f in files { try write(f, [old]) }
        var nodes = [try GossipLiveTests.start("n1", in: dir, seeds: [], keyFile: files[0], logLevel: "info")]
        nodes.append(try GossipLiveTests.start("n2", in: dir, seeds: [nodes[0].peer], keyFile: files[1], logLevel: "info"))
        defer { for n in nodes { n.process.signal(SIGKILL); n.process.wait() } }
        let both = { () -> Bool in
            nodes.allSatisfy { n in
                let v = GossipLiveTests.view(n.http)
                return Set(v.keys) == ["n1", "n2"] && v.values.allSatisfy { $0.0 == "alive" }
            }
        }
        #expect(GossipLiveTests.within(20, both) != nil)
        for (pass, lines) in [[old, new], [new, old], [new]].enumerated() {
            for i in nodes.indices {
                try write(files[i], lines)
                let before = GossipLiveTests.view(nodes[1 - i].http)[nodes[i].name]?.1 ?? -1
                nodes[i].process.signal(SIGKILL)
                nodes[i].process.wait()
                nodes[i] = try GossipLiveTests.start(nodes[i].name, in: dir, seeds: [nodes[1 - i].peer], keyFile: files[i],
                                                     peerPort: nodes[i].peer, dataDir: nodes[i].dataDir, logLevel: "info")
                let back = GossipLiveTests.within(30) {
                    both() && (GossipLiveTests.view(nodes[1 - i].http)[nodes[i].name]?.1 ?? -1) > before
                        && ForwardingLiveTests.call(nodes[i].http, "GET", "/v2/health/ready")?.status == 200
                }
                #expect(back != nil, "pass \(pass + 1), \(nodes[i].name) restarted with \(lines.count) keys: views \(nodes.map { GossipLiveTests.view($0.http) })")
            }
        }
    }
}
