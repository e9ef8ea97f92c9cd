import Crypto
import Foundation
import Glibc
import KaaCluster
import KaaCore
import KaaIO
import KaaNode
@testable import KaaSnapshot
import KaaTestSupport
import Testing

/// Seeded mutations of valid requests, uploads and peer traffic, sent to a live node process.
/// After every batch the node must still be running, answer its health route within
/// ``FuzzTarget/healthBound`` and keep its resident memory under ``FuzzTarget/rssBound``; and
/// no call may end in 500, which would mean the node failed where it should have refused.
///
/// The bounds are liveness bounds, far above what a healthy node needs on a slow machine.
/// `KAA_FUZZ_SCALE=N` runs N times the cases (e.g. 20 for an hour-long run); a failure names
/// its seed and case number, which replays it.
@Suite(.serialized) struct NodeFuzzTests {
    static var scale: Int { Int(ProcessInfo.processInfo.environment["KAA_FUZZ_SCALE"] ?? "") ?? 1 }

    @Test func inferenceAndControlRequests() throws {
        let target = try FuzzTarget.start()
        defer { target.stop() }
        let corpus = try target.requestCorpus()
        var m = Mutator(seed: 0x5eed_0001)
        var fiveHundreds: [String] = []
        var statuses: [Int: Int] = [:]
        defer { print("fuzz request statuses (0: closed without an answer): \(statuses.sorted { $0.key < $1.key })") }
        let cases = 1_500 * NodeFuzzTests.scale
        for i in 0..<cases {
            let base = m.pick(corpus)
            let request: [UInt8]
            switch m.int(0...3) {
            case 0, 1: request = base.with(body: m.mutate(base.body, donors: corpus.map(\.body)))
            case 2: request = base.with(header: m.pick(FuzzRequest.hostileHeaders(&m)))
            default: request = m.mutate(base.bytes, donors: corpus.map(\.bytes))
            }
            let status = try target.exchange(request)
            statuses[status ?? 0, default: 0] += 1
            if status == 500 {
                fiveHundreds.append("case \(i): \(String(decoding: request.prefix(300), as: UTF8.self))")
            }
            if i % 100 == 99 { try target.checkAlive("request case \(i) (seed 0x5eed0001)") }
        }
        try target.checkAlive("the last request case")
        #expect(fiveHundreds.isEmpty, "500 answers: \(fiveHundreds.prefix(5))")
        #expect(target.stopGracefully() == 0)
    }

    @Test func uploads() throws {
        let target = try FuzzTarget.start()
        defer { target.stop() }
        let samples = try ["iris-logreg", "news-text", "wine-forest"].map { try target.buildSample($0) }
        let yamls = try samples.map { try String(contentsOfFile: "\(ServingTests.repo)/snapshots/\($0.name)/pipeline.yaml", encoding: .utf8) }
            + [FuzzTarget.billionLaughs]
        var m = Mutator(seed: 0x5eed_0002)
        var fiveHundreds: [String] = []
        let cases = 240 * NodeFuzzTests.scale
        for i in 0..<cases {
            // Each case under a name of its own, so that it is checked in full rather than
            // refused as a conflict with the published sample.
            let name = "f\(i)"
            var sample = m.pick(samples)
            sample.manifest.name = name
            let manifestBytes = try sample.manifest.canonicalBytes()
            let archive: [UInt8]
            var what: String
            switch m.int(0...3) {
            case 0:
                what = "archive bytes"
                archive = m.mutate(try FuzzTarget.container(manifest: manifestBytes, files: sample.files))
            case 1:
                what = "manifest"
                archive = try FuzzTarget.container(manifest: m.mutate(manifestBytes), files: sample.files)
            case 2:
                what = "pipeline"
                var manifest = sample.manifest
                manifest.pipeline = String(decoding: m.mutate(Array(m.pick(yamls).utf8)), as: UTF8.self)
                archive = try FuzzTarget.container(manifest: manifest.canonicalBytes(), files: sample.files)
            default:
                what = "model"
                var manifest = sample.manifest
                var files = sample.files
                let model = m.mutate(files[0].bytes)
                files[0].bytes = model
                manifest.files[0].size = UInt64(model.count)
                manifest.files[0].sha256 = SHA256.hash(data: model).map { String(format: "%02x", $0) }.joined()
                archive = try FuzzTarget.container(manifest: manifest.canonicalBytes(), files: files)
            }
            let upload = Array("PUT /kaa/v1/snapshots/\(name) HTTP/1.1\r\nHost: x\r\nContent-Length: \(archive.count)\r\n\r\n".utf8)
            let status = try target.exchange(upload + archive)
            if status == 500 { fiveHundreds.append("case \(i) (\(what))") }
            if status == 201 {
                // Stored: serving it must not fail either (a 503 names why it cannot load).
                for request in try target.requestCorpus(models: [name]) where request.bytes.starts(with: Array("POST".utf8)) {
                    if try target.exchange(request.bytes) == 500 { fiveHundreds.append("case \(i) (\(what)): infer") }
                }
            }
            if i % 20 == 19 { try target.checkAlive("upload case \(i) (seed 0x5eed0002)") }
        }
        try target.checkAlive("the last upload case")
        #expect(fiveHundreds.isEmpty, "500 answers: \(fiveHundreds.prefix(5))")
        #expect(target.stopGracefully() == 0)
    }

    @Test func peerFramesAndGossipDatagrams() throws {
        let target = try FuzzTarget.start()
        defer { target.stop() }
        let keyring = try ClusterKeyFile.load(target.clusterKeyFile)
        let peerKeys = PeerKeys(keys: keyring.rawKeys)
        let nodeID = NodeID(try String(contentsOfFile: target.dir.path + "/data/node-id", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines))
        let fake = NodeInfo(id: NodeID("fuzz-peer-0000000000000001"), name: "fuzz",
                            peerAddress: HostPort(host: "127.0.0.1", port: 1), httpAddress: HostPort(host: "127.0.0.1", port: 2))
        let packets: [[UInt8]] = [
            WireCodec.encode(Packet(message: .ping(Ping(sequenceNumber: 1, target: nodeID, source: fake.id, replyTo: fake.peerAddress)),
                                    updates: [.alive(fake, incarnation: 1)])),
            WireCodec.encode(Packet(message: .ack(Ack(sequenceNumber: 7, source: fake.id)),
                                    updates: [.suspect(nodeID, incarnation: 1, from: fake.id), .dead(fake.id, incarnation: 2, from: nodeID)])),
            WireCodec.encode(Packet(message: .gossip, updates: [.left(fake.id, incarnation: 3)])),
        ]
        let pushPull = WireCodec.encode(PushPullState(isJoin: true, members: [MemberState(info: fake, incarnation: 1, status: .alive)]))
        var m = Mutator(seed: 0x5eed_0003)
        let cases = 600 * NodeFuzzTests.scale
        let hello = PeerHandshake.hello(keys: peerKeys, nonce: PeerHandshake.nonce())
        for i in 0..<cases {
            switch m.int(0...4) {
            case 0:
                // A gossip datagram, sealed with the cluster key, whose plaintext is mutated.
                let plain = m.mutate(m.pick(packets), donors: packets)
                guard FuzzTarget.staysOnLoopback(packet: plain) else { continue }
                try target.sendDatagram(try keyring.seal(plain))
            case 1:
                try target.sendDatagram(m.chance(50) ? m.mutate(try keyring.seal(m.pick(packets))) : m.mutate(m.pick(packets)))
            case 2:
                // Push-pull frames: sealed mutated state, or the frame itself mutated.
                let plain = m.mutate(pushPull)
                guard FuzzTarget.staysOnLoopback(pushPull: plain) else { continue }
                var frame = Frame(kind: .request, type: 2, id: UInt64(i + 1), payload: try keyring.seal(plain)).body()
                if m.chance(30) { frame = m.mutate(frame) }
                try target.sendPeer(keys: peerKeys) { [frame] peer in peer.record(frame) }
            case 3:
                // Frames (any kind, stream frames included) inside valid records, and broken records.
                let ping = Frame(kind: .request, type: UInt16(m.int(0...4)), id: UInt64(i + 1), payload: Array("ping".utf8)).body()
                let body = m.mutate(ping)
                let raw = m.chance(20)
                try target.sendPeer(keys: peerKeys) { [body] peer in raw ? m.mutate(peer.record(body)) : peer.record(body) }
            default:
                // The handshake itself.
                try target.sendHandshake(m.mutate(hello))
            }
            if i % 100 == 99 { try target.checkAlive("peer case \(i) (seed 0x5eed0003)") }
        }
        try target.checkAlive("the last peer case")
        // The peer plane still answers a well-formed ping.
        let c = try RawPeer(port: target.peerPort, keys: peerKeys, timeout: FuzzTarget.healthBound)
        try c.send([Frame(kind: .request, type: 1, id: 42, payload: [7, 7])])
        #expect(c.readFrame()?.payload == [7, 7])
        #expect(target.stopGracefully() == 0)
    }
}

/// One fuzzed node process and how to talk to it.
final class FuzzTarget {
    /// How long the health route may take to answer after a batch of hostile input.
    static let healthBound: Double = 15
    /// Resident memory the node may hold: a few times what it needs with every cap reached.
    static let rssBound = 1_536 << 20

    let node: KaaProcess
    let port: UInt16
    let peerPort: UInt16
    let dir: TemporaryDirectory
    let clusterKeyFile: String
    private var stopped = false

    private init(node: KaaProcess, port: UInt16, peerPort: UInt16, dir: TemporaryDirectory, clusterKeyFile: String) {
        self.node = node
        self.port = port
        self.peerPort = peerPort
        self.dir = dir
        self.clusterKeyFile = clusterKeyFile
    }

    /// Starts a node with every sample published, with and without its pipeline.
    static func start() throws -> FuzzTarget {
        let dir = TemporaryDirectory()
        let keyFile = dir.path + "/cluster.key"
        guard try KaaProcess.run(["keys", "cluster", "--out", keyFile]).0 == 0 else { throw RawSocketError("kaa keys cluster failed") }
        let node = try KaaProcess(["node", "--data-dir", dir.path + "/data", "--http-addr", "127.0.0.1:0", "--peer-addr", "127.0.0.1:0",
                                   "--cluster-key-file", keyFile, "--header-timeout", "2s", "--body-timeout", "5s",
                                   "--load-retry-after", "0"])
        let port = UInt16(try node.waitForLog(#"node started .*http\.addr=127\.0\.0\.1:(\d+)"#))!
        let peerPort = UInt16(try node.waitForLog(#"node started .*peer\.addr=127\.0\.0\.1:(\d+)"#))!
        let target = FuzzTarget(node: node, port: port, peerPort: peerPort, dir: dir, clusterKeyFile: keyFile)
        for sample in ["iris-logreg", "news-text", "digits-mlp", "wine-forest", "diabetes-gbr"] {
            let out = dir.path + "/\(sample).kaa", plain = dir.path + "/\(sample)-plain.kaa"
            let model = "\(ServingTests.repo)/snapshots/\(sample)/model.onnx"
            for (args, file) in [(["--pipeline", "\(ServingTests.repo)/snapshots/\(sample)/pipeline.yaml", "--name", sample], out),
                                 (["--name", sample + "-plain"], plain)] {
                let build = try KaaProcess.run(["snapshot", "build", "--model", model, "--version", "1", "--out", file] + args)
                guard build.0 == 0 else { throw RawSocketError("build \(sample): \(build.2)") }
                let publish = try KaaProcess.run(["publish", file, "--to", "http://127.0.0.1:\(port)"])
                guard publish.0 == 0 else { throw RawSocketError("publish \(sample): \(publish.2)") }
            }
        }
        return target
    }

    /// Sends `bytes` on a new connection, half-closes it, and returns the status of the first
    /// answer (nil when the node closed without one, as it may for malformed bytes).
    func exchange(_ bytes: [UInt8]) throws -> Int? {
        let c = try RawSocket(port: port, timeout: FuzzTarget.healthBound)
        do { try c.send(bytes) } catch { return nil } // the node may close before reading it all
        Glibc.shutdown(c.fd, Int32(SHUT_WR))
        let answer: [UInt8]
        do { answer = try c.readToEnd() } catch { throw RawSocketError("no answer and no close within \(FuzzTarget.healthBound) s") }
        guard answer.starts(with: Array("HTTP/1.1 ".utf8)), answer.count >= 12 else { return nil }
        return Int(String(decoding: answer[9..<12], as: UTF8.self))
    }

    func sendDatagram(_ bytes: [UInt8]) throws {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = peerPort.bigEndian
        inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr)
        _ = bytes.withUnsafeBytes { raw in
            withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, raw.baseAddress, raw.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
    }

    /// Opens an authenticated peer connection, sends what `records` makes on it, and closes it
    /// after reading what comes back (bounded: the node answers or closes, or the short read
    /// timeout ends the wait).
    func sendPeer(keys: PeerKeys, _ records: (RawPeer) -> [UInt8]) throws {
        let c: RawPeer
        do { c = try RawPeer(port: peerPort, keys: keys, timeout: 0.5) } catch {
            try checkAlive("a refused peer connection")
            throw RawSocketError("\(error); node stderr: \(node.stderr.suffix(3000))")
        }
        do { try c.sendRaw(records(c)) } catch { return }
        _ = try? c.socket.readSome()
    }

    /// Sends a (mutated) handshake hello and reads what comes back.
    func sendHandshake(_ hello: [UInt8]) throws {
        let c = try RawSocket(port: peerPort, timeout: 0.2)
        do { try c.send(hello) } catch { return }
        _ = try? c.readSome()
    }

    /// Fails the test, and stops it, when the node died, stalled or grew past its bound.
    func checkAlive(_ context: String) throws {
        try #require(node.process.isRunning, "the node is not running after \(context); stderr: \(node.stderr.suffix(2000))")
        let c: RawSocket
        do { c = try RawSocket(port: port, timeout: FuzzTarget.healthBound) } catch {
            Issue.record("the node refuses connections after \(context); stderr: \(node.stderr.suffix(3000))")
            throw error
        }
        try c.send("GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(try c.readResponse().status == 200, "health after \(context)")
        let rss = FuzzTarget.residentBytes(pid: node.pid)
        try #require(rss < FuzzTarget.rssBound, "the node holds \(rss >> 20) MiB after \(context)")
    }

    static func residentBytes(pid: Int32) -> Int {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kib = Int(line.split(separator: " ").dropFirst().first ?? "") else { return 0 }
        return kib << 10
    }

    func stopGracefully() -> Int32 {
        stopped = true
        node.signal(SIGTERM)
        return node.wait()
    }

    func stop() {
        if !stopped {
            node.signal(SIGKILL)
            _ = node.wait()
        }
        dir.remove()
    }

    // MARK: corpora

    /// Valid requests to the published models (their metadata decides the tensors) and to the
    /// control and repository routes.
    func requestCorpus(models: [String]? = nil) throws -> [FuzzRequest] {
        let names = models ?? ["iris-logreg", "news-text", "digits-mlp", "wine-forest", "diabetes-gbr",
                               "iris-logreg-plain", "news-text-plain", "digits-mlp-plain"]
        var corpus: [FuzzRequest] = []
        for name in names {
            let c = try RawSocket(port: port)
            try c.send("GET /v2/models/\(name) HTTP/1.1\r\nHost: x\r\n\r\n")
            let meta = try c.readResponse()
            guard meta.status == 200, let json = try JSONSerialization.jsonObject(with: Data(meta.body)) as? [String: Any],
                  let inputs = json["inputs"] as? [[String: Any]] else { continue }
            for rows in [1, 3] {
                var tensors: [String] = []
                var binaryHeader: [String] = [], binary: [UInt8] = []
                for input in inputs {
                    let dtype = input["datatype"] as? String ?? "FP32"
                    let shape = (input["shape"] as? [Int] ?? [-1]).enumerated().map { $0.element >= 0 ? $0.element : ($0.offset == 0 ? rows : 1) }
                    let count = shape.reduce(1, *)
                    let values: [String] = (0..<count).map { i in
                        switch dtype {
                        case "BYTES": return "\"the striker scored a late goal \(i)\""
                        case "INT64", "INT32": return String(i % 3)
                        case "BOOL": return i % 2 == 0 ? "true" : "false"
                        default: return String(Double(i % 7) * 0.5 + 0.1)
                        }
                    }
                    let shapeText = "[" + shape.map(String.init).joined(separator: ",") + "]"
                    tensors.append(#"{"name":"\#(input["name"] as? String ?? "")","shape":\#(shapeText),"datatype":"\#(dtype)","data":[\#(values.joined(separator: ","))]}"#)
                    if dtype == "FP32" {
                        for i in 0..<count { withUnsafeBytes(of: (Float(i % 7) * 0.5).bitPattern.littleEndian) { binary += $0 } }
                        binaryHeader.append(#"{"name":"\#(input["name"] as? String ?? "")","shape":\#(shapeText),"datatype":"FP32","parameters":{"binary_data_size":\#(count * 4)}}"#)
                    }
                }
                let body = #"{"id":"fuzz","inputs":[\#(tensors.joined(separator: ","))]}"#
                corpus.append(FuzzRequest(head: "POST /v2/models/\(name)/infer HTTP/1.1\r\nHost: x\r\n", body: Array(body.utf8)))
                if binaryHeader.count == inputs.count {
                    let header = Array(#"{"inputs":[\#(binaryHeader.joined(separator: ","))],"parameters":{"binary_data_output":true}}"#.utf8)
                    corpus.append(FuzzRequest(head: "POST /v2/models/\(name)/versions/1/infer HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: \(header.count)\r\n",
                                              body: header + binary))
                }
            }
            corpus.append(FuzzRequest(head: "GET /v2/models/\(name)/ready HTTP/1.1\r\nHost: x\r\n", body: []))
            corpus.append(FuzzRequest(head: "PUT /kaa/v1/models/\(name)/aliases/stable HTTP/1.1\r\nHost: x\r\n", body: Array("1".utf8)))
        }
        if models == nil {
            corpus += [
                FuzzRequest(head: "POST /v2/repository/index HTTP/1.1\r\nHost: x\r\n", body: Array("{}".utf8)),
                FuzzRequest(head: "POST /v2/repository/models/iris-logreg/unload HTTP/1.1\r\nHost: x\r\n", body: []),
                FuzzRequest(head: "POST /v2/repository/models/iris-logreg/load HTTP/1.1\r\nHost: x\r\n", body: []),
                FuzzRequest(head: "GET /kaa/v1/snapshots?name=iris-logreg HTTP/1.1\r\nHost: x\r\n", body: []),
                FuzzRequest(head: "GET /kaa/v1/snapshots/iris-logreg/stable HTTP/1.1\r\nHost: x\r\n", body: []),
                FuzzRequest(head: "PUT /kaa/v1/models/iris-logreg/aliases/canary HTTP/1.1\r\nHost: x\r\n", body: Array(#"{"version": 1}"#.utf8)),
                FuzzRequest(head: "DELETE /kaa/v1/models/iris-logreg/aliases/canary HTTP/1.1\r\nHost: x\r\n", body: []),
                FuzzRequest(head: "GET /kaa/v1/members HTTP/1.1\r\nHost: x\r\n", body: []),
                FuzzRequest(head: "GET /metrics HTTP/1.1\r\nHost: x\r\n", body: []),
                FuzzRequest(head: "GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n", body: []),
            ]
        }
        return corpus
    }

    /// A sample's archive as `kaa snapshot build` writes it, and its parts.
    struct Sample {
        var name: String
        var archive: [UInt8]
        var manifest: SnapshotManifest
        var manifestBytes: [UInt8]
        var files: [(path: String, bytes: [UInt8])]
    }

    func buildSample(_ sample: String) throws -> Sample {
        let path = dir.path + "/\(sample).kaa"
        let (archive, files) = try SnapshotArchive.loadFiles(path: path)
        return Sample(name: sample, archive: try [UInt8](Data(contentsOf: URL(fileURLWithPath: path))),
                      manifest: archive.manifest, manifestBytes: archive.manifestBytes,
                      files: archive.manifest.files.map { ($0.path, files[$0.path] ?? []) })
    }

    /// An archive of the given manifest bytes and files, framed and compressed as Kaa writes them.
    static func container(manifest: [UInt8], files: [(path: String, bytes: [UInt8])]) throws -> [UInt8] {
        var out: [UInt8] = []
        let encoder = try LZ4FrameEncoder { (chunk) throws(SnapshotError) in out.append(contentsOf: chunk) }
        try encoder.write(ContainerFormat.header())
        try encoder.write(ContainerFormat.entryHeader(kind: .manifest, name: SnapshotManifest.entryName, size: UInt64(manifest.count)))
        try encoder.write(manifest)
        for f in files {
            try encoder.write(ContainerFormat.entryHeader(kind: .file, name: f.path, size: UInt64(f.bytes.count)))
            try encoder.write(f.bytes)
        }
        try encoder.write(ContainerFormat.entryHeader(kind: .end, name: "", size: 0))
        try encoder.finish()
        return out
    }

    /// A pipeline whose anchors, used as mapping keys, expand exponentially (1.2 KB of text).
    static let billionLaughs: String = {
        var lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
        for i in 1...9 { lines.append("a\(i): &a\(i) [" + Array(repeating: "*a\(i - 1)", count: 9).joined(separator: ", ") + "]") }
        lines.append("? *a9\n: boom")
        return lines.joined(separator: "\n") + "\nversion: 1\n"
    }()

    /// Whether a mutated gossip packet, as the node would decode it, names only loopback
    /// addresses (or does not decode at all): the node then sends nothing off this machine.
    static func staysOnLoopback(packet: [UInt8]) -> Bool {
        guard let p = try? WireCodec.decodePacket(packet) else { return true }
        var hosts: [HostPort] = []
        switch p.message {
        case .ping(let ping): hosts.append(ping.replyTo)
        case .pingRequest(let request): hosts += [request.targetAddress, request.replyTo]
        case .ack, .nack, .gossip: break
        }
        for u in p.updates { if case .alive(let info, _) = u { hosts += [info.peerAddress, info.httpAddress] } }
        return hosts.allSatisfy(isLoopback)
    }

    static func staysOnLoopback(pushPull: [UInt8]) -> Bool {
        guard let state = try? WireCodec.decodePushPull(pushPull) else { return true }
        return state.members.allSatisfy { isLoopback($0.info.peerAddress) && isLoopback($0.info.httpAddress) }
    }

    static func isLoopback(_ address: HostPort) -> Bool {
        var a = in_addr()
        return inet_pton(AF_INET, address.host, &a) == 1 && UInt32(bigEndian: a.s_addr) >> 24 == 127
    }
}

/// One valid request of the corpus: head lines (without Content-Length) and body.
struct FuzzRequest {
    var head: String
    var body: [UInt8]

    var bytes: [UInt8] { with(body: body) }

    /// The request with another body, its Content-Length set to match.
    func with(body: [UInt8]) -> [UInt8] {
        Array((head + "Content-Length: \(body.count)\r\n\r\n").utf8) + body
    }

    /// The request with one more header line.
    func with(header: String) -> [UInt8] {
        Array((head + header + "\r\nContent-Length: \(body.count)\r\n\r\n").utf8) + body
    }

    static func hostileHeaders(_ m: inout Mutator) -> [String] {
        let n = String(decoding: m.pick(Array(Mutator.tokens[0..<17])), as: UTF8.self)
        return [
            "Kaa-Deadline-Ms: \(n)", "Inference-Header-Content-Length: \(n)", "Content-Length: \(n)",
            "Transfer-Encoding: chunked", "Transfer-Encoding: gzip, chunked", "Content-Encoding: gzip",
            "Expect: 100-continue", "Expect: \(n)", "Connection: upgrade\r\nUpgrade: websocket", "Host: \(n)",
        ]
    }
}
