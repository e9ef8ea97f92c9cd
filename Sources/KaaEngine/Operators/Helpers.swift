import Foundation

/// Shared pieces of the kernels: argument access, broadcasting, axis arithmetic.
enum K {
    /// The heap bytes an array holds: its elements' storage and the array's header (none when
    /// it has no storage). Strings' own storage is not included.
    static func arrayBytes<T>(_ a: [T]) -> Int {
        a.capacity == 0 ? 0 : 32 + a.capacity * MemoryLayout<T>.stride
    }

    /// The heap bytes of a string's own storage: none for up to 15 UTF-8 bytes, which a
    /// string holds inline.
    static func stringBytes(_ s: String) -> Int {
        s.utf8.count > 15 ? 32 + s.utf8.count : 0
    }

    /// The heap bytes of a label list, its strings' storage included.
    static func labelBytes(_ labels: Tensor.MapKeys) -> Int {
        switch labels {
        case .int64(let v): arrayBytes(v)
        case .string(let v): arrayBytes(v) + v.reduce(0) { $0 + stringBytes($1) }
        }
    }

    /// Required input `i`.
    @inline(__always)
    static func arg(_ inputs: [Tensor?], _ i: Int) throws -> Tensor {
        guard i < inputs.count, let t = inputs[i] else { throw EngineError.runtime("input #\(i + 1) is missing") }
        return t
    }

    /// The elements of a numeric tensor attribute as Float (int and double ones are
    /// converted), at load.
    static func floats(_ t: Tensor) throws -> [Float] {
        switch t.storage {
        case .float32(let v): return v
        case .float64(let v): return v.map { Float($0) }
        case .int64(let v): return v.map { Float($0) }
        case .int32(let v): return v.map { Float($0) }
        case .bool(let v): return v.map { $0 ? 1 : 0 }
        case .uint8(let v): return v.map { Float($0) }
        case .int8(let v): return v.map { Float($0) }
        case .string: throw EngineError.invalid("a tensor attribute holds strings where numbers are expected")
        }
    }

    /// The number of elements of a value of shape `shape`, checked so that no product of a
    /// value's dimensions can overflow: the rank is at most ``Limits/maxRank``, no dimension
    /// is negative, and the non-zero dimensions multiply to at most ``Limits/maxElements``
    /// (a shape such as `[0, 2^40, 2^40]` holds nothing, but its `inner` product would
    /// overflow). Every value in a run's slots satisfies this: inputs are checked on entry,
    /// and kernels check each shape they compute from values with it.
    ///
    /// Throws ``EngineError/Code/invalidInput`` naming `what` and the shape.
    @inline(__always)
    static func count(_ shape: [Int], _ what: @autoclosure () -> String = "the result") throws -> Int {
        var product = 1, empty = false
        for d in shape {
            if d <= 0 {
                if d == 0 { empty = true; continue }
                throw badShape(shape, what())
            }
            let (p, overflow) = product.multipliedReportingOverflow(by: d)
            if overflow || p > Limits.maxElements { throw badShape(shape, what()) }
            product = p
        }
        if shape.count > Limits.maxRank { throw badShape(shape, what()) }
        return empty ? 0 : product
    }

    /// The error for a shape ``count(_:_:)`` refuses.
    @inline(never)
    private static func badShape(_ shape: [Int], _ what: String) -> EngineError {
        if shape.contains(where: { $0 < 0 }) {
            return EngineError.input("\(what): shape \(shape) has a negative dimension")
        }
        if shape.count > Limits.maxRank {
            return EngineError.input("\(what): shape \(shape) has \(shape.count) dimensions; at most \(Limits.maxRank) are supported")
        }
        let zeros = shape.contains(0) ? " (leaving out the zeros)" : ""
        return EngineError.input("\(what): shape \(shape) has dimensions that multiply\(zeros) to more than \(Limits.maxElements), the most one tensor may hold; the inputs are too large for this model")
    }

    /// `a * b` for sizes already checked to be non-negative, or throws
    /// ``EngineError/Code/invalidInput`` naming `what` when it exceeds ``Limits/maxElements``.
    @inline(__always)
    static func product(_ a: Int, _ b: Int, _ what: @autoclosure () -> String) throws -> Int {
        let (p, overflow) = a.multipliedReportingOverflow(by: b)
        guard !overflow, p <= Limits.maxElements else {
            throw EngineError.input("\(what()) needs \(a) × \(b) elements, more than \(Limits.maxElements), the most one tensor may hold; the inputs are too large for this model")
        }
        return p
    }

    /// Normalizes a possibly negative axis against `rank`, which MUST be at least 1 (a scalar
    /// has no axis); throws ``EngineError/Code/invalidInput`` naming the axis and the rank.
    static func axis(_ a: Int, rank: Int, what: String = "axis") throws -> Int {
        guard rank >= 1 else { throw EngineError.input("\(what) \(a) cannot apply to a scalar (rank 0); the input needs rank 1 or more") }
        let r = a < 0 ? a + rank : a
        guard r >= 0, r < rank else { throw EngineError.input("\(what) \(a) is out of range for rank \(rank); it must be in \(-rank)...\(rank - 1)") }
        return r
    }

    /// The multidirectional (numpy) broadcast of two shapes, checked with ``count(_:_:)``.
    static func broadcast(_ a: [Int], _ b: [Int]) throws -> [Int] {
        let r = max(a.count, b.count)
        var out = [Int](repeating: 1, count: r)
        for i in 0..<r {
            let da = i < r - a.count ? 1 : a[i - (r - a.count)]
            let db = i < r - b.count ? 1 : b[i - (r - b.count)]
            if da == db || db == 1 { out[i] = da } else if da == 1 { out[i] = db } else {
                throw EngineError.input("shapes \(a) and \(b) do not broadcast: dimension \(i) is \(da) and \(db)")
            }
        }
        _ = try count(out, "broadcasting \(a) with \(b)")
        return out
    }

    /// Row-major strides of `shape`, aligned to `outRank`, with 0 for broadcast dimensions.
    static func broadcastStrides(_ shape: [Int], outShape: [Int]) -> [Int] {
        withBroadcastStrides(shape[...], outShape) { Array($0) }
    }

    /// Applies `f` elementwise with broadcasting, into memory from `ws`.
    @inline(__always)
    static func binary<A, B, R: Reusable>(_ ws: Workspace, _ a: [A], _ aShape: [Int], _ b: [B], _ bShape: [Int], _ f: (A, B) -> R) throws -> (shape: [Int], values: [R]) {
        if aShape == bShape {
            let n = a.count
            return (aShape, try ws.array(n) { buf in
                a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in
                    for i in 0..<n { buf[i] = f(pa[i], pb[i]) }
                } }
            })
        }
        if b.count == 1, bShape.count <= aShape.count {
            let y = b[0], n = a.count
            return (aShape, try ws.array(n) { buf in
                a.withUnsafeBufferPointer { pa in for i in 0..<n { buf[i] = f(pa[i], y) } }
            })
        }
        if a.count == 1, aShape.count <= bShape.count {
            let x = a[0], n = b.count
            return (bShape, try ws.array(n) { buf in
                b.withUnsafeBufferPointer { pb in for i in 0..<n { buf[i] = f(x, pb[i]) } }
            })
        }
        // Trailing-row broadcast: b is the last dimensions of a ([N, K] op [K]).
        if b.count > 0, bShape.count <= aShape.count, aShape.suffix(bShape.count).elementsEqual(bShape) {
            let k = b.count, n = a.count
            return (aShape, try ws.array(n) { buf in
                a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in
                    var i = 0
                    while i < n {
                        for j in 0..<k { buf[i + j] = f(pa[i + j], pb[j]) }
                        i += k
                    }
                } }
            })
        }
        let shape = try broadcast(aShape, bShape)
        let n = try count(shape)
        let sa = broadcastStrides(aShape, outShape: shape)
        let sb = broadcastStrides(bShape, outShape: shape)
        let r = shape.count
        var idx = [Int](repeating: 0, count: r)
        var ia = 0, ib = 0
        return (shape, try ws.array(n) { out in
            for e in 0..<n {
                out[e] = f(a[ia], b[ib])
                var d = r - 1
                while d >= 0 {
                    idx[d] += 1
                    ia += sa[d]
                    ib += sb[d]
                    if idx[d] < shape[d] { break }
                    ia -= sa[d] * shape[d]
                    ib -= sb[d] * shape[d]
                    idx[d] = 0
                    d -= 1
                }
            }
        })
    }

    /// The elements of a numeric tensor as Float, in memory from `ws` when they need
    /// converting; `converted` says whether they did (then hand them back with
    /// ``Workspace/giveBack(_:)`` when done).
    static func floats(_ t: Tensor, _ ws: Workspace) throws -> (values: [Float], converted: Bool) {
        switch t.storage {
        case .float32(let v): return (v, false)
        case .float64(let v): return (try ws.array(v.count) { o in for i in v.indices { o[i] = Float(v[i]) } }, true)
        case .int64(let v): return (try ws.array(v.count) { o in for i in v.indices { o[i] = Float(v[i]) } }, true)
        case .int32(let v): return (try ws.array(v.count) { o in for i in v.indices { o[i] = Float(v[i]) } }, true)
        case .bool(let v): return (try ws.array(v.count) { o in for i in v.indices { o[i] = v[i] ? 1 : 0 } }, true)
        case .uint8(let v): return (try ws.array(v.count) { o in for i in v.indices { o[i] = Float(v[i]) } }, true)
        case .int8(let v): return (try ws.array(v.count) { o in for i in v.indices { o[i] = Float(v[i]) } }, true)
        case .string: throw EngineError.runtime("expected a numeric tensor, got strings")
        }
    }

    /// Reorders `values` of `shape` by permutation `perm` (at load: the result is not taken
    /// from a workspace).
    static func transpose<T>(_ values: [T], _ shape: [Int], _ perm: [Int]) -> (shape: [Int], values: [T]) {
        let r = shape.count
        let outShape = perm.map { shape[$0] }
        var inStrides = [Int](repeating: 1, count: r)
        if r > 1 { for i in stride(from: r - 2, through: 0, by: -1) { inStrides[i] = inStrides[i + 1] * shape[i + 1] } }
        return (outShape, gather(values, strides: perm.map { inStrides[$0] }, outShape: outShape))
    }

    /// The elements of an `outShape` walk in row-major order, where a step along output axis
    /// `d` moves `strides[d]` elements in `values` (0 for a broadcast axis).
    private static func gather<T>(_ values: [T], strides s: [Int], outShape: [Int]) -> [T] {
        var out = [T]()
        out.reserveCapacity(outShape.reduce(1, *))
        s.withUnsafeBufferPointer { st in walk(outShape, strides: st) { _, p in out.append(values[p]) } }
        return out
    }

    /// Visits an `outShape` walk in row-major order, calling `body(i, p)` for output element
    /// `i` and source position `p`, where a step along output axis `d` moves `strides[d]`
    /// (0 for a broadcast axis). Allocates nothing.
    @inline(__always)
    static func walk(_ outShape: [Int], strides s: UnsafeBufferPointer<Int>, _ body: (Int, Int) -> Void) {
        let n = outShape.reduce(1, *)
        let r = outShape.count
        withUnsafeTemporaryAllocation(of: Int.self, capacity: max(r, 1)) { idx in
            idx.initialize(repeating: 0)
            var p = 0
            for i in 0..<n {
                body(i, p)
                var d = r - 1
                while d >= 0 {
                    idx[d] += 1
                    p += s[d]
                    if idx[d] < outShape[d] { break }
                    p -= s[d] * outShape[d]
                    idx[d] = 0
                    d -= 1
                }
            }
        }
    }

    /// Row-major strides of `shape` as seen from `outShape` (0 on broadcast axes), in
    /// temporary memory for the duration of `body`.
    @inline(__always)
    static func withBroadcastStrides<R>(_ shape: ArraySlice<Int>, _ outShape: [Int], _ body: (UnsafeBufferPointer<Int>) throws -> R) rethrows -> R {
        let r = outShape.count
        return try withUnsafeTemporaryAllocation(of: Int.self, capacity: max(r, 1)) { st in
            st.initialize(repeating: 0)
            var s = 1
            for i in stride(from: shape.count - 1, through: 0, by: -1) {
                let dim = shape[shape.startIndex + i]
                let o = i + (r - shape.count)
                st[o] = dim == 1 && outShape[o] != 1 ? 0 : s
                s *= dim
            }
            return try body(UnsafeBufferPointer(st))
        }
    }

    /// A bit set of axes (rank is at most ``Limits/maxRank``), from possibly negative axes.
    static func axisMask(_ axes: [Int64], rank: Int) throws -> UInt64 {
        guard rank <= Limits.maxRank else { throw EngineError.input("rank \(rank) is above \(Limits.maxRank), the most supported") }
        var mask: UInt64 = 0
        for a64 in axes {
            let a = Int(a64)
            let r = try axis(a, rank: rank)
            guard mask & (1 << UInt64(r)) == 0 else { throw EngineError.input("axis \(a) is given twice in \(axes)") }
            mask |= 1 << UInt64(r)
        }
        return mask
    }

    /// The mask of every axis of `rank` (at most ``Limits/maxRank``).
    static func allAxes(_ rank: Int) -> UInt64 { (1 << UInt64(rank)) &- 1 }

    /// Splits a shape around `axis` into (outer, axis size, inner).
    static func split(_ shape: [Int], _ axis: Int) -> (Int, Int, Int) {
        let outer = shape[..<axis].reduce(1, *)
        let inner = shape[(axis + 1)...].reduce(1, *)
        return (outer, shape[axis], inner)
    }
}

/// Post transforms of the ai.onnx.ml operators.
enum PostTransform: String, Sendable {
    case none = "NONE", softmax = "SOFTMAX", logistic = "LOGISTIC", softmaxZero = "SOFTMAX_ZERO", probit = "PROBIT"

    static func read(_ a: inout Attributes, _ ctx: BuildContext) throws -> PostTransform {
        let s = try a.string("post_transform", default: "NONE")
        guard let p = PostTransform(rawValue: s) else {
            throw ctx.bad("post_transform `\(s)` is not one of NONE, SOFTMAX, LOGISTIC, SOFTMAX_ZERO, PROBIT")
        }
        return p
    }

    /// Applies the transform in place to each row of `k` scores.
    func apply(_ v: inout [Float], rowLength k: Int) {
        guard k > 0 else { return }
        switch self {
        case .none: return
        case .logistic:
            for i in v.indices { v[i] = Self.logistic(v[i]) }
        case .probit:
            for i in v.indices { v[i] = Self.probit(v[i]) }
        case .softmax, .softmaxZero:
            var r = 0
            while r < v.count {
                var m = -Float.infinity
                for j in r..<r + k where !(self == .softmaxZero && v[j] == 0) { m = max(m, v[j]) }
                var sum: Float = 0
                for j in r..<r + k {
                    if self == .softmaxZero && v[j] == 0 { continue }
                    v[j] = expf(v[j] - m)
                    sum += v[j]
                }
                for j in r..<r + k where !(self == .softmaxZero && v[j] == 0) { v[j] /= sum }
                r += k
            }
        }
    }

    static func logistic(_ x: Float) -> Float {
        let v = 1 / (1 + expf(-abs(x)))
        return x < 0 ? 1 - v : v
    }

    /// The inverse of the standard normal CDF, as onnxruntime computes it (sqrt(2) * erfinv(2p - 1)).
    static func probit(_ p: Float) -> Float { Float(2).squareRoot() * erfInv(2 * p - 1) }

    static func erfInv(_ x: Float) -> Float {
        let sgn: Float = x < 0 ? -1 : 1
        let x1 = (1 - x) * (1 + x)
        let lnx = logf(x1)
        let v1: Float = 2 / (Float.pi * 0.147) + 0.5 * lnx
        let v2: Float = 1 / 0.147 * lnx
        return sgn * (-v1 + (v1 * v1 - v2).squareRoot()).squareRoot()
    }
}
