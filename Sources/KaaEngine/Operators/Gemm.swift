import Foundation
import CKaaKernels
import COpenBLAS

/// A constant float32 matrix B (k×n) packed once at load into the 16-column panels that
/// `kaa_sgemm_packed` streams (CKaaKernels), with Gemm's `alpha` folded in.
///
/// `@unchecked Sendable`: the panels are written only in `init` and only read afterwards, so
/// any number of threads may multiply by one matrix at once.
final class PackedMatrix: @unchecked Sendable {
    /// Rows of B: the inner dimension of a product.
    let k: Int
    /// Columns of B: the columns of a product.
    let n: Int
    private let panels: UnsafeMutablePointer<Float>
    private let floatCount: Int

    /// Packs `b`, row-major k×n, or n×k when `transposed` (Gemm's `transB`, PyTorch's Linear).
    init(_ b: UnsafeBufferPointer<Float>, k: Int, n: Int, transposed: Bool, alpha: Float = 1) {
        precondition(b.count == k * n, "\(b.count) floats for a \(k)×\(n) matrix")
        self.k = k
        self.n = n
        floatCount = kaa_sgemm_packed_size(k, n)
        panels = UnsafeMutableRawPointer.allocate(byteCount: max(floatCount, 1) * MemoryLayout<Float>.stride, alignment: 64)
            .bindMemory(to: Float.self, capacity: max(floatCount, 1))
        kaa_sgemm_pack_b(k, n, b.baseAddress, transposed ? 1 : 0, alpha, panels)
    }

    deinit { panels.deallocate() }

    /// Whether packing a k×n matrix is worth its memory: the panels round `n` up to 16
    /// columns, so a matrix of few columns and many rows would grow up to 16 times (a 64 MiB
    /// B of one column, 1 GiB packed). Such a matrix is multiplied as it is.
    static func worthPacking(k: Int, n: Int) -> Bool {
        kaa_sgemm_packed_size(k, n) <= max(4 * k * n, 1 << 18)
    }

    /// Bytes the panels take.
    var byteCount: Int { floatCount * MemoryLayout<Float>.stride }

    /// Which kernel ``multiply(_:rows:into:bias:accumulate:relu:kernel:)`` runs: the one of the
    /// level the engine runs at (``EngineLevel``), or, for tests, one variant.
    enum KernelChoice: CustomStringConvertible {
        case best
        /// A `KAA_LEVEL_…` or `KAA_VARIANT_…` of CKaaKernels.
        case variant(Int32)

        /// Every kernel this CPU can run: each level up to its own, and the AVX-512 tiling
        /// compiled for AVX2 where AVX2 runs, so the tiling is tested on machines without AVX-512.
        static var allRunnable: [KernelChoice] {
            let cpu = kaa_cpu_level()
            var all = (0...cpu).map { KernelChoice.variant($0) }
            if cpu >= Int32(KAA_LEVEL_AVX2) { all.append(.variant(Int32(KAA_VARIANT_WIDE_AVX2))) }
            return all
        }

        var description: String {
            switch self {
            case .best: "best"
            case .variant(let v): v == Int32(KAA_VARIANT_WIDE_AVX2) ? "avx512-tiling-on-avx2" : String(cString: kaa_level_name(v))
            }
        }
    }

    /// `c` (m×n) = `a` (m×k) · B, plus `bias` (n floats) on every row when given; with
    /// `accumulate`, `c` += a·B instead (bias ignored). With `relu`, negative results become 0.
    /// `c` MUST hold m×n floats, `a` m×k.
    func multiply(_ a: UnsafePointer<Float>, rows m: Int, into c: UnsafeMutablePointer<Float>,
                  bias: UnsafePointer<Float>?, accumulate: Bool, relu: Bool, kernel: KernelChoice = .best) {
        let flags = Int32((accumulate ? KAA_SGEMM_ACCUMULATE : 0) | (relu ? KAA_SGEMM_RELU : 0))
        switch kernel {
        case .best: kaa_sgemm_packed(m, n, k, a, k, panels, c, n, accumulate ? nil : bias, flags)
        case .variant(let v):
            let ran = kaa_sgemm_packed_variant(v, m, n, k, a, k, panels, c, n, accumulate ? nil : bias, flags)
            precondition(ran == 0, "this CPU cannot run kernel \(kernel)")
        }
    }
}

/// What a kernel can apply to its output as it stores it, in place of the next node.
enum Epilogue {
    /// Adding a constant that broadcasts along rows: shape [n], [1, n], ... or a single value.
    case add(Tensor)
    /// Relu.
    case relu
    /// A Cast of an integer product to float32.
    case castToFloat
    /// A Mul by a constant that broadcasts along rows.
    case mul(Tensor)
    /// A Mul by a value computed at run time, which the fused step reads as its input at this
    /// index.
    case mulInput(Int)
}

/// A kernel that can take over the elementwise node after it (see ``Planner`` fusion), saving
/// a pass over its output and that node's allocation.
protocol EpilogueFusable: Kernel {
    /// This kernel followed by `epilogue`, or `nil` when it cannot apply it exactly.
    func fusing(_ epilogue: Epilogue) -> (any Kernel)?
}

/// Gemm or MatMul of float32 A by a constant B packed at load:
/// Y = A·(alpha·B) + beta·C (+ a fused constant row), then Relu when fused.
struct PackedProductKernel: EpilogueFusable {
    enum Form {
        /// Gemm: A is 2-D (transposed first with transA); C, when not folded into `bias`, is
        /// read at run time (`beta` times it, broadcast to [m, n]).
        case gemm(transA: Bool, runtimeCBeta: Float?)
        /// MatMul: A has any rank ≥ 1; its last dimension is k, the others are rows.
        case matMul
    }

    let weights: PackedMatrix
    let form: Form
    /// A constant row added to every output row (Gemm's beta·C, a fused Add), or `nil`.
    var bias: [Float]?
    /// The rank of a fused Add's constant: when above the product's rank, the output gains
    /// leading 1-dimensions, as broadcasting gives them.
    var minRank = 0
    var relu = false

    /// `c` scaled by `scale` as one row of `n`, when it broadcasts along rows ([n], [1, n],
    /// [1, 1, n], or one value); `nil` otherwise.
    static func row(_ c: Tensor, n: Int, scale: Float = 1) -> [Float]? {
        guard let v = c.floats else { return nil }
        if v.count == 1 { return [Float](repeating: scale * v[0], count: n) }
        guard v.count == n, c.shape.last == n else { return nil }
        return v.map { scale * $0 }
    }

    func fusing(_ epilogue: Epilogue) -> (any Kernel)? {
        var k = self
        switch epilogue {
        case .relu:
            k.relu = true
        case .add(let t):
            // After a Relu the add no longer commutes with it; a runtime C is not a row.
            guard !relu, let row = Self.row(t, n: weights.n) else { return nil }
            if case .gemm(_, let c?) = form, c != 0 { return nil }
            k.bias = bias.map { b in zip(b, row).map { $0 + $1 } } ?? row
            k.minRank = max(minRank, t.rank)
        case .castToFloat, .mul, .mulInput:
            return nil
        }
        return k
    }

    func run(_ inputs: [Tensor?], _ ws: Workspace) throws -> Outputs {
        let x = try K.arg(inputs, 0)
        guard case .float32(let a) = x.storage else { throw EngineError.runtime("A is \(x.dtype), expected float32") }
        let k = weights.k, n = weights.n
        var m: Int
        var shape: [Int]
        var runtimeC: (Tensor, Float)?
        var transposeA = false
        switch form {
        case .gemm(let transA, let beta):
            guard x.rank == 2 else { throw EngineError.input("A must be 2-D, got shape \(x.shape)") }
            transposeA = transA
            let ak: Int
            (m, ak) = transA ? (x.shape[1], x.shape[0]) : (x.shape[0], x.shape[1])
            guard ak == k else { throw EngineError.input("A is \(x.shape)\(transA ? " (transposed)" : "") and B is \(k)×\(n): inner dimensions \(ak) and \(k) differ") }
            _ = try K.product(m, n, "the product of A \(x.shape) and B \(k)×\(n)")
            shape = ws.shape(m, n)
            if let beta, inputs.count > 2, let c = inputs[2] {
                guard c.rank <= 2, try K.broadcast(c.shape, [m, n]) == [m, n] else {
                    throw EngineError.input("C has shape \(c.shape), which does not broadcast to [\(m), \(n)]")
                }
                runtimeC = (c, beta)
            }
        case .matMul:
            guard x.rank >= 1, x.shape[x.rank - 1] == k else {
                throw EngineError.input("shapes \(x.shape) and [\(k), \(n)] do not multiply: the last dimension of A must be \(k)")
            }
            m = x.shape.dropLast().reduce(1, *)
            _ = try K.product(m, n, "the product of A \(x.shape) and B [\(k), \(n)]")
            shape = x.shape
        }
        if case .matMul = form {
            // The input's shape with its last dimension n, after any leading 1s a fused Add adds.
            let pad = max(minRank - x.rank, 0)
            shape = ws.shape(rank: pad + x.rank) { d in
                for i in 0..<pad { d[i] = 1 }
                for i in 0..<x.rank { d[pad + i] = x.shape[i] }
                d[pad + x.rank - 1] = n
            }
        } else if minRank > shape.count {
            shape = [Int](repeating: 1, count: minRank - shape.count) + shape
        }
        // Constants for the closures below: a captured `var` would be boxed on the heap.
        let rows = m, count = m * n
        // A (m×k) in row order: transposed into scratch when Gemm's transA says it is k×m.
        let at: [Float] = transposeA
            ? try ws.array(m * k) { o in for i in 0..<rows { for p in 0..<k { o[i * k + p] = a[p * rows + i] } } }
            : a
        defer { if transposeA { ws.giveBack(at) } }
        if let (c, beta) = runtimeC {
            guard let cv = c.floats else { throw EngineError.runtime("C is \(c.dtype), expected float32") }
            let mn = ws.shape(m, n)
            var out = try ws.array(count) { o in
                K.withBroadcastStrides(c.shape[...], mn) { st in K.walk(mn, strides: st) { i, p in o[i] = cv[p] } }
            }
            if beta != 1 { for i in out.indices { out[i] *= beta } }
            if let bias { for i in out.indices { out[i] += bias[i % n] } }
            out.withUnsafeMutableBufferPointer { pc in at.withUnsafeBufferPointer { pa in
                if count > 0 { weights.multiply(pa.baseAddress ?? UnsafePointer(pc.baseAddress!), rows: rows, into: pc.baseAddress!, bias: nil, accumulate: true, relu: relu) }
            } }
            return Outputs(Tensor(shape: shape, floats: out))
        }
        let out = try ws.array(count) { pc in
            guard count > 0 else { return }
            func multiply(_ pa: UnsafePointer<Float>) {
                if let bias {
                    bias.withUnsafeBufferPointer { pb in
                        weights.multiply(pa, rows: rows, into: pc.baseAddress!, bias: pb.baseAddress, accumulate: false, relu: relu)
                    }
                } else {
                    weights.multiply(pa, rows: rows, into: pc.baseAddress!, bias: nil, accumulate: false, relu: relu)
                }
            }
            // k = 0: A is empty and never read, but the kernel takes a pointer.
            at.withUnsafeBufferPointer { multiply($0.baseAddress ?? UnsafePointer(pc.baseAddress!)) }
        }
        return Outputs(Tensor(shape: shape, floats: out))
    }
}

/// Gemm and MatMul. A constant float32 B is packed at load for ``PackedProductKernel``; other
/// products multiply as they come.
extension MathOps {
    /// C[m,n] (+)= sum_k A[m,k] * B[k,n], row-major, for contiguous A (m×k) and B (k×n).
    /// Float goes to ``sgemmAccumulate``; other types run a plain loop.
    @inline(__always)
    static func matmulAccumulate<T: BinaryFloatingPoint>(
        _ a: UnsafeBufferPointer<T>, _ b: UnsafeBufferPointer<T>, _ c: UnsafeMutableBufferPointer<T>,
        m: Int, k: Int, n: Int, aOffset: Int = 0, bOffset: Int = 0, cOffset: Int = 0
    ) {
        if T.self == Float.self {
            a.withMemoryRebound(to: Float.self) { fa in b.withMemoryRebound(to: Float.self) { fb in c.withMemoryRebound(to: Float.self) { fc in
                sgemmAccumulate(fa.baseAddress! + aOffset, fb.baseAddress! + bOffset, fc.baseAddress! + cOffset, m: m, k: k, n: n)
            } } }
            return
        }
        for i in 0..<m {
            let crow = cOffset + i * n
            for p in 0..<k {
                let av = a[aOffset + i * k + p]
                if av == 0 { continue }
                let brow = bOffset + p * n
                for j in 0..<n { c[crow + j] += av * b[brow + j] }
            }
        }
    }

    /// C (+)= A × B for Float, with 8-wide SIMD over columns and four rows of B per pass, so
    /// each pass loads and stores a row of C once for four multiply-adds. Uses only baseline
    /// x86-64 / arm64 vector instructions (SIMD8 lowers to two SSE or NEON registers).
    /// Products of at least this many multiply-adds go to OpenBLAS, whose kernels are chosen
    /// for the CPU at run time (AVX2, AVX-512 where present); smaller ones stay here, where a
    /// call costs less.
    static let blasThreshold = 64 * 1024

    static func sgemmAccumulate(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>, m: Int, k: Int, n: Int) {
        if m * n * k >= blasThreshold, m < Int(Int32.max), n < Int(Int32.max), k < Int(Int32.max) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k),
                        1, a, Int32(k), b, Int32(n), 1, c, Int32(n))
            return
        }
        let n8 = n & ~7
        let k4 = k & ~3
        for i in 0..<m {
            let crow = c + i * n
            let arow = a + i * k
            var p = 0
            while p < k4 {
                let a0 = arow[p], a1 = arow[p + 1], a2 = arow[p + 2], a3 = arow[p + 3]
                let b0 = b + p * n, b1 = b0 + n, b2 = b1 + n, b3 = b2 + n
                let v0 = SIMD8<Float>(repeating: a0), v1 = SIMD8<Float>(repeating: a1)
                let v2 = SIMD8<Float>(repeating: a2), v3 = SIMD8<Float>(repeating: a3)
                var j = 0
                while j < n8 {
                    var acc = UnsafeRawPointer(crow + j).loadUnaligned(as: SIMD8<Float>.self)
                    acc += v0 * UnsafeRawPointer(b0 + j).loadUnaligned(as: SIMD8<Float>.self)
                    acc += v1 * UnsafeRawPointer(b1 + j).loadUnaligned(as: SIMD8<Float>.self)
                    acc += v2 * UnsafeRawPointer(b2 + j).loadUnaligned(as: SIMD8<Float>.self)
                    acc += v3 * UnsafeRawPointer(b3 + j).loadUnaligned(as: SIMD8<Float>.self)
                    UnsafeMutableRawPointer(crow + j).storeBytes(of: acc, as: SIMD8<Float>.self)
                    j += 8
                }
                while j < n {
                    crow[j] += a0 * b0[j] + a1 * b1[j] + a2 * b2[j] + a3 * b3[j]
                    j += 1
                }
                p += 4
            }
            while p < k {
                let av = arow[p]
                let brow = b + p * n
                for j in 0..<n { crow[j] += av * brow[j] }
                p += 1
            }
        }
    }

    static let gemm = OperatorSpec(name: "Gemm", domain: "ai.onnx", opsets: 7...22) { ctx in
        try ctx.inputs(2, 3)
        let t = try ctx.input(0, .floats)
        guard try ctx.input(1) == t, try ctx.optionalInput(2) ?? t == t else { throw ctx.bad("A, B and C must have one type") }
        let alpha = try ctx.attributes.float("alpha", default: 1)
        let beta = try ctx.attributes.float("beta", default: 1)
        let transA = try ctx.attributes.int("transA", default: 0) != 0
        let transB = try ctx.attributes.int("transB", default: 0) != 0
        if t == .float32, let b = ctx.constants[1], b.rank == 2, let bv = b.floats,
           PackedMatrix.worthPacking(k: b.shape[transB ? 1 : 0], n: b.shape[transB ? 0 : 1]) {
            let (k, n) = transB ? (b.shape[1], b.shape[0]) : (b.shape[0], b.shape[1])
            let packed = bv.withUnsafeBufferPointer { PackedMatrix($0, k: k, n: n, transposed: transB, alpha: alpha) }
            var bias: [Float]?
            var runtimeCBeta: Float?
            if ctx.inputTypes.count > 2, ctx.inputTypes[2] != nil {
                let c = ctx.constants[2]
                if c != nil, beta == 0 {
                    ctx.absorbed.insert(2)
                } else if let c, c.rank <= 2, let row = PackedProductKernel.row(c, n: n, scale: beta) {
                    bias = row
                    ctx.absorbed.insert(2)
                } else if beta != 0 {
                    runtimeCBeta = beta
                }
            }
            ctx.absorbed.insert(1)
            ctx.kernelBytes += packed.byteCount + (bias?.count ?? 0) * 4
            return (PackedProductKernel(weights: packed, form: .gemm(transA: transA, runtimeCBeta: runtimeCBeta), bias: bias), [t])
        }
        // Pre-transpose a constant B once at load.
        var bConst: Tensor?
        if let b = ctx.constants[1], b.rank == 2 {
            bConst = transB ? Tensor(shape: [b.shape[1], b.shape[0]], storage: {
                switch b.storage {
                case .float32(let v): .float32(K.transpose(v, b.shape, [1, 0]).values)
                case .float64(let v): .float64(K.transpose(v, b.shape, [1, 0]).values)
                default: b.storage
                }
            }()) : b
        }
        let preB = bConst
        return (ClosureKernel { inputs, ws in
            let a = try K.arg(inputs, 0)
            let b: Tensor
            let bT: Bool
            if let preB { b = preB; bT = false } else { b = try K.arg(inputs, 1); bT = transB }
            guard a.rank == 2, b.rank == 2 else { throw EngineError.input("A and B must be 2-D, got shapes \(a.shape) and \(b.shape)") }
            let (m, k) = transA ? (a.shape[1], a.shape[0]) : (a.shape[0], a.shape[1])
            let (kb, n) = bT ? (b.shape[1], b.shape[0]) : (b.shape[0], b.shape[1])
            guard k == kb else { throw EngineError.input("A is \(a.shape) and B is \(b.shape): inner dimensions \(k) and \(kb) differ") }
            let c = inputs.count > 2 && beta != 0 ? inputs[2] : nil
            if let c {
                let fits = c.rank <= 2 && c.shape.reversed().enumerated().allSatisfy { i, d in d == 1 || d == (i == 0 ? n : m) }
                guard fits else { throw EngineError.input("C has shape \(c.shape), which does not broadcast to [\(m), \(n)]") }
            }
            _ = try K.product(m, n, "the product of A \(a.shape) and B \(b.shape)")
            let shape = ws.shape(m, n)
            func run<T: BinaryFloatingPoint & Reusable>(_ av: [T], _ bv: [T], _ cv: [T]?) throws -> [T] {
                // Contiguous A (m×k) and B (k×n), transposed into scratch arrays when stored the other way.
                let at: [T] = transA ? try ws.array(m * k) { o in for i in 0..<m { for p in 0..<k { o[i * k + p] = av[p * m + i] } } } : av
                let bt: [T] = bT ? try ws.array(k * n) { o in for p in 0..<k { for j in 0..<n { o[p * n + j] = bv[j * k + p] } } } : bv
                var out: [T] = try ws.array(m * n) { o in
                    if let cv, let c {
                        let scale = T(beta)
                        K.withBroadcastStrides(c.shape[...], shape) { st in K.walk(shape, strides: st) { i, p in o[i] = scale * cv[p] } }
                    } else {
                        o.initialize(repeating: 0)
                    }
                }
                if alpha == 1 {
                    at.withUnsafeBufferPointer { pa in bt.withUnsafeBufferPointer { pb in out.withUnsafeMutableBufferPointer { pc in
                        matmulAccumulate(pa, pb, pc, m: m, k: k, n: n)
                    } } }
                } else {
                    var tmp: [T] = try ws.array(m * n, repeating: 0)
                    at.withUnsafeBufferPointer { pa in bt.withUnsafeBufferPointer { pb in tmp.withUnsafeMutableBufferPointer { pc in
                        matmulAccumulate(pa, pb, pc, m: m, k: k, n: n)
                    } } }
                    let al = T(alpha)
                    for i in out.indices { out[i] += al * tmp[i] }
                    ws.giveBack(tmp)
                }
                if transA { ws.giveBack(at) }
                if bT { ws.giveBack(bt) }
                return out
            }
            switch (a.storage, b.storage) {
            case (.float32(let x), .float32(let y)):
                return Outputs(Tensor(shape: shape, floats: try run(x, y, c?.floats)))
            case (.float64(let x), .float64(let y)):
                return Outputs(Tensor(shape: shape, doubles: try run(x, y, c?.doubles)))
            default: throw EngineError.runtime("A is \(a.dtype), B is \(b.dtype)")
            }
        }, [t])
    }

    /// The shapes of a (batched, broadcasting) matrix product of `a` by `b`, as MatMul,
    /// MatMulInteger and QLinearMatMul have them: rows, depth, columns, the broadcast batch dimensions and the output shape.
    static func productShapes(_ a: [Int], _ b: [Int], _ ws: Workspace) throws -> (m: Int, k: Int, n: Int, batch: [Int], out: [Int]) {
        guard a.count >= 1, b.count >= 1 else { throw EngineError.input("the product needs inputs of rank 1 or more, got shapes \(a) and \(b)") }
        let ra = a.count, rb = b.count
        let m = ra == 1 ? 1 : a[ra - 2], k = a[ra - 1]
        let kb = rb == 1 ? b[0] : b[rb - 2], n = rb == 1 ? 1 : b[rb - 1]
        guard k == kb else { throw EngineError.input("shapes \(a) and \(b) do not multiply: inner dimensions \(k) and \(kb) differ") }
        let aBatch = a.prefix(max(ra - 2, 0)), bBatch = b.prefix(max(rb - 2, 0))
        let br = max(aBatch.count, bBatch.count)
        var fits = true
        let batch = ws.shape(rank: br) { d in
            for i in 0..<br {
                let da = i < br - aBatch.count ? 1 : aBatch[i - (br - aBatch.count)]
                let db = i < br - bBatch.count ? 1 : bBatch[i - (br - bBatch.count)]
                if da == db || db == 1 { d[i] = da } else if da == 1 { d[i] = db } else { fits = false; d[i] = 0 }
            }
        }
        guard fits else { throw EngineError.input("shapes \(a) and \(b) do not broadcast in their leading (batch) dimensions") }
        let out = ws.shape(rank: br + (ra == 1 ? 0 : 1) + (rb == 1 ? 0 : 1)) { d in
            for i in 0..<br { d[i] = batch[i] }
            var j = br
            if ra != 1 { d[j] = m; j += 1 }
            if rb != 1 { d[j] = n }
        }
        _ = try K.count(out, "the product of \(a) and \(b)")
        return (m, k, n, batch, out)
    }

    static let matMul = OperatorSpec(name: "MatMul", domain: "ai.onnx", opsets: 1...22) { ctx in
        try ctx.inputs(2, 2)
        let t = try ctx.input(0, .floats)
        guard try ctx.input(1) == t else { throw ctx.bad("A and B must have one type") }
        if t == .float32, let b = ctx.constants[1], b.rank == 2, let bv = b.floats, PackedMatrix.worthPacking(k: b.shape[0], n: b.shape[1]) {
            let packed = bv.withUnsafeBufferPointer { PackedMatrix($0, k: b.shape[0], n: b.shape[1], transposed: false) }
            ctx.absorbed.insert(1)
            ctx.kernelBytes += packed.byteCount
            return (PackedProductKernel(weights: packed, form: .matMul), [t])
        }
        return (ClosureKernel { inputs, ws in
            let a = try K.arg(inputs, 0), b = try K.arg(inputs, 1)
            guard a.rank >= 1, b.rank >= 1 else { throw EngineError.input("MatMul needs inputs of rank 1 or more, got shapes \(a.shape) and \(b.shape)") }
            let (m, k, n, batch, outShape) = try productShapes(a.shape, b.shape, ws)
            let count = outShape.reduce(1, *)
            let aBatch = a.shape.prefix(max(a.rank - 2, 0)), bBatch = b.shape.prefix(max(b.rank - 2, 0))
            let nb = batch.reduce(1, *)
            func run<T: BinaryFloatingPoint & Reusable>(_ av: [T], _ bv: [T]) throws -> [T] {
                var out: [T] = try ws.array(count, repeating: 0)
                // Empty: nothing to multiply (and `nb` may be large).
                guard count > 0 else { return out }
                try ws.withScratch(2 * nb) { at in
                    // Which matrix of A and of B each output matrix multiplies.
                    K.withBroadcastStrides(aBatch, batch) { st in K.walk(batch, strides: st) { i, p in at[2 * i] = p } }
                    K.withBroadcastStrides(bBatch, batch) { st in K.walk(batch, strides: st) { i, p in at[2 * i + 1] = p } }
                    av.withUnsafeBufferPointer { pa in bv.withUnsafeBufferPointer { pb in out.withUnsafeMutableBufferPointer { pc in
                        for i in 0..<nb {
                            matmulAccumulate(pa, pb, pc, m: m, k: k, n: n,
                                             aOffset: at[2 * i] * m * k, bOffset: at[2 * i + 1] * k * n, cOffset: i * m * n)
                        }
                    } } }
                }
                return out
            }
            switch (a.storage, b.storage) {
            case (.float32(let x), .float32(let y)): return Outputs(Tensor(shape: outShape, floats: try run(x, y)))
            case (.float64(let x), .float64(let y)): return Outputs(Tensor(shape: outShape, doubles: try run(x, y)))
            default: throw EngineError.runtime("A is \(a.dtype), B is \(b.dtype)")
            }
        }, [t])
    }

}

/// The instruction-set level the engine's kernels run at: the highest this CPU has (`avx512`,
/// `avx2` with FMA, or `baseline`), or a lower one the environment variable `KAA_ENGINE_LEVEL`
/// names (read once, at the first use).
public enum EngineLevel {
    /// The level the kernels run at.
    public static var current: String { String(cString: kaa_level_name(kaa_kernel_level())) }
    /// The highest level this CPU supports.
    public static var cpu: String { String(cString: kaa_level_name(kaa_cpu_level())) }
    /// What `KAA_ENGINE_LEVEL` says, when set: the level, or why it is not used.
    public static var forced: String? {
        guard let value = ProcessInfo.processInfo.environment["KAA_ENGINE_LEVEL"] else { return nil }
        let level = kaa_level_named(value)
        if level < 0 { return "KAA_ENGINE_LEVEL=\(value) is not a level (baseline, avx2, avx512); ignored" }
        if level > kaa_cpu_level() { return "KAA_ENGINE_LEVEL=\(value) is above this CPU's \(cpu); ignored" }
        return "KAA_ENGINE_LEVEL=\(value)"
    }
    /// The int8 product's kernel at this level: `avx512-vnni`, `avx-vnni`, `avx2` or `baseline`.
    public static var int8: String { String(cString: kaa_qgemm_variant_name(kaa_qgemm_variant())) }
    /// One line for `kaa ops` and the node's start: the level, the CPU's, why they differ, and
    /// the int8 kernel.
    public static var summary: String {
        "kernels: \(current) (CPU: \(cpu)\(forced.map { "; \($0)" } ?? "")); int8: \(int8)"
    }
}
