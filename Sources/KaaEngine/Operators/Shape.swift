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
            guard given.count <= Limits.maxRank else {
                throw EngineError.input("cannot reshape \(x.shape) to a shape of \(given.count) dimensions; at most \(Limits.maxRank) are supported")
            }
            var problem: String?
            let shape = ws.shape(rank: given.count) { shape in
                var infer = -1
                // The product of the dimensions other than -1, leaving out zeros, checked.
                var known = 1
                var empty = false
                for (i, d64) in given.enumerated() {
                    var d: Int
                    if d64 == 0 && !allowZero {
                        guard i < x.rank else { problem = "shape \(given) copies dimension \(i) of \(x.shape), which has none"; return }
                        d = x.shape[i]
                    } else if d64 == -1 {
                        guard infer < 0 else { problem = "shape \(given) has two -1"; return }
                        infer = i
                        d = 1
                    } else if d64 < 0 {
                        problem = "shape \(given) has negative dimension \(d64)"; return
                    } else {
                        guard d64 <= Int64(Limits.maxElements) else { problem = "shape \(given) has dimension \(d64), more than \(Limits.maxElements) elements"; return }
                        d = Int(d64)
                    }
                    shape[i] = d
                    if i == infer { continue }
                    if d == 0 { empty = true; continue }
                    let (p, overflow) = known.multipliedReportingOverflow(by: d)
                    guard !overflow, p <= Limits.maxElements else { problem = "shape \(given) has more than \(Limits.maxElements) elements"; return }
                    known = p
                }
                if infer >= 0 {
                    guard !empty, x.count % known == 0 else { problem = "cannot reshape \(x.shape) (\(x.count) elements) to \(given): the -1 cannot be inferred"; return }
                    shape[infer] = x.count / known
                } else if (empty ? 0 : known) != x.count {
                    problem = "cannot reshape \(x.shape) (\(x.count) elements) to \(given) (\(empty ? 0 : known) elements)"
                }
            }
            if let problem { throw EngineError.input(problem) }
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
            guard axis >= 0, axis <= x.rank else { throw EngineError.input("axis \(axisAttr) is out of range for shape \(x.shape); it must be in \(-x.rank)...\(x.rank)") }
            x.shape = ws.shape(x.shape[..<axis].reduce(1, *), x.shape[axis...].reduce(1, *))
            return Outputs(x)
        }, [try ctx.input(0)])
    }

    static func squeezeLike(_ name: String, unsqueeze: Bool) -> OperatorSpec {
        OperatorSpec(name: name, domain: "ai.onnx", opsets: 1...22) { ctx in
            try ctx.inputs(1, 2)
            _ = try ctx.optionalInput(1, [.int64])
            let fixed = ctx.opset < 13 ? try ctx.attributes.ints("axes") : nil
            if unsqueeze, ctx.opset < 13, fixed == nil { throw ctx.bad("needs attribute `axes`") }
            let fixedAxes = fixed?.map { Int64($0) }
            return (ClosureKernel(aliasesInputs: true) { inputs, ws in
                var x = try K.arg(inputs, 0)
                let axes = try fixedAxes ?? axesInput(inputs, 1)
                if unsqueeze {
                    guard let axes else { throw EngineError.runtime("needs axes") }
                    let r = x.rank + axes.count
                    guard r <= Limits.maxRank else {
                        throw EngineError.input("unsqueezing \(x.shape) by \(axes.count) axes makes \(r) dimensions; at most \(Limits.maxRank) are supported")
                    }
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
                        throw EngineError.input("cannot squeeze dimension \(a) of \(x.shape): it is not 1")
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
                    throw EngineError.input("cannot concatenate shapes \(inputs.map { $0?.shape ?? [] }) on axis \(axis): all other dimensions must be equal")
                }
                guard x.dtype == first.dtype else { throw EngineError.runtime("inputs are \(first.dtype) and \(x.dtype)") }
                total += x.shape[axis]
            }
            let outShape = ws.shape(rank: rank) { d in
                for i in 0..<rank { d[i] = i == axis ? total : first.shape[i] }
            }
            let count = try K.count(outShape, "concatenating \(inputs.count) inputs of shapes like \(first.shape) on axis \(axis)")
            let outer = first.shape[..<axis].reduce(1, *)
            // Output element e: row o of the outer dimensions, then each input's chunk in turn.
            func fill<T>(_ o: UnsafeMutableBufferPointer<T>, _ elements: (Tensor) -> [T]) {
                // Empty: nothing to copy (and `outer` may be large).
                guard count > 0 else { return }
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
            case .float32: .float32(try ws.array(count) { fill($0) { $0.floats! } })
            case .float64: .float64(try ws.array(count) { fill($0) { $0.doubles! } })
            case .int64: .int64(try ws.array(count) { fill($0) { $0.int64s! } })
            case .int32: .int32(try ws.array(count) { fill($0) { $0.int32s! } })
            case .bool: .bool(try ws.array(count) { fill($0) { $0.bools! } })
            case .string: .string(try ws.strings(count) { fill($0) { $0.strings! } })
            case .uint8: .uint8(try ws.array(count) { fill($0) { $0.uint8s! } })
            case .int8: .int8(try ws.array(count) { fill($0) { $0.int8s! } })
            }
            return Outputs(Tensor(shape: outShape, storage: storage))
        }, [t])
    }

    static let transpose = OperatorSpec(name: "Transpose", domain: "ai.onnx", opsets: 1...22) { ctx in
        try ctx.inputs(1, 1)
        let permAttr = try ctx.attributes.ints("perm")
        if let p = permAttr, p.count > Limits.maxRank || Set(p) != Set(0..<p.count) {
            throw ctx.bad("perm \(p) is not a permutation of 0...\(p.count - 1)")
        }
        return (ClosureKernel { inputs, ws in
            let x = try K.arg(inputs, 0)
            let r = x.rank
            if let permAttr, permAttr.count != r {
                throw EngineError.input("perm \(permAttr) permutes \(permAttr.count) axes; the input \(x.shape) has \(r)")
            }
            func perm(_ i: Int) -> Int { permAttr?[i] ?? r - 1 - i }
            let outShape = ws.shape(rank: r) { d in for i in 0..<r { d[i] = x.shape[perm(i)] } }
            let n = x.count
            let storage = try withUnsafeTemporaryAllocation(of: Int.self, capacity: max(r, 1)) { st in
                // Source strides, permuted: a step along output axis i moves inStride[perm(i)].
                var s = 1
                withUnsafeTemporaryAllocation(of: Int.self, capacity: max(r, 1)) { inStride in
                    for i in stride(from: r - 1, through: 0, by: -1) { inStride[i] = s; s *= x.shape[i] }
                    for i in 0..<r { st[i] = inStride[perm(i)] }
                }
                return try ws.withScratch(n) { src in
                    K.walk(outShape, strides: UnsafeBufferPointer(st)) { i, p in src[i] = p }
                    return try ws.gather(x.storage, n) { src[$0] }
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
            let (_, n, inner) = K.split(x.shape, axis)
            let count = ind.count
            guard x.rank - 1 + ind.rank <= Limits.maxRank else {
                throw EngineError.input("gathering from \(x.shape) with indices of shape \(ind.shape) makes \(x.rank - 1 + ind.rank) dimensions; at most \(Limits.maxRank) are supported")
            }
            return try ws.withScratch(count) { idx in
                for i in 0..<count {
                    let v: Int = switch ind.storage {
                    case .int64(let a): Int(a[i])
                    case .int32(let a): Int(a[i])
                    default: throw EngineError.runtime("indices are \(ind.dtype)")
                    }
                    let j = v < 0 ? v + n : v
                    guard j >= 0, j < n else {
                        throw EngineError.input("index \(v) (element \(i) of the indices) is out of range for axis \(axis) of \(x.shape), of size \(n); indices must be in \(-n)...\(n - 1)")
                    }
                    idx[i] = j
                }
                let shape = ws.shape(rank: x.rank - 1 + ind.rank) { d in
                    var k = 0
                    for i in 0..<axis { d[k] = x.shape[i]; k += 1 }
                    for e in ind.shape { d[k] = e; k += 1 }
                    for i in (axis + 1)..<max(x.rank, axis + 1) { d[k] = x.shape[i]; k += 1 }
                }
                let total = try K.count(shape, "gathering \(ind.shape) indices from \(x.shape)")
                // Output element e: outer row o, index j, inner position r.
                let storage = try ws.gather(x.storage, total) { e in
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
            guard n > 0 else { throw EngineError.input("ArgMax over axis \(axis) of \(x.shape), which is empty") }
            var out: [Int64] = try ws.array(outer * inner) { _ in }
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
            _ = try ctx.optionalInput(1, [.int64])
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
                let mask = given.isEmpty ? K.allAxes(rank) : try K.axisMask(given, rank: rank)
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
                func sum<T: Reusable>(_ v: [T], _ zero: T, _ add: (T, T) -> T, _ finish: (T) -> T) throws -> [T] {
                    try ws.array(outCount) { acc in
                        acc.initialize(repeating: zero)
                        K.withBroadcastStrides(keptShape[...], x.shape) { st in
                            K.walk(x.shape, strides: st) { e, p in acc[p] = add(acc[p], v[e]) }
                        }
                        for i in acc.indices { acc[i] = finish(acc[i]) }
                    }
                }
                switch x.storage {
                case .float32(let v):
                    return Outputs(Tensor(shape: shape, floats: try sum(v, 0, +) { mean ? $0 / Float(counted) : $0 }))
                case .float64(let v):
                    return Outputs(Tensor(shape: shape, doubles: try sum(v, 0, +) { mean ? $0 / Double(counted) : $0 }))
                case .int64(let v):
                    return Outputs(Tensor(shape: shape, int64s: try sum(v, 0, &+) { mean && counted > 0 ? $0 / Int64(counted) : $0 }))
                case .int32(let v):
                    return Outputs(Tensor(shape: shape, int32s: try sum(v, 0, &+) { mean && counted > 0 ? Int32(truncatingIfNeeded: Int64($0) / Int64(counted)) : $0 }))
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
    /// `x` as `target`: numbers into memory from `ws`; strings parsed or formatted (new
    /// strings, charged to the run). A string that does not parse as an integer is the
    /// caller's error (``EngineError/Code/invalidInput``); one that does not parse as a float
    /// becomes NaN, as in onnxruntime.
    static func convert(_ x: Tensor, to target: DType, _ ws: Workspace) throws -> Tensor {
        if let s = try numeric(x.storage, to: target, ws) { return Tensor(shape: x.shape, storage: s) }
        let n = x.count
        func unparsable(_ text: String, _ i: Int) -> EngineError {
            EngineError.input("cannot cast `\(text.prefix(40))`\(text.count > 40 ? "..." : "") (element \(i)) to \(target): it is not an integer")
        }
        let s: Tensor.Storage
        switch (x.storage, target) {
        case (.string(let v), .float32): s = .float32(try ws.array(n) { o in for i in 0..<n { o[i] = Float(v[i].trimmingWhitespace) ?? .nan } })
        case (.string(let v), .float64): s = .float64(try ws.array(n) { o in for i in 0..<n { o[i] = Double(v[i].trimmingWhitespace) ?? .nan } })
        case (.string(let v), .int64):
            s = .int64(try ws.array(n) { o in
                for i in 0..<n { guard let k = Int64(v[i].trimmingWhitespace) else { throw unparsable(v[i], i) }; o[i] = k }
            })
        case (.string(let v), .int32):
            s = .int32(try ws.array(n) { o in
                for i in 0..<n { guard let k = Int32(v[i].trimmingWhitespace) else { throw unparsable(v[i], i) }; o[i] = k }
            })
        case (.string(let v), .bool): s = .bool(try ws.array(n) { o in for i in 0..<n { o[i] = (Double(v[i].trimmingWhitespace) ?? 0) != 0 } })
        case (.string, .string): s = x.storage
        case (_, .string):
            // Text longer than 15 bytes lives on the heap: formatted float64 and int64 values
            // may be that long.
            if x.dtype == .float64 || x.dtype == .int64 { try ws.charge(n, Self.longTextBytes, what: String.self) }
            s = .string(try ws.strings(n) { o in
                switch x.storage {
                case .float32(let v): for i in 0..<n { o[i] = Self.format(v[i]) }
                case .float64(let v): for i in 0..<n { o[i] = Self.format(v[i]) }
                case .int64(let v): for i in 0..<n { o[i] = String(v[i]) }
                case .int32(let v): for i in 0..<n { o[i] = String(v[i]) }
                case .bool(let v): for i in 0..<n { o[i] = v[i] ? "1" : "0" }
                case .string(let v): for i in 0..<n { o[i] = v[i] }
                case .uint8(let v): for i in 0..<n { o[i] = String(v[i]) }
                case .int8(let v): for i in 0..<n { o[i] = String(v[i]) }
                }
            })
        default:
            throw EngineError.runtime("cannot cast \(x.dtype) to \(target)")
        }
        return Tensor(shape: x.shape, storage: s)
    }

    /// The heap a formatted number of up to 24 characters may take.
    static let longTextBytes = 48

    /// Numeric-to-numeric conversion into memory from `ws`; `nil` for strings.
    private static func numeric(_ x: Tensor.Storage, to target: DType, _ ws: Workspace) throws -> Tensor.Storage? {
        func each<S, T: Reusable>(_ v: [S], _ f: (S) -> T) throws -> [T] { try ws.array(v.count) { o in for i in v.indices { o[i] = f(v[i]) } } }
        func from<S>(_ v: [S], _ d: (S) -> Double) throws -> Tensor.Storage? {
            switch target {
            case .float32: .float32(try each(v) { Float(d($0)) })
            case .float64: .float64(try each(v, d))
            case .int64: .int64(try each(v) { toInt(d($0)) })
            case .int32: .int32(try each(v) { Int32(truncatingIfNeeded: toInt(d($0))) })
            case .bool: .bool(try each(v) { d($0) != 0 })
            // Out of range wraps, as a C cast of the integer part does (numpy's astype).
            case .uint8: .uint8(try each(v) { UInt8(truncatingIfNeeded: toInt(d($0))) })
            case .int8: .int8(try each(v) { Int8(truncatingIfNeeded: toInt(d($0))) })
            case .string: nil
            }
        }
        switch x {
        case .float32(let v): return try from(v) { Double($0) }
        case .float64(let v): return try from(v) { $0 }
        case .int64(let v):
            if target == .float32 { return .float32(try each(v) { Float($0) }) }
            return try from(v) { Double($0) }
        case .int32(let v):
            if target == .int64 { return .int64(try each(v) { Int64($0) }) }
            return try from(v) { Double($0) }
        case .bool(let v): return try from(v) { $0 ? 1 : 0 }
        case .uint8(let v):
            if target == .float32 { return .float32(try each(v) { Float($0) }) }
            return try from(v) { Double($0) }
        case .int8(let v):
            if target == .float32 { return .float32(try each(v) { Float($0) }) }
            return try from(v) { Double($0) }
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
