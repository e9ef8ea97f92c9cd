import Foundation
import Glibc
import KaaCore
import KaaTestSupport
import Testing

/// The Open Inference Protocol on a real node process with the real sample models.
@Suite struct ServingTests {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../..").standardized.path

    /// Builds `name@version` from a sample model and publishes it to the node on `port`.
    static func publish(_ sample: String, as name: String, version: Int, port: UInt16, dir: TemporaryDirectory) throws {
        let out = dir.path + "/\(name)-\(version).kaa"
        let build = try KaaProcess.run(["snapshot", "build", "--model", "\(repo)/snapshots/\(sample)/model.onnx",
                                        "--name", name, "--version", "\(version)", "--out", out])
        guard build.0 == 0 else { throw RawSocketError("build: \(build.2)") }
        let pub = try KaaProcess.run(["publish", out, "--to", "http://127.0.0.1:\(port)"])
        guard pub.0 == 0 else { throw RawSocketError("publish: \(pub.2)") }
    }

    /// The text of `POST path` with `body` (and extra header lines, each ending in CRLF).
    static func request(_ path: String, _ body: String, headers: String = "") -> String {
        "POST \(path) HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.utf8.count)\r\n\(headers)\r\n\(body)"
    }

    static func post(_ c: RawSocket, _ path: String, _ body: String, headers: String = "") throws -> RawResponse {
        try c.send(request(path, body, headers: headers))
        return try c.readResponse()
    }

    static func json(_ r: RawResponse) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any])
    }

    static let irisRows = #"[[5.1,3.5,1.4,0.2],[6.7,3.0,5.2,2.3],[5.9,3.0,4.2,1.5]]"#

    @Test func everyEndpointAndErrorClass() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let (node, port) = try NodeProcessTests.startNode(dir)
        defer { node.signal(SIGTERM); node.wait() }
        try ServingTests.publish("iris-logreg", as: "iris", version: 1, port: port, dir: dir)
        try ServingTests.publish("iris-logreg", as: "iris", version: 2, port: port, dir: dir)
        try ServingTests.publish("news-text", as: "news", version: 1, port: port, dir: dir)
        let c = try RawSocket(port: port)

        // Server metadata and readiness.
        try c.send("GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(try ServingTests.json(c.readResponse())["extensions"] as? [String] == ["binary_tensor_data", "model_repository"])
        try c.send("GET /v2/models/iris/ready HTTP/1.1\r\nHost: x\r\n\r\nGET /v2/models/iris/versions/2/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(try c.readResponse().status == 200)
        #expect(try c.readResponse().status == 200)

        // Model metadata from the snapshot's signature.
        try c.send("GET /v2/models/iris HTTP/1.1\r\nHost: x\r\n\r\n")
        let meta = try ServingTests.json(c.readResponse())
        #expect(meta["versions"] as? [String] == ["1", "2"])
        let inputs = try #require(meta["inputs"] as? [[String: Any]])
        #expect(inputs.first?["datatype"] as? String == "FP32")
        #expect(inputs.first?["shape"] as? [Int] == [-1, 4])

        // Infer: nested data, id echoed, the latest version when there is no `stable` alias.
        let ok = try ServingTests.post(c, "/v2/models/iris/infer",
            #"{"id":"req-7","inputs":[{"name":"input","shape":[3,4],"datatype":"FP32","data":\#(ServingTests.irisRows)}]}"#)
        #expect(ok.status == 200, "\(ok.text)")
        let answer = try ServingTests.json(ok)
        #expect(answer["id"] as? String == "req-7")
        #expect(answer["model_version"] as? String == "2")
        let outputs = try #require(answer["outputs"] as? [[String: Any]])
        let labels = try #require(outputs.first { $0["name"] as? String == "output_label" })
        #expect(labels["data"] as? [Int] == [0, 2, 1])
        #expect(labels["datatype"] as? String == "INT64")
        let probabilities = try #require(outputs.first { $0["name"] as? String == "output_probability" })
        #expect(probabilities["shape"] as? [Int] == [3, 3])

        // Flat data, an explicit version, a requested subset of outputs.
        let subset = try ServingTests.post(c, "/v2/models/iris/versions/1/infer",
            #"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[6.7,3.0,5.2,2.3]}],"outputs":[{"name":"output_label"}]}"#)
        let subsetJSON = try ServingTests.json(subset)
        #expect(subsetJSON["model_version"] as? String == "1")
        #expect((subsetJSON["outputs"] as? [[String: Any]])?.map { $0["name"] as? String } == ["output_label"])

        // BYTES input for the text model.
        let text = try ServingTests.post(c, "/v2/models/news/infer",
            #"{"inputs":[{"name":"input","shape":[2,1],"datatype":"BYTES","data":["the striker scored a late goal","the central bank raised interest rates"]}]}"#)
        #expect(text.status == 200, "\(text.text)")
        #expect((try ServingTests.json(text)["outputs"] as? [[String: Any]])?.first?["datatype"] as? String == "BYTES")

        // Error classes, each naming what is wrong.
        let cases: [(String, String, Int, String)] = [
            ("/v2/models/nope/infer", "{}", 404, "model `nope` does not exist; models: iris, news"),
            ("/v2/models/iris/versions/9/infer", "{}", 404, "model `iris` has no version 9; versions: 1, 2"),
            ("/v2/models/iris/infer", "{not json", 400, "is not valid JSON"),
            ("/v2/models/iris/infer", #"{"inputs":[]}"#, 400, "input `input` is missing"),
            ("/v2/models/iris/infer", #"{"inputs":[{"name":"input","shape":[1,4],"datatype":"INT64","data":[1,2,3,4]}]}"#, 400,
             "input `input` has datatype INT64, the model expects FP32"),
            ("/v2/models/iris/infer", #"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#, 400,
             "dimension 1 must be 4"),
            ("/v2/models/iris/infer", #"{"inputs":[{"name":"input","shape":[2,4],"datatype":"FP32","data":[1,2,3,4]}]}"#, 400,
             "input `input` has 4 values; shape [2, 4] needs 8"),
            ("/v2/models/iris/infer", #"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,"x",4]}]}"#, 400,
             "element 2 is a string, not a number"),
            ("/v2/models/iris/infer", #"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP16","data":[1,2,3,4]}]}"#, 400,
             "datatype FP16 is not supported by the engine"),
            ("/v2/models/iris/infer", #"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[[1,2],[3,4]]}]}"#, 400,
             "nested `data` does not match shape"),
            ("/v2/models/iris/infer", #"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}],"outputs":[{"name":"nope"}]}"#, 400,
             "output `nope` does not exist"),
            ("/v2/models/iris/infer", #"{"inputs":[{"name":"other","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#, 400,
             "input `other` does not exist; the model needs `input` FP32 [-1, 4]"),
        ]
        for (path, body, status, message) in cases {
            let r = try ServingTests.post(c, path, body)
            #expect(r.status == status, "\(path) \(body): \(r.text)")
            #expect(r.text.contains(message), "\(path) \(body): \(r.text)")
        }
        let badDeadline = try ServingTests.post(c, "/v2/models/iris/infer", "{}", headers: "Kaa-Deadline-Ms: soon\r\n")
        #expect(badDeadline.status == 400)
        // A compressed body (Triton's client with request_compression_algorithm) is named, not misparsed.
        let gzipped = try ServingTests.post(c, "/v2/models/iris/versions/1/infer", "\u{1f}\u{8b}", headers: "Content-Encoding: gzip\r\n")
        #expect(gzipped.status == 415, "\(gzipped.text)")
        #expect(gzipped.text.contains("Content-Encoding `gzip` is not supported"), "\(gzipped.text)")

        // Repository extension: index, unload (503), load again.
        let index = try ServingTests.post(c, "/v2/repository/index", "{}")
        let entries = try #require(try JSONSerialization.jsonObject(with: Data(index.body)) as? [[String: Any]])
        #expect(entries.count == 3)
        #expect(try ServingTests.post(c, "/v2/repository/models/iris/unload", "{}").status == 200)
        let gone = try ServingTests.post(c, "/v2/models/iris/infer",
            #"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#)
        #expect(gone.status == 503)
        #expect(gone.text.contains("was unloaded"))
        #expect(try ServingTests.post(c, "/v2/repository/models/iris/load", "").status == 200)
        #expect(try ServingTests.post(c, "/v2/models/iris/infer",
            #"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#).status == 200)

        // Metrics.
        try c.send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        let metrics = try c.readResponse().text
        #expect(metrics.contains(#"kaa_inference_requests_total{model="iris",code="200"}"#))
        #expect(metrics.contains(#"kaa_inference_requests_total{model="_unknown",code="404"}"#))
        #expect(metrics.contains(#"kaa_inference_requests_total{model="iris",code="404"}"#), "an unknown version of a known model")
        #expect(!metrics.contains(#"model="nope""#))
        #expect(metrics.contains("kaa_model_loads_total"))
        #expect(metrics.contains(#"kaa_inference_duration_seconds_bucket{model="iris""#))

        // The names a 404 lists follow the catalog: a model published since the last 404 is among them.
        try ServingTests.publish("iris-logreg", as: "alpha", version: 1, port: port, dir: dir)
        let missing = try ServingTests.post(c, "/v2/models/nope/infer", "{}")
        #expect(missing.text.contains("model `nope` does not exist; models: alpha, iris, news"), "\(missing.text)")
    }

    @Test func binaryTensorDataBothWays() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let (node, port) = try NodeProcessTests.startNode(dir)
        defer { node.signal(SIGTERM); node.wait() }
        try ServingTests.publish("iris-logreg", as: "iris", version: 1, port: port, dir: dir)
        let floats: [Float] = [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3]
        var blob: [UInt8] = []
        for f in floats { withUnsafeBytes(of: f.bitPattern.littleEndian) { blob += $0 } }
        let header = #"{"inputs":[{"name":"input","shape":[2,4],"datatype":"FP32","parameters":{"binary_data_size":32}}],"outputs":[{"name":"output_label","parameters":{"binary_data":true}}]}"#
        let body = Array(header.utf8) + blob
        let c = try RawSocket(port: port)
        try c.send("POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: \(header.utf8.count)\r\nContent-Length: \(body.count)\r\n\r\n")
        try c.send(body)
        let r = try c.readResponse()
        #expect(r.status == 200, "\(r.text)")
        let jsonLength = try #require(Int(r.headers["inference-header-content-length"] ?? ""))
        let json = try #require(try JSONSerialization.jsonObject(with: Data(r.body[0..<jsonLength])) as? [String: Any])
        let output = try #require((json["outputs"] as? [[String: Any]])?.first)
        #expect((output["parameters"] as? [String: Any])?["binary_data_size"] as? Int == 16)
        let labels = r.body[jsonLength...].withUnsafeBytes { raw in (0..<2).map { Int64(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self)) } }
        #expect(labels == [0, 2])

        // Binary sizes that do not add up are refused.
        let short = Array(header.utf8) + blob.prefix(20)
        try c.send("POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: \(header.utf8.count)\r\nContent-Length: \(short.count)\r\n\r\n")
        try c.send(short)
        let refused = try c.readResponse()
        #expect(refused.status == 400)
        #expect(refused.text.contains("binary_data_size 32 runs past the end of the body"), "\(refused.text)")
    }

    /// A snapshot built with `--quantize int8` serves the same labels as its float parent on
    /// the digits the gate checked, and its loaded model counts far fewer bytes.
    @Test func anInt8SnapshotServesLikeItsFloatParent() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let (node, port) = try NodeProcessTests.startNode(dir)
        defer { node.signal(SIGTERM); node.wait() }
        try ServingTests.publish("digits-mlp", as: "digits", version: 1, port: port, dir: dir)
        let fixture = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(ServingTests.repo)/Tests/KaaEngineTests/Fixtures/digits-mlp/inputs.json"))) as! [String: [String: Any]]
        let pixels = (fixture["input"]!["data"] as! [NSNumber]).map { Int($0.doubleValue) }
        let rows = (0..<300).map { r in "[" + pixels[(r * 64)..<((r + 1) * 64)].map(String.init).joined(separator: ",") + "]" }
        let holdout = rows.map { #"{"pixels": \#($0)}"# }.joined(separator: "\n") + "\n"
        try holdout.write(toFile: dir.path + "/holdout.jsonl", atomically: true, encoding: .utf8)
        let out = dir.path + "/digits-2.kaa"
        let build = try KaaProcess.run(["snapshot", "build", "--model", "\(ServingTests.repo)/snapshots/digits-mlp/model.onnx",
                                        "--pipeline", "\(ServingTests.repo)/snapshots/digits-mlp/pipeline.yaml", "--name", "digits",
                                        "--version", "2", "--quantize", "int8", "--holdout", dir.path + "/holdout.jsonl", "--out", out])
        #expect(build.0 == 0, "\(build.2)")
        #expect(try KaaProcess.run(["publish", out, "--to", "http://127.0.0.1:\(port)"]).0 == 0)
        let c = try RawSocket(port: port)
        // Version 1 serves the graph's own input; version 2 its pipeline's `pixels` field.
        let batch = rows[0..<64].joined(separator: ",")
        let float = try ServingTests.post(c, "/v2/models/digits/versions/1/infer",
                                          #"{"inputs":[{"name":"input","shape":[64,64],"datatype":"FP32","data":[\#(batch)]}],"outputs":[{"name":"output_label"}]}"#)
        let int8 = try ServingTests.post(c, "/v2/models/digits/versions/2/infer",
                                         #"{"inputs":[{"name":"pixels","shape":[64,64],"datatype":"FP32","data":[\#(batch)]}],"outputs":[{"name":"label"}]}"#)
        #expect(float.status == 200 && int8.status == 200, "\(float.text) \(int8.text)")
        func labels(_ r: RawResponse) throws -> [Int] {
            let output = try #require((try ServingTests.json(r)["outputs"] as? [[String: Any]])?.first)
            return try #require(output["data"] as? [Int])
        }
        #expect(try labels(float).count == 64)
        #expect(try labels(int8) == labels(float))
        let floatBytes = try #require(Int(try node.waitForLog(#"model loaded .*model\.bytes=(\d+) .*snapshot\.id=digits@1"#)))
        let int8Bytes = try #require(Int(try node.waitForLog(#"model loaded .*model\.bytes=(\d+) .*snapshot\.id=digits@2"#)))
        #expect(int8Bytes * 10 < floatBytes * 8, "int8 \(int8Bytes) bytes, float \(floatBytes)")
    }

    @Test func overloadAndDeadline() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        // Every call on the pool, one at a time, none waiting: the second of two pipelined calls
        // arrives while the first runs and gets 429.
        let (node, port) = try NodeProcessTests.startNode(dir, extra: ["--inline-threshold", "0", "--model-concurrency", "1", "--model-queue", "0"])
        defer { node.signal(SIGTERM); node.wait() }
        try ServingTests.publish("digits-mlp", as: "digits", version: 1, port: port, dir: dir)
        let row = "[" + (0..<64).map { String($0 % 16) }.joined(separator: ",") + "]"
        let body = #"{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":\#(row)}]}"#
        let c = try RawSocket(port: port)
        // A cold model with a 1 ms deadline: loading takes longer, so the call is refused.
        let late = try ServingTests.post(c, "/v2/models/digits/infer", body, headers: "Kaa-Deadline-Ms: 1\r\n")
        #expect(late.status == 504, "\(late.text)")
        let request = ServingTests.request("/v2/models/digits/infer", body)
        try c.send(request + request)
        let first = try c.readResponse(), second = try c.readResponse()
        #expect(first.status == 200, "\(first.text)")
        #expect(second.status == 429, "\(second.text)")
        #expect(second.text.contains("is overloaded"))
    }

    @Test func queuedCallsAllRunAndTheQueueEmpties() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        // One call at a time on the pool: of five pipelined calls, parsed in one loop turn, four wait.
        let (node, port) = try NodeProcessTests.startNode(dir, extra: ["--inline-threshold", "0", "--model-concurrency", "1", "--model-queue", "8"])
        defer { node.signal(SIGTERM); node.wait() }
        try ServingTests.publish("iris-logreg", as: "iris", version: 1, port: port, dir: dir)
        let c = try RawSocket(port: port)
        let body = #"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}"#
        #expect(try ServingTests.post(c, "/v2/models/iris/infer", body).status == 200) // loads the model
        try c.send(String(repeating: ServingTests.request("/v2/models/iris/infer", body), count: 5))
        for i in 0..<5 {
            let r = try c.readResponse()
            #expect(r.status == 200, "call \(i): \(r.text)")
        }
        let metrics = try ServingTests.metrics(c)
        #expect(ServingTests.value("kaa_inference_queue_depth", in: metrics) == 0, "\(metrics)")
        #expect(ServingTests.value(#"kaa_inference_requests_total{model="iris",code="200"}"#, in: metrics) == 6)
    }

    @Test func lruEvictsUnderASmallBudgetAndPinnedModelsStay() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let (node, port) = try NodeProcessTests.startNode(dir, extra: ["--memory-budget", "1KiB", "--pinned-models", "m0"])
        defer { node.signal(SIGTERM); node.wait() }
        for i in 0..<6 { try ServingTests.publish("iris-logreg", as: "m\(i)", version: 1, port: port, dir: dir) }
        let c = try RawSocket(port: port)
        for round in 0..<2 {
            for i in 0..<6 {
                let r = try ServingTests.post(c, "/v2/models/m\(i)/infer",
                    #"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#)
                #expect(r.status == 200, "round \(round) m\(i): \(r.text)")
            }
        }
        let metrics = try ServingTests.metrics(c)
        func value(_ name: String) -> Double? { ServingTests.value(name, in: metrics) }
        // Every call but the pinned model's loads again: 1 + 5 * 2 loads, 5 * 2 - ... evictions.
        #expect(value("kaa_model_loads_total") == 11)
        #expect((value("kaa_model_evictions_total") ?? 0) >= 9)
        #expect(value("kaa_models_loaded") == 2) // the pinned one and the last one used
        #expect(node.stderr.contains("model evicted"))
    }

    static func metrics(_ c: RawSocket) throws -> String {
        try c.send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        return try c.readResponse().text
    }

    /// The value of a series in a Prometheus exposition, named in full (with its labels, if any).
    static func value(_ name: String, in metrics: String) -> Double? {
        metrics.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ")[1]) }
    }

    @Test func theBudgetCountsTheMemoryCallsKeep() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let (node, port) = try NodeProcessTests.startNode(dir)
        defer { node.signal(SIGTERM); node.wait() }
        try ServingTests.publish("digits-mlp", as: "digits", version: 1, port: port, dir: dir)
        let row = "[" + (0..<64).map { String($0 % 16) }.joined(separator: ",") + "]"
        func body(rows: Int) -> String {
            #"{"inputs":[{"name":"input","shape":[\#(rows),64],"datatype":"FP32","data":[\#(Array(repeating: row, count: rows).joined(separator: ","))]}]}"#
        }
        let c = try RawSocket(port: port)
        #expect(try ServingTests.post(c, "/v2/models/digits/infer", body(rows: 1)).status == 200)
        let modelBytes = try #require(Double(try node.waitForLog(#"model loaded .*model\.bytes=(\d+)"#)))
        // The first call is measured: its workspace and the outputs kept for the next call count.
        let afterFirst = try #require(ServingTests.value("kaa_model_loaded_bytes", in: try ServingTests.metrics(c)))
        #expect(afterFirst > modelBytes)
        // A batch of 64 leaves its intermediates (the scaled 64 x 64 input alone is 16 KiB) in
        // the workspace; the next measured call (the 16th) counts them.
        #expect(try ServingTests.post(c, "/v2/models/digits/infer", body(rows: 64)).status == 200)
        for _ in 3...16 { #expect(try ServingTests.post(c, "/v2/models/digits/infer", body(rows: 1)).status == 200) }
        let afterBatch = try #require(ServingTests.value("kaa_model_loaded_bytes", in: try ServingTests.metrics(c)))
        #expect(afterBatch - afterFirst >= Double(64 * 64 * MemoryLayout<Float>.size), "\(afterFirst) -> \(afterBatch)")
    }

    @Test func anAliasSwitchUnderLoadFailsNoRequest() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let (node, port) = try NodeProcessTests.startNode(dir)
        defer { node.signal(SIGTERM); node.wait() }
        try ServingTests.publish("iris-logreg", as: "iris", version: 1, port: port, dir: dir)
        try ServingTests.publish("iris-logreg", as: "iris", version: 2, port: port, dir: dir)
        #expect(try KaaProcess.run(["alias", "set", "iris", "stable", "1", "--to", "http://127.0.0.1:\(port)"]).0 == 0)
        let body = #"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#
        let c = try RawSocket(port: port)
        var versions: [String] = []
        for i in 0..<400 {
            if i == 200 {
                let switched = try KaaProcess.run(["alias", "set", "iris", "stable", "2", "--to", "http://127.0.0.1:\(port)"])
                #expect(switched.0 == 0)
            }
            let r = try ServingTests.post(c, "/v2/models/iris/infer", body)
            #expect(r.status == 200)
            versions.append(try ServingTests.json(r)["model_version"] as? String ?? "?")
        }
        #expect(versions.prefix(200).allSatisfy { $0 == "1" })
        #expect(versions.suffix(200).allSatisfy { $0 == "2" }) // takes effect for the next request at once
    }
}
