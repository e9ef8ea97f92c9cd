import Foundation
import CKaaKernels

/// Elementwise arithmetic, activations, Softmax, Gemm, MatMul (in Gemm.swift) and
/// BatchNormalization.
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
            let t = try ctx.input(0, .numeric.union(QuantizedOps.eightBit))
            guard try ctx.input(1) == t else { throw ctx.bad("inputs are \(t) and \(ctx.inputTypes[1]!); they must have one type") }
            return (ClosureKernel { inputs, ws in
                let a = try K.arg(inputs, 0), b = try K.arg(inputs, 1)
                switch (a.storage, b.storage) {
                case (.float32(let x), .float32(let y)):
                    let r = try K.binary(ws, x, a.shape, y, b.shape, f32)
                    return Outputs(Tensor(shape: r.shape, floats: r.values))
                case (.float64(let x), .float64(let y)):
                    let r = try K.binary(ws, x, a.shape, y, b.shape, f64)
                    return Outputs(Tensor(shape: r.shape, doubles: r.values))
                case (.int64(let x), .int64(let y)):
                    if intDivision, y.contains(0) { throw EngineError.input("integer division by zero: the divisor holds 0") }
                    let r = try K.binary(ws, x, a.shape, y, b.shape, i64)
                    return Outputs(Tensor(shape: r.shape, int64s: r.values))
                case (.int32(let x), .int32(let y)):
                    if intDivision, y.contains(0) { throw EngineError.input("integer division by zero: the divisor holds 0") }
                    let r = try K.binary(ws, x, a.shape, y, b.shape, i32)
                    return Outputs(Tensor(shape: r.shape, int32s: r.values))
                // 8-bit integers compute in 32 bits and wrap to 8, as C and numpy do.
                case (.uint8(let x), .uint8(let y)):
                    if intDivision, y.contains(0) { throw EngineError.input("integer division by zero: the divisor holds 0") }
                    let r = try K.binary(ws, x, a.shape, y, b.shape) { UInt8(truncatingIfNeeded: i32(Int32($0), Int32($1))) }
                    return Outputs(Tensor(shape: r.shape, uint8s: r.values))
                case (.int8(let x), .int8(let y)):
                    if intDivision, y.contains(0) { throw EngineError.input("integer division by zero: the divisor holds 0") }
                    let r = try K.binary(ws, x, a.shape, y, b.shape) { Int8(truncatingIfNeeded: i32(Int32($0), Int32($1))) }
                    return Outputs(Tensor(shape: r.shape, int8s: r.values))
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
            return (ClosureKernel { inputs, ws in
                let x = try K.arg(inputs, 0)
                switch x.storage {
                case .float32(let v):
                    let n = v.count
                    let out = try ws.array(n) { buf in
                        v.withUnsafeBufferPointer { p in for i in 0..<n { buf[i] = f(p[i]) } }
                    }
                    return Outputs(Tensor(shape: x.shape, floats: out))
                case .float64(let v):
                    return Outputs(Tensor(shape: x.shape, doubles: try ws.array(v.count) { o in for i in v.indices { o[i] = d(v[i]) } }))
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
        let t = try ctx.input(0, .numeric.union(QuantizedOps.eightBit))
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
        return (ClosureKernel { inputs, ws in
            let x = try K.arg(inputs, 0)
            /// The first element of optional input `i` (min or max), which has `x`'s type.
            func bound<T>(_ i: Int, _ get: (Tensor) -> [T]?) -> T? {
                guard i < inputs.count, let t = inputs[i], t.count > 0 else { return nil }
                return get(t)?[0]
            }
            func clip<T: Comparable & Reusable>(_ v: [T], _ a: T, _ b: T) throws -> [T] {
                try ws.array(v.count) { o in for i in v.indices { o[i] = min(max(v[i], a), b) } }
            }
            switch x.storage {
            case .float32(let v):
                let a = bound(1) { $0.floats } ?? fixedLo, b = bound(2) { $0.floats } ?? fixedHi
                return Outputs(Tensor(shape: x.shape, floats: try clip(v, a, b)))
            case .float64(let v):
                let a = bound(1) { $0.doubles } ?? Double(fixedLo), b = bound(2) { $0.doubles } ?? Double(fixedHi)
                return Outputs(Tensor(shape: x.shape, doubles: try clip(v, a, b)))
            case .int64(let v):
                let a = bound(1) { $0.int64s } ?? .min, b = bound(2) { $0.int64s } ?? .max
                return Outputs(Tensor(shape: x.shape, int64s: try clip(v, a, b)))
            case .int32(let v):
                let a = bound(1) { $0.int32s } ?? .min, b = bound(2) { $0.int32s } ?? .max
                return Outputs(Tensor(shape: x.shape, int32s: try clip(v, a, b)))
            case .uint8(let v):
                let a = bound(1) { $0.uint8s } ?? .min, b = bound(2) { $0.uint8s } ?? .max
                return Outputs(Tensor(shape: x.shape, uint8s: try clip(v, a, b)))
            case .int8(let v):
                let a = bound(1) { $0.int8s } ?? .min, b = bound(2) { $0.int8s } ?? .max
                return Outputs(Tensor(shape: x.shape, int8s: try clip(v, a, b)))
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
            return (ClosureKernel { inputs, ws in
                let x = try K.arg(inputs, 0)
                // A scalar is one row of one element.
                let (outer, n, inner): (Int, Int, Int)
                if x.rank == 0 {
                    (outer, n, inner) = (1, 1, 1)
                } else if legacy {
                    let axis = try K.axis(axisAttr, rank: x.rank)
                    (outer, n, inner) = (x.shape[..<axis].reduce(1, *), x.shape[axis...].reduce(1, *), 1)
                } else {
                    (outer, n, inner) = K.split(x.shape, try K.axis(axisAttr, rank: x.rank))
                }
                func run<T: BinaryFloatingPoint & Reusable>(_ v: [T], _ e: (T) -> T, _ lg: (T) -> T) throws -> [T] {
                    try ws.array(v.count) { out in
                    // Empty: nothing to write (and `outer` may be large).
                    guard !v.isEmpty else { return }
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
                    }
                }
                switch x.storage {
                case .float32(let v):
                    // Contiguous rows (the last axis, or legacy's flattened tail): the vectorized
                    // kernel; it declines a tensor with NaN or an infinity, which the loop defines.
                    if inner == 1, n > 0, !v.isEmpty {
                        var declined = false
                        let out: [Float] = try ws.array(v.count) { o in
                            v.withUnsafeBufferPointer { p in declined = kaa_softmax_rows(p.baseAddress, outer, n, o.baseAddress, log ? 1 : 0) != 0 }
                        }
                        if !declined { return Outputs(Tensor(shape: x.shape, floats: out)) }
                        ws.giveBack(out)
                    }
                    return Outputs(Tensor(shape: x.shape, floats: try run(v, expf, logf)))
                case .float64(let v): return Outputs(Tensor(shape: x.shape, doubles: try run(v, exp, Foundation.log)))
                default: throw EngineError.runtime("input is \(x.dtype)")
                }
            }, [t])
        }
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
        return (ClosureKernel { inputs, ws in
            let x = try K.arg(inputs, 0)
            guard x.rank >= 2 else { throw EngineError.input("X must have rank 2 or more, got shape \(x.shape)") }
            let c = x.shape[1]
            for i in 1...4 {
                let t = try K.arg(inputs, i)
                guard t.count == c, t.dtype == .float32 || t.dtype == .float64 else {
                    throw EngineError.input("scale, B, mean and var must each have \(c) float elements (X is \(x.shape)); input #\(i + 1) is \(t.dtype) \(t.shape)")
                }
            }
            func at(_ i: Int, _ ch: Int) -> Double {
                switch inputs[i]!.storage {
                case .float32(let v): Double(v[ch])
                case .float64(let v): v[ch]
                default: 0
                }
            }
            let inner = x.shape[2...].reduce(1, *)
            func run<T: BinaryFloatingPoint & Reusable>(_ v: [T]) throws -> [T] {
                try ws.array(v.count) { out in
                    guard inner > 0, c > 0 else { return }
                    var i = 0
                    while i < v.count {
                        let ch = (i / inner) % c
                        let mul = at(1, ch) / (at(4, ch) + Double(eps)).squareRoot()
                        let add = at(2, ch) - at(3, ch) * mul
                        for j in i..<i + inner { out[j] = T(Double(v[j]) * mul + add) }
                        i += inner
                    }
                }
            }
            switch x.storage {
            case .float32(let v): return Outputs(Tensor(shape: x.shape, floats: try run(v)))
            case .float64(let v): return Outputs(Tensor(shape: x.shape, doubles: try run(v)))
            default: throw EngineError.runtime("X is \(x.dtype)")
            }
        }, [t])
    }
}
