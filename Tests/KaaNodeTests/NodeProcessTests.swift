import Foundation
import Glibc
import KaaCore
import KaaIO
import KaaNode
import KaaTestSupport
import Testing

/// The `kaa` executable as an operator runs it: real processes, real sockets, stopped by pid.
@Suite struct NodeProcessTests {
    static func startNode(_ dir: TemporaryDirectory, extra: [String] = [],
                          environment: [String: String] = [:]) throws -> (KaaProcess, UInt16) {
        let node = try KaaProcess(["node", "--data-dir", dir.path + "/data", "--http-addr", "127.0.0.1:0",
                                   "--peer-addr", "127.0.0.1:0"] + extra, environment: environment)
        let port = try node.waitForLog(#"node started .*http\.addr=127\.0\.0\.1:(\d+)"#)
        return (node, UInt16(port)!)
    }

    @Test func nodeAnswersHealthAndStopsGracefullyOnSIGTERM() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let (node, port) = try NodeProcessTests.startNode(dir)
        let c = try RawSocket(port: port)
        try c.send("GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\nGET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\nGET /v2 HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(try c.readResponse().status == 200)
        #expect(try c.readResponse().status == 200)
        let meta = try c.readResponse()
        #expect(meta.text == #"{"name":"kaa","version":"\#(KaaVersion.string)","extensions":["binary_tensor_data","model_repository"]}"#)
        node.signal(SIGTERM)
        #expect(node.wait() == 0)
        #expect(node.stderr.contains("signal received; shutting down signal=15"))
        #expect(node.stderr.contains("node stopped"))
    }

    @Test func peerPortAnswersPingFrames() async throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let node = try KaaProcess(["node", "--data-dir", dir.path + "/data", "--http-addr", "127.0.0.1:0",
                                   "--peer-addr", "127.0.0.1:0"])
        let peerPort = UInt16(try node.waitForLog(#"node started .*peer\.addr=127\.0\.0\.1:(\d+)"#))!
        let loop = EventLoop.start()
        // The node made its cluster key on first start; the peer plane opens only with it.
        let keyring = try ClusterKeyFile.load(dir.path + "/data/cluster.key")
        let client = FrameClient(loop: loop, keys: PeerKeys(keys: keyring.rawKeys))
        let answer = try await client.request(to: HostPort(host: "127.0.0.1", port: peerPort),
                                              type: Node.PeerFrameType.ping, payload: [1, 2, 3], deadline: .seconds(5))
        #expect(answer.payload == [1, 2, 3])
        await #expect { _ = try await client.request(to: HostPort(host: "127.0.0.1", port: peerPort), type: 999,
                                                      payload: [], deadline: .seconds(5)) } throws: {
            ($0 as? FrameError)?.message.contains("unknown frame type 999") == true
        }
        client.shutdown()
        loop.shutdown()
        node.signal(SIGINT)
        #expect(node.wait() == 0)
    }

    @Test func secondNodeOnTheSameDataDirectoryIsRefused() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let (first, _) = try NodeProcessTests.startNode(dir)
        let (status, _, stderr) = try KaaProcess.run(["node", "--data-dir", dir.path + "/data",
                                                      "--http-addr", "127.0.0.1:0", "--peer-addr", "127.0.0.1:0"])
        #expect(status == 1)
        #expect(stderr.contains("data directory \(dir.path)/data is in use by another kaa node (pid \(first.pid))"))
        first.signal(SIGTERM)
        first.wait()
    }

    @Test func portInUseIsAClearStartupError() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let taken = try SilentListener(backlog: 1)
        let (status, _, stderr) = try KaaProcess.run(["node", "--data-dir", dir.path + "/data",
                                                      "--http-addr", "127.0.0.1:\(taken.port)", "--peer-addr", "127.0.0.1:0"])
        #expect(status == 1)
        #expect(stderr.contains("cannot start node: listen on 127.0.0.1:\(taken.port): address already in use"))
    }

    @Test func configFileEnvironmentAndFlagsLayerInThatOrder() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let file = dir.path + "/node.yaml"
        try "data_dir: \(dir.path)/from-file\nhttp_addr: 127.0.0.1:1\nlog_level: debug\nmax_body_bytes: 1024\n"
            .write(toFile: file, atomically: true, encoding: .utf8)
        let config = try NodeConfig.load(file: file, environment: ["KAA_HTTP_ADDR": "127.0.0.1:2", "KAA_LOG_LEVEL": "warning"],
                                         flags: ["log_level": "error"])
        #expect(config.dataDir == dir.path + "/from-file")
        #expect(config.httpAddr == HostPort(host: "127.0.0.1", port: 2))
        #expect(config.logLevel == "error")
        #expect(config.http.maxBodyBytes == 1024)
    }

    @Test(arguments: [
        ("colour: blue\n", "unknown key `colour`; known keys: data_dir, http_addr"),
        ("- a\n- b\n", "must be a mapping of keys to values"),
        ("http_addr: nowhere\n", "address `nowhere` has no port"),
        ("header_timeout: soon\n", "header_timeout `soon` is not a duration; write it like 500ms, 10s, 2m or 1h"),
        ("max_connections: -3\n", "max_connections `-3` must be a whole number of at least 1"),
        ("http_addr: [1, 2]\n", "`http_addr` must be a single value"),
        ("a: b: c\n", "is not valid YAML"),
        ("data_dir: &d /tmp\nzone: *d\n", "may not use YAML anchors or aliases"),
    ])
    func badConfigFilesNameTheProblem(yaml: String, message: String) throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let file = dir.path + "/node.yaml"
        try yaml.write(toFile: file, atomically: true, encoding: .utf8)
        #expect { _ = try NodeConfig.load(file: file, environment: [:], flags: [:]) } throws: {
            "\($0)".contains(message)
        }
        let (status, _, stderr) = try KaaProcess.run(["node", "--config", file])
        #expect(status != 0)
        #expect(stderr.contains(message))
    }

    @Test func theSampleConfigInTheRepositoryParses() throws {
        let file = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../cluster/node.yaml").standardized.path
        let config = try NodeConfig.load(file: file, environment: [:], flags: [:])
        #expect(config.httpAddr == HostPort(host: "0.0.0.0", port: 7070))
        #expect(config.seeds.count == 2)
        #expect(config.retainVersions == 5)
    }

    /// The config the .deb installs: a first node's, with the paths the package makes.
    @Test func theProductionConfigParses() throws {
        let file = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../cluster/node-production.yaml").standardized.path
        let config = try NodeConfig.load(file: file, environment: [:], flags: [:])
        #expect(config.dataDir == "/var/lib/kaa")
        #expect(config.httpAddr == HostPort(host: "0.0.0.0", port: 7070))
        #expect(config.peerAddr == HostPort(host: "0.0.0.0", port: 7946))
        #expect(config.seeds.isEmpty)
        #expect(config.clusterKeyFile == "/etc/kaa/cluster.key")
        #expect(config.tokensFile == "/etc/kaa/tokens")
        #expect(!config.gossipPlaintext && config.peerEncryption)
    }

    @Test func versionAndHelp() throws {
        let (status, out, _) = try KaaProcess.run(["--version"])
        #expect(status == 0)
        #expect(out == KaaVersion.string + "\n")
        let (nodeStatus, help, _) = try KaaProcess.run(["node", "--help"])
        #expect(nodeStatus == 0)
        for flag in NodeConfig.keys.map(\.flag) { #expect(help.contains(flag), "node --help lacks \(flag)") }
    }

    /// Calls still waiting or running when the shutdown grace ends are answered 503, not dropped
    /// with their connection.
    @Test func callsInFlightWhenTheGraceEndsAreAnswered() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let (node, port) = try NodeProcessTests.startNode(dir, extra: ["--inline-threshold", "0", "--model-concurrency", "1",
                                                                       "--model-queue", "64", "--shutdown-grace", "0"])
        try ServingTests.publish("digits-mlp", as: "digits", version: 1, port: port, dir: dir)
        let row = "[" + (0..<64).map { String($0 % 16) }.joined(separator: ",") + "]"
        let body = #"{"inputs":[{"name":"input","shape":[256,64],"datatype":"FP32","data":[\#(Array(repeating: row, count: 256).joined(separator: ","))]}]}"#
        let c = try RawSocket(port: port, timeout: 30)
        #expect(try ServingTests.post(c, "/v2/models/digits/infer", body).status == 200) // loaded
        // One call per connection, all taken (most of them queued) before the signal.
        let calls = 40
        let clients = try (0..<calls).map { _ in try RawSocket(port: port, timeout: 30) }
        for client in clients { try client.send(ServingTests.request("/v2/models/digits/infer", body)) }
        var queued = 0.0
        for _ in 0..<500 where queued < 20 {
            queued = ServingTests.value("kaa_inference_queue_depth", in: try ServingTests.metrics(c)) ?? 0
            if queued < 20 { usleep(10_000) }
        }
        #expect(queued >= 20, "calls waiting when the signal is sent")
        node.signal(SIGTERM)
        var statuses: [Int] = []
        for client in clients {
            guard let r = try? client.readResponse() else { break }
            statuses.append(r.status)
            if r.status != 200 { #expect(r.text.contains("the node is shutting down"), "\(r.text)") }
        }
        #expect(statuses.count == calls, "every call answered: \(statuses)")
        #expect(statuses.allSatisfy { $0 == 200 || $0 == 503 })
        #expect(statuses.contains(503), "the grace (0) ended with calls in flight")
        #expect(node.wait() == 0)
    }
}
