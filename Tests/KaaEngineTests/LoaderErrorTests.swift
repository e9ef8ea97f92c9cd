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

    /// A constant that holds nothing but declares dimensions whose product would overflow in a
    /// kernel (`[0, 2^62]`), and raw data of the wrong size, are refused at load.
    @Test func initializersWithHiddenHugeDimsOrWrongRawSizeAreRefused() throws {
        var w = Onnx_TensorProto()
        w.name = "w"
        w.dataType = 1
        w.dims = [0, 1 << 62]
        let hidden = try #require(Self.loadError(Self.model([Self.node("Add", ["x", "w"], ["y"])], initializers: [w])))
        #expect(hidden.code == .invalidGraph && hidden.message.contains("`w`") && hidden.message.contains("leaving out the zero"), "\(hidden)")
        w.dims = [2, 3]
        w.rawData = Data(count: 7)
        let raw = try #require(Self.loadError(Self.model([Self.node("Add", ["x", "w"], ["y"])], initializers: [w])))
        #expect(raw.code == .invalidGraph && raw.message.contains("holds 1"), "\(raw)")
    }

    /// Attributes with absurd integers (axis Int64.max, a perm out of range, a target count
    /// of Int64.max) are refused at load or give `invalidInput` when run, never a trap.
    @Test func absurdAttributeIntegersAreRefused() throws {
        typealias S = ShapeArithmeticTests
        let x = ["x": Tensor(shape: [2, 3], floats: [1, 2, 3, 4, 5, 6])]
        for (op, attribute) in [("Concat", S.int("axis", .max)), ("Gather", S.int("axis", .min)), ("ArgMax", S.int("axis", .max)),
                                ("Softmax", S.int("axis", .min)), ("Flatten", S.int("axis", .min)), ("Squeeze", S.ints("axes", [.min]))] {
            var inputs: [(String, DType)] = [("x", .float32)]
            var given = x
            if op == "Gather" { inputs.append(("i", .int64)); given["i"] = Tensor(shape: [1], int64s: [0]) }
            let m = try S.model(op, inputs, attributes: [attribute], opset: 11)
            let e = try #require(ShapeArithmeticTests.error(m, given), "\(op) \(attribute.name)")
            #expect(e.code == .invalidInput && e.message.contains("out of range"), "\(op): \(e)")
        }
        var transpose = Self.node("Transpose", ["x"], ["y"])
        transpose.attribute = [S.ints("perm", [.max, 0])]
        let t = try #require(Self.loadError(Self.model([transpose])))
        #expect(t.code == .invalidGraph && t.message.contains("perm"), "\(t)")
        transpose.attribute = [S.ints("perm", [-1, 0])]
        #expect(Self.loadError(Self.model([transpose]))?.code == .invalidGraph)
        let targets = try #require(Self.loadError(Self.mlModel("LinearRegressor", [S.int("targets", .max), MLOperatorTests.attribute("coefficients", floats: [])])))
        #expect(targets.code == .invalidGraph && targets.message.contains("targets"), "\(targets)")
    }

    /// A one-node ai.onnx.ml model reading `x` ([2, 3] float32) and writing `y`.
    static func mlModel(_ op: String, _ attributes: [Onnx_AttributeProto]) -> Data {
        var node = Self.node(op, ["x"], ["y"], domain: "ai.onnx.ml")
        node.attribute = attributes
        var m = Onnx_ModelProto()
        m.irVersion = 8
        var onnx = Onnx_OperatorSetIdProto()
        onnx.version = 17
        var ml = Onnx_OperatorSetIdProto()
        ml.domain = "ai.onnx.ml"
        ml.version = 1
        m.opsetImport = [onnx, ml]
        m.graph.node = [node]
        m.graph.input = [Self.valueInfo("x")]
        var y = Onnx_ValueInfoProto()
        y.name = "y"
        m.graph.output = [y]
        return try! m.serializedData()
    }

    /// A tree of 64 levels whose branches send both ways to the same next node: 2^63 paths
    /// through 64 nodes. Checking it takes one visit per node (following every path never
    /// ended); a cycle is still refused.
    @Test func treesWithSharedChildrenLoadInLinearTime() throws {
        let levels = 64
        func attributes(_ next: (Int) -> Int, orElse: (Int) -> Int = { min($0 + 1, 64) }) -> [Onnx_AttributeProto] {
            typealias A = MLOperatorTests
            return [A.attribute("nodes_treeids", ints: [Int64](repeating: 0, count: levels + 1)),
                    A.attribute("nodes_nodeids", ints: (0...levels).map(Int64.init)),
                    A.attribute("nodes_featureids", ints: [Int64](repeating: 0, count: levels + 1)),
                    A.attribute("nodes_modes", strings: [String](repeating: "BRANCH_LEQ", count: levels) + ["LEAF"]),
                    A.attribute("nodes_values", floats: [Float](repeating: 0, count: levels + 1)),
                    A.attribute("nodes_truenodeids", ints: (0...levels).map { Int64(next($0)) }),
                    A.attribute("nodes_falsenodeids", ints: (0...levels).map { Int64(orElse($0)) }),
                    A.attribute("target_treeids", ints: [0]), A.attribute("target_nodeids", ints: [Int64(levels)]),
                    A.attribute("target_ids", ints: [0]), A.attribute("target_weights", floats: [2.5])]
        }
        let chain = try Model(onnx: Self.mlModel("TreeEnsembleRegressor", attributes { min($0 + 1, levels) }))
        #expect(try chain.run(["x": Tensor(shape: [2, 3], floats: [1, -1, 0, 0, 0, 0])])["y"] == Tensor(shape: [2, 1], floats: [2.5, 2.5]))
        // Node 63 back to node 1 when true: a cycle below the root.
        let cycle = try #require(Self.loadError(Self.mlModel("TreeEnsembleRegressor", attributes({ $0 == levels - 1 ? 1 : min($0 + 1, levels) },
                                                                                                 orElse: { min($0 + 1, levels) }))))
        #expect(cycle.code == .invalidGraph && cycle.message.contains("cyclic"), "\(cycle)")
    }

    /// Text operators whose cost a model could make explode: a tokenizer pattern that
    /// backtracks exponentially, TF-IDF n-grams with absurd lengths and skips.
    @Test func textOperatorsThatWouldStallAreRefused() throws {
        for (pattern, risky) in [("(a+)+b", true), ("([a-z]+\\s?)*$", true), ("(\\w)\\1", true), ("(x{2,})*y", true),
                                 ("[a-zA-Z0-9_]+", false), ("(?u)\\b\\w\\w+\\b", false), ("(ab)+", false), ("\\p{L}+", false)] {
            #expect((TextOps.Pattern.backtrackingRisk(pattern) != nil) == risky, "\(pattern)")
        }
        var tokenizer = Self.node("Tokenizer", ["x"], ["y"], domain: "com.microsoft")
        var exp = Onnx_AttributeProto()
        exp.name = "tokenexp"
        exp.type = .string
        exp.s = Data("(a+)+b".utf8)
        tokenizer.attribute = [exp]
        var m = Onnx_ModelProto()
        m.irVersion = 8
        var onnx = Onnx_OperatorSetIdProto()
        onnx.version = 17
        var ms = Onnx_OperatorSetIdProto()
        ms.domain = "com.microsoft"
        ms.version = 1
        m.opsetImport = [onnx, ms]
        m.graph.node = [tokenizer]
        m.graph.input = [Self.valueInfo("x", .string, [1])]
        var y = Onnx_ValueInfoProto()
        y.name = "y"
        m.graph.output = [y]
        let t = try #require(Self.loadError(try m.serializedData()))
        #expect(t.code == .unsupported && t.message.contains("exponential"), "\(t)")

        typealias S = ShapeArithmeticTests
        let tfidf = [S.int("min_gram_length", 1), S.int("max_gram_length", 64), S.int("max_skip_count", 1024),
                     S.ints("ngram_counts", [0]), S.ints("ngram_indexes", [0]), S.ints("pool_int64s", [1])]
        let e = try #require(Self.loadError(try S.modelBytes("TfIdfVectorizer", [("x", .int64)], attributes: tfidf)))
        #expect(e.code == .unsupported && e.message.contains("n-grams per token"), "\(e)")
    }

    /// A constant B of many rows and one column is not packed: panels of 16 columns would
    /// hold it 16 times over (a 64 MiB B would take 1 GiB). It is multiplied as it is.
    @Test func narrowConstantMatricesAreNotPacked() throws {
        let k = 20_000
        let b = GemmTests.tensor("b", [k, 1], (0..<k).map { Float($0 % 7) })
        let model = try GemmTests.model([Self.node("MatMul", ["x", "b"], ["y"])], x: [1, Int64(k)], constants: [b], asInputs: false)
        #expect(!(model.plan.steps[0].kernel is PackedProductKernel))
        let x = Tensor(shape: [1, k], floats: [Float](repeating: 1, count: k))
        #expect(try model.run(["x": x])["y"] == Tensor(shape: [1, 1], floats: [Float((0..<k).reduce(0) { $0 + $1 % 7 })]))
        #expect(PackedMatrix.worthPacking(k: 784, n: 256) && PackedMatrix.worthPacking(k: 128, n: 1) && !PackedMatrix.worthPacking(k: 1 << 20, n: 1))
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
