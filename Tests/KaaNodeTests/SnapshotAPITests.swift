import Foundation
import Glibc
import KaaCore
@testable import KaaNode
import KaaSnapshot
import KaaTestSupport
import Logging
import Testing

/// The snapshot control API and the publisher, end to end: real `kaa` processes and sockets.
@Suite struct SnapshotAPITests {
    /// The iris sample model: the node loads every uploaded model in its engine, so the
    /// snapshots these tests publish hold one it runs.
    static let model = ServingTests.repo + "/snapshots/iris-logreg/model.onnx"

    /// Builds `name@version` (a draft when nil) of the iris model; `seed` goes into a label, so
    /// snapshots with different seeds have different digests.
    static func build(_ dir: TemporaryDirectory, name: String, version: Int?, seed: UInt8 = 1,
                      extra: [String] = []) throws -> String {
        let out = dir.path + "/\(name)-\(version.map(String.init) ?? "draft")-\(seed).kaa"
        let args = ["snapshot", "build", "--model", model, "--name", name, "--out", out, "--label", "seed=\(seed)"]
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
        // A single node: stored, and said to be short of the replication factor (2 by default).
        #expect(first.1.range(of: #"^iris@1 sha256:[0-9a-f]{64} stored on \S+; under-replicated: fewer live nodes than the replication factor, copied as nodes join\n$"#,
                              options: .regularExpression) != nil, "\(first.1)")
        let again = try KaaProcess.run(["publish", v1] + to)
        #expect(again.1.contains(" already present on "), "\(again.1)")

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

    /// Six uploads at once to a node that takes two: the refused ones (503, Retry-After) are
    /// sent again, and only the broken archive fails.
    @Test func publishingADirectoryReportsOneSummary() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let (node, port) = try NodeProcessTests.startNode(dir, extra: ["--max-concurrent-uploads", "2"])
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

    /// PUTs `bytes` to `path` on `c` and reads the answer.
    static func put(_ c: RawSocket, _ path: String, _ bytes: [UInt8]) throws -> RawResponse {
        try c.send("PUT \(path) HTTP/1.1\r\nHost: x\r\nContent-Length: \(bytes.count)\r\n\r\n")
        try c.send(bytes)
        return try c.readResponse()
    }

    @Test func anUploadWhosePipelineDoesNotParseIsRefused() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let (node, port) = try NodeProcessTests.startNode(dir)
        defer { node.signal(SIGTERM); node.wait() }
        // `kaa snapshot build` refuses such a pipeline; a hand-built archive gets it past that.
        func archive(_ name: String, pipeline: String?) throws -> [UInt8] {
            let path = dir.path + "/\(name).kaa"
            _ = try SnapshotBuilder.build(SnapshotBuildRequest(modelPath: SnapshotAPITests.model, name: name, version: 1, pipeline: pipeline), to: path)
            return Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        }
        let c = try RawSocket(port: port)
        for (name, pipeline, status) in [("bad", "pre:\n  - step: normalise\n    field: x\n", 400), ("none", nil, 201)] {
            let r = try SnapshotAPITests.put(c, "/kaa/v1/snapshots/\(name)/1", try archive(name, pipeline: pipeline))
            #expect(r.status == status, "\(name): \(r.text)")
            if status == 400 {
                #expect(r.text.contains("snapshot bad: the pipeline does not parse: pre step 1 (normalise), field `step`: unknown pre step kind `normalise`"), "\(r.text)")
            }
        }
        try c.send("GET /kaa/v1/snapshots HTTP/1.1\r\nHost: x\r\n\r\n")
        let list = try c.readResponse().text
        #expect(!list.contains("\"bad\"") && list.contains("\"none\""), "\(list)")
    }

    /// Issue 15: non-ONNX bytes as `model.onnx`, a model the engine cannot load and a
    /// manifest whose signature is not the model's were stored, and every call failed after.
    /// The node now loads the model with its pipeline at upload, as `kaa snapshot build` does.
    @Test func anUploadWhoseModelDoesNotLoadOrDoesNotMatchItsManifestIsRefused() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let (node, port) = try NodeProcessTests.startNode(dir)
        defer { node.signal(SIGTERM); node.wait() }
        func archive(_ name: String, model: String, pipeline: String? = nil,
                     signature: SnapshotManifest.ModelSignature? = nil) throws -> [UInt8] {
            let path = dir.path + "/\(name).kaa"
            _ = try SnapshotBuilder.build(SnapshotBuildRequest(modelPath: model, name: name, version: 1, pipeline: pipeline,
                                                               signature: signature), to: path)
            return Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        }
        let text = dir.path + "/text.onnx", gemm = dir.path + "/gemm.onnx"
        try Data("this is not an ONNX model".utf8).write(to: URL(fileURLWithPath: text))
        try Data(ONNXFixture.small()).write(to: URL(fileURLWithPath: gemm))
        let anySignature = SnapshotManifest.ModelSignature(inputs: [], outputs: [.init(name: "y", kind: .tensor, dtype: "FP32", shape: [-1])])
        let pipeline = "outputs: [output_label]\n"
        let c = try RawSocket(port: port)
        let cases: [(String, [UInt8], String)] = [
            ("text", try archive("text", model: text, signature: anySignature),
             "snapshot text@1: model file `model.onnx` is not a usable ONNX model: malformed protobuf"),
            ("gemm", try archive("gemm", model: gemm),
             "snapshot gemm@1: model `model.onnx` does not load: `Gemm` node"),
            ("stale", try archive("stale", model: SnapshotAPITests.model, pipeline: pipeline),
             "snapshot stale@1: the manifest's signature is not what the model serves through its pipeline: the manifest declares outputs `output_label`, `output_probability` but the model through its pipeline has `output_label`"),
        ]
        for (name, bytes, message) in cases {
            let r = try SnapshotAPITests.put(c, "/kaa/v1/snapshots/\(name)/1", bytes)
            #expect(r.status == 400, "\(name): \(r.text)")
            #expect(r.text.contains(message), "\(name): \(r.text)")
        }
        // Built by `kaa snapshot build --pipeline`, which writes the served signature: stored.
        let pipelineFile = dir.path + "/p.yaml"
        try Data(pipeline.utf8).write(to: URL(fileURLWithPath: pipelineFile))
        let good = try SnapshotAPITests.build(dir, name: "good", version: 1, extra: ["--pipeline", pipelineFile])
        let stored = try SnapshotAPITests.put(c, "/kaa/v1/snapshots/good/1", Array(try Data(contentsOf: URL(fileURLWithPath: good))))
        #expect(stored.status == 201, "\(stored.text)")
        try c.send("GET /kaa/v1/snapshots HTTP/1.1\r\nHost: x\r\n\r\n")
        let list = try c.readResponse().text
        #expect(list.contains("\"good\"") && !list.contains("\"text\"") && !list.contains("\"gemm\"") && !list.contains("\"stale\""), "\(list)")
    }

    /// Issue 15: `PUT .../9223372036854775807` was stored, then every draft crashed the node.
    @Test func versionsFromTheURLAreBounded() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let (node, port) = try NodeProcessTests.startNode(dir)
        defer { node.signal(SIGTERM); node.wait() }
        let c = try RawSocket(port: port)
        let draft = Array(try Data(contentsOf: URL(fileURLWithPath: try SnapshotAPITests.build(dir, name: "n", version: nil))))
        for version in ["9223372036854775807", "9007199254740992", "+1", "007", "0"] {
            // Refused from its head: answered at once, the body unread and the connection closed.
            let r = try SnapshotAPITests.put(try RawSocket(port: port), "/kaa/v1/snapshots/n/\(version)", draft)
            #expect(r.status == 400, "\(version): \(r.text)")
            #expect(r.text.contains("version `\(version)` is not an integer from 1 to 9007199254740991 written in plain digits; leave it out to get the next free one"), "\(r.text)")
        }
        let highest = try SnapshotAPITests.put(c, "/kaa/v1/snapshots/n/9007199254740991", draft)
        #expect(highest.status == 201, "\(highest.text)")
        let next = try SnapshotAPITests.put(c, "/kaa/v1/snapshots/n", draft)
        #expect(next.status == 409, "\(next.text)")
        #expect(next.text.contains("model `n` has reached the highest version, 9007199254740991"), "\(next.text)")
        try c.send("GET /kaa/v1/snapshots/n/9223372036854775807 HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(try c.readResponse().status == 400)
        // The node is still up and answers.
        try c.send("GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(try c.readResponse().status == 200)
    }

    /// Issue 15: `{"version": true}` and `1.0` were taken as version 1.
    @Test func aliasBodiesAreIntegerVersions() throws {
        func parse(_ text: String) -> Result<Int, SnapshotError> {
            do throws(SnapshotError) { return .success(try SnapshotAPI.version(fromBody: Array(text.utf8))) } catch { return .failure(error) }
        }
        #expect(try parse("3").get() == 3)
        #expect(try parse(" {\"version\": 3}\n").get() == 3)
        #expect(try parse("9007199254740991").get() == 9_007_199_254_740_991)
        let refused: [(String, String)] = [
            (#"{"version": true}"#, "`version` is the boolean true, not an integer"),
            ("1.0", "the body is the number 1.0, written with a fraction or an exponent or beyond 64 bits, not an integer"),
            ("1e0", "the body is the number 1.0"),
            (#"{"version": 1.0}"#, "`version` is the number 1.0"),
            (#""3""#, #"the body is the string "3", not an integer"#),
            ("true", "the body is the boolean true"),
            ("0", "the body is 0; versions are integers from 1 to 9007199254740991"),
            ("9007199254740992", "the body is 9007199254740992; versions are integers from 1"),
            ("9223372036854775808", "the body is the number"),
            (#"{"version": 2, "version": 3}"#, "the body's object has members `version`, `version`; it takes exactly one, `version`"),
            (#"{"v": 2}"#, "the body's object has members `v`"),
            ("{}", "the body's object has no members"),
            ("[3]", "the body is a JSON array, not an integer"),
            ("", "the body is empty"),
            ("+3", "the body is not JSON"),
        ]
        for (body, message) in refused {
            guard case .failure(let e) = parse(body) else {
                Issue.record("`\(body)` was accepted")
                continue
            }
            #expect(e.message.hasPrefix(message), "`\(body)`: \(e.message)")
            #expect(e.message.hasSuffix("; send the version the alias points at, like `3` or {\"version\": 3}"))
            #expect(SnapshotAPI.response(for: e).status == .badRequest)
        }

        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let (node, port) = try NodeProcessTests.startNode(dir)
        defer { node.signal(SIGTERM); node.wait() }
        let c = try RawSocket(port: port)
        let v1 = Array(try Data(contentsOf: URL(fileURLWithPath: try SnapshotAPITests.build(dir, name: "iris", version: 1))))
        #expect(try SnapshotAPITests.put(c, "/kaa/v1/snapshots/iris/1", v1).status == 201)
        func alias(_ method: String, _ path: String, _ body: String) throws -> RawResponse {
            try c.send("\(method) \(path) HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
            return try c.readResponse()
        }
        let boolean = try alias("PUT", "/kaa/v1/models/iris/aliases/stable", #"{"version": true}"#)
        #expect(boolean.status == 400)
        #expect(boolean.text.contains("`version` is the boolean true, not an integer"), "\(boolean.text)")
        #expect(try alias("PUT", "/kaa/v1/models/iris/aliases/stable", "1.0").status == 400)
        let badAlias = try alias("PUT", "/kaa/v1/models/iris/aliases/Stable_1", "1")
        #expect(badAlias.status == 400)
        #expect(badAlias.text.contains("alias `Stable_1` must start with a lowercase letter"), "\(badAlias.text)")
        let badName = try alias("PUT", "/kaa/v1/models/Iris/aliases/stable", "1")
        #expect(badName.text.contains("model name `Iris` must start with a lowercase letter or a digit"), "\(badName.text)")
        #expect(try alias("DELETE", "/kaa/v1/models/iris/aliases/Bad_Alias", "").status == 400)
        #expect(try alias("PUT", "/kaa/v1/models/iris/aliases/stable", #"{"version": 1}"#).status == 200)
        let list = try alias("GET", "/kaa/v1/models/iris/aliases", "")
        #expect(list.text == #"{"aliases":{"stable":1},"name":"iris"}"#, "\(list.text)")
    }

    /// Issue 15: a body the node had already refused was still read, up to `Int.max` bytes
    /// (315 MB drained with no answer). A refusal is now answered at once and nothing is read.
    @Test func anUploadRefusedFromItsHeadIsNotRead() throws {
        #expect(RefusingSink(.error(.badRequest, "no")).maxBytes == 0)
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        // A long body deadline: a node that waited for the refused body would not answer
        // before this client's 5 s read timeout.
        let (node, port) = try NodeProcessTests.startNode(dir, extra: ["--body-timeout", "120s"])
        defer { node.signal(SIGTERM); node.wait() }
        let c = try RawSocket(port: port)
        try c.send("PUT /kaa/v1/snapshots/x/notaversion HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        try c.send([UInt8](repeating: 0, count: 4096))
        let r = try c.readResponse()
        #expect(r.status == 400 && r.text.contains("notaversion"), "\(r.status) \(r.text)")
        #expect(c.isClosedByPeer())
        // So is a small one.
        let d = try RawSocket(port: port)
        let small = try SnapshotAPITests.put(d, "/kaa/v1/snapshots/x/notaversion", [UInt8](repeating: 1, count: 100))
        #expect(small.status == 400)
        #expect(small.text.contains("version `notaversion` is not an integer from 1 to 9007199254740991"), "\(small.text)")
    }

    /// Issue 15: `UploadSink.abort` ran `job.abort()` on another pool thread while a chunk's
    /// append could still be writing, closing the file under it. Many uploads aborted mid-stream
    /// from another thread: no crash, and nothing left behind — files, descriptors, slots.
    @Test func abortingUploadsMidChunkFromAnotherThreadLeavesNothing() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let store = try SnapshotStore(configuration: .init(directory: dir.path + "/data"), logger: Logger(label: "test"))
        let large = dir.path + "/large.onnx"
        try ONNXFixture.writeLarge(to: large, weightBytes: 2 << 20)
        let path = dir.path + "/large.kaa"
        _ = try SnapshotBuilder.build(SnapshotBuildRequest(modelPath: large, name: "large", version: 1), to: path)
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        let chunk = 16 << 10
        let chunks = stride(from: 0, to: bytes.count, by: chunk).map { Array(bytes[$0..<min(bytes.count, $0 + chunk)]) }
        let tmp = dir.path + "/data/snapshots/.tmp"
        let queue = DispatchQueue(label: "appender")
        for round in 0..<300 {
            let job = IngestJob(store: store, request: IngestRequest(expectedName: "large"))
            let appended = DispatchSemaphore(value: 0)
            let done = DispatchSemaphore(value: 0)
            let abortAfter = round % 7
            queue.async {
                for (i, piece) in chunks.enumerated() {
                    if i == abortAfter { appended.signal() }
                    do throws(SnapshotError) { try job.append(piece) } catch { break }
                }
                done.signal()
            }
            appended.wait()
            job.abort() // while the appender is between or inside its appends
            done.wait()
            #expect(throws: SnapshotError.self) { try job.finish() }
            #expect(try FileManager.default.contentsOfDirectory(atPath: tmp).isEmpty, "round \(round)")
        }
        #expect(store.uploadsInProgress == 0)
        #expect(HostileUploads.descriptors(under: dir.path + "/data/snapshots") == 0)
        #expect(try store.list().isEmpty)
    }

    /// An abort that runs before the first chunk's job: that job must not begin a session (a
    /// temporary file nobody would remove until the sink is freed).
    @Test func anAbortBeforeTheFirstChunkBeginsNothing() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let store = try SnapshotStore(configuration: .init(directory: dir.path + "/data"), logger: Logger(label: "test"))
        let job = IngestJob(store: store, request: IngestRequest())
        job.abort()
        let e = #expect(throws: SnapshotError.self) { try job.append([1, 2, 3]) }
        #expect(e?.message == "the upload was abandoned before it completed")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path + "/data/snapshots/.tmp").isEmpty)
        #expect(store.uploadsInProgress == 0)
        withExtendedLifetime(job) {}
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

/// What the upload tests count.
enum HostileUploads {
    /// Descriptors of this process open on files under `path` (tests running at the same time
    /// open their own, elsewhere).
    static func descriptors(under path: String) -> Int {
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        return fds.filter { fd in
            ((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/" + fd)) ?? "").hasPrefix(path)
        }.count
    }
}

/// The quality gate on `stable` moves (docs/quality-gate.md), on one real node: the iris
/// sample as version 1, and gated versions whose holdout is ``IrisGateFixture``'s rows.
@Suite struct AliasGateTests {
    /// Builds iris@`version`: the sample, or the shifted copy, with a gate when given.
    static func build(_ dir: TemporaryDirectory, version: Int, shifted: Bool, gate: String?) throws -> String {
        let pipeline = try String(contentsOfFile: ServingTests.repo + "/snapshots/iris-logreg/pipeline.yaml", encoding: .utf8)
        let pipelineFile = dir.path + "/pipeline-\(version).yaml"
        try (shifted ? IrisGateFixture.shiftedPipeline(pipeline) : pipeline).write(toFile: pipelineFile, atomically: true, encoding: .utf8)
        let rows = dir.path + "/holdout.jsonl"
        try IrisGateFixture.labelledRows.write(toFile: rows, atomically: true, encoding: .utf8)
        let out = dir.path + "/iris-\(version).kaa"
        let args = ["snapshot", "build", "--model", SnapshotAPITests.model, "--pipeline", pipelineFile, "--name", "iris",
                    "--version", "\(version)", "--out", out]
            + (gate.map { ["--holdout", rows, "--holdout-label", "species", "--gate", $0] } ?? [])
        let (status, _, stderr) = try KaaProcess.run(args)
        guard status == 0 else { throw RawSocketError("build failed: \(stderr)") }
        return out
    }

    @Test func stableMovesOnlyPastTheGateUnlessForced() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let tokens = dir.path + "/tokens"
        let made = try KaaProcess.run(["tokens", "create", "--scope", "admin", "--name", "release-bot", "--out", dir.path + "/admin.token",
                                       "--append-to", tokens])
        #expect(made.0 == 0, "\(made.2)")
        let (node, port) = try NodeProcessTests.startNode(dir, extra: ["--tokens-file", tokens])
        defer { node.signal(SIGTERM); node.wait() }
        let to = ["--to", "http://127.0.0.1:\(port)", "--token-file", dir.path + "/admin.token"]
        let gate = "agreement>=0.99,accuracy_drop<=0.005"
        for file in [try AliasGateTests.build(dir, version: 1, shifted: false, gate: nil),
                     try AliasGateTests.build(dir, version: 2, shifted: false, gate: gate),
                     try AliasGateTests.build(dir, version: 3, shifted: true, gate: gate)] {
            let published = try KaaProcess.run(["publish", file] + to)
            #expect(published.0 == 0, "\(published.2)")
        }
        // No `stable` yet: nothing to hold a gate against.
        #expect(try KaaProcess.run(["alias", "set", "iris", "stable", "1"] + to).1 == "iris@stable -> 1\n")

        // Version 2 is the sample itself: its gate passes against version 1.
        let passed = try KaaProcess.run(["alias", "set", "iris", "stable", "2"] + to)
        #expect(passed.0 == 0, "\(passed.2)")
        #expect(passed.1 == "iris@stable -> 2\n")
        _ = try node.waitForLog("quality gate passed .*alias.from=1 alias.to=2")

        // Version 3 disagrees on 1 of the 12 holdout rows and is right on 1 fewer: refused, with the report.
        let token = try String(contentsOfFile: dir.path + "/admin.token", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        func put(_ target: String, _ body: String) throws -> RawResponse {
            let c = try RawSocket(port: port)
            try c.send("PUT \(target) HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(token)\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
            return try c.readResponse()
        }
        let refused = try put("/kaa/v1/models/iris/aliases/stable", "3")
        #expect(refused.status == 409)
        let answer = try #require(try JSONSerialization.jsonObject(with: Data(refused.body)) as? [String: Any])
        #expect(answer["error"] as? String == "alias `stable` stays at 2: iris@3 fails its quality gate against iris@2 on its 12 holdout rows: agreement 0.9167 (needs >= 0.99), accuracy_drop 0.0833 (needs <= 0.005); move it anyway with force=true (`kaa alias set --force`)")
        let report = try #require(answer["gate"] as? [String: Any])
        #expect(report["gate"] as? String == gate)
        #expect(report["passed"] as? Bool == false)
        let terms = try #require(report["terms"] as? [[String: Any]])
        #expect(terms.map { $0["term"] as? String } == ["agreement>=0.99", "accuracy_drop<=0.005"])
        #expect(terms.map { $0["passed"] as? Bool } == [false, false])
        #expect(terms.first?["value"] as? Double == 11.0 / 12)
        let comparison = try #require(report["comparison"] as? [String: Any])
        #expect(comparison["new"] as? String == "iris@3" && comparison["old"] as? String == "iris@2")
        #expect(comparison["rows"] as? Int == 12)
        #expect(comparison["accuracy"] as? Double == 9.0 / 12 && comparison["old_accuracy"] as? Double == 10.0 / 12)
        let cli = try KaaProcess.run(["alias", "set", "iris", "stable", "3"] + to)
        #expect(cli.0 != 0)
        #expect(cli.2.contains("fails its quality gate against iris@2") && cli.2.contains("(HTTP 409)"), "\(cli.2)")
        let list = try KaaProcess.run(["alias", "list", "iris"] + to)
        #expect(list.1 == "stable\t2\n")

        // Forced: it moves, and the log says who forced what.
        #expect(try put("/kaa/v1/models/iris/aliases/stable?force=maybe", "3").status == 400)
        let forced = try KaaProcess.run(["alias", "set", "iris", "stable", "3", "--force"] + to)
        #expect(forced.0 == 0, "\(forced.2)")
        #expect(forced.1 == "iris@stable -> 3\n")
        let line = try node.waitForLog("(alias stable forced past its quality gate .*)")
        #expect(line.contains("alias.from=2") && line.contains("alias.to=3") && line.contains("forced.by.token=release-bot")
                && line.contains("gate=\"\(gate)\"") && line.contains("model.name=iris"), "\(line)")
        #expect(try KaaProcess.run(["alias", "list", "iris"] + to).1 == "stable\t3\n")

        // Back to version 1, which has no gate: it moves as it always did.
        #expect(try KaaProcess.run(["alias", "set", "iris", "stable", "1"] + to).0 == 0)
        #expect(!node.stderr.contains("alias.to=1"))
    }
}
