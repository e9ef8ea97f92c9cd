/// Operators that move elements without arithmetic, plus Cast, ArgMax and reductions.
enum ShapeOps {
    static func axesInput(_ inputs: [Tensor?], _ i: Int) throws -> [Int]? {
        guard i < inputs.count, let t = inputs[i] else { return nil }
        return try K.ints(t)
    }

    static let identity = OperatorSpec(name: "Identity", domain: "ai.onnx", opsets: 1...22) { ctx in
        try ctx.inputs(1, 1)
        return (ClosureKernel { [try K.arg($0, 0)] }, [try ctx.input(0)])
    }

    static let reshape = OperatorSpec(name: "Reshape", domain: "ai.onnx", opsets: 5...22) { ctx in
        try ctx.inputs(2, 2)
        let t = try ctx.input(0)
        _ = try ctx.input(1, [.int64])
        let allowZero = try ctx.attributes.int("allowzero", default: 0) != 0
        return (ClosureKernel { inputs in
            let x = try K.arg(inputs, 0)
            var shape = try K.ints(try K.arg(inputs, 1))
            var infer = -1
            for (i, d) in shape.enumerated() {
                if d == 0 && !allowZero {
                    guard i < x.rank else { throw EngineError.runtime("shape \(shape) copies dimension \(i) of \(x.shape)") }
                    shape[i] = x.shape[i]
                } else if d == -1 {
                    guard infer < 0 else { throw EngineError.runtime("shape \(shape) has two -1") }
                    infer = i
                } else if d < 0 { throw EngineError.runtime("shape \(shape) has a negative dimension") }
            }
            if infer >= 0 {
                let known = shape.enumerated().filter { $0.offset != infer }.reduce(1) { $0 * $1.element }
                guard known > 0, x.count % known == 0 else { throw EngineError.runtime("cannot reshape \(x.shape) to \(shape)") }
                shape[infer] = x.count / known
            }
            guard shape.reduce(1, *) == x.count else { throw EngineError.runtime("cannot reshape \(x.shape) (\(x.count) elements) to \(shape)") }
            var y = x
            y.shape = shape
            return [y]
        }, [t])
    }

    static let flatten = OperatorSpec(name: "Flatten", domain: "ai.onnx", opsets: 1...22) { ctx in
        try ctx.inputs(1, 1)
        let axisAttr = try ctx.attributes.int("axis", default: 1)
        return (ClosureKernel { inputs in
            var x = try K.arg(inputs, 0)
            let axis = axisAttr < 0 ? axisAttr + x.rank : axisAttr
            guard axis >= 0, axis <= x.rank else { throw EngineError.runtime("axis \(axisAttr) out of range for \(x.shape)") }
            x.shape = [x.shape[..<axis].reduce(1, *), x.shape[axis...].reduce(1, *)]
            return [x]
        }, [try ctx.input(0)])
    }

    static func squeezeLike(_ name: String, unsqueeze: Bool) -> OperatorSpec {
        OperatorSpec(name: name, domain: "ai.onnx", opsets: 1...22) { ctx in
            try ctx.inputs(1, 2)
            let fixed = ctx.opset < 13 ? try ctx.attributes.ints("axes") : nil
            if unsqueeze, ctx.opset < 13, fixed == nil { throw ctx.bad("needs attribute `axes`") }
            return (ClosureKernel { inputs in
                var x = try K.arg(inputs, 0)
                let axes = try fixed ?? axesInput(inputs, 1)
                if unsqueeze {
                    guard let axes else { throw EngineError.runtime("needs axes") }
                    let r = x.rank + axes.count
                    let norm = Set(try axes.map { try K.axis($0, rank: r) })
                    guard norm.count == axes.count else { throw EngineError.runtime("axes \(axes) repeat") }
                    var shape: [Int] = []
                    var it = x.shape.makeIterator()
                    for i in 0..<r { shape.append(norm.contains(i) ? 1 : it.next()!) }
                    x.shape = shape
                } else if let axes {
                    let norm = Set(try axes.map { try K.axis($0, rank: x.rank) })
                    for a in norm where x.shape[a] != 1 { throw EngineError.runtime("cannot squeeze dimension \(a) of \(x.shape)") }
                    x.shape = x.shape.enumerated().filter { !norm.contains($0.offset) }.map(\.element)
                } else {
                    x.shape = x.shape.filter { $0 != 1 }
                }
                return [x]
            }, [try ctx.input(0)])
        }
    }

    static let concat = OperatorSpec(name: "Concat", domain: "ai.onnx", opsets: 4...22) { ctx in
        try ctx.inputs(1, 1 << 16)
        let t = try ctx.input(0)
        for i in ctx.inputTypes.indices { guard try ctx.input(i) == t else { throw ctx.bad("inputs must share one type") } }
        guard let axisAttr = try ctx.attributes.int("axis") else { throw ctx.bad("needs attribute `axis`") }
        return (ClosureKernel { inputs in
            let xs = try inputs.indices.map { try K.arg(inputs, $0) }
            let rank = xs[0].rank
            let axis = try K.axis(axisAttr, rank: rank)
            var outShape = xs[0].shape
            outShape[axis] = 0
            for x in xs {
                guard x.rank == rank, x.shape.enumerated().allSatisfy({ $0.offset == axis || $0.element == xs[0].shape[$0.offset] }) else {
                    throw EngineError.runtime("cannot concatenate shapes \(xs.map(\.shape)) on axis \(axis)")
                }
                outShape[axis] += x.shape[axis]
            }
            let outer = outShape[..<axis].reduce(1, *)
            var idx: [Int] = []
            // Build the output as a gather over the concatenation of all inputs.
            var bases: [Int] = []
            var total = 0
            for x in xs { bases.append(total); total += x.count }
            idx.reserveCapacity(total)
            for o in 0..<outer {
                for (j, x) in xs.enumerated() {
                    let chunk = x.shape[axis...].reduce(1, *)
                    let start = bases[j] + o * chunk
                    idx.append(contentsOf: start..<start + chunk)
                }
            }
            let all = Tensor.Storage.concat(xs.map(\.storage))
            return [Tensor(shape: outShape, storage: all.gather(idx))]
        }, [t])
    }

    static let transpose = OperatorSpec(name: "Transpose", domain: "ai.onnx", opsets: 1...22) { ctx in
        try ctx.inputs(1, 1)
        let permAttr = try ctx.attributes.ints("perm")
        return (ClosureKernel { inputs in
            let x = try K.arg(inputs, 0)
            let perm = permAttr ?? Array((0..<x.rank).reversed())
            guard perm.count == x.rank, Set(perm) == Set(0..<x.rank) else { throw EngineError.runtime("perm \(perm) does not fit \(x.shape)") }
            let r = K.transpose(Array(0..<x.count), x.shape, perm)
            return [Tensor(shape: r.shape, storage: x.storage.gather(r.values))]
        }, [try ctx.input(0)])
    }

    static let gather = OperatorSpec(name: "Gather", domain: "ai.onnx", opsets: 1...22) { ctx in
        try ctx.inputs(2, 2)
        _ = try ctx.input(1, [.int64, .int32])
        let axisAttr = try ctx.attributes.int("axis", default: 0)
        return (ClosureKernel { inputs in
            let x = try K.arg(inputs, 0), ind = try K.arg(inputs, 1)
            let axis = try K.axis(axisAttr, rank: x.rank)
            let (outer, n, inner) = K.split(x.shape, axis)
            let idx = try K.ints(ind).map { i in
                let j = i < 0 ? i + n : i
                guard j >= 0, j < n else { throw EngineError.runtime("index \(i) is out of range for dimension of size \(n)") }
                return j
            }
            var sel: [Int] = []
            sel.reserveCapacity(outer * idx.count * inner)
            for o in 0..<outer { for j in idx { let s = (o * n + j) * inner; sel.append(contentsOf: s..<s + inner) } }
            let shape = Array(x.shape[..<axis]) + ind.shape + Array(x.shape[(axis + 1)...])
            return [Tensor(shape: shape, storage: x.storage.gather(sel))]
        }, [try ctx.input(0)])
    }

    static let cast = OperatorSpec(name: "Cast", domain: "ai.onnx", opsets: 6...22) { ctx in
        try ctx.inputs(1, 1)
        _ = try ctx.input(0)
        guard let to = try ctx.attributes.int("to") else { throw ctx.bad("needs attribute `to`") }
        _ = try ctx.attributes.int("saturate")
        guard let target = DType(rawValue: to) else {
            throw EngineError.unsupported("\(ctx.owner): casting to \(DType.onnxName(to)) is not supported")
        }
        return (ClosureKernel { inputs in
            let x = try K.arg(inputs, 0)
            return [try Cast.convert(x, to: target)]
        }, [target])
    }

    static let argMax = OperatorSpec(name: "ArgMax", domain: "ai.onnx", opsets: 1...22) { ctx in
        try ctx.inputs(1, 1)
        _ = try ctx.input(0, .numeric)
        let axisAttr = try ctx.attributes.int("axis", default: 0)
        let keep = try ctx.attributes.int("keepdims", default: 1) != 0
        let last = try ctx.attributes.int("select_last_index", default: 0) != 0
        return (ClosureKernel { inputs in
            let x = try K.arg(inputs, 0)
            let axis = try K.axis(axisAttr, rank: x.rank)
            let (outer, n, inner) = K.split(x.shape, axis)
            guard n > 0 else { throw EngineError.runtime("ArgMax over an empty axis") }
            var out = [Int64](repeating: 0, count: outer * inner)
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
            var shape = x.shape
            if keep { shape[axis] = 1 } else { shape.remove(at: axis) }
            return [Tensor(shape: shape, int64s: out)]
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
            return (ClosureKernel { inputs in
                let x = try K.arg(inputs, 0)
                var axes = try fixed ?? axesInput(inputs, 1) ?? []
                if axes.isEmpty {
                    if noopEmpty { return [x] }
                    axes = Array(0..<x.rank)
                }
                let set = Set(try axes.map { try K.axis($0, rank: x.rank) })
                let keptShape = x.shape.enumerated().map { set.contains($0.offset) ? 1 : $0.element }
                let outCount = keptShape.reduce(1, *)
                let strides = K.broadcastStrides(keptShape, outShape: x.shape)
                let counted = x.shape.enumerated().filter { set.contains($0.offset) }.reduce(1) { $0 * $1.element }
                // Output index of each input element.
                var target = [Int](repeating: 0, count: x.count)
                var idx = [Int](repeating: 0, count: x.rank)
                var p = 0
                for e in 0..<x.count {
                    target[e] = p
                    var d = x.rank - 1
                    while d >= 0 {
                        idx[d] += 1; p += strides[d]
                        if idx[d] < x.shape[d] { break }
                        p -= strides[d] * x.shape[d]; idx[d] = 0; d -= 1
                    }
                }
                let shape = keep ? keptShape : x.shape.enumerated().filter { !set.contains($0.offset) }.map(\.element)
                switch x.storage {
                case .float32(let v):
                    var acc = [Float](repeating: 0, count: outCount)
                    for e in 0..<v.count { acc[target[e]] += v[e] }
                    if mean { for i in acc.indices { acc[i] /= Float(counted) } }
                    return [Tensor(shape: shape, floats: acc)]
                case .float64(let v):
                    var acc = [Double](repeating: 0, count: outCount)
                    for e in 0..<v.count { acc[target[e]] += v[e] }
                    if mean { for i in acc.indices { acc[i] /= Double(counted) } }
                    return [Tensor(shape: shape, doubles: acc)]
                case .int64(let v):
                    var acc = [Int64](repeating: 0, count: outCount)
                    for e in 0..<v.count { acc[target[e]] &+= v[e] }
                    if mean, counted > 0 { for i in acc.indices { acc[i] /= Int64(counted) } }
                    return [Tensor(shape: shape, int64s: acc)]
                case .int32(let v):
                    var acc = [Int32](repeating: 0, count: outCount)
                    for e in 0..<v.count { acc[target[e]] &+= v[e] }
                    if mean, counted > 0 { for i in acc.indices { acc[i] /= Int32(counted) } }
                    return [Tensor(shape: shape, int32s: acc)]
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

/// Element type conversion, shared by Cast and the ML operators.
enum Cast {
    static func convert(_ x: Tensor, to target: DType) throws -> Tensor {
        if x.dtype == target { return x }
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
            guard let d = x.asDoubles() else { throw EngineError.runtime("cannot cast \(x.dtype)") }
            switch target {
            case .float32:
                if case .int64(let v) = x.storage { s = .float32(v.map { Float($0) }) } else { s = .float32(d.map { Float($0) }) }
            case .float64: s = .float64(d)
            case .int64:
                if case .int32(let v) = x.storage { s = .int64(v.map { Int64($0) }) } else { s = .int64(d.map { Self.toInt($0) }) }
            case .int32: s = .int32(d.map { Int32(truncatingIfNeeded: Self.toInt($0)) })
            case .bool: s = .bool(d.map { $0 != 0 })
            case .string: s = x.storage
            }
        }
        return Tensor(shape: x.shape, storage: s)
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
