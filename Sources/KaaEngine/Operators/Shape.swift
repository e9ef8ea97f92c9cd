/// Operators that move elements without arithmetic, plus Cast, ArgMax and reductions.
enum ShapeOps {
    static func axesInput(_ inputs: [Tensor?], _ i: Int) throws -> [Int64]? {
        guard i < inputs.count, let t = inputs[i] else { return nil }
        guard case .int64(let v) = t.storage else { throw EngineError.runtime("axes are \(t.dtype), expected int64") }
        return v
    }

    static let identity = OperatorSpec(name: "Identity", domain: "ai.onnx", opsets: 1...22) { ctx in
        try ctx.inputs(1, 1)
        return (IdentityKernel(), [try ctx.input(0)])
    }

    static let reshape = OperatorSpec(name: "Reshape", domain: "ai.onnx", opsets: 5...22) { ctx in
        try ctx.inputs(2, 2)
        let t = try ctx.input(0)
        _ = try ctx.input(1, [.int64])
        let allowZero = try ctx.attributes.int("allowzero", default: 0) != 0
        return (ClosureKernel(aliasesInputs: true) { inputs, ws in
            let x = try K.arg(inputs, 0)
            let target = try K.arg(inputs, 1)
            guard case .int64(let given) = target.storage else { throw EngineError.runtime("shape is \(target.dtype), expected int64") }
            var problem: String?
            let shape = ws.shape(rank: given.count) { shape in
                var infer = -1
                for (i, d64) in given.enumerated() {
                    let d = Int(d64)
                    shape[i] = d
                    if d == 0 && !allowZero {
                        guard i < x.rank else { problem = "shape \(given) copies dimension \(i) of \(x.shape)"; return }
                        shape[i] = x.shape[i]
                    } else if d == -1 {
                        guard infer < 0 else { problem = "shape \(given) has two -1"; return }
                        infer = i
                    } else if d < 0 { problem = "shape \(given) has a negative dimension"; return }
                }
                if infer >= 0 {
                    var known = 1
                    for i in shape.indices where i != infer { known *= shape[i] }
                    guard known > 0, x.count % known == 0 else { problem = "cannot reshape \(x.shape) to \(given)"; return }
                    shape[infer] = x.count / known
                }
                guard shape.reduce(1, *) == x.count else { problem = "cannot reshape \(x.shape) (\(x.count) elements) to \(given)"; return }
            }
            if let problem { throw EngineError.runtime(problem) }
            var y = x
            y.shape = shape
            return Outputs(y)
        }, [t])
    }

    static let flatten = OperatorSpec(name: "Flatten", domain: "ai.onnx", opsets: 1...22) { ctx in
        try ctx.inputs(1, 1)
        let axisAttr = try ctx.attributes.int("axis", default: 1)
        return (ClosureKernel(aliasesInputs: true) { inputs, ws in
            var x = try K.arg(inputs, 0)
            let axis = axisAttr < 0 ? axisAttr + x.rank : axisAttr
            guard axis >= 0, axis <= x.rank else { throw EngineError.runtime("axis \(axisAttr) out of range for \(x.shape)") }
            x.shape = ws.shape(x.shape[..<axis].reduce(1, *), x.shape[axis...].reduce(1, *))
            return Outputs(x)
        }, [try ctx.input(0)])
    }

    static func squeezeLike(_ name: String, unsqueeze: Bool) -> OperatorSpec {
        OperatorSpec(name: name, domain: "ai.onnx", opsets: 1...22) { ctx in
            try ctx.inputs(1, 2)
            let fixed = ctx.opset < 13 ? try ctx.attributes.ints("axes") : nil
            if unsqueeze, ctx.opset < 13, fixed == nil { throw ctx.bad("needs attribute `axes`") }
            let fixedAxes = fixed?.map { Int64($0) }
            return (ClosureKernel(aliasesInputs: true) { inputs, ws in
                var x = try K.arg(inputs, 0)
                let axes = try fixedAxes ?? axesInput(inputs, 1)
                if unsqueeze {
                    guard let axes else { throw EngineError.runtime("needs axes") }
                    let r = x.rank + axes.count
                    let mask = try K.axisMask(axes, rank: r)
                    x.shape = ws.shape(rank: r) { d in
                        var j = 0
                        for i in 0..<r {
                            if mask & (1 << UInt64(i)) != 0 { d[i] = 1 } else { d[i] = x.shape[j]; j += 1 }
                        }
                    }
                } else if let axes {
                    let mask = try K.axisMask(axes, rank: x.rank)
                    for a in 0..<x.rank where mask & (1 << UInt64(a)) != 0 && x.shape[a] != 1 {
                        throw EngineError.runtime("cannot squeeze dimension \(a) of \(x.shape)")
                    }
                    x.shape = ws.shape(rank: x.rank - mask.nonzeroBitCount) { d in
                        var j = 0
                        for i in 0..<x.rank where mask & (1 << UInt64(i)) == 0 { d[j] = x.shape[i]; j += 1 }
                    }
                } else {
                    x.shape = ws.shape(rank: x.shape.lazy.filter { $0 != 1 }.count) { d in
                        var j = 0
                        for e in x.shape where e != 1 { d[j] = e; j += 1 }
                    }
                }
                return Outputs(x)
            }, [try ctx.input(0)])
        }
    }

    static let concat = OperatorSpec(name: "Concat", domain: "ai.onnx", opsets: 4...22) { ctx in
        try ctx.inputs(1, 1 << 16)
        let t = try ctx.input(0)
        for i in ctx.inputTypes.indices { guard try ctx.input(i) == t else { throw ctx.bad("inputs must share one type") } }
        guard let axisAttr = try ctx.attributes.int("axis") else { throw ctx.bad("needs attribute `axis`") }
        return (ClosureKernel { inputs, ws in
            let first = try K.arg(inputs, 0)
            let rank = first.rank
            let axis = try K.axis(axisAttr, rank: rank)
            var total = 0
            for i in inputs.indices {
                let x = try K.arg(inputs, i)
                guard x.rank == rank, (0..<rank).allSatisfy({ $0 == axis || x.shape[$0] == first.shape[$0] }) else {
                    throw EngineError.runtime("cannot concatenate shapes \(inputs.map { $0?.shape ?? [] }) on axis \(axis)")
                }
                guard x.dtype == first.dtype else { throw EngineError.runtime("inputs are \(first.dtype) and \(x.dtype)") }
                total += x.shape[axis]
            }
            let outShape = ws.shape(rank: rank) { d in
                for i in 0..<rank { d[i] = i == axis ? total : first.shape[i] }
            }
            let outer = first.shape[..<axis].reduce(1, *)
            let count = outShape.reduce(1, *)
            // Output element e: row o of the outer dimensions, then each input's chunk in turn.
            func fill<T>(_ o: UnsafeMutableBufferPointer<T>, _ elements: (Tensor) -> [T]) {
                var e = 0
                for r in 0..<outer {
                    for i in inputs.indices {
                        let x = inputs[i]!
                        let chunk = x.shape[axis...].reduce(1, *)
                        let v = elements(x)
                        for j in 0..<chunk { o[e + j] = v[r * chunk + j] }
                        e += chunk
                    }
                }
            }
            let storage: Tensor.Storage = switch first.storage {
            case .float32: .float32(ws.array(count) { fill($0) { $0.floats! } })
            case .float64: .float64(ws.array(count) { fill($0) { $0.doubles! } })
            case .int64: .int64(ws.array(count) { fill($0) { $0.int64s! } })
            case .int32: .int32(ws.array(count) { fill($0) { $0.int32s! } })
            case .bool: .bool(ws.array(count) { fill($0) { $0.bools! } })
            case .string: .string(ws.strings(count) { fill($0) { $0.strings! } })
            }
            return Outputs(Tensor(shape: outShape, storage: storage))
        }, [t])
    }

    static let transpose = OperatorSpec(name: "Transpose", domain: "ai.onnx", opsets: 1...22) { ctx in
        try ctx.inputs(1, 1)
        let permAttr = try ctx.attributes.ints("perm")
        let permMask = permAttr.map { p in (try? K.axisMask(p.map { Int64($0) }, rank: p.count)) }
        return (ClosureKernel { inputs, ws in
            let x = try K.arg(inputs, 0)
            let r = x.rank
            if let permAttr {
                guard permAttr.count == r, r <= 64, permMask ?? nil == (r == 64 ? ~0 : (1 << UInt64(r)) - 1) else {
                    throw EngineError.runtime("perm \(permAttr) does not fit \(x.shape)")
                }
            }
            func perm(_ i: Int) -> Int { permAttr?[i] ?? r - 1 - i }
            let outShape = ws.shape(rank: r) { d in for i in 0..<r { d[i] = x.shape[perm(i)] } }
            let n = x.count
            let storage = withUnsafeTemporaryAllocation(of: Int.self, capacity: max(r, 1)) { st in
                // Source strides, permuted: a step along output axis i moves inStride[perm(i)].
                var s = 1
                withUnsafeTemporaryAllocation(of: Int.self, capacity: max(r, 1)) { inStride in
                    for i in stride(from: r - 1, through: 0, by: -1) { inStride[i] = s; s *= x.shape[i] }
                    for i in 0..<r { st[i] = inStride[perm(i)] }
                }
                return ws.withScratch(n) { src in
                    K.walk(outShape, strides: UnsafeBufferPointer(st)) { i, p in src[i] = p }
                    return ws.gather(x.storage, n) { src[$0] }
                }
            }
            return Outputs(Tensor(shape: outShape, storage: storage))
        }, [try ctx.input(0)])
    }

    static let gather = OperatorSpec(name: "Gather", domain: "ai.onnx", opsets: 1...22) { ctx in
        try ctx.inputs(2, 2)
        _ = try ctx.input(1, [.int64, .int32])
        let axisAttr = try ctx.attributes.int("axis", default: 0)
        return (ClosureKernel { inputs, ws in
            let x = try K.arg(inputs, 0), ind = try K.arg(inputs, 1)
            let axis = try K.axis(axisAttr, rank: x.rank)
            let (outer, n, inner) = K.split(x.shape, axis)
            let count = ind.count
            return try ws.withScratch(count) { idx in
                for i in 0..<count {
                    let v: Int = switch ind.storage {
                    case .int64(let a): Int(a[i])
                    case .int32(let a): Int(a[i])
                    default: throw EngineError.runtime("indices are \(ind.dtype)")
                    }
                    let j = v < 0 ? v + n : v
                    guard j >= 0, j < n else { throw EngineError.runtime("index \(v) is out of range for dimension of size \(n)") }
                    idx[i] = j
                }
                let shape = ws.shape(rank: x.rank - 1 + ind.rank) { d in
                    var k = 0
                    for i in 0..<axis { d[k] = x.shape[i]; k += 1 }
                    for e in ind.shape { d[k] = e; k += 1 }
                    for i in (axis + 1)..<max(x.rank, axis + 1) { d[k] = x.shape[i]; k += 1 }
                }
                // Output element e: outer row o, index j, inner position r.
                let storage = ws.gather(x.storage, outer * count * inner) { e in
                    let r = e % inner, q = e / inner
                    return ((q / count) * n + idx[q % count]) * inner + r
                }
                return Outputs(Tensor(shape: shape, storage: storage))
            }
        }, [try ctx.input(0)])
    }

    static let cast = OperatorSpec(name: "Cast", domain: "ai.onnx", opsets: 6...22) { ctx in
        try ctx.inputs(1, 1)
        let from = try ctx.input(0)
        guard let to = try ctx.attributes.int("to") else { throw ctx.bad("needs attribute `to`") }
        _ = try ctx.attributes.int("saturate")
        guard let target = DType(rawValue: to) else {
            throw EngineError.unsupported("\(ctx.owner): casting to \(DType.onnxName(to)) is not supported")
        }
        if from == target { return (IdentityKernel(), [target]) }
        return (ClosureKernel { inputs, ws in
            let x = try K.arg(inputs, 0)
            return Outputs(try Cast.convert(x, to: target, ws))
        }, [target])
    }

    static let argMax = OperatorSpec(name: "ArgMax", domain: "ai.onnx", opsets: 1...22) { ctx in
        try ctx.inputs(1, 1)
        _ = try ctx.input(0, .numeric)
        let axisAttr = try ctx.attributes.int("axis", default: 0)
        let keep = try ctx.attributes.int("keepdims", default: 1) != 0
        let last = try ctx.attributes.int("select_last_index", default: 0) != 0
        return (ClosureKernel { inputs, ws in
            let x = try K.arg(inputs, 0)
            let axis = try K.axis(axisAttr, rank: x.rank)
            let (outer, n, inner) = K.split(x.shape, axis)
            guard n > 0 else { throw EngineError.runtime("ArgMax over an empty axis") }
            var out: [Int64] = ws.array(outer * inner) { _ in }
            func run<T: Comparable>(_ v: [T]) {
                for o in 0..<outer {
                    for i in 0..<inner {
                        var best = 0
                        var bv = v[o * n * inner + i]
                        for j in 1..<max(n, 1) {
                            let e = v[(o * n + j) * inner + i]
                            if e > bv || (last && e == bv) { bv = e; best = j }
                        }
                        out[o * inner + i] = Int64(best)
                    }
                }
            }
            switch x.storage {
            case .float32(let v): run(v)
            case .float64(let v): run(v)
            case .int64(let v): run(v)
            case .int32(let v): run(v)
            default: throw EngineError.runtime("input is \(x.dtype)")
            }
            let shape = ws.shape(rank: keep ? x.rank : x.rank - 1) { d in
                var j = 0
                for i in 0..<x.rank {
                    if i == axis { if keep { d[j] = 1; j += 1 } } else { d[j] = x.shape[i]; j += 1 }
                }
            }
            return Outputs(Tensor(shape: shape, int64s: out))
        }, [.int64])
    }

    static func reduce(_ name: String, mean: Bool) -> OperatorSpec {
        OperatorSpec(name: name, domain: "ai.onnx", opsets: 1...22) { ctx in
            try ctx.inputs(1, 2)
            let t = try ctx.input(0, .numeric)
            let axesFromInput = mean ? ctx.opset >= 18 : ctx.opset >= 13
            let fixed = axesFromInput ? nil : try ctx.attributes.ints("axes")
            let keep = try ctx.attributes.int("keepdims", default: 1) != 0
            let noopEmpty = axesFromInput ? try ctx.attributes.int("noop_with_empty_axes", default: 0) != 0 : false
            let fixedAxes = fixed?.map { Int64($0) }
            return (ClosureKernel(aliasesInputs: true) { inputs, ws in
                let x = try K.arg(inputs, 0)
                let given = try fixedAxes ?? axesInput(inputs, 1) ?? []
                if given.isEmpty, noopEmpty { return Outputs(x) }
                let rank = x.rank
                let mask = given.isEmpty ? (rank == 64 ? ~0 : (1 << UInt64(rank)) - 1) : try K.axisMask(given, rank: rank)
                func reduced(_ i: Int) -> Bool { mask & (1 << UInt64(i)) != 0 }
                let keptShape = ws.shape(rank: rank) { d in for i in 0..<rank { d[i] = reduced(i) ? 1 : x.shape[i] } }
                let outCount = keptShape.reduce(1, *)
                var counted = 1
                for i in 0..<rank where reduced(i) { counted *= x.shape[i] }
                let shape = keep ? keptShape : ws.shape(rank: rank - mask.nonzeroBitCount) { d in
                    var j = 0
                    for i in 0..<rank where !reduced(i) { d[j] = x.shape[i]; j += 1 }
                }
                // Walks the input in order; `p` is the output element each input element adds to.
                func sum<T: Reusable>(_ v: [T], _ zero: T, _ add: (T, T) -> T, _ finish: (T) -> T) -> [T] {
                    ws.array(outCount) { acc in
                        acc.initialize(repeating: zero)
                        K.withBroadcastStrides(keptShape[...], x.shape) { st in
                            K.walk(x.shape, strides: st) { e, p in acc[p] = add(acc[p], v[e]) }
                        }
                        for i in acc.indices { acc[i] = finish(acc[i]) }
                    }
                }
                switch x.storage {
                case .float32(let v):
                    return Outputs(Tensor(shape: shape, floats: sum(v, 0, +) { mean ? $0 / Float(counted) : $0 }))
                case .float64(let v):
                    return Outputs(Tensor(shape: shape, doubles: sum(v, 0, +) { mean ? $0 / Double(counted) : $0 }))
                case .int64(let v):
                    return Outputs(Tensor(shape: shape, int64s: sum(v, 0, &+) { mean && counted > 0 ? $0 / Int64(counted) : $0 }))
                case .int32(let v):
                    return Outputs(Tensor(shape: shape, int32s: sum(v, 0, &+) { mean && counted > 0 ? $0 / Int32(counted) : $0 }))
                default: throw EngineError.runtime("input is \(x.dtype)")
                }
            }, [t])
        }
    }

    static let specs: [OperatorSpec] = [
        identity, reshape, flatten, squeezeLike("Squeeze", unsqueeze: false), squeezeLike("Unsqueeze", unsqueeze: true),
        concat, transpose, gather, cast, argMax, reduce("ReduceSum", mean: false), reduce("ReduceMean", mean: true),
    ]
}

/// Element type conversion for Cast (a Cast to the type a value has is an ``IdentityKernel``).
enum Cast {
    /// `x` as `target`: numbers into memory from `ws`; strings parsed or formatted (new strings).
    static func convert(_ x: Tensor, to target: DType, _ ws: Workspace) throws -> Tensor {
        if let s = numeric(x.storage, to: target, ws) { return Tensor(shape: x.shape, storage: s) }
        let s: Tensor.Storage
        switch (x.storage, target) {
        case (.string(let v), _):
            let d = v.map { Double($0.trimmingWhitespace) }
            switch target {
            case .float32: s = .float32(v.map { Float($0.trimmingWhitespace) ?? .nan })
            case .float64: s = .float64(d.map { $0 ?? .nan })
            case .int64: s = .int64(try v.map { guard let i = Int64($0.trimmingWhitespace) else { throw EngineError.runtime("cannot cast `\($0)` to int64") }; return i })
            case .int32: s = .int32(try v.map { guard let i = Int32($0.trimmingWhitespace) else { throw EngineError.runtime("cannot cast `\($0)` to int32") }; return i })
            case .bool: s = .bool(d.map { ($0 ?? 0) != 0 })
            case .string: s = x.storage
            }
        case (_, .string):
            switch x.storage {
            case .float32(let v): s = .string(v.map { Self.format($0) })
            case .float64(let v): s = .string(v.map { Self.format($0) })
            case .int64(let v): s = .string(v.map { String($0) })
            case .int32(let v): s = .string(v.map { String($0) })
            case .bool(let v): s = .string(v.map { $0 ? "1" : "0" })
            case .string: s = x.storage
            }
        default:
            throw EngineError.runtime("cannot cast \(x.dtype) to \(target)")
        }
        return Tensor(shape: x.shape, storage: s)
    }

    /// Numeric-to-numeric conversion into memory from `ws`; `nil` for strings.
    private static func numeric(_ x: Tensor.Storage, to target: DType, _ ws: Workspace) -> Tensor.Storage? {
        func each<S, T: Reusable>(_ v: [S], _ f: (S) -> T) -> [T] { ws.array(v.count) { o in for i in v.indices { o[i] = f(v[i]) } } }
        func from<S>(_ v: [S], _ d: (S) -> Double) -> Tensor.Storage? {
            switch target {
            case .float32: .float32(each(v) { Float(d($0)) })
            case .float64: .float64(each(v, d))
            case .int64: .int64(each(v) { toInt(d($0)) })
            case .int32: .int32(each(v) { Int32(truncatingIfNeeded: toInt(d($0))) })
            case .bool: .bool(each(v) { d($0) != 0 })
            case .string: nil
            }
        }
        switch x {
        case .float32(let v): return from(v) { Double($0) }
        case .float64(let v): return from(v) { $0 }
        case .int64(let v):
            if target == .float32 { return .float32(each(v) { Float($0) }) }
            return from(v) { Double($0) }
        case .int32(let v):
            if target == .int64 { return .int64(each(v) { Int64($0) }) }
            return from(v) { Double($0) }
        case .bool(let v): return from(v) { $0 ? 1 : 0 }
        case .string: return nil
        }
    }

    static func toInt(_ d: Double) -> Int64 {
        guard d.isFinite else { return d.isNaN ? 0 : (d > 0 ? .max : .min) }
        if d >= 9.2e18 { return .max }
        if d <= -9.2e18 { return .min }
        return Int64(d)
    }

    static func format<T: BinaryFloatingPoint & LosslessStringConvertible>(_ v: T) -> String {
        if v.isNaN { return "NaN" }
        if v.isInfinite { return v > 0 ? "INF" : "-INF" }
        return String(v)
    }
}

extension String {
    var trimmingWhitespace: Substring {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return s
    }
}
