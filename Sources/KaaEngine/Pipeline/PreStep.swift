/// One pre-processing step: reads `[N, width]` blocks of named values (the input fields and
/// what earlier steps wrote) and writes blocks, or, for `select`, a graph input.
struct PreStep: Sendable {
    enum Unknown: Sendable, Equatable {
        /// An unknown category is an error naming the row.
        case error
        /// One-hot: an all-zero row.
        case zeros
        /// Index encoding: this value.
        case value(Int64)
    }

    enum Op: Sendable {
        /// Concatenates the blocks of `fields`, in order, into graph input `into`.
        case select(into: String, fields: [String], dtype: DType?)
        /// `(x - mean) / scale` per column over the blocks of `fields`, in place.
        case scale(fields: [String], mean: [Double], scale: [Double])
        /// Category to one-hot columns (`oneHot`) or to an index.
        case categorical(field: String, output: String, categories: [String], index: [String: Int], oneHot: Bool, unknown: Unknown)
        /// Text to a hashed n-gram count vector.
        case textHash(field: String, output: String, hasher: TextHasher)
    }

    let at: PipelineError.Step
    let op: Op

    static let kinds = "select, scale, one_hot, categorical, text_hash"

    /// The values the step reads.
    var reads: [String] {
        switch op {
        case .select(_, let f, _), .scale(let f, _, _): f
        case .categorical(let f, _, _, _, _, _), .textHash(let f, _, _): [f]
        }
    }

    func error(_ field: String?, _ message: String, row: Int? = nil, code: PipelineError.Code = .invalidSpec) -> PipelineError {
        PipelineError(code, message, step: at, field: field, row: row)
    }

    static func parse(_ r: inout SpecReader, _ kind: String) throws(PipelineError) -> PreStep {
        let at = r.step!
        switch kind {
        case "select":
            let into = try r.requiredString("into")
            guard let fields = try r.strings("fields", single: true), !fields.isEmpty else { throw r.error("fields", "`select` needs `fields`: the values to put into `\(into)`, in order") }
            let dtype = try r.string("dtype").map { (s) throws(PipelineError) -> DType in
                guard let d = Pipeline.dtypeNamed(s) else { throw r.error("dtype", "`\(s)` is not one of float32, float64, int64, int32, bool, string") }
                return d
            }
            return PreStep(at: at, op: .select(into: into, fields: fields, dtype: dtype))

        case "scale", "standard_scale":
            var fields = try r.strings("fields", single: true)
            if fields == nil { fields = try r.strings("field", single: true) }
            guard let fields, !fields.isEmpty else {
                throw r.error("fields", "`scale` needs `fields`: the values to scale")
            }
            guard let mean = try r.doubles("mean") else { throw r.error("mean", "`scale` needs `mean`: one number per column") }
            guard let scale = try r.doubles("scale") else { throw r.error("scale", "`scale` needs `scale`: one number per column (the standard deviation)") }
            for (i, s) in scale.enumerated() where s == 0 || !s.isFinite {
                throw r.error("scale", "item \(i + 1) is \(s); a scale must be a finite non-zero number (use 1 for a constant column)")
            }
            for (i, m) in mean.enumerated() where !m.isFinite {
                throw r.error("mean", "item \(i + 1) is \(m); a mean must be finite")
            }
            return PreStep(at: at, op: .scale(fields: fields, mean: mean, scale: scale))

        case "one_hot", "categorical":
            let field = try r.requiredString("field")
            let output = try r.string("output") ?? field
            guard let catNode = r.node("categories") else { throw r.error("categories", "`\(kind)` needs `categories`: the known values, in column order") }
            guard let seq = catNode.sequence, !seq.isEmpty else { throw r.error("categories", "must be a non-empty list of values", catNode) }
            var categories: [String] = []
            var index: [String: Int] = [:]
            for (i, c) in seq.enumerated() {
                guard let s = c.scalar?.string else { throw r.error("categories", "item \(i + 1) must be a string or a number, got \(SpecReader.describe(c))", c) }
                guard index[s] == nil else { throw r.error("categories", "`\(s)` is listed twice", c) }
                index[s] = i
                categories.append(s)
            }
            var encoding = kind == "one_hot" ? "one_hot" : "index"
            if let e = try r.string("encoding") {
                guard e == "one_hot" || e == "index" else { throw r.error("encoding", "`\(e)` is not `one_hot` or `index`") }
                guard kind == "categorical" || e == "one_hot" else { throw r.error("encoding", "a `one_hot` step always encodes one-hot; use `step: categorical` with `encoding: index` for indices") }
                encoding = e
            }
            let oneHot = encoding == "one_hot"
            var unknown = Unknown.error
            if let u = r.node("unknown") {
                if let s = u.scalar?.string, s == "error" {
                    unknown = .error
                } else if let s = u.scalar?.string, s == "zeros" {
                    guard oneHot else { throw r.error("unknown", "`zeros` is for one-hot encoding; with `encoding: index` give `error` or an integer index", u) }
                    unknown = .zeros
                } else if u.scalar?.style == .plain, let i = u.int {
                    guard !oneHot else { throw r.error("unknown", "an index (\(i)) is for `encoding: index`; one-hot takes `error` or `zeros`", u) }
                    unknown = .value(Int64(i))
                } else {
                    throw r.error("unknown", "expected \(oneHot ? "`error` or `zeros`" : "`error` or an integer index"), got \(SpecReader.describe(u))", u)
                }
            }
            return PreStep(at: at, op: .categorical(field: field, output: output, categories: categories, index: index, oneHot: oneHot, unknown: unknown))

        case "text_hash":
            let field = try r.requiredString("field")
            let output = try r.string("output") ?? field
            guard let width = try r.int("width") else { throw r.error("width", "`text_hash` needs `width`: the number of hashed features (scikit-learn's n_features)") }
            guard width >= 1, width <= 1 << 24 else { throw r.error("width", "\(width) must be between 1 and 16777216") }
            var h = TextHasher(width: width)
            if let b = try r.bool("lowercase") { h.lowercase = b }
            if let ngrams = r.node("ngrams") {
                let ns: [Int]
                if ngrams.scalar?.style == .plain, let n = ngrams.int { ns = [n, n] } else if let seq = ngrams.sequence, seq.count == 2, let a = seq[0].int, let b = seq[1].int { ns = [a, b] } else {
                    throw r.error("ngrams", "expected [MIN, MAX] (e.g. [1, 2]) or one integer, got \(SpecReader.describe(ngrams))", ngrams)
                }
                guard ns[0] >= 1, ns[0] <= ns[1], ns[1] <= 8 else { throw r.error("ngrams", "[\(ns[0]), \(ns[1])] must satisfy 1 <= MIN <= MAX <= 8", ngrams) }
                h.minN = ns[0]
                h.maxN = ns[1]
            }
            if let m = try r.int("min_token_length") {
                guard m >= 1 else { throw r.error("min_token_length", "\(m) must be at least 1") }
                h.minTokenLength = m
            }
            if let b = try r.bool("alternate_sign") { h.alternateSign = b }
            if let b = try r.bool("binary") { h.binary = b }
            if let n = try r.string("norm") {
                guard let norm = TextHasher.Norm(rawValue: n) else { throw r.error("norm", "`\(n)` is not l2, l1 or none") }
                h.norm = norm
            }
            return PreStep(at: at, op: .textHash(field: field, output: output, hasher: h))

        default:
            throw PipelineError(.invalidSpec, "unknown pre step kind `\(kind)`\(r.line.map { " (line \($0))" } ?? ""); pre steps are \(kinds)\(PostStep.kinds.contains(kind) ? " (`\(kind)` is a post step: move it under `post`)" : "")", step: at, field: "step")
        }
    }

    /// The values the step writes, given those that exist before it; throws when a value it
    /// reads has a dtype or width it cannot take.
    func outputs(_ values: [String: PreValue]) throws(PipelineError) -> [(String, PreValue)] {
        switch op {
        case .select(_, let fields, let dtype):
            let kinds = Set(fields.map { values[$0]!.dtype == .string })
            if kinds.count > 1 {
                throw error(fields.first { values[$0]!.dtype == .string }, "is a string field selected together with numeric ones; a tensor has one dtype")
            }
            if let dtype, kinds.first! != (dtype == .string) {
                throw error("dtype", "is \(dtype), but the selected fields are \(kinds.first! ? "strings" : "numbers")")
            }
            return []
        case .scale(let fields, let mean, let scale):
            var width = 0
            var out: [(String, PreValue)] = []
            for f in fields {
                let v = values[f]!
                guard v.dtype != .string else { throw error(f, "is a string; `scale` takes numeric fields") }
                width += v.width
                out.append((f, PreValue(dtype: v.dtype == .float64 ? .float64 : .float32, width: v.width)))
            }
            if mean.count != width { throw error("mean", "has \(mean.count) values for \(width) column\(width == 1 ? "" : "s") (\(fields.map { "`\($0)`" }.joined(separator: ", ")))") }
            if scale.count != width { throw error("scale", "has \(scale.count) values for \(width) column\(width == 1 ? "" : "s") (\(fields.map { "`\($0)`" }.joined(separator: ", ")))") }
            return out
        case .categorical(let field, let output, let categories, _, let oneHot, _):
            let v = values[field]!
            guard [.string, .int64, .int32].contains(v.dtype) else { throw error(field, "is \(v.dtype); categories are strings or integers") }
            guard v.width == 1 else { throw error(field, "has width \(v.width); a categorical field holds one value per row") }
            return [(output, oneHot ? PreValue(dtype: .float32, width: categories.count) : PreValue(dtype: .int64, width: 1))]
        case .textHash(let field, let output, let hasher):
            let v = values[field]!
            guard v.dtype == .string else { throw error(field, "is \(v.dtype); `text_hash` takes a string field") }
            guard v.width == 1 else { throw error(field, "has width \(v.width); `text_hash` takes one text per row") }
            return [(output, PreValue(dtype: .float32, width: hasher.width))]
        }
    }

    /// Applies a non-`select` step to `frame` (blocks of `n` rows), counting what it makes on
    /// `meter`.
    func apply(_ frame: inout [String: Tensor], rows n: Int, meter: inout CallMeter) throws(PipelineError) {
        switch op {
        case .select:
            break
        case .scale(let fields, let mean, let scale):
            var col = 0
            for f in fields {
                let t = frame[f]!
                let w = t.shape.last ?? 1
                let m = Array(mean[col..<(col + w)]), s = Array(scale[col..<(col + w)])
                col += w
                if t.dtype != .float64 { try meter.charge(t.count, of: .float64, step: at, field: f) }
                try meter.charge(t.count, of: t.dtype == .float64 ? .float64 : .float32, step: at, field: f)
                if case .float64(let v) = t.storage {
                    var out = v
                    for i in out.indices { out[i] = (out[i] - m[i % w]) / s[i % w] }
                    frame[f] = Tensor(shape: t.shape, doubles: out)
                } else {
                    let v = t.storage.converted(to: .float64)!.doublesOrEmpty
                    var out = [Float](repeating: 0, count: v.count)
                    for i in out.indices { out[i] = Float((v[i] - m[i % w]) / s[i % w]) }
                    frame[f] = Tensor(shape: t.shape, floats: out)
                }
            }
        case .categorical(let field, let output, let categories, let index, let oneHot, let unknown):
            let t = frame[field]!
            let keys: [String]
            switch t.storage {
            case .string(let v): keys = v
            case .int64(let v): keys = v.map { String($0) }
            case .int32(let v): keys = v.map { String($0) }
            default: throw error(field, "is \(t.dtype); categories are strings or integers", code: .invalidInput)
            }
            let k = categories.count
            if t.dtype != .string { try meter.charge(n, of: .string, step: at, field: field) }
            try meter.charge(oneHot ? n &* k : n, of: oneHot ? .float32 : .int64, step: at, field: output)
            func unknownError(_ r: Int) -> PipelineError {
                let shown = categories.prefix(10).map { "`\($0)`" }.joined(separator: ", ") + (k > 10 ? ", ... (\(k) in all)" : "")
                return error(field, "unknown category `\(keys[r].prefix(80))`; known: \(shown)", row: r, code: .invalidInput)
            }
            if oneHot {
                var out = [Float](repeating: 0, count: n * k)
                for r in 0..<n {
                    if let i = index[keys[r]] { out[r * k + i] = 1 } else if unknown == .error { throw unknownError(r) }
                }
                frame[output] = Tensor(shape: [n, k], floats: out)
            } else {
                var out = [Int64](repeating: 0, count: n)
                for r in 0..<n {
                    if let i = index[keys[r]] {
                        out[r] = Int64(i)
                    } else if case .value(let v) = unknown {
                        out[r] = v
                    } else {
                        throw unknownError(r)
                    }
                }
                frame[output] = Tensor(shape: [n, 1], int64s: out)
            }
        case .textHash(let field, let output, let hasher):
            guard let texts = frame[field]!.strings else { throw error(field, "is not a string field", code: .invalidInput) }
            try meter.charge(n &* hasher.width, of: .float32, step: at, field: output)
            var out = [Float](repeating: 0, count: n * hasher.width)
            out.withUnsafeMutableBufferPointer { buffer in
                for r in 0..<n {
                    hasher.hash(texts[r], into: UnsafeMutableBufferPointer(rebasing: buffer[(r * hasher.width)..<((r + 1) * hasher.width)]))
                }
            }
            frame[output] = Tensor(shape: [n, hasher.width], floats: out)
        }
    }

    /// Concatenates `blocks` (each `[n, w_i]`) column-wise into elements of `dtype`, row-major
    /// `[n, sum w_i]`. The blocks MUST convert to `dtype` (numeric to numeric, string to string).
    static func concatenate(_ blocks: [Tensor], rows n: Int, dtype: DType) -> Tensor.Storage {
        let parts = blocks.map { $0.storage.converted(to: dtype)! }
        let widths = blocks.map { n == 0 ? 0 : $0.count / n }
        if parts.count == 1 { return parts[0] }
        func interleave<T>(_ get: (Tensor.Storage) -> [T]) -> [T] {
            let arrays = parts.map(get)
            let total = widths.reduce(0, +)
            var out: [T] = []
            out.reserveCapacity(n * total)
            for r in 0..<n {
                for (a, w) in zip(arrays, widths) {
                    if w == 1 { out.append(a[r]) } else { out.append(contentsOf: a[(r * w)..<((r + 1) * w)]) }
                }
            }
            return out
        }
        switch dtype {
        case .float32: return .float32(interleave { if case .float32(let v) = $0 { v } else { [] } })
        case .float64: return .float64(interleave { if case .float64(let v) = $0 { v } else { [] } })
        case .int64: return .int64(interleave { if case .int64(let v) = $0 { v } else { [] } })
        case .int32: return .int32(interleave { if case .int32(let v) = $0 { v } else { [] } })
        case .bool: return .bool(interleave { if case .bool(let v) = $0 { v } else { [] } })
        case .string: return .string(interleave { if case .string(let v) = $0 { v } else { [] } })
        case .uint8: return .uint8(interleave { if case .uint8(let v) = $0 { v } else { [] } })
        case .int8: return .int8(interleave { if case .int8(let v) = $0 { v } else { [] } })
        }
    }
}

extension Tensor.Storage {
    /// The elements as `dtype`: numeric and bool convert among themselves (floats to integers
    /// truncate toward zero, non-finite ones become 0), strings only to strings; nil otherwise.
    func converted(to dtype: DType) -> Tensor.Storage? {
        if self.dtype == dtype { return self }
        if dtype == .string || self.dtype == .string { return nil }
        let d: [Double]
        switch self {
        case .float32(let v): d = v.map(Double.init)
        case .float64(let v): d = v
        case .int64(let v): d = v.map(Double.init)
        case .int32(let v): d = v.map(Double.init)
        case .bool(let v): d = v.map { $0 ? 1 : 0 }
        case .uint8(let v): d = v.map(Double.init)
        case .int8(let v): d = v.map(Double.init)
        case .string: return nil
        }
        func int<T: FixedWidthInteger>(_ x: Double) -> T { x.isFinite ? T(clamping: Int64(exactly: x.rounded(.towardZero)) ?? (x < 0 ? Int64.min : Int64.max)) : 0 }
        switch dtype {
        case .float32: return .float32(d.map { Float($0) })
        case .float64: return .float64(d)
        case .int64: return .int64(d.map { int($0) })
        case .int32: return .int32(d.map { int($0) })
        case .bool: return .bool(d.map { $0 != 0 })
        case .uint8: return .uint8(d.map { int($0) })
        case .int8: return .int8(d.map { int($0) })
        case .string: return nil
        }
    }

    var doublesOrEmpty: [Double] { if case .float64(let v) = self { v } else { [] } }
}
