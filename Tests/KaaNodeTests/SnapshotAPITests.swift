import Foundation
import Glibc
import KaaCore
import KaaSnapshot
import KaaTestSupport
import Testing

/// The snapshot control API and the publisher, end to end: real `kaa` processes and sockets.
@Suite struct SnapshotAPITests {
    /// Writes a tiny ONNX model and builds `name@version` (a draft when nil) from it.
    static func build(_ dir: TemporaryDirectory, name: String, version: Int?, seed: UInt8 = 1,
                      extra: [String] = []) throws -> String {
        let model = dir.path + "/model-\(seed).onnx"
        try Data(ONNXFixture.small(seed: seed)).write(to: URL(fileURLWithPath: model))
        let out = dir.path + "/\(name)-\(version.map(String.init) ?? "draft")-\(seed).kaa"
        let args = ["snapshot", "build", "--model", model, "--name", name, "--out", out]
            + (version.map { ["--version", "\($0)"] } ?? []) + extra
        let (status, _, stderr) = try KaaProcess.run(args)
        guard status == 0 else { throw RawSocketError("build failed: \(stderr)") }
        return out
    }

    @Test func publishListInspectAliasAndRefuseConflicts() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let (node, port) = try NodeProcessTests.startNode(dir)
        defer { node.signal(SIGTERM); node.wait() }
        let to = ["--to", "http://127.0.0.1:\(port)"]

        let v1 = try SnapshotAPITests.build(dir, name: "iris", version: 1)
        let first = try KaaProcess.run(["publish", v1] + to)
        #expect(first.0 == 0, "\(first.2)")
        #expect(first.1.range(of: #"^iris@1 sha256:[0-9a-f]{64} stored\n$"#, options: .regularExpression) != nil, "\(first.1)")
        let again = try KaaProcess.run(["publish", v1] + to)
        #expect(again.1.hasSuffix(" already present\n"))

        // Same name@version, other bytes: refused everywhere, store unchanged.
        let other = try SnapshotAPITests.build(dir, name: "iris", version: 1, seed: 9)
        let conflict = try KaaProcess.run(["publish", other] + to)
        #expect(conflict.0 != 0)
        #expect(conflict.2.contains("HTTP 409"), "\(conflict.2)")

        // A draft gets the next free version.
        let draft = try SnapshotAPITests.build(dir, name: "iris", version: nil, seed: 3)
        let assigned = try KaaProcess.run(["publish", draft] + to)
        #expect(assigned.1.hasPrefix("iris@2 "), "\(assigned.1) \(assigned.2)")

        let c = try RawSocket(port: port)
        try c.send("GET /kaa/v1/snapshots?name=iris HTTP/1.1\r\nHost: x\r\n\r\n")
        let list = try c.readResponse()
        #expect(list.status == 200)
        let snapshots = try #require((try JSONSerialization.jsonObject(with: Data(list.body)) as? [String: Any])?["snapshots"] as? [[String: Any]])
        #expect(snapshots.map { $0["version"] as? Int } == [1, 2])

        try c.send("GET /kaa/v1/snapshots/iris/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        let manifest = try c.readResponse()
        #expect(manifest.status == 200)
        #expect(manifest.headers["kaa-snapshot-digest"]?.hasPrefix("sha256:") == true)
        let fields = try #require(try JSONSerialization.jsonObject(with: Data(manifest.body)) as? [String: Any])
        #expect(fields["name"] as? String == "iris")

        try c.send("GET /kaa/v1/snapshots/iris/7 HTTP/1.1\r\nHost: x\r\n\r\n")
        let missing = try c.readResponse()
        #expect(missing.status == 404)

        let alias = try KaaProcess.run(["alias", "set", "iris", "stable", "1"] + to)
        #expect(alias.0 == 0)
        #expect(alias.1 == "iris@stable -> 1\n")
        try c.send("GET /kaa/v1/snapshots/iris/stable HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(try c.readResponse().status == 200)
        let badAlias = try KaaProcess.run(["alias", "set", "iris", "canary", "9"] + to)
        #expect(badAlias.0 != 0)
        #expect(badAlias.2.contains("HTTP 404") || badAlias.2.contains("HTTP 400"), "\(badAlias.2)")
        let aliases = try KaaProcess.run(["alias", "list", "iris"] + to)
        #expect(aliases.1 == "stable\t1\n")
    }

    @Test func publishingADirectoryReportsOneSummary() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let (node, port) = try NodeProcessTests.startNode(dir)
        defer { node.signal(SIGTERM); node.wait() }
        let batch = dir.path + "/batch"
        try FileManager.default.createDirectory(atPath: batch, withIntermediateDirectories: true)
        for i in 0..<24 {
            let file = try SnapshotAPITests.build(dir, name: "m\(i)", version: 1, seed: UInt8(i))
            try FileManager.default.moveItem(atPath: file, toPath: batch + "/m\(i).kaa")
        }
        try Data("not an archive".utf8).write(to: URL(fileURLWithPath: batch + "/broken.kaa"))
        let (status, out, err) = try KaaProcess.run(["publish", batch, "--to", "http://127.0.0.1:\(port)", "--parallel", "6"])
        #expect(status == 1)
        #expect(out.range(of: #"^published 25 snapshots to http://127\.0\.0\.1:\d+ in [0-9.]+ s: 24 stored, 0 already present, 1 failed\n$"#,
                          options: .regularExpression) != nil, "\(out)")
        #expect(err.contains("broken.kaa"))
    }

    @Test func anUploadCutOffHalfWayLeavesTheStoreAsItWas() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let (node, port) = try NodeProcessTests.startNode(dir)
        defer { node.signal(SIGTERM); node.wait() }
        let file = try SnapshotAPITests.build(dir, name: "cut", version: 1)
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: file)))
        do {
            let c = try RawSocket(port: port)
            try c.send("PUT /kaa/v1/snapshots/cut/1 HTTP/1.1\r\nHost: x\r\nContent-Length: \(bytes.count)\r\n\r\n")
            try c.send(Array(bytes[..<(bytes.count / 2)]))
            usleep(100_000)
        }
        _ = try node.waitForLog("snapshot upload abandoned")
        let c = try RawSocket(port: port)
        try c.send("GET /kaa/v1/snapshots HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(try c.readResponse().text == #"{"snapshots":[]}"#)
        // A truncated body that does complete is refused with the reason.
        try c.send("PUT /kaa/v1/snapshots/cut/1 HTTP/1.1\r\nHost: x\r\nContent-Length: \(bytes.count / 2)\r\n\r\n")
        try c.send(Array(bytes[..<(bytes.count / 2)]))
        let refused = try c.readResponse()
        #expect(refused.status == 400)
        #expect(refused.text.contains("truncated") || refused.text.contains("ends"), "\(refused.text)")
        try c.send("PUT /kaa/v1/snapshots/other/1 HTTP/1.1\r\nHost: x\r\nContent-Length: \(bytes.count)\r\n\r\n")
        try c.send(bytes)
        let misaddressed = try c.readResponse()
        #expect(misaddressed.status == 400)
        #expect(misaddressed.text.contains("other"), "\(misaddressed.text)")
    }

    @Test func anUploadWhosePipelineDoesNotParseIsRefused() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let (node, port) = try NodeProcessTests.startNode(dir)
        defer { node.signal(SIGTERM); node.wait() }
        let model = dir.path + "/model.onnx"
        try Data(ONNXFixture.small()).write(to: URL(fileURLWithPath: model))
        // `kaa snapshot build` refuses such a pipeline; a hand-built archive gets it past that.
        func archive(_ name: String, pipeline: String?) throws -> [UInt8] {
            let path = dir.path + "/\(name).kaa"
            _ = try SnapshotBuilder.build(SnapshotBuildRequest(modelPath: model, name: name, version: 1, pipeline: pipeline), to: path)
            return Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        }
        let c = try RawSocket(port: port)
        for (name, pipeline, status) in [("bad", "pre:\n  - step: normalise\n    field: x\n", 400), ("none", nil, 201), ("good", "outputs: [label]\n", 201)] {
            let bytes = try archive(name, pipeline: pipeline)
            try c.send("PUT /kaa/v1/snapshots/\(name)/1 HTTP/1.1\r\nHost: x\r\nContent-Length: \(bytes.count)\r\n\r\n")
            try c.send(bytes)
            let r = try c.readResponse()
            #expect(r.status == status, "\(name): \(r.text)")
            if status == 400 {
                #expect(r.text.contains("snapshot bad: the pipeline does not parse: pre step 1 (normalise), field `step`: unknown pre step kind `normalise`"), "\(r.text)")
            }
        }
        try c.send("GET /kaa/v1/snapshots HTTP/1.1\r\nHost: x\r\n\r\n")
        let list = try c.readResponse().text
        #expect(!list.contains("\"bad\"") && list.contains("\"none\"") && list.contains("\"good\""), "\(list)")
    }

    @Test func aNodeWithTrustedKeysRefusesUnsignedSnapshots() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let keys = try KaaProcess.run(["keys", "generate", "--out", dir.path + "/pub1"])
        #expect(keys.0 == 0, "\(keys.2)")
        let (node, port) = try NodeProcessTests.startNode(dir, extra: ["--trusted-keys", dir.path + "/pub1.pub"])
        defer { node.signal(SIGTERM); node.wait() }
        let to = ["--to", "http://127.0.0.1:\(port)"]
        let unsigned = try SnapshotAPITests.build(dir, name: "signed", version: 1)
        let refused = try KaaProcess.run(["publish", unsigned] + to)
        #expect(refused.0 != 0)
        #expect(refused.2.contains("sign"), "\(refused.2)")
        let signed = try SnapshotAPITests.build(dir, name: "signed", version: 1, seed: 2, extra: ["--sign", dir.path + "/pub1.key"])
        let accepted = try KaaProcess.run(["publish", signed] + to)
        #expect(accepted.0 == 0, "\(accepted.2)")
        #expect(accepted.1.contains("signed@1 "))
    }
}
