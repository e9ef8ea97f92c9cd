import Foundation
import Glibc
import KaaTestSupport
import Testing

/// Triton's Python client (`tritonclient[http]` from PyPI, unchanged) against a real node process:
/// health, server and model metadata, readiness, infer with JSON and binary tensors both ways, a
/// subset of outputs, BYTES text, explicit versions, pooled concurrent calls, errors and the
/// repository extension. The checks live in `tools/triton-client-check.py`; the client lives in
/// `.venv-test`, which `tools/python-env.sh test` creates (tools/test.sh runs it first).
@Suite struct TritonClientTests {
    static let python = ServingTests.repo + "/.venv-test/bin/python"
    static let script = ServingTests.repo + "/tools/triton-client-check.py"

    @Test func tritonHTTPClientWorksUnchanged() throws {
        try #require(FileManager.default.isExecutableFile(atPath: TritonClientTests.python),
                     "no \(TritonClientTests.python): run tools/python-env.sh test (tools/test.sh does) to install tritonclient")
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let (node, port) = try NodeProcessTests.startNode(dir)
        defer { node.signal(SIGTERM); node.wait() }
        try ServingTests.publish("iris-logreg", as: "iris", version: 1, port: port, dir: dir)
        try ServingTests.publish("iris-logreg", as: "iris", version: 2, port: port, dir: dir)
        try ServingTests.publish("digits-mlp", as: "digits", version: 1, port: port, dir: dir)
        try ServingTests.publish("news-text", as: "news", version: 1, port: port, dir: dir)

        let (status, output) = try TritonClientTests.runScript(["--url", "127.0.0.1:\(port)"], log: dir.path + "/check.log")
        print("tools/triton-client-check.py against 127.0.0.1:\(port):\n\(output)")
        #expect(status == 0, "triton-client-check.py exited \(status):\n\(output)\nnode stderr:\n\(node.stderr)")
        #expect(output.contains("ok    infer_binary_tensors"), "\(output)")
    }

    /// The same checks against a node that holds nothing: every snapshot requires a GPU and
    /// only the other node offers one, so each call, metadata read, load and unload goes
    /// through the peer plane to it.
    @Test func tritonHTTPClientWorksThroughANodeThatHoldsNothing() throws {
        try #require(FileManager.default.isExecutableFile(atPath: TritonClientTests.python),
                     "no \(TritonClientTests.python): run tools/python-env.sh test (tools/test.sh does) to install tritonclient")
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        var cluster = try LiveCluster(in: dir)
        let out = cluster.snapshots
        for (sample, name, version) in [("iris-logreg", "iris", 1), ("iris-logreg", "iris", 2), ("digits-mlp", "digits", 1), ("news-text", "news", 1)] {
            let built = try KaaProcess.run(["snapshot", "build", "--model", "\(ServingTests.repo)/snapshots/\(sample)/model.onnx", "--name", name,
                                            "--version", "\(version)", "--requires", "gpu", "--out", "\(out)/\(name)-\(version).kaa"])
            #expect(built.0 == 0, "\(built.2)")
        }
        try cluster.start(["gpu", "plain"], flags: ["--replication", "2", "--leave-timeout", "0s"],
                          more: ["gpu": ["--gpus", "1"], "plain": ["--gpus", "0"]])
        defer { cluster.stop() }
        let plain = cluster.nodes[1]
        // Published to the node that holds nothing: it hands each snapshot to the GPU node.
        try cluster.publish(to: plain)
        let placed = GossipLiveTests.within(60) {
            guard let p = ReplicationLiveTests.placement(plain.http) else { return false }
            let c = ReplicationLiveTests.copies(p)
            return c.count == 4 && c.values.allSatisfy { $0.ready == ["gpu"] }
        }
        #expect(placed != nil, "\(ReplicationLiveTests.placement(plain.http) ?? [:])")

        let (status, output) = try TritonClientTests.runScript(["--url", "127.0.0.1:\(plain.http)"], log: dir.path + "/check.log")
        print("tools/triton-client-check.py against a node that holds nothing, 127.0.0.1:\(plain.http):\n\(output)")
        #expect(status == 0, "triton-client-check.py exited \(status):\n\(output)\nplain:\n\(plain.process.stderr.suffix(3000))")
        #expect(output.contains("ok    infer_binary_tensors"), "\(output)")
    }

    /// Runs the check script to completion (killed by pid after `timeout` seconds); output goes
    /// through a file, so a chatty script can never block on a full pipe.
    static func runScript(_ arguments: [String], log: String, timeout: Double = 180) throws -> (Int32, String) {
        guard FileManager.default.createFile(atPath: log, contents: nil) else { throw RawSocketError("cannot create \(log)") }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        defer { try? handle.close() }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = [script] + arguments
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(50_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        return (process.terminationReason == .uncaughtSignal ? -1 : process.terminationStatus, output)
    }
}
