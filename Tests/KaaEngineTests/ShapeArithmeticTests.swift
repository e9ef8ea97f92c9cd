import Foundation
@testable import KaaEngine
import KaaTestSupport
import Testing

/// No model and request make a kernel trap: every size, stride and index computed from the
/// caller's shapes and values, or the model's attributes, is checked, and what cannot be
/// computed is an `EngineError`, `invalidInput` when the caller's values are at fault.
@Suite struct ShapeArithmeticTests {
    // MARK: Helpers

    /// An input that declares its element type and no shape, so any rank reaches the kernel.
    static func free(_ name: String, _ type: DType) -> Onnx_ValueInfoProto {
        var v = Onnx_ValueInfoProto()
        v.name = name
        var t = Onnx_TypeProto.Tensor()
        t.elemType = Int32(type.rawValue)
        v.type.tensorType = t
        return v
    }

    static func int(_ name: String, _ value: Int64) -> Onnx_AttributeProto {
        var a = Onnx_AttributeProto()
        a.name = name
        a.type = .int
        a.i = value
        return a
    }

    static func ints(_ name: String, _ values: [Int64]) -> Onnx_AttributeProto {
        var a = Onnx_AttributeProto()
        a.name = name
        a.type = .ints
        a.ints = values
        return a
    }

    /// A model of one node `op` reading `inputs` (shapeless graph inputs) and writing `y`.
    static func model(_ op: String, _ inputs: [(String, DType)], attributes: [Onnx_AttributeProto] = [],
                      domain: String = "", opset: Int64 = 17) throws -> Model {
        try Model(onnx: modelBytes(op, inputs, attributes: attributes, domain: domain, opset: opset))
    }

    /// The bytes of ``model(_:_:attributes:domain:opset:)``.
    static func modelBytes(_ op: String, _ inputs: [(String, DType)], attributes: [Onnx_AttributeProto] = [],
                           domain: String = "", opset: Int64 = 17) throws -> Data {
        var node = LoaderErrorTests.node(op, inputs.map(\.0), ["y"], domain: domain)
        node.attribute = attributes
        var m = Onnx_ModelProto()
        m.irVersion = 8
        var onnx = Onnx_OperatorSetIdProto()
        onnx.version = opset
        m.opsetImport = [onnx]
        if !domain.isEmpty {
            var d = Onnx_OperatorSetIdProto()
            d.domain = domain
            d.version = 1
            m.opsetImport.append(d)
        }
        m.graph.node = [node]
        m.graph.input = inputs.map { free($0.0, $0.1) }
        var y = Onnx_ValueInfoProto()
        y.name = "y"
        m.graph.output = [y]
        return try m.serializedData()
    }

    /// A float32 tensor of `shape`, whose elements (none when a dimension is 0) count up.
    static func floats(_ shape: [Int]) -> Tensor {
        let n = shape.contains(0) ? 0 : shape.reduce(1, *)
        return Tensor(shape: shape, floats: (0..<n).map(Float.init))
    }

    /// The error a run throws, as an `EngineError`; `nil` when it succeeds.
    static func error(_ model: Model, _ inputs: [String: Tensor], limits: RunLimits = .default) -> EngineError? {
        do { _ = try model.run(inputs, limits: limits); return nil } catch { return error as? EngineError }
    }

    // MARK: The reproduced crashes

    @Test func addWhoseBroadcastShapeOverflowsIsRefused() throws {
        let add = try Self.model("Add", [("a", .float32), ("b", .float32)])
        // The reproduced case: each input alone already hides 2^60 behind its zero.
        let e = try #require(Self.error(add, ["a": Self.floats([1 << 30, 1, 1 << 30, 0]), "b": Self.floats([1, 1 << 30, 1, 0])]))
        #expect(e.code == .invalidInput)
        #expect(e.message.contains("input `a`") && e.message.contains("[1073741824, 1, 1073741824, 0]"), "\(e)")
        // Inputs that pass, whose broadcast does not: [2^16, 2^16, 2^15, 0].
        let b = try #require(Self.error(add, ["a": Self.floats([1 << 16, 1, 1 << 15, 0]), "b": Self.floats([1, 1 << 16, 1, 0])]))
        #expect(b.code == .invalidInput)
        #expect(b.message.contains("`Add` node") && b.message.contains("[65536, 65536, 32768, 0]"), "\(b)")
    }

    @Test func broadcastOfMoreThanOneTensorHoldsIsRefused() throws {
        // [2^20, 1] + [1, 2^20] would be 2^40 floats (4 TiB).
        let add = try Self.model("Add", [("a", .float32), ("b", .float32)])
        let e = try #require(Self.error(add, ["a": Self.floats([1 << 20, 1]), "b": Self.floats([1, 1 << 20])]))
        #expect(e.code == .invalidInput)
        #expect(e.message.contains("[1048576, 1048576]") && e.message.contains("2147483648"), "\(e)")
        // Shapes that do not broadcast are the caller's too.
        let bad = try #require(Self.error(add, ["a": Self.floats([2, 3]), "b": Self.floats([4, 3])]))
        #expect(bad.code == .invalidInput && bad.message.contains("do not broadcast"), "\(bad)")
    }

    @Test func reshapeToAnOverflowingOrImpossibleShapeIsRefused() throws {
        let model = try Self.model("Reshape", [("x", .float32), ("shape", .int64)])
        func reshape(_ x: [Int], to target: [Int64]) -> EngineError? {
            Self.error(model, ["x": Self.floats(x), "shape": Tensor(shape: [target.count], int64s: target)])
        }
        for (x, target) in [([4], [4_611_686_018_427_387_904, 4]), ([0], [0, 1 << 40, 1 << 40]), ([0, 3], [1 << 62, 0]),
                            ([4], [-3, 2]), ([4], [-1, -1]), ([4], [3]), ([4], [Int64.min, 1]), ([6], [4, -1]),
                            ([0, 2], [0, -1]), ([3], [0, 0, 0]), ([], [Int64](repeating: 1, count: 40))] {
            let e = try #require(reshape(x, to: target), "\(x) to \(target) should be refused")
            #expect(e.code == .invalidInput, "\(x) to \(target): \(e)")
            #expect(e.message.contains("`Reshape` node"), "\(e)")
        }
        // What is possible still reshapes.
        let ok = try model.run(["x": Self.floats([2, 3]), "shape": Tensor(shape: [2], int64s: [-1, 2])])
        #expect(ok["y"]?.shape == [3, 2])
        let empty = try model.run(["x": Self.floats([0, 1]), "shape": Tensor(shape: [1], int64s: [-1])])
        #expect(empty["y"]?.shape == [0])
    }

    @Test func matMulOfEmptyInnerDimensionIsRefused() throws {
        // [2^30, 0] x [0, 2^30] holds nothing in, but would make 2^60 zeros.
        let matMul = try Self.model("MatMul", [("a", .float32), ("b", .float32)])
        let e = try #require(Self.error(matMul, ["a": Self.floats([1 << 30, 0]), "b": Self.floats([0, 1 << 30])]))
        #expect(e.code == .invalidInput && e.message.contains("`MatMul` node"), "\(e)")
        let gemm = try Self.model("Gemm", [("a", .float32), ("b", .float32)])
        let g = try #require(Self.error(gemm, ["a": Self.floats([1 << 30, 0]), "b": Self.floats([0, 1 << 30])]))
        #expect(g.code == .invalidInput && g.message.contains("`Gemm` node"), "\(g)")
        // Mismatched inner dimensions are the caller's.
        let inner = try #require(Self.error(matMul, ["a": Self.floats([2, 3]), "b": Self.floats([4, 2])]))
        #expect(inner.code == .invalidInput && inner.message.contains("do not multiply"), "\(inner)")
    }

    @Test func axisOperatorsOnAScalarAreRefused() throws {
        let scalar = Tensor(shape: [], floats: [1])
        for (op, extra) in [("ArgMax", [(String, DType)]()), ("Gather", [("i", .int64)]), ("Concat", [])] {
            let m = try Self.model(op, [("x", .float32)] + extra, attributes: op == "Concat" ? [Self.int("axis", 0)] : [])
            var inputs = ["x": scalar]
            if !extra.isEmpty { inputs["i"] = Tensor(shape: [1], int64s: [0]) }
            let e = try #require(Self.error(m, inputs), "\(op) of a scalar")
            #expect(e.code == .invalidInput && e.message.contains("scalar"), "\(op): \(e)")
        }
        // Softmax of a scalar is one element of one row.
        let softmax = try Self.model("Softmax", [("x", .float32)])
        #expect(try softmax.run(["x": scalar])["y"] == Tensor(shape: [], floats: [1]))
    }

    // MARK: Codes: the caller's values are the caller's fault

    @Test func errorsFromTheCallersValuesAreInvalidInput() throws {
        let gather = try Self.model("Gather", [("x", .float32), ("i", .int64)])
        let index = try #require(Self.error(gather, ["x": Self.floats([3, 2]), "i": Tensor(shape: [2], int64s: [1, 7])]))
        #expect(index.code == .invalidInput)
        #expect(index.message.contains("`Gather` node") && index.message.contains("index 7") && index.message.contains("size 3"), "\(index)")
        let axis = try Self.model("ArgMax", [("x", .float32)], attributes: [Self.int("axis", 5)])
        let a = try #require(Self.error(axis, ["x": Self.floats([2, 3])]))
        #expect(a.code == .invalidInput && a.message.contains("axis 5") && a.message.contains("rank 2"), "\(a)")
        let div = try Self.model("Div", [("a", .int64), ("b", .int64)])
        let d = try #require(Self.error(div, ["a": Tensor(shape: [2], int64s: [1, 2]), "b": Tensor(shape: [2], int64s: [1, 0])]))
        #expect(d.code == .invalidInput, "\(d)")
        let cast = try Self.model("Cast", [("x", .string)], attributes: [Self.int("to", Int64(DType.int64.rawValue))])
        let c = try #require(Self.error(cast, ["x": Tensor(shape: [2], strings: ["12", "twelve"])]))
        #expect(c.code == .invalidInput && c.message.contains("`twelve`"), "\(c)")
        let concat = try Self.model("Concat", [("a", .float32), ("b", .float32)], attributes: [Self.int("axis", 0)])
        let k = try #require(Self.error(concat, ["a": Self.floats([1, 2]), "b": Self.floats([1, 3])]))
        #expect(k.code == .invalidInput && k.message.contains("cannot concatenate"), "\(k)")
    }

    // MARK: Beyond the reproduced crashes

    /// An input whose zero dimension hides others so large that a product of them overflows
    /// (the `inner` of axis 0 of [0, 2^40, 2^40]) is refused on entry, and so is a rank above
    /// 32 (a mask of 65 axes overflows).
    @Test func inputShapesThatHideOverflowAreRefusedOnEntry() throws {
        let softmax = try Self.model("Softmax", [("x", .float32)], attributes: [Self.int("axis", 0)])
        let e = try #require(Self.error(softmax, ["x": Self.floats([0, 1 << 40, 1 << 40])]))
        #expect(e.code == .invalidInput && e.message.contains("input `x`"), "\(e)")
        let reduce = try Self.model("ReduceSum", [("x", .float32)], opset: 11)
        let r = try #require(Self.error(reduce, ["x": Self.floats([Int](repeating: 1, count: 65))]))
        #expect(r.code == .invalidInput && r.message.contains("65 dimensions"), "\(r)")
        let unsqueeze = try Self.model("Unsqueeze", [("x", .float32), ("axes", .int64)])
        let u = try #require(Self.error(unsqueeze, ["x": Self.floats([2]), "axes": Tensor(shape: [40], int64s: (1...40).map(Int64.init))]))
        #expect(u.code == .invalidInput, "\(u)")
    }

    struct Case {
        var op: String
        var inputs: [(String, DType)]
        var attributes: () -> [Onnx_AttributeProto] = { [] }
        var domain = ""
        var opset: Int64 = 17
    }

    /// Every operator, fed seeded shapes mixing zeros, ones and huge dimensions (zero-element
    /// tensors cost nothing to send), and seeded index, axis and shape values: each run returns
    /// or throws `invalidInput` or `limitExceeded`, never traps and never claims an engine bug.
    @Test func seededHostileShapesNeverTrap() throws {
        let huge: [Int] = [1 << 20, 1 << 30, 1 << 31, 1 << 40, 1 << 62, Int.max]
        let values: [Int64] = [-1, 0, 1, 2, 3, -2, 1 << 31, 1 << 40, 1 << 62, .max, .min, -(1 << 62)]
        var rng = SplitMix64(seed: 0x7368_6170_6573)
        func pick<T>(_ a: [T]) -> T { a[Int(rng.next() % UInt64(a.count))] }
        /// A random shape: small dimensions that hold a few elements, or huge ones beside a zero.
        func shape() -> [Int] {
            let rank = Int(rng.next() % 5)
            if rng.next() % 2 == 0 { return (0..<rank).map { _ in Int(rng.next() % 3) + 1 } }
            var s = (0..<rank).map { _ in rng.next() % 3 == 0 ? pick(huge) : Int(rng.next() % 3) }
            if rank > 0 { s[Int(rng.next() % UInt64(rank))] = 0 }
            return s
        }
        func tensor(_ type: DType, _ s: [Int]) -> Tensor {
            let n = s.contains(0) ? 0 : s.reduce(1, *)
            switch type {
            case .int64: return Tensor(shape: s, int64s: (0..<n).map { _ in pick(values) })
            case .string: return Tensor(shape: s, strings: (0..<n).map { String($0) })
            default: return Tensor(shape: s, floats: (0..<n).map(Float.init))
            }
        }
        /// A short int64 vector of seeded values (axes, shapes, indices).
        func vector() -> Tensor {
            let n = Int(rng.next() % 4)
            return Tensor(shape: [n], int64s: (0..<n).map { _ in pick(values) })
        }
        let axis = { Self.int("axis", pick(values)) }
        func ml(_ op: String, _ inputs: [(String, DType)], _ attributes: @escaping () -> [Onnx_AttributeProto]) -> Case {
            Case(op: op, inputs: inputs, attributes: attributes, domain: "ai.onnx.ml")
        }
        let cases: [Case] = [
            Case(op: "Add", inputs: [("a", .float32), ("b", .float32)]),
            Case(op: "Mul", inputs: [("a", .float32), ("b", .float32)]),
            Case(op: "MatMul", inputs: [("a", .float32), ("b", .float32)]),
            Case(op: "Gemm", inputs: [("a", .float32), ("b", .float32), ("c", .float32)]) { [Self.int("transA", Int64(rng.next() % 2))] },
            Case(op: "Concat", inputs: [("a", .float32), ("b", .float32)]) { [axis()] },
            Case(op: "Gather", inputs: [("a", .float32), ("i", .int64)]) { [axis()] },
            Case(op: "Reshape", inputs: [("a", .float32), ("s", .int64)]),
            Case(op: "Transpose", inputs: [("a", .float32)]) { rng.next() % 2 == 0 ? [] : [Self.ints("perm", (0..<Int(rng.next() % 4)).map { _ in pick(values) })] },
            Case(op: "ArgMax", inputs: [("a", .float32)]) { [axis()] },
            Case(op: "Softmax", inputs: [("a", .float32)]) { [axis()] },
            Case(op: "LogSoftmax", inputs: [("a", .float32)], attributes: { [axis()] }, opset: 11),
            Case(op: "Flatten", inputs: [("a", .float32)]) { [axis()] },
            Case(op: "ReduceSum", inputs: [("a", .float32), ("axes", .int64)]),
            Case(op: "ReduceMean", inputs: [("a", .float32)]) { [Self.ints("axes", [pick(values)])] },
            Case(op: "Squeeze", inputs: [("a", .float32), ("axes", .int64)]),
            Case(op: "Unsqueeze", inputs: [("a", .float32), ("axes", .int64)]),
            Case(op: "Cast", inputs: [("a", .float32)]) { [Self.int("to", Int64(DType.string.rawValue))] },
            Case(op: "Clip", inputs: [("a", .float32)]),
            Case(op: "BatchNormalization", inputs: [("a", .float32), ("s", .float32), ("b", .float32), ("m", .float32), ("v", .float32)]),
            Case(op: "StringNormalizer", inputs: [("a", .string)]) { [MLOperatorTests.attribute("stopwords", strings: ["1"])] },
            Case(op: "TfIdfVectorizer", inputs: [("a", .int64)]) {
                [Self.int("min_gram_length", 1), Self.int("max_gram_length", 2), Self.int("max_skip_count", 1),
                 Self.ints("ngram_counts", [0, 2]), Self.ints("ngram_indexes", [0, 1, 2]), Self.ints("pool_int64s", [1, 2, 1, 2])]
            },
            ml("ArrayFeatureExtractor", [("a", .float32), ("i", .int64)]) { [] },
            ml("Scaler", [("a", .float32)]) { [MLOperatorTests.attribute("scale", floats: [2, 3])] },
            ml("Normalizer", [("a", .float32)]) { [] },
            ml("ZipMap", [("a", .float32)]) { [MLOperatorTests.attribute("classlabels_int64s", ints: [0, 1])] },
            ml("OneHotEncoder", [("a", .int64)]) { [MLOperatorTests.attribute("cats_int64s", ints: [1, 2, 3]), Self.int("zeros", Int64(rng.next() % 2))] },
            ml("LinearRegressor", [("a", .float32)]) { [MLOperatorTests.attribute("coefficients", floats: []), Self.int("targets", 3)] },
            ml("Imputer", [("a", .float32)]) { [MLOperatorTests.attribute("imputed_value_floats", floats: [1, 2])] },
        ]
        var ran = 0, refused = 0
        for c in cases {
            for _ in 0..<300 {
                let model: Model
                do { model = try Self.model(c.op, c.inputs, attributes: c.attributes(), domain: c.domain, opset: c.opset) } catch is EngineError { continue }
                var given: [String: Tensor] = [:]
                let first = shape()
                for (i, (name, type)) in c.inputs.enumerated() {
                    // Half the time an input takes the first one's shape, so that more of them fit.
                    given[name] = type == .int64 && ["s", "axes", "i"].contains(name) && rng.next() % 4 != 0 ? vector()
                        : tensor(type, i == 0 || rng.next() % 2 == 0 ? first : shape())
                }
                do {
                    _ = try model.run(given)
                    ran += 1
                } catch let e as EngineError {
                    refused += 1
                    #expect(e.code == .invalidInput || e.code == .limitExceeded, "\(c.op) on \(given.mapValues(\.shape)): \(e)")
                }
            }
        }
        #expect(ran > 0 && refused > 0)
    }
}
