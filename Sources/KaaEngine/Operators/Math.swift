import COpenBLAS
import Foundation

/// Elementwise arithmetic, activations, Softmax, Gemm, MatMul and BatchNormalization.
enum MathOps {
    static func binary(
        _ name: String, opsets: ClosedRange<Int>,
        f32: @escaping @Sendable (Float, Float) -> Float,
        f64: @escaping @Sendable (Double, Double) -> Double,
        i64: @escaping @Sendable (Int64, Int64) -> Int64,
        i32: @escaping @Sendable (Int32, Int32) -> Int32,
        intDivision: Bool = false
    ) -> OperatorSpec {
        OperatorSpec(name: name, domain: "ai.onnx", opsets: opsets) { ctx in
            try ctx.inputs(2, 2)
            _ = try ctx.attributes.int("broadcast")  // opset < 7 only; broadcasting is numpy's
            _ = try ctx.attributes.int("axis")
            let t = try ctx.input(0, .numeric)
            guard try ctx.input(1) == t else { throw ctx.bad("inputs are \(t) and \(ctx.inputTypes[1]!); they must have one type") }
            return (ClosureKernel { inputs in
                let a = try K.arg(inputs, 0), b = try K.arg(inputs, 1)
                switch (a.storage, b.storage) {
                case (.float32(let x), .float32(let y)):
                    let r = try K.binary(x, a.shape, y, b.shape, f32)
                    return [Tensor(shape: r.shape, floats: r.values)]
                case (.float64(let x), .float64(let y)):
                    let r = try K.binary(x, a.shape, y, b.shape, f64)
                    return [Tensor(shape: r.shape, doubles: r.values)]
                case (.int64(let x), .int64(let y)):
                    if intDivision, y.contains(0) { throw EngineError.runtime("integer division by zero") }
                    let r = try K.binary(x, a.shape, y, b.shape, i64)
                    return [Tensor(shape: r.shape, int64s: r.values)]
                case (.int32(let x), .int32(let y)):
                    if intDivision, y.contains(0) { throw EngineError.runtime("integer division by zero") }
                    let r = try K.binary(x, a.shape, y, b.shape, i32)
                    return [Tensor(shape: r.shape, int32s: r.values)]
                default:
                    throw EngineError.runtime("inputs are \(a.dtype) and \(b.dtype)")
                }
            }, [t])
        }
    }

    /// A float unary op; `extra` reads attributes and returns the function.
    static func unary(
        _ name: String, opsets: ClosedRange<Int>,
        _ make: @escaping @Sendable (inout BuildContext) throws -> (@Sendable (Float) -> Float, @Sendable (Double) -> Double)
    ) -> OperatorSpec {
        OperatorSpec(name: name, domain: "ai.onnx", opsets: opsets) { ctx in
            try ctx.inputs(1, 1)
            _ = try ctx.attributes.ints("consumed_inputs")  // opset 1 legacy
            let t = try ctx.input(0, .floats)
            let (f, d) = try make(&ctx)
            return (ClosureKernel { inputs in
                let x = try K.arg(inputs, 0)
                switch x.storage {
                case .float32(let v):
                    let n = v.count
                    let out = [Float](unsafeUninitializedCapacity: n) { buf, c in
                        v.withUnsafeBufferPointer { p in for i in 0..<n { buf[i] = f(p[i]) } }
                        c = n
                    }
                    return [Tensor(shape: x.shape, floats: out)]
                case .float64(let v): return [Tensor(shape: x.shape, doubles: v.map(d))]
                default: throw EngineError.runtime("input is \(x.dtype)")
                }
            }, [t])
        }
    }

    static let specs: [OperatorSpec] = [
        binary("Add", opsets: 7...22, f32: { $0 + $1 }, f64: { $0 + $1 }, i64: { $0 &+ $1 }, i32: { $0 &+ $1 }),
        binary("Sub", opsets: 7...22, f32: { $0 - $1 }, f64: { $0 - $1 }, i64: { $0 &- $1 }, i32: { $0 &- $1 }),
        binary("Mul", opsets: 7...22, f32: { $0 * $1 }, f64: { $0 * $1 }, i64: { $0 &* $1 }, i32: { $0 &* $1 }),
        binary("Div", opsets: 7...22, f32: { $0 / $1 }, f64: { $0 / $1 },
               i64: { $1 == -1 ? 0 &- $0 : $0 / $1 }, i32: { $1 == -1 ? 0 &- $0 : $0 / $1 }, intDivision: true),
        unary("Relu", opsets: 6...22) { _ in ({ max($0, 0) }, { max($0, 0) }) },
        unary("LeakyRelu", opsets: 6...22) { ctx in
            let a = try ctx.attributes.float("alpha", default: 0.01)
            return ({ $0 >= 0 ? $0 : $0 * a }, { $0 >= 0 ? $0 : $0 * Double(a) })
        },
        unary("Sigmoid", opsets: 6...22) { _ in (PostTransform.logistic, { 1 / (1 + exp(-$0)) }) },
        unary("Tanh", opsets: 6...22) { _ in ({ tanhf($0) }, { tanh($0) }) },
        unary("Sqrt", opsets: 6...22) { _ in ({ $0.squareRoot() }, { $0.squareRoot() }) },
        unary("Exp", opsets: 6...22) { _ in ({ expf($0) }, { exp($0) }) },
        clip, softmax("Softmax", log: false), softmax("LogSoftmax", log: true), gemm, matMul, batchNorm,
    ]

    static let clip = OperatorSpec(name: "Clip", domain: "ai.onnx", opsets: 6...22) { ctx in
        try ctx.inputs(1, 3)
        let t = try ctx.input(0, .numeric)
        var lo: Float = -.infinity, hi: Float = .infinity
        if ctx.opset < 11 {
            lo = try ctx.attributes.float("min", default: -.greatestFiniteMagnitude)
            hi = try ctx.attributes.float("max", default: .greatestFiniteMagnitude)
        } else {
            for i in 1..<ctx.inputTypes.count where ctx.inputTypes[i] != nil {
                guard try ctx.input(i) == t else { throw ctx.bad("min and max must have the input's type \(t)") }
            }
        }
        let (fixedLo, fixedHi) = (lo, hi)
        return (ClosureKernel { inputs in
            let x = try K.arg(inputs, 0)
            func bound(_ i: Int) -> Double? { i < inputs.count ? inputs[i]?.asDoubles()?.first : nil }
            let l = bound(1), h = bound(2)
            switch x.storage {
            case .float32(let v):
                let a = l.map(Float.init) ?? fixedLo, b = h.map(Float.init) ?? fixedHi
                return [Tensor(shape: x.shape, floats: v.map { min(max($0, a), b) })]
            case .float64(let v):
                let a = l ?? Double(fixedLo), b = h ?? Double(fixedHi)
                return [Tensor(shape: x.shape, doubles: v.map { min(max($0, a), b) })]
            case .int64(let v):
                let a = l.map { Int64($0) } ?? .min, b = h.map { Int64($0) } ?? .max
                return [Tensor(shape: x.shape, int64s: v.map { min(max($0, a), b) })]
            case .int32(let v):
                let a = l.map { Int32($0) } ?? .min, b = h.map { Int32($0) } ?? .max
                return [Tensor(shape: x.shape, int32s: v.map { min(max($0, a), b) })]
            default: throw EngineError.runtime("input is \(x.dtype)")
            }
        }, [t])
    }

    static func softmax(_ name: String, log: Bool) -> OperatorSpec {
        OperatorSpec(name: name, domain: "ai.onnx", opsets: 1...22) { ctx in
            try ctx.inputs(1, 1)
            let t = try ctx.input(0, .floats)
            let legacy = ctx.opset < 13
            let axisAttr = try ctx.attributes.int("axis", default: legacy ? 1 : -1)
            return (ClosureKernel { inputs in
                let x = try K.arg(inputs, 0)
                let axis = try K.axis(axisAttr, rank: x.rank)
                let (outer, n, inner): (Int, Int, Int)
                if legacy || x.rank == 0 {
                    (outer, n, inner) = (x.shape[..<axis].reduce(1, *), x.shape[axis...].reduce(1, *), 1)
                } else {
                    (outer, n, inner) = K.split(x.shape, axis)
                }
                func run<T: BinaryFloatingPoint>(_ v: [T], _ e: (T) -> T, _ lg: (T) -> T) -> [T] {
                    var out = v
                    for o in 0..<outer {
                        for i in 0..<inner {
                            let base = o * n * inner + i
                            var m = -T.infinity
                            for j in 0..<n { m = max(m, v[base + j * inner]) }
                            var sum: T = 0
                            for j in 0..<n { let ex = e(v[base + j * inner] - m); out[base + j * inner] = ex; sum += ex }
                            if log {
                                let ls = lg(sum)
                                for j in 0..<n { out[base + j * inner] = v[base + j * inner] - m - ls }
                            } else {
                                for j in 0..<n { out[base + j * inner] /= sum }
                            }
                        }
                    }
                    return out
                }
                switch x.storage {
                case .float32(let v): return [Tensor(shape: x.shape, floats: run(v, expf, logf))]
                case .float64(let v): return [Tensor(shape: x.shape, doubles: run(v, exp, Foundation.log))]
                default: throw EngineError.runtime("input is \(x.dtype)")
                }
            }, [t])
        }
    }

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
        return (ClosureKernel { inputs in
            let a = try K.arg(inputs, 0)
            let b: Tensor
            let bT: Bool
            if let preB { b = preB; bT = false } else { b = try K.arg(inputs, 1); bT = transB }
            guard a.rank == 2, b.rank == 2 else { throw EngineError.runtime("A and B must be 2-D, got \(a.shape) and \(b.shape)") }
            let (m, k) = transA ? (a.shape[1], a.shape[0]) : (a.shape[0], a.shape[1])
            let (kb, n) = bT ? (b.shape[1], b.shape[0]) : (b.shape[0], b.shape[1])
            guard k == kb else { throw EngineError.runtime("A is \(a.shape) and B is \(b.shape): inner dimensions \(k) and \(kb) differ") }
            let c = inputs.count > 2 ? inputs[2] : nil
            func run<T: BinaryFloatingPoint>(_ av: [T], _ bv: [T], _ cv: [T]?) throws -> [T] {
                let av = transA ? K.transpose(av, a.shape, [1, 0]).values : av
                let bv = bT ? K.transpose(bv, b.shape, [1, 0]).values : bv
                var out: [T]
                if let cv, let c, beta != 0 {
                    _ = try K.broadcast(c.shape, [m, n])
                    guard c.rank <= 2 else { throw EngineError.runtime("C has shape \(c.shape)") }
                    out = K.expand(cv, c.shape, to: [m, n])
                    if beta != 1 { let bt = T(beta); for i in out.indices { out[i] *= bt } }
                } else {
                    out = [T](repeating: 0, count: m * n)
                }
                if alpha == 1 {
                    av.withUnsafeBufferPointer { pa in bv.withUnsafeBufferPointer { pb in out.withUnsafeMutableBufferPointer { pc in
                        matmulAccumulate(pa, pb, pc, m: m, k: k, n: n)
                    } } }
                } else {
                    var tmp = [T](repeating: 0, count: m * n)
                    av.withUnsafeBufferPointer { pa in bv.withUnsafeBufferPointer { pb in tmp.withUnsafeMutableBufferPointer { pc in
                        matmulAccumulate(pa, pb, pc, m: m, k: k, n: n)
                    } } }
                    let al = T(alpha)
                    for i in out.indices { out[i] += al * tmp[i] }
                }
                return out
            }
            switch (a.storage, b.storage) {
            case (.float32(let x), .float32(let y)):
                return [Tensor(shape: [m, n], floats: try run(x, y, c?.floats))]
            case (.float64(let x), .float64(let y)):
                return [Tensor(shape: [m, n], doubles: try run(x, y, c?.doubles))]
            default: throw EngineError.runtime("A is \(a.dtype), B is \(b.dtype)")
            }
        }, [t])
    }

    static let matMul = OperatorSpec(name: "MatMul", domain: "ai.onnx", opsets: 1...22) { ctx in
        try ctx.inputs(2, 2)
        let t = try ctx.input(0, .floats)
        guard try ctx.input(1) == t else { throw ctx.bad("A and B must have one type") }
        return (ClosureKernel { inputs in
            let a = try K.arg(inputs, 0), b = try K.arg(inputs, 1)
            guard a.rank >= 1, b.rank >= 1 else { throw EngineError.runtime("MatMul of scalars") }
            let aS = a.rank == 1 ? [1, a.shape[0]] : a.shape
            let bS = b.rank == 1 ? [b.shape[0], 1] : b.shape
            let m = aS[aS.count - 2], k = aS[aS.count - 1], kb = bS[bS.count - 2], n = bS[bS.count - 1]
            guard k == kb else { throw EngineError.runtime("shapes \(a.shape) and \(b.shape) do not multiply") }
            let batch = try K.broadcast(Array(aS.dropLast(2)), Array(bS.dropLast(2)))
            let nb = batch.reduce(1, *)
            // Batch offsets of A and B for each output batch.
            let aBatchIdx = K.expand(Array(0..<aS.dropLast(2).reduce(1, *)), Array(aS.dropLast(2)), to: batch)
            let bBatchIdx = K.expand(Array(0..<bS.dropLast(2).reduce(1, *)), Array(bS.dropLast(2)), to: batch)
            var outShape = batch + [m, n]
            if a.rank == 1 { outShape.remove(at: outShape.count - 2) }
            if b.rank == 1 { outShape.removeLast() }
            func run<T: BinaryFloatingPoint>(_ av: [T], _ bv: [T]) -> [T] {
                var out = [T](repeating: 0, count: nb * m * n)
                av.withUnsafeBufferPointer { pa in bv.withUnsafeBufferPointer { pb in out.withUnsafeMutableBufferPointer { pc in
                    for i in 0..<nb {
                        matmulAccumulate(pa, pb, pc, m: m, k: k, n: n,
                                         aOffset: aBatchIdx[i] * m * k, bOffset: bBatchIdx[i] * k * n, cOffset: i * m * n)
                    }
                } } }
                return out
            }
            switch (a.storage, b.storage) {
            case (.float32(let x), .float32(let y)): return [Tensor(shape: outShape, floats: run(x, y))]
            case (.float64(let x), .float64(let y)): return [Tensor(shape: outShape, doubles: run(x, y))]
            default: throw EngineError.runtime("A is \(a.dtype), B is \(b.dtype)")
            }
        }, [t])
    }

    static let batchNorm = OperatorSpec(name: "BatchNormalization", domain: "ai.onnx", opsets: 7...22) { ctx in
        try ctx.inputs(5, 5)
        let t = try ctx.input(0, .floats)
        for i in 1...4 { _ = try ctx.input(i, .floats) }
        let eps = try ctx.attributes.float("epsilon", default: 1e-5)
        _ = try ctx.attributes.float("momentum")
        if ctx.opset < 9 { guard try ctx.attributes.int("spatial", default: 1) == 1 else { throw ctx.bad("spatial=0 is not supported") } }
        if try ctx.attributes.int("training_mode", default: 0) != 0 { throw EngineError.unsupported("\(ctx.owner): training_mode=1 is not supported; export the model in inference mode") }
        guard ctx.outputCount == 1 else { throw EngineError.unsupported("\(ctx.owner): only the inference form (one output) is supported") }
        return (ClosureKernel { inputs in
            let x = try K.arg(inputs, 0)
            guard x.rank >= 2 else { throw EngineError.runtime("X must have rank >= 2, got \(x.shape)") }
            let c = x.shape[1]
            let p = try (1...4).map { try K.arg(inputs, $0).asDoubles() ?? [] }
            guard p.allSatisfy({ $0.count == c }) else { throw EngineError.runtime("scale, B, mean and var must have \(c) elements") }
            let inner = x.shape[2...].reduce(1, *)
            let mul = (0..<c).map { p[0][$0] / (p[3][$0] + Double(eps)).squareRoot() }
            let add = (0..<c).map { p[1][$0] - p[2][$0] * mul[$0] }
            func run<T: BinaryFloatingPoint>(_ v: [T]) -> [T] {
                var out = v
                for i in out.indices { let ch = (i / inner) % c; out[i] = T(Double(v[i]) * mul[ch] + add[ch]) }
                return out
            }
            switch x.storage {
            case .float32(let v): return [Tensor(shape: x.shape, floats: run(v))]
            case .float64(let v): return [Tensor(shape: x.shape, doubles: run(v))]
            default: throw EngineError.runtime("X is \(x.dtype)")
            }
        }, [t])
    }
}
