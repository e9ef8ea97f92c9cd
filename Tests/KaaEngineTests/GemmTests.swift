import Foundation
@testable import KaaEngine
import Testing

/// Gemm and MatMul by a constant B packed at load (the path the sample models and PyTorch
/// MLPs take, which the ONNX node tests, feeding B as an input, do not), and the fusion of a
/// following Add and Relu into them.
@Suite struct GemmTests {
    /// A seeded generator of values in [-1, 1), so failures reproduce.
    struct Values {
        var state: UInt64
        mutating func next() -> Float {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int64(bitPattern: state >> 11) % 2000 - 1000) / 1000
        }
        mutating func array(_ n: Int) -> [Float] { (0..<n).map { _ in next() } }
    }

    /// Whether `got` is within float32 rounding of `want`, given each element's sum of
    /// |a|·|b| (`scale`), which bounds the error of any summation order.
    static func close(_ got: [Float], _ want: [Double], scale: [Double]) -> String? {
        guard got.count == want.count else { return "\(got.count) values, expected \(want.count)" }
        for i in got.indices where !(abs(Double(got[i]) - want[i]) <= 1e-5 * scale[i] + 1e-6) {
            return "element \(i): \(got[i]), expected \(want[i])"
        }
        return nil
    }

    /// Every edge of the tiling (rows past a 6- or 12-row tile, columns past a 16-column panel,
    /// depth past a 1024-deep pass, rows past a 72-row block), both layouts of B, every kernel
    /// this CPU runs.
    @Test(arguments: [(1, 1, 1), (1, 784, 256), (2, 3, 5), (7, 300, 33), (13, 5, 17), (6, 257, 16),
                      (5, 16, 15), (80, 40, 48), (3, 0, 4), (64, 128, 10), (25, 1500, 40), (12, 9, 33), (11, 2, 16)])
    func packedProductMatchesReference(shape: (Int, Int, Int)) throws {
        let (m, k, n) = shape
        var values = Values(state: UInt64(m * 1_000_000 + k * 1000 + n))
        let a = values.array(m * k), b = values.array(k * n), bias = values.array(n), start = values.array(m * n)
        for transposed in [false, true] {
            // B as the kernel is handed it: k×n, or n×k when transposed.
            let given = transposed ? (0..<n * k).map { b[($0 % k) * n + $0 / k] } : b
            let packed = given.withUnsafeBufferPointer { PackedMatrix($0, k: k, n: n, transposed: transposed, alpha: 0.5) }
            for kernel in [PackedMatrix.KernelChoice.best] + PackedMatrix.KernelChoice.allRunnable {
                for (useBias, accumulate, relu) in [(false, false, false), (true, false, false), (true, false, true), (false, true, false), (false, true, true)] {
                    var want = [Double](repeating: 0, count: m * n), scale = want
                    for i in 0..<m {
                        for j in 0..<n {
                            var s = accumulate ? Double(start[i * n + j]) : useBias ? Double(bias[j]) : 0
                            var sc = abs(s)
                            for p in 0..<k {
                                s += 0.5 * Double(a[i * k + p]) * Double(b[p * n + j])
                                sc += abs(0.5 * Double(a[i * k + p]) * Double(b[p * n + j]))
                            }
                            want[i * n + j] = relu ? max(s, 0) : s
                            scale[i * n + j] = sc
                        }
                    }
                    var got = accumulate ? start : [Float](repeating: .nan, count: m * n)
                    let aa = a.isEmpty ? [0] : a
                    aa.withUnsafeBufferPointer { pa in bias.withUnsafeBufferPointer { pb in got.withUnsafeMutableBufferPointer { pc in
                        packed.multiply(pa.baseAddress!, rows: m, into: pc.baseAddress!, bias: useBias ? pb.baseAddress : nil,
                                        accumulate: accumulate, relu: relu, kernel: kernel)
                    } } }
                    let problem = Self.close(got, want, scale: scale)
                    #expect(problem == nil, "\(m)×\(k)×\(n) transposed=\(transposed) \(kernel) bias=\(useBias) accumulate=\(accumulate) relu=\(relu): \(problem ?? "")")
                }
            }
        }
    }

    /// The kernels run at the CPU's level, or at the lower one `KAA_ENGINE_LEVEL` names (CI runs
    /// the engine's tests again at each lower level, and this says they did).
    @Test func theKernelsRunAtTheCPUsLevelOrALowerOneTheEnvironmentNames() {
        let order = ["baseline", "avx2", "avx512"]
        let cpu = EngineLevel.cpu, current = EngineLevel.current
        #expect(order.contains(cpu) && order.contains(current))
        if let forced = ProcessInfo.processInfo.environment["KAA_ENGINE_LEVEL"], let f = order.firstIndex(of: forced),
           f <= order.firstIndex(of: cpu)! {
            #expect(current == forced)
        } else {
            #expect(current == cpu)
        }
        #expect(EngineLevel.summary.hasPrefix("kernels: \(current) (CPU: \(cpu)"))
        // The int8 kernel follows the level: VNNI only at avx512 (or AVX-VNNI from avx2 up).
        let int8 = EngineLevel.int8
        #expect(EngineLevel.summary.hasSuffix("; int8: \(int8)"))
        switch current {
        case "baseline": #expect(int8 == "baseline")
        case "avx2": #expect(int8 == "avx2" || int8 == "avx-vnni")
        default: #expect(int8 != "baseline")
        }
    }

    @Test func reluKeepsNaN() {
        let packed = [Float(1), -1].withUnsafeBufferPointer { PackedMatrix($0, k: 1, n: 2, transposed: false) }
        for kernel in [PackedMatrix.KernelChoice.best] + PackedMatrix.KernelChoice.allRunnable {
            var c = [Float](repeating: 0, count: 2)
            [Float.nan].withUnsafeBufferPointer { pa in c.withUnsafeMutableBufferPointer { pc in
                packed.multiply(pa.baseAddress!, rows: 1, into: pc.baseAddress!, bias: nil, accumulate: false, relu: true, kernel: kernel)
            } }
            #expect(c[0].isNaN && c[1].isNaN, "\(kernel): \(c)")
        }
    }

    static func tensor(_ name: String, _ dims: [Int], _ v: [Float]) -> Onnx_TensorProto {
        var t = Onnx_TensorProto()
        t.name = name
        t.dataType = 1
        t.dims = dims.map(Int64.init)
        t.floatData = v
        return t
    }

    static func attribute(_ name: String, float: Float? = nil, int: Int64? = nil) -> Onnx_AttributeProto {
        var a = Onnx_AttributeProto()
        a.name = name
        if let float { a.type = .float; a.f = float }
        if let int { a.type = .int; a.i = int }
        return a
    }

    /// A model of `nodes` reading `x` ([N, k]) and writing `y`, with `constants` as
    /// initializers, or as extra graph inputs when `asInputs` (so nothing is packed or fused).
    /// A model from `nodes`, input `x` of shape `x` (its first dimension named `batch` when
    /// given, so any batch size runs) and output `y`.
    static func model(_ nodes: [Onnx_NodeProto], x: [Int64], batch: String? = nil, constants: [Onnx_TensorProto], asInputs: Bool) throws -> Model {
        var input = LoaderErrorTests.valueInfo("x", .float32, x)
        if let batch { input.type.tensorType.shape.dim[0].dimParam = batch }
        var inputs = [input]
        if asInputs { inputs += constants.map { LoaderErrorTests.valueInfo($0.name, .float32, $0.dims) } }
        var m = Onnx_ModelProto()
        m.irVersion = 8
        var o = Onnx_OperatorSetIdProto()
        o.version = 17
        m.opsetImport = [o]
        m.graph.node = nodes
        m.graph.input = inputs
        var y = Onnx_ValueInfoProto()
        y.name = "y"
        m.graph.output = [y]
        if !asInputs { m.graph.initializer = constants }
        return try Model(onnx: m.serializedData())
    }

    /// Gemm with a constant B against the same Gemm with B given at run time, for every
    /// attribute and every shape of C.
    @Test(arguments: [[Int](), [5], [1, 5], [3, 5], [3, 1], [1]])
    func constantGemmMatchesGeneric(cShape: [Int]) throws {
        var values = Values(state: UInt64(cShape.reduce(7, *)))
        for (transA, transB, alpha, beta) in [(0, 0, Float(1), Float(1)), (1, 0, 0.5, 2), (0, 1, 1, 1), (1, 1, -1.5, 0.25), (0, 1, 1, 0)] {
            let aShape = transA == 1 ? [4, 3] : [3, 4]
            let bShape = transB == 1 ? [5, 4] : [4, 5]
            let a = values.array(12)
            var constants = [Self.tensor("b", bShape, values.array(20))]
            var gemm = LoaderErrorTests.node("Gemm", ["x", "b"], ["y"])
            if !cShape.isEmpty {
                constants.append(Self.tensor("c", cShape, values.array(cShape.reduce(1, *))))
                gemm.input.append("c")
            }
            gemm.attribute = [Self.attribute("transA", int: Int64(transA)), Self.attribute("transB", int: Int64(transB)),
                              Self.attribute("alpha", float: alpha), Self.attribute("beta", float: beta)]
            let packed = try Self.model([gemm], x: aShape.map(Int64.init), constants: constants, asInputs: false)
            let generic = try Self.model([gemm], x: aShape.map(Int64.init), constants: constants, asInputs: true)
            #expect(packed.plan.steps[0].kernel is PackedProductKernel)
            // B (and a C folded into the bias) is held packed only, not also as an initializer.
            #expect(packed.plan.template.allSatisfy { $0 == nil || ($0!.shape == cShape && cShape.first == 3 && beta != 0) })
            #expect(!(generic.plan.steps[0].kernel is PackedProductKernel))
            let feeds = ["x": Tensor(shape: aShape, floats: a)]
            let want = try #require(try generic.run(feeds.merging(constants.map { ($0.name, Tensor(shape: $0.dims.map(Int.init), floats: $0.floatData)) }) { $1 })["y"])
            let got = try #require(try packed.run(feeds)["y"])
            #expect(got.shape == want.shape)
            let problems = SampleModelTests.compare(got, want)
            #expect(problems.isEmpty, "transA=\(transA) transB=\(transB) alpha=\(alpha) beta=\(beta) C\(cShape): \(problems)")
        }
    }

    /// MatMul → Add of a constant row → Relu, and Gemm → Relu, run as one fused step, with
    /// the results of the unfused nodes.
    @Test func addAndReluFuseIntoTheProduct() throws {
        var values = Values(state: 42)
        let x = Tensor(shape: [2, 3, 4], floats: values.array(24))
        let constants = [Self.tensor("w", [4, 6], values.array(24)), Self.tensor("bias", [1, 1, 1, 6], values.array(6))]
        let nodes = [LoaderErrorTests.node("MatMul", ["x", "w"], ["p"]), LoaderErrorTests.node("Add", ["bias", "p"], ["s"]),
                     LoaderErrorTests.node("Relu", ["s"], ["y"])]
        let fused = try Self.model(nodes, x: [2, 3, 4], constants: constants, asInputs: false)
        let plain = try Self.model(nodes, x: [2, 3, 4], constants: constants, asInputs: true)
        #expect(fused.plan.steps.count == 1)
        #expect(plain.plan.steps.count == 3)
        let got = try #require(try fused.run(["x": x])["y"])
        let want = try #require(try plain.run(["x": x, "w": Tensor(shape: [4, 6], floats: constants[0].floatData),
                                               "bias": Tensor(shape: [1, 1, 1, 6], floats: constants[1].floatData)])["y"])
        #expect(got.shape == [1, 2, 3, 6])
        #expect(SampleModelTests.compare(got, want).isEmpty)

        // An intermediate read twice is not fused away.
        var twoReaders = nodes
        twoReaders[2] = LoaderErrorTests.node("Add", ["s", "p"], ["y"])
        #expect(try Self.model(twoReaders, x: [2, 3, 4], constants: constants, asInputs: false).plan.steps.count == 3)

        let gemm = [LoaderErrorTests.node("Gemm", ["x", "w"], ["g"]), LoaderErrorTests.node("Relu", ["g"], ["y"])]
        let g = try Self.model(gemm, x: [3, 4], constants: [constants[0]], asInputs: false)
        #expect(g.plan.steps.count == 1)
        let x2 = Tensor(shape: [3, 4], floats: values.array(12))
        let gy = try #require(try g.run(["x": x2])["y"])
        let gp = try Self.model(gemm, x: [3, 4], constants: [constants[0]], asInputs: true)
        let gw = try #require(try gp.run(["x": x2, "w": Tensor(shape: [4, 6], floats: constants[0].floatData)])["y"])
        #expect(SampleModelTests.compare(gy, gw).isEmpty)
    }

    /// Identity and a Cast to the type a value already has are not run: their readers read the
    /// input's value. A Cast that changes the type stays, and results do not change.
    @Test func identityStepsAreDropped() throws {
        var values = Values(state: 9)
        let constants = [Self.tensor("w", [4, 3], values.array(12))]
        var toFloat = LoaderErrorTests.node("Cast", ["x"], ["c"])
        toFloat.attribute = [Self.attribute("to", int: 1)]
        var toDouble = LoaderErrorTests.node("Cast", ["r"], ["d"])
        toDouble.attribute = [Self.attribute("to", int: 11)]
        var back = LoaderErrorTests.node("Cast", ["d"], ["y"])
        back.attribute = [Self.attribute("to", int: 1)]
        let nodes = [toFloat, LoaderErrorTests.node("MatMul", ["c", "w"], ["p"]),
                     LoaderErrorTests.node("Identity", ["p"], ["q"]), LoaderErrorTests.node("Relu", ["q"], ["r"]),
                     toDouble, back]
        let model = try Self.model(nodes, x: [2, 4], constants: constants, asInputs: false)
        // MatMul with Relu fused, then the two Casts that change the type.
        #expect(model.plan.steps.count == 3)
        #expect(!model.plan.steps.contains { $0.kernel is IdentityKernel })
        let x = values.array(8)
        let got = try #require(try model.run(["x": Tensor(shape: [2, 4], floats: x)])["y"])
        guard case .float32(let y) = got.storage else { Issue.record("y is \(got.dtype)"); return }
        let w = constants[0].floatData
        var want = [Float](repeating: 0, count: 6)
        for i in 0..<2 {
            for j in 0..<3 {
                var sum: Float = 0
                for k in 0..<4 { sum += x[i * 4 + k] * w[k * 3 + j] }
                want[i * 3 + j] = max(0, sum)
            }
        }
        #expect(got.shape == [2, 3])
        #expect(zip(y, want).allSatisfy { abs($0 - $1) <= 1e-5 * max(1, abs($1)) }, "\(y) vs \(want)")

        // A graph output computed by an Identity of the input is the input's value.
        let passThrough = try Self.model([LoaderErrorTests.node("Identity", ["x"], ["y"])], x: [2, 4], constants: [], asInputs: false)
        #expect(passThrough.plan.steps.isEmpty)
        #expect(try passThrough.run(["x": Tensor(shape: [2, 4], floats: x)])["y"] == Tensor(shape: [2, 4], floats: x))
    }

    /// The digits MLP from skl2onnx (MatMul, Add, Relu twice, then MatMul, Add) runs as three
    /// packed products with the Adds and Relus inside them.
    @Test func sampleMLPFuses() throws {
        let url = SampleModelTests.root.appendingPathComponent("snapshots/digits-mlp/model.onnx")
        let model = try Model(onnx: Data(contentsOf: url))
        let products = model.plan.steps.filter { $0.kernel is PackedProductKernel }
        #expect(products.count == 3)
        #expect(products.allSatisfy { $0.owner.contains("`Add`") })
        #expect(products.filter { $0.owner.contains("`Relu`") }.count == 2)
    }
}
