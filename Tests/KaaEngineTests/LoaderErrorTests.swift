import Foundation
@testable import KaaEngine
import KaaTestSupport
import Testing

/// Malformed models get a clear error naming what is wrong, never a crash.
@Suite struct LoaderErrorTests {
    static func valueInfo(_ name: String, _ type: DType = .float32, _ dims: [Int64] = [2, 3]) -> Onnx_ValueInfoProto {
        var v = Onnx_ValueInfoProto()
        v.name = name
        var t = Onnx_TypeProto.Tensor()
        t.elemType = Int32(type.rawValue)
        var s = Onnx_TensorShapeProto()
        s.dim = dims.map { var d = Onnx_TensorShapeProto.Dimension(); d.dimValue = $0; return d }
        t.shape = s
        v.type.tensorType = t
        return v
    }

    static func node(_ op: String, _ inputs: [String], _ outputs: [String], domain: String = "") -> Onnx_NodeProto {
        var n = Onnx_NodeProto()
        n.opType = op
        n.input = inputs
        n.output = outputs
        n.domain = domain
        n.name = "\(op.lowercased())_0"
        return n
    }

    static func model(_ nodes: [Onnx_NodeProto], inputs: [Onnx_ValueInfoProto] = [valueInfo("x")],
                      outputs: [String] = ["y"], initializers: [Onnx_TensorProto] = [], opset: Int64 = 17) -> Data {
        var m = Onnx_ModelProto()
        m.irVersion = 8
        var o = Onnx_OperatorSetIdProto()
        o.version = opset
        m.opsetImport = [o]
        m.graph.node = nodes
        m.graph.input = inputs
        m.graph.output = outputs.map { valueInfo($0) }
        m.graph.initializer = initializers
        return try! m.serializedData()
    }

    static func loadError(_ bytes: Data) -> EngineError? {
        do { _ = try Model(onnx: bytes); return nil } catch { return error as? EngineError }
    }

    @Test func validModelRuns() throws {
        let m = try Model(onnx: Self.model([Self.node("Relu", ["x"], ["y"])]))
        let y = try m.run(["x": Tensor(shape: [2, 3], floats: [-1, 2, -3, 4, -5, 6])])
        #expect(y["y"] == Tensor(shape: [2, 3], floats: [0, 2, 0, 4, 0, 6]))
        #expect(throws: EngineError.self) { try m.run(["x": Tensor(shape: [2, 4], floats: .init(repeating: 0, count: 8))]) }
        #expect(throws: EngineError.self) { try m.run(["x": Tensor(shape: [2, 3], int64s: .init(repeating: 0, count: 6))]) }
        #expect(throws: EngineError.self) { try m.run([:]) }
    }

    @Test func truncatedProtobuf() throws {
        let bytes = Self.model([Self.node("Relu", ["x"], ["y"])])
        let e = try #require(Self.loadError(bytes.prefix(bytes.count - 7)))
        #expect(e.code == .malformedModel)
    }

    @Test func unsupportedOperatorNamesOpDomainOpset() throws {
        let e = try #require(Self.loadError(Self.model([Self.node("FancyOp", ["x"], ["y"])])))
        #expect(e.code == .unsupportedOperator)
        #expect(e.message.contains("FancyOp") && e.message.contains("ai.onnx") && e.message.contains("17"))
        let old = try #require(Self.loadError(Self.model([Self.node("Gemm", ["x", "x"], ["y"])], opset: 3)))
        #expect(old.code == .unsupportedOperator && old.message.contains("opset 3"))
    }

    @Test func cycle() throws {
        let e = try #require(Self.loadError(Self.model([Self.node("Relu", ["x", "b"], ["a"]), Self.node("Relu", ["a"], ["b"]), Self.node("Relu", ["b"], ["y"])])))
        #expect(e.code == .invalidGraph && e.message.contains("cycle"))
    }

    @Test func danglingAndDuplicateNames() throws {
        let d = try #require(Self.loadError(Self.model([Self.node("Relu", ["nowhere"], ["y"])])))
        #expect(d.code == .invalidGraph && d.message.contains("nowhere"))
        let dup = try #require(Self.loadError(Self.model([Self.node("Relu", ["x"], ["y"]), Self.node("Relu", ["x"], ["y"])])))
        #expect(dup.code == .invalidGraph && dup.message.contains("twice"))
        let out = try #require(Self.loadError(Self.model([Self.node("Relu", ["x"], ["z"])])))
        #expect(out.code == .invalidGraph && out.message.contains("`y`"))
    }

    @Test func initializerSizeAndAbsurdDims() throws {
        var w = Onnx_TensorProto()
        w.name = "w"
        w.dataType = 1
        w.dims = [2, 3]
        w.floatData = [1, 2, 3, 4, 5]
        let e = try #require(Self.loadError(Self.model([Self.node("Add", ["x", "w"], ["y"])], initializers: [w])))
        #expect(e.code == .invalidGraph && e.message.contains("`w`") && e.message.contains("holds 5"))
        w.dims = [1 << 40, 1 << 40]
        let big = try #require(Self.loadError(Self.model([Self.node("Add", ["x", "w"], ["y"])], initializers: [w])))
        #expect(big.code == .invalidGraph && big.message.contains("more than"))
        w.dims = [-2, 3]
        #expect(Self.loadError(Self.model([Self.node("Add", ["x", "w"], ["y"])], initializers: [w]))?.code == .invalidGraph)
    }

    @Test func unknownAttributeAndWrongDtype() throws {
        var relu = Self.node("Relu", ["x"], ["y"])
        var a = Onnx_AttributeProto()
        a.name = "bogus"
        a.type = .int
        a.i = 1
        relu.attribute = [a]
        let e = try #require(Self.loadError(Self.model([relu])))
        #expect(e.code == .unsupported && e.message.contains("bogus"))
        let t = try #require(Self.loadError(Self.model([Self.node("Relu", ["x"], ["y"])], inputs: [Self.valueInfo("x", .string)])))
        #expect(t.code == .unsupported && t.message.contains("string"))
    }

    /// Seeded mutations of the sample models: every one loads and runs or fails with an
    /// `EngineError`; none crashes.
    @Test(arguments: ["iris-logreg", "digits-mlp", "wine-forest", "diabetes-gbr"])
    func mutatedModelsNeverCrash(name: String) throws {
        let original = try Data(contentsOf: SampleModelTests.root.appendingPathComponent("snapshots/\(name)/model.onnx"))
        let inputs = try SampleModelTests.load(name, "inputs.json").mapValues { SampleModelTests.rowSlice($0, 0) }
        var rng = SplitMix64(seed: 0x6b61_6121)
        var loaded = 0, refused = 0
        for _ in 0..<2000 {
            var bytes = [UInt8](original)
            for _ in 0..<(1 + Int(rng.next() % 4)) {
                let i = Int(rng.next() % UInt64(bytes.count))
                switch rng.next() % 3 {
                case 0: bytes[i] = UInt8(truncatingIfNeeded: rng.next())
                case 1: bytes[i] ^= UInt8(1 << (rng.next() % 8))
                default: bytes.removeSubrange(i..<min(bytes.count, i + Int(rng.next() % 16) + 1))
                }
            }
            do {
                let m = try Model(onnx: Data(bytes))
                loaded += 1
                _ = try? m.run(inputs)
            } catch is EngineError { refused += 1 }
        }
        #expect(loaded + refused == 2000)
        #expect(refused > 0)
    }
}

@Suite struct TensorTests {
    @Test func validatingInitializerRefusesBadShapes() throws {
        #expect(throws: EngineError.self) { try Tensor(validating: [2, 3], storage: .float32([1, 2])) }
        #expect(throws: EngineError.self) { try Tensor(validating: [-1], storage: .float32([])) }
        #expect(throws: EngineError.self) { try Tensor(validating: [1 << 40, 1 << 40], storage: .float32([])) }
        let t = try Tensor(validating: [1, 2], storage: .int64([3, 4]))
        #expect(t.dtype == .int64 && t.count == 2)
    }

    @Test func onnxTensorRoundTrip() throws {
        let t = Tensor(shape: [2], strings: ["a", "bé"])
        #expect(try Tensor(onnxTensorBytes: t.onnxTensorBytes()) == t)
        let f = Tensor(shape: [1, 3], floats: [1.5, -2, .infinity])
        #expect(try Tensor(onnxTensorBytes: f.onnxTensorBytes()) == f)
    }
}
