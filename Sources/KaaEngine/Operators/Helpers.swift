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

    /// The elements of a numeric tensor as Float (int and double inputs are converted).
    static func floats(_ t: Tensor) throws -> [Float] {
        switch t.storage {
        case .float32(let v): return v
        case .float64(let v): return v.map { Float($0) }
        case .int64(let v): return v.map { Float($0) }
        case .int32(let v): return v.map { Float($0) }
        case .bool(let v): return v.map { $0 ? 1 : 0 }
        case .string: throw EngineError.runtime("expected a numeric tensor, got strings")
        }
    }

    /// Normalizes a possibly negative axis against `rank`.
    static func axis(_ a: Int, rank: Int, what: String = "axis") throws -> Int {
        let r = a < 0 ? a + rank : a
        guard r >= 0, r < max(rank, 1) else { throw EngineError.runtime("\(what) \(a) is out of range for rank \(rank)") }
        return r
    }

    /// The multidirectional (numpy) broadcast of two shapes.
    static func broadcast(_ a: [Int], _ b: [Int]) throws -> [Int] {
        let r = max(a.count, b.count)
        var out = [Int](repeating: 1, count: r)
        for i in 0..<r {
            let da = i < r - a.count ? 1 : a[i - (r - a.count)]
            let db = i < r - b.count ? 1 : b[i - (r - b.count)]
            if da == db || db == 1 { out[i] = da } else if da == 1 { out[i] = db } else {
                throw EngineError.runtime("shapes \(a) and \(b) do not broadcast")
            }
        }
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
            return (aShape, ws.array(n) { buf in
                a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in
                    for i in 0..<n { buf[i] = f(pa[i], pb[i]) }
                } }
            })
        }
        if b.count == 1, bShape.count <= aShape.count {
            let y = b[0], n = a.count
            return (aShape, ws.array(n) { buf in
                a.withUnsafeBufferPointer { pa in for i in 0..<n { buf[i] = f(pa[i], y) } }
            })
        }
        if a.count == 1, aShape.count <= bShape.count {
            let x = a[0], n = b.count
            return (bShape, ws.array(n) { buf in
                b.withUnsafeBufferPointer { pb in for i in 0..<n { buf[i] = f(x, pb[i]) } }
            })
        }
        // Trailing-row broadcast: b is the last dimensions of a ([N, K] op [K]).
        if b.count > 0, bShape.count <= aShape.count, aShape.suffix(bShape.count).elementsEqual(bShape) {
            let k = b.count, n = a.count
            return (aShape, ws.array(n) { buf in
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
        let n = shape.reduce(1, *)
        let sa = broadcastStrides(aShape, outShape: shape)
        let sb = broadcastStrides(bShape, outShape: shape)
        let r = shape.count
        var idx = [Int](repeating: 0, count: r)
        var ia = 0, ib = 0
        return (shape, ws.array(n) { out in
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
        case .float64(let v): return (ws.array(v.count) { o in for i in v.indices { o[i] = Float(v[i]) } }, true)
        case .int64(let v): return (ws.array(v.count) { o in for i in v.indices { o[i] = Float(v[i]) } }, true)
        case .int32(let v): return (ws.array(v.count) { o in for i in v.indices { o[i] = Float(v[i]) } }, true)
        case .bool(let v): return (ws.array(v.count) { o in for i in v.indices { o[i] = v[i] ? 1 : 0 } }, true)
        case .string: throw EngineError.runtime("expected a numeric tensor, got strings")
        }
    }

    /// Gathers elements of `values` (shape `shape`) into the broadcast `outShape`.
    static func expand<T>(_ values: [T], _ shape: [Int], to outShape: [Int]) -> [T] {
        if shape == outShape { return values }
        return gather(values, strides: broadcastStrides(shape, outShape: outShape), outShape: outShape)
    }

    /// Reorders `values` of `shape` by permutation `perm`.
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
        guard rank <= 64 else { throw EngineError.runtime("rank \(rank) is above 64") }
        var mask: UInt64 = 0
        for a64 in axes {
            let a = Int(a64)
            let r = try axis(a, rank: rank)
            guard mask & (1 << UInt64(r)) == 0 else { throw EngineError.runtime("axis \(a) is given twice") }
            mask |= 1 << UInt64(r)
        }
        return mask
    }

    /// Splits a shape around `axis` into (outer, axis size, inner).
    static func split(_ shape: [Int], _ axis: Int) -> (Int, Int, Int) {
        let outer = shape[..<axis].reduce(1, *)
        let inner = shape[(axis + 1)...].reduce(1, *)
        return (outer, shape[axis], inner)
    }
}

/// Applies a transform to each storage type with one generic body.
extension Tensor.Storage {
    /// Reorders or selects elements by index, keeping the element type.
    func gather(_ indices: [Int]) -> Tensor.Storage {
        switch self {
        case .float32(let v): .float32(indices.map { v[$0] })
        case .float64(let v): .float64(indices.map { v[$0] })
        case .int64(let v): .int64(indices.map { v[$0] })
        case .int32(let v): .int32(indices.map { v[$0] })
        case .bool(let v): .bool(indices.map { v[$0] })
        case .string(let v): .string(indices.map { v[$0] })
        }
    }

    /// Concatenates storages of one type (parts of another type are skipped).
    static func concat(_ parts: [Tensor.Storage]) -> Tensor.Storage {
        switch parts[0] {
        case .float32: .float32(parts.flatMap { (p) -> [Float] in if case .float32(let v) = p { return v }; return [] })
        case .float64: .float64(parts.flatMap { (p) -> [Double] in if case .float64(let v) = p { return v }; return [] })
        case .int64: .int64(parts.flatMap { (p) -> [Int64] in if case .int64(let v) = p { return v }; return [] })
        case .int32: .int32(parts.flatMap { (p) -> [Int32] in if case .int32(let v) = p { return v }; return [] })
        case .bool: .bool(parts.flatMap { (p) -> [Bool] in if case .bool(let v) = p { return v }; return [] })
        case .string: .string(parts.flatMap { (p) -> [String] in if case .string(let v) = p { return v }; return [] })
        }
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
