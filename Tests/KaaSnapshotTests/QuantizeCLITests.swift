import Foundation
import KaaTestSupport
import Testing

/// `kaa snapshot build --quantize int8` on the digits MLP sample: the int8 model is checked
/// against the float one on holdout rows before the archive stays.
@Suite struct QuantizeCLITests {
    /// 300 digit images (the engine tests' digits fixture) as holdout rows of the sample's
    /// `pixels` field.
    static func holdout(_ dir: TempDir) throws -> String {
        let url = BatchCLITests.root.appendingPathComponent("Tests/KaaEngineTests/Fixtures/digits-mlp/inputs.json")
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: [String: Any]]
        let input = try #require(json["input"])
        let shape = (input["shape"] as! [NSNumber]).map(\.intValue)
        let data = (input["data"] as! [NSNumber]).map(\.doubleValue)
        var text = ""
        for r in 0..<shape[0] {
            text += "{\"pixels\": [\(data[(r * shape[1])..<((r + 1) * shape[1])].map { String(Int($0)) }.joined(separator: ", "))]}\n"
        }
        return try dir.write("holdout.jsonl", Array(text.utf8))
    }

    static func build(_ dir: TempDir, out: String, _ extra: [String]) throws -> KaaProcess.Result {
        try KaaProcess.run([
            "snapshot", "build", "--model", BatchCLITests.sample("digits-mlp", "model.onnx"),
            "--pipeline", BatchCLITests.sample("digits-mlp", "pipeline.yaml"), "--name", "digits", "--version", "1",
            "--created-at", "2026-01-31T12:00:00Z", "--out", out,
        ] + extra, in: dir.path)
    }

    @Test func anInt8BuildPassesItsGateAndIsSmaller() throws {
        let dir = try TempDir()
        _ = try Self.holdout(dir)
        let float = try Self.build(dir, out: "float.kaa", [])
        #expect(float.status == 0, "\(float.stderr)")
        let r = try Self.build(dir, out: "int8.kaa", ["--quantize", "int8", "--holdout", "holdout.jsonl"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("int8: 2 of 3 matrix products quantized"), "\(r.stdout)")
        #expect(r.stdout.contains("MatMul `MatMul` 64x64: int8"), "\(r.stdout)")
        #expect(r.stdout.contains("MatMul `MatMul1` 64x32: int8"), "\(r.stdout)")
        #expect(r.stdout.contains("MatMul `MatMul2` 32x10: float32 (320 weights: too few to gain from int8)"), "\(r.stdout)")
        #expect(r.stdout.contains("gate agreement>=0.99 against the float model on 300 holdout rows: passed"), "\(r.stdout)")
        #expect(r.stdout.contains("built digits@1 -> int8.kaa"), "\(r.stdout)")
        // The holdout served only the check: without --gate the archive does not carry it.
        let inspect = try KaaProcess.run(["snapshot", "inspect", "int8.kaa"], in: dir.path)
        #expect(inspect.stdout.contains("quantization=int8"), "\(inspect.stdout)")
        #expect(!inspect.stdout.contains("holdout"), "\(inspect.stdout)")
        let floatBytes = try dir.read("float.kaa").count, int8Bytes = try dir.read("int8.kaa").count
        #expect(int8Bytes * 10 < floatBytes * 7, "int8 archive \(int8Bytes) bytes, float \(floatBytes)")
        // No temporary file (quantized model, float parent) is left beside the archive.
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted() == ["float.kaa", "holdout.jsonl", "int8.kaa"])
    }

    @Test func anInt8BuildThatFailsItsGateWritesNothing() throws {
        let dir = try TempDir()
        _ = try Self.holdout(dir)
        let r = try Self.build(dir, out: "int8.kaa", ["--quantize", "int8", "--holdout", "holdout.jsonl", "--quantize-gate", "max_score_diff<=0.001"])
        #expect(r.status == 1)
        #expect(r.stdout.contains("gate max_score_diff<=0.001 against the float model on 300 holdout rows: FAILED"), "\(r.stdout)")
        #expect(r.stderr.hasPrefix("error: the int8 model fails its gate against the float model: max_score_diff "), "\(r.stderr)")
        #expect(r.stderr.hasSuffix("(needs <= 0.001); nothing written. Keep the float model, or loosen --quantize-gate\n"), "\(r.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["holdout.jsonl"])
    }

    @Test func anInt8BuildWithAGateCarriesItForStable() throws {
        let dir = try TempDir()
        _ = try Self.holdout(dir)
        let r = try Self.build(dir, out: "int8.kaa", ["--quantize", "int8", "--holdout", "holdout.jsonl", "--gate", "agreement>=0.95"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("gate agreement>=0.99 against the float model"), "\(r.stdout)")
        let inspect = try KaaProcess.run(["snapshot", "inspect", "int8.kaa"], in: dir.path)
        #expect(inspect.stdout.contains("gate           agreement>=0.95"), "\(inspect.stdout)")
        #expect(inspect.stdout.contains("holdout.jsonl: 300 rows"), "\(inspect.stdout)")
    }

    @Test func badQuantizeArgumentsAreRefused() throws {
        let dir = try TempDir()
        _ = try Self.holdout(dir)
        let noRows = try Self.build(dir, out: "int8.kaa", ["--quantize", "int8"])
        #expect(noRows.status == 1)
        #expect(noRows.stderr == "error: --quantize int8 checks the int8 model against the float one on holdout rows: give --holdout rows.jsonl\n")
        let int4 = try Self.build(dir, out: "int8.kaa", ["--quantize", "int4", "--holdout", "holdout.jsonl"])
        #expect(int4.status == 1)
        #expect(int4.stderr == "error: --quantize `int4`: the only quantization is int8\n")
        let gateAlone = try Self.build(dir, out: "int8.kaa", ["--quantize-gate", "agreement>=0.9"])
        #expect(gateAlone.status == 1)
        #expect(gateAlone.stderr == "error: --quantize-gate goes with --quantize int8\n")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["holdout.jsonl"])
    }
}
