import Foundation
import Glibc
import KaaCore
import KaaSnapshot
import KaaTestSupport
import Logging
import Testing

/// A snapshot copied from one node to another over the peer plane, streamed into the
/// receiver's ingest (the path an upload takes), on real processes.
@Suite(.serialized) struct SnapshotTransferTests {
    /// Two nodes that share a cluster key, not joined (a fetch needs only the peer address).
    static func twoNodes(_ dir: TemporaryDirectory, prepare: (String) throws -> Void = { _ in })
        throws -> (a: GossipLiveTests.Running, b: GossipLiveTests.Running) {
        let key = dir.path + "/cluster.key"
        #expect(try KaaProcess.run(["keys", "cluster", "--out", key]).0 == 0)
        try prepare(dir.path + "/a")
        let a = try GossipLiveTests.start("a", in: dir, seeds: [], keyFile: key)
        let b = try GossipLiveTests.start("b", in: dir, seeds: [], keyFile: key)
        return (a, b)
    }

    static func fetch(_ node: UInt16, _ path: String, _ body: String) throws -> RawResponse {
        let c = try RawSocket(port: node, timeout: 120)
        return try ServingTests.post(c, path, body)
    }

    @Test func aNodeFetchesASnapshotFromAPeerAndServesIt() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let (a, b) = try SnapshotTransferTests.twoNodes(dir)
        defer { for n in [a, b] { n.process.signal(SIGTERM); n.process.wait() } }
        try ServingTests.publish("iris-logreg", as: "iris", version: 3, port: a.http, dir: dir)
        let from = #"{"from":"127.0.0.1:\#(a.peer)"}"#
        let fetched = try SnapshotTransferTests.fetch(b.http, "/kaa/v1/snapshots/iris/3/fetch", from)
        #expect(fetched.status == 201, "\(fetched.text)")
        #expect(fetched.text.contains(#""outcome":"stored""#), "\(fetched.text)")
        // Served there, with the same identity.
        let c = try RawSocket(port: b.http)
        let r = try ServingTests.post(c, "/v2/models/iris/infer", HostileRequestTests.iris)
        #expect(r.status == 200, "\(r.text)")
        try c.send("GET /kaa/v1/snapshots?name=iris HTTP/1.1\r\nHost: x\r\n\r\n")
        let onB = try c.readResponse().text
        let d = try RawSocket(port: a.http)
        try d.send("GET /kaa/v1/snapshots?name=iris HTTP/1.1\r\nHost: x\r\n\r\n")
        let onA = try d.readResponse().text
        let digest = try #require(onA.firstMatch(of: /sha256:[0-9a-f]{64}/)).output
        #expect(onB.contains(digest))
        // Again: already present.
        #expect(try SnapshotTransferTests.fetch(b.http, "/kaa/v1/snapshots/iris/3/fetch", from).status == 200)
        // What cannot be fetched says why.
        let missing = try SnapshotTransferTests.fetch(b.http, "/kaa/v1/snapshots/iris/4/fetch", from)
        #expect(missing.status == 404, "\(missing.text)")
        #expect(missing.text.contains("model `iris` has no version 4"), "\(missing.text)")
        let wrong = try SnapshotTransferTests.fetch(b.http, "/kaa/v1/snapshots/iris/3/fetch",
                                                    #"{"from":"127.0.0.1:\#(a.peer)","digest":"sha256:\#(String(repeating: "0", count: 64))"}"#)
        #expect(wrong.status == 404, "\(wrong.text)")
        let closed = try SilentListener()
        let port = closed.port
        _ = consume closed
        let unreachable = try SnapshotTransferTests.fetch(b.http, "/kaa/v1/snapshots/iris/3/fetch", #"{"from":"127.0.0.1:\#(port)"}"#)
        #expect(unreachable.status == 502, "\(unreachable.text)")
        let bad = try SnapshotTransferTests.fetch(b.http, "/kaa/v1/snapshots/iris/3/fetch", "{}")
        #expect(bad.status == 400, "\(bad.text)")
    }

    /// Issue 8: moving a 1 GB archive grows neither node's resident memory by more than 64 MB.
    /// The peaks (`VmHWM`) are read after the move, against the resident size before it.
    @Test func aGigabyteMovesInBoundedMemory() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let archive = dir.path + "/big.kaa"
        let (a, b) = try SnapshotTransferTests.twoNodes(dir) { data in
            // The archive goes straight into node a's store, as a publish would leave it.
            let model = dir.path + "/big.onnx"
            try ONNXFixture.writeLarge(to: model, weightBytes: 1_000_000_000)
            let built = try KaaProcess.run(["snapshot", "build", "--model", model, "--name", "big", "--version", "1", "--out", archive])
            #expect(built.0 == 0, "\(built.2)")
            unlink(model)
            let store = try SnapshotStore(configuration: .init(directory: data), logger: Logger(label: "test"))
            _ = try store.ingest(file: archive)
            unlink(archive)
        }
        defer { for n in [a, b] { n.process.signal(SIGTERM); n.process.wait() } }
        let before = (a: SnapshotTransferTests.memory(a.process.pid), b: SnapshotTransferTests.memory(b.process.pid))
        let fetched = try SnapshotTransferTests.fetch(b.http, "/kaa/v1/snapshots/big/1/fetch", #"{"from":"127.0.0.1:\#(a.peer)"}"#)
        #expect(fetched.status == 201, "\(fetched.text)")
        let after = (a: SnapshotTransferTests.memory(a.process.pid), b: SnapshotTransferTests.memory(b.process.pid))
        let growth = (a: after.a.peak - before.a.resident, b: after.b.peak - before.b.resident)
        #expect(growth.a <= 64 << 20, "the sender's peak grew \(growth.a >> 20) MiB over its resident size before")
        #expect(growth.b <= 64 << 20, "the receiver's peak grew \(growth.b >> 20) MiB over its resident size before")
        print("1 GB transfer: peak over resident before: sender \(growth.a >> 20) MiB, receiver \(growth.b >> 20) MiB")
        func size(_ node: GossipLiveTests.Running) -> Int {
            (try? FileManager.default.attributesOfItem(atPath: node.dataDir + "/snapshots/big/1.kaa")[.size] as? Int) ?? 0
        }
        #expect(size(b) == size(a) && size(a) > 500_000_000, "the archive moved whole: \(size(a)) -> \(size(b)) bytes")
    }

    /// `VmRSS` and `VmHWM` of a process, in bytes.
    static func memory(_ pid: Int32) -> (resident: Int, peak: Int) {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        func field(_ name: String) -> Int {
            guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix(name + ":") }),
                  let kib = Int(line.split(separator: " ").dropFirst().first ?? "") else { return 0 }
            return kib << 10
        }
        return (field("VmRSS"), field("VmHWM"))
    }
}
