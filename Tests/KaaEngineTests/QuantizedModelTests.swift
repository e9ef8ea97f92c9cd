import Foundation
@testable import KaaEngine
import Testing

/// Quantized models: onnxruntime's own `quantize_dynamic` output (fixtures from
/// tools/export-quantized-fixtures.py) against onnxruntime, the fused int8 product against
/// the same operators run one by one, and `Quantization.int8` (what
/// `kaa snapshot build --quantize int8` runs).
@Suite struct QuantizedModelTests {
    static let fixtures = SampleModelTests.root.appendingPathComponent("Tests/KaaEngineTests/Fixtures/mlp-int8")

    static func model(_ file: String) throws -> Data { try Data(contentsOf: fixtures.appendingPathComponent(file)) }

    static func reference(_ name: String) throws -> Tensor {
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: fixtures.appendingPathComponent("outputs.json"))) as! [String: [String: Any]]
        return try SampleModelTests.tensor(try #require(json[name]))
    }

    static var input: Tensor {
        get throws { try #require(try SampleModelTests.load("mlp-int8", "inputs.json")["input"]) }
    }

    /// How many of a model's steps are fused int8 products writing floats.
    static func fusedProducts(_ m: Model) -> Int {
        m.plan.steps.filter { ($0.kernel as? QuantizedProductKernel)?.floatOutput == true }.count
    }

    /// Within `tolerance` of `want`, relative to the output's largest magnitude.
    static func close(_ got: Tensor, _ want: Tensor, tolerance: Float) -> String? {
        guard got.shape == want.shape, let a = got.floats, let b = want.floats else { return "got \(got.shape) \(got.dtype), expected \(want.shape) \(want.dtype)" }
        let scale = b.map(abs).max() ?? 1
        for i in a.indices where !(abs(a[i] - b[i]) <= tolerance * scale) {
            return "element \(i): \(a[i]), expected \(b[i])"
        }
        return nil
    }

    /// The models onnxruntime's `quantize_dynamic` wrote (int8 weights per tensor and per
    /// channel, uint8 weights) give onnxruntime's outputs, with each product fused.
    @Test(arguments: ["dynamic", "dynamic-per-channel", "dynamic-uint8"])
    func onnxruntimeQuantizedModelsMatchOnnxruntime(name: String) throws {
        let m = try Model(onnx: Self.model("\(name).onnx"))
        #expect(Self.fusedProducts(m) == 3, "\(m.plan.steps.map(\.owner))")
        let got = try #require(try m.run(["input": Self.input])["output"])
        // Integer sums are exact; the float steps around them round alike up to the order of
        // a multiply and an add.
        let problem = Self.close(got, try Self.reference(name), tolerance: 1e-5)
        #expect(problem == nil, "\(name): \(problem ?? "")")
    }

    /// The fused product gives exactly what its operators give one by one (the weights fed
    /// as inputs, so nothing is packed or fused), at every batch size, reusing the workspace.
    @Test(arguments: ["dynamic", "dynamic-per-channel", "dynamic-uint8"])
    func theFusedProductEqualsItsOperators(name: String) throws {
        let fused = try Model(onnx: Self.model("\(name).onnx"))
        var proto = try Onnx_ModelProto(serializedBytes: Self.model("\(name).onnx"))
        let weights = proto.graph.initializer.filter { $0.name.hasSuffix("_quantized") || $0.name.hasSuffix("_zero_point") }
        proto.graph.initializer.removeAll { t in weights.contains { $0.name == t.name } }
        proto.graph.input += weights.map { LoaderErrorTests.valueInfo($0.name, DType(rawValue: Int($0.dataType))!, $0.dims) }
        let plain = try Model(onnx: proto.serializedData())
        #expect(Self.fusedProducts(plain) == 0)
        var feeds = try Dictionary(uniqueKeysWithValues: weights.map { ($0.name, try TensorCoding.decode($0, what: $0.name)) })
        let x = try Self.input
        for rows in [1, 2, 7, 33] {
            let slice = Tensor(shape: [rows, x.shape[1]], floats: Array(x.floats![0..<(rows * x.shape[1])]))
            feeds["input"] = slice
            let want = try #require(try plain.run(feeds)["output"])
            var out: [String: Tensor] = [:]
            for _ in 0..<3 { try fused.run(["input": slice], into: &out) }
            #expect(out["output"] == want, "\(name), \(rows) rows")
        }
    }

    /// `Quantization.int8` turns the large products of a PyTorch-style model into the
    /// standard pattern, which the engine fuses; the weights take about a quarter of the
    /// memory, and the outputs stay close to the float model's.
    @Test func int8QuantizationOfATorchStyleModel() throws {
        let float = try Self.model("float.onnx")
        let (bytes, report) = try Quantization.int8(onnx: float)
        // 64×48 and 48×32 are quantized; 32×10 has too few weights.
        #expect(report.products.map { $0.keptFloat == nil } == [true, true, false], "\(report.products)")
        #expect(report.int8WeightBytes * 3 < report.floatWeightBytes)
        let original = try Model(onnx: float), quantized = try Model(onnx: bytes)
        #expect(Self.fusedProducts(quantized) == 2)
        #expect(Set(quantized.operatorsUsed).isSuperset(of: ["ai.onnx:DynamicQuantizeLinear", "ai.onnx:MatMulInteger"]))
        #expect(quantized.memoryBytes < original.memoryBytes)
        let x = try Self.input
        let want = try #require(try original.run(["input": x])["output"])
        let got = try #require(try quantized.run(["input": x])["output"])
        #expect(Self.close(got, want, tolerance: 0.05) == nil, "\(Self.close(got, want, tolerance: 0.05) ?? "")")
        // The same as onnxruntime's float model within int8 error, row by row the same argmax
        // for nearly every row.
        let n = want.shape[1]
        let agree = (0..<want.shape[0]).filter { r in
            let w = want.floats![(r * n)..<((r + 1) * n)], g = got.floats![(r * n)..<((r + 1) * n)]
            return w.firstIndex(of: w.max()!) == g.firstIndex(of: g.max()!)
        }.count
        #expect(agree >= want.shape[0] - 1, "\(agree) of \(want.shape[0]) rows agree")
    }

    /// A model with nothing to quantize, and one at an opset before DynamicQuantizeLinear, are
    /// refused with what to do.
    @Test func quantizationRefusesWhatItCannotDo() throws {
        var proto = try Onnx_ModelProto(serializedBytes: Self.model("float.onnx"))
        proto.opsetImport[0].version = 10
        let old = try proto.serializedData()
        #expect(throws: EngineError.self) { try Quantization.int8(onnx: old) }
        do { _ = try Quantization.int8(onnx: old) } catch let e as EngineError { #expect(e.message.contains("opset 11")) }
        var relu = Onnx_ModelProto()
        relu.irVersion = 8
        var o = Onnx_OperatorSetIdProto()
        o.version = 17
        relu.opsetImport = [o]
        relu.graph.node = [LoaderErrorTests.node("Relu", ["x"], ["y"])]
        relu.graph.input = [LoaderErrorTests.valueInfo("x", .float32, [1, 4])]
        var y = Onnx_ValueInfoProto()
        y.name = "y"
        relu.graph.output = [y]
        do {
            _ = try Quantization.int8(onnx: relu.serializedData())
            Issue.record("a model without products was quantized")
        } catch let e as EngineError {
            #expect(e.message.contains("no matrix product to quantize"))
        }
    }

    /// DynamicQuantizeLinear refuses NaN and infinities with a clear error.
    @Test func dynamicQuantizationRefusesNonFiniteInput() throws {
        let m = try Model(onnx: Self.model("dynamic.onnx"))
        var v = [Float](repeating: 0.5, count: 64)
        v[3] = .nan
        #expect { try m.run(["input": Tensor(shape: [1, 64], floats: v)]) } throws: { e in
            (e as? EngineError)?.message.contains("NaN or an infinity") == true
        }
    }
    /// Hostile values in a quantized operator's parameters give values, not a crash: a NaN
    /// scale in QLinearMatMul gives the zero point, and DequantizeLinear of int32 extremes
    /// does not overflow.
    @Test func quantizedOperatorsSurviveHostileParameters() throws {
        func model(_ node: Onnx_NodeProto, _ inputs: [(String, DType, [Int64])]) throws -> Model {
            var m = Onnx_ModelProto()
            m.irVersion = 8
            var o = Onnx_OperatorSetIdProto()
            o.version = 17
            m.opsetImport = [o]
            m.graph.node = [node]
            m.graph.input = inputs.map { LoaderErrorTests.valueInfo($0.0, $0.1, $0.2) }
            var y = Onnx_ValueInfoProto()
            y.name = "y"
            m.graph.output = [y]
            return try Model(onnx: m.serializedData())
        }
        let q = try model(LoaderErrorTests.node("QLinearMatMul", ["a", "sa", "za", "b", "sb", "zb", "sy", "zy"], ["y"]),
                          [("a", .uint8, [1, 2]), ("sa", .float32, []), ("za", .uint8, []), ("b", .uint8, [2, 2]),
                           ("sb", .float32, []), ("zb", .uint8, []), ("sy", .float32, []), ("zy", .uint8, [])])
        let scalar = { (v: Float) in Tensor(shape: [], floats: [v]) }
        let y = try q.run(["a": Tensor(shape: [1, 2], uint8s: [3, 200]), "sa": scalar(.nan), "za": Tensor(shape: [], uint8s: [0]),
                           "b": Tensor(shape: [2, 2], uint8s: [1, 2, 3, 4]), "sb": scalar(1), "zb": Tensor(shape: [], uint8s: [0]),
                           "sy": scalar(0), "zy": Tensor(shape: [], uint8s: [9])])["y"]
        #expect(y == Tensor(shape: [1, 2], uint8s: [9, 9]))
        let d = try model(LoaderErrorTests.node("DequantizeLinear", ["x", "s", "z"], ["y"]),
                          [("x", .int32, [2]), ("s", .float32, []), ("z", .int32, [])])
        let out = try d.run(["x": Tensor(shape: [2], int32s: [.min, .max]), "s": scalar(1), "z": Tensor(shape: [], int32s: [.max])])["y"]
        #expect(out == Tensor(shape: [2], floats: [-4294967295, 0]))
    }
}
