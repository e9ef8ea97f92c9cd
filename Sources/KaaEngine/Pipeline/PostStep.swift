import Foundation

/// What is known, when a pipeline is bound to a model, about a value after the graph: a graph
/// output or what a post step wrote.
struct ValueInfo: Sendable {
    var dtype: DType?
    /// The rank, batch included, when known.
    var rank: Int?
    /// Columns per row (the last dimension of a rank-2 value, 1 for rank 1), when known.
    var width: Int?
    /// The map keys of a sequence-of-maps value (ZipMap's output): its columns.
    var keys: Tensor.MapKeys?
    /// For a value holding class labels or indices: the classes it can take.
    var classes: Tensor.MapKeys?
    /// The signature callers see.
    var signature: TensorSignature
}

/// One post-processing step: reads values after the graph, writes a new one.
struct PostStep: Sendable {
    enum Labels: Sendable, Equatable {
        /// Index `i` maps to the `i`-th label.
        case list([String])
        /// A key (an integer or string class) maps to its label.
        case map([String: String])
    }

    enum Op: Sendable {
        case argmax(input: String, output: String, labels: [String]?)
        case topK(input: String, k: Int, labels: [String]?, output: String, scores: String)
        case threshold(input: String, output: String, threshold: Double, column: Int?, labels: [String]?)
        case softmax(input: String, output: String)
        case labelMap(input: String, output: String, labels: Labels, fallback: String?)
    }

    let at: PipelineError.Step
    let op: Op

    static let kinds = "argmax, top_k, threshold, softmax, label_map"

    var input: String {
        switch op {
        case .argmax(let i, _, _), .topK(let i, _, _, _, _), .threshold(let i, _, _, _, _), .softmax(let i, _), .labelMap(let i, _, _, _): i
        }
    }

    var writes: [String] {
        switch op {
        case .argmax(_, let o, _), .threshold(_, let o, _, _, _), .softmax(_, let o), .labelMap(_, let o, _, _): [o]
        case .topK(_, _, _, let o, let s): [o, s]
        }
    }

    func error(_ field: String?, _ message: String, row: Int? = nil, code: PipelineError.Code) -> PipelineError {
        PipelineError(code, message, step: at, field: field, row: row)
    }

    static func parse(_ r: inout SpecReader, _ kind: String) throws(PipelineError) -> PostStep {
        let at = r.step!
        func labels(_ key: String = "labels") throws(PipelineError) -> [String]? {
            guard let l = try r.strings(key) else { return nil }
            guard !l.isEmpty else { throw r.error(key, "must not be empty") }
            return l
        }
        switch kind {
        case "argmax":
            let input = try r.requiredString("input")
            return PostStep(at: at, op: .argmax(input: input, output: try r.string("output") ?? input, labels: try labels()))
        case "top_k":
            let input = try r.requiredString("input")
            guard let k = try r.int("k") else { throw r.error("k", "`top_k` needs `k`: how many classes to return per row") }
            guard k >= 1 else { throw r.error("k", "\(k) must be at least 1") }
            let l = try labels()
            let output = try r.string("output") ?? input
            let scores = try r.string("scores") ?? output + "_scores"
            guard scores != output else { throw r.error("scores", "`\(scores)` is also the step's `output`; give the scores another name") }
            return PostStep(at: at, op: .topK(input: input, k: k, labels: l, output: output, scores: scores))
        case "threshold":
            let input = try r.requiredString("input")
            let t = try r.double("threshold") ?? 0.5
            guard t.isFinite else { throw r.error("threshold", "must be a finite number") }
            let column = try r.int("column")
            if let column, column < 0 { throw r.error("column", "\(column) must be 0 or more") }
            let l = try labels()
            if let l, l.count != 2 { throw r.error("labels", "has \(l.count) labels; a threshold has two outcomes: [NEGATIVE, POSITIVE]") }
            return PostStep(at: at, op: .threshold(input: input, output: try r.string("output") ?? input, threshold: t, column: column, labels: l))
        case "softmax":
            let input = try r.requiredString("input")
            return PostStep(at: at, op: .softmax(input: input, output: try r.string("output") ?? input))
        case "label_map":
            let input = try r.requiredString("input")
            let output = try r.string("output") ?? input
            let node = try r.required("labels")
            let labels: Labels
            if let seq = node.sequence {
                guard !seq.isEmpty else { throw r.error("labels", "must not be empty", node) }
                var l: [String] = []
                for (i, e) in seq.enumerated() {
                    guard let s = e.scalar?.string else { throw r.error("labels", "item \(i + 1) must be a string, got \(SpecReader.describe(e))", e) }
                    l.append(s)
                }
                labels = .list(l)
            } else if let m = node.mapping {
                var map: [String: String] = [:]
                for (k, v) in m {
                    guard let ks = k.scalar?.string, let vs = v.scalar?.string else {
                        throw r.error("labels", "each entry must map a class (string or integer) to a label string", k)
                    }
                    guard map[ks] == nil else { throw r.error("labels", "class `\(ks)` is mapped twice", k) }
                    map[ks] = vs
                }
                guard !map.isEmpty else { throw r.error("labels", "must not be empty", node) }
                labels = .map(map)
            } else {
                throw r.error("labels", "expected a list (index -> label) or a mapping (class -> label), got \(SpecReader.describe(node))", node)
            }
            return PostStep(at: at, op: .labelMap(input: input, output: output, labels: labels, fallback: try r.string("default")))
        default:
            throw PipelineError(.invalidSpec, "unknown post step kind `\(kind)`\(r.line.map { " (line \($0))" } ?? ""); post steps are \(kinds)\(PreStep.kinds.contains(kind) ? " (`\(kind)` is a pre step: move it under `pre`)" : "")", step: at, field: "step")
        }
    }

    // MARK: Binding

    static let batch = Dimension.symbolic("N")

    /// Checks the step against what is known of the values before it and adds what it writes.
    func bind(_ values: inout [String: ValueInfo]) throws(PipelineError) {
        guard let v = values[input] else {
            let known = values.keys.sorted().map { "`\($0)`" }.joined(separator: ", ")
            throw error("input", "`\(input)` is not a graph output or the output of an earlier post step; known: \(known)", code: .incompatibleModel)
        }
        func numeric(_ what: String) throws(PipelineError) {
            if let d = v.dtype, d == .string { throw error("input", "`\(input)` holds strings; `\(what)` needs numbers", code: .incompatibleModel) }
        }
        func matrix(_ what: String) throws(PipelineError) {
            if let r = v.rank, r != 2 { throw error("input", "`\(input)` has rank \(r); `\(what)` needs scores of shape [N, classes]", code: .incompatibleModel) }
        }
        func checkLabels(_ labels: [String]?) throws(PipelineError) {
            if let labels, let w = v.width, labels.count != w {
                throw error("labels", "has \(labels.count) labels; `\(input)` has \(w) columns", code: .incompatibleModel)
            }
        }
        /// What an argmax or top-k yields per row: a label, a map key, or a column index.
        func classValue() -> (DType, Tensor.MapKeys?) {
            switch op {
            case .argmax(_, _, let l?), .topK(_, _, let l?, _, _): return (.string, .string(l))
            default: break
            }
            switch v.keys {
            case .int64(let k)?: return (.int64, .int64(k))
            case .string(let k)?: return (.string, .string(k))
            case nil: return (.int64, v.width.map { .int64((0..<Int64($0)).map { $0 }) })
            }
        }
        switch op {
        case .argmax(_, let output, let labels):
            try numeric("argmax"); try matrix("argmax"); try checkLabels(labels)
            let (dtype, classes) = classValue()
            values[output] = ValueInfo(dtype: dtype, rank: 1, width: 1, classes: classes,
                                       signature: TensorSignature(name: output, dtype: dtype, shape: [Self.batch]))
        case .topK(_, let k, let labels, let output, let scores):
            try numeric("top_k"); try matrix("top_k"); try checkLabels(labels)
            if let w = v.width, k > w { throw error("k", "\(k) is more than the \(w) columns of `\(input)`", code: .incompatibleModel) }
            let (dtype, classes) = classValue()
            let scoreType: DType = v.dtype == .float64 ? .float64 : .float32
            values[output] = ValueInfo(dtype: dtype, rank: 2, width: k, classes: classes,
                                       signature: TensorSignature(name: output, dtype: dtype, shape: [Self.batch, .fixed(k)]))
            values[scores] = ValueInfo(dtype: scoreType, rank: 2, width: k,
                                       signature: TensorSignature(name: scores, dtype: scoreType, shape: [Self.batch, .fixed(k)]))
        case .threshold(_, let output, _, let column, let labels):
            try numeric("threshold")
            if let r = v.rank, r != 1, r != 2 { throw error("input", "`\(input)` has rank \(r); `threshold` needs [N] or [N, columns]", code: .incompatibleModel) }
            if let w = v.width {
                if let column, column >= w { throw error("column", "\(column) is out of range for the \(w) columns of `\(input)`", code: .incompatibleModel) }
                if column == nil, w > 2 { throw error("column", "`\(input)` has \(w) columns; say which one to compare with `column`", code: .incompatibleModel) }
            }
            let dtype: DType = labels == nil ? .int64 : .string
            values[output] = ValueInfo(dtype: dtype, rank: 1, width: 1, classes: labels.map { .string($0) } ?? .int64([0, 1]),
                                       signature: TensorSignature(name: output, dtype: dtype, shape: [Self.batch]))
        case .softmax(_, let output):
            try matrix("softmax")
            if let d = v.dtype, d != .float32, d != .float64 { throw error("input", "`\(input)` is \(d); `softmax` needs float32 or float64", code: .incompatibleModel) }
            var info = v
            info.signature = TensorSignature(name: output, dtype: v.dtype, shape: v.keys == nil ? [Self.batch, v.width.map { .fixed($0) } ?? .unknown] : nil,
                                             isSequenceOfMaps: v.keys != nil)
            info.classes = nil
            values[output] = info
        case .labelMap(_, let output, let labels, let fallback):
            if let d = v.dtype {
                switch (labels, d) {
                case (.list, .int64), (.list, .int32), (.map, .string), (.map, .int64), (.map, .int32): break
                case (.list, .string):
                    throw error("labels", "`\(input)` holds strings; map them with a mapping (`labels: {CLASS: LABEL}`), a list maps indices", code: .incompatibleModel)
                default:
                    throw error("input", "`\(input)` is \(d); `label_map` maps integer indices or class strings", code: .incompatibleModel)
                }
            }
            if v.keys != nil { throw error("input", "`\(input)` is a sequence of maps (scores per class); use `argmax` or `top_k` to pick classes first", code: .incompatibleModel) }
            if let classes = v.classes, fallback == nil {
                switch (labels, classes) {
                case (.list(let l), .int64(let keys)):
                    if keys.count != l.count || keys.contains(where: { $0 < 0 || $0 >= Int64(l.count) }) {
                        throw error("labels", "has \(l.count) labels; `\(input)` takes \(keys.count) class\(keys.count == 1 ? "" : "es") (\(Self.show(keys.map(String.init))))", code: .incompatibleModel)
                    }
                case (.map(let m), .int64(let keys)):
                    let missing = keys.map(String.init).filter { m[$0] == nil }
                    if !missing.isEmpty { throw error("labels", "has no label for class\(missing.count == 1 ? "" : "es") \(Self.show(missing)) of `\(input)`; add them or give a `default`", code: .incompatibleModel) }
                case (.map(let m), .string(let keys)):
                    let missing = keys.filter { m[$0] == nil }
                    if !missing.isEmpty { throw error("labels", "has no label for class\(missing.count == 1 ? "" : "es") \(Self.show(missing)) of `\(input)`; add them or give a `default`", code: .incompatibleModel) }
                default: break
                }
            }
            var shape: [Dimension] = [Self.batch]
            if v.rank == 2 { shape.append(v.width.map { .fixed($0) } ?? .unknown) }
            values[output] = ValueInfo(dtype: .string, rank: v.rank, width: v.width, classes: nil,
                                       signature: TensorSignature(name: output, dtype: .string, shape: v.rank == nil ? nil : shape))
        }
    }

    static func show(_ items: [String]) -> String {
        items.prefix(10).map { "`\($0)`" }.joined(separator: ", ") + (items.count > 10 ? ", ... (\(items.count) in all)" : "")
    }

    // MARK: Running

    /// Applies the step to `frame`, counting what it makes on `meter`.
    func apply(_ frame: inout [String: Tensor], meter: inout CallMeter) throws(PipelineError) {
        guard let t = frame[input] else { throw error("input", "`\(input)` was not computed", code: .runtime) }
        let n = t.shape.first ?? 0
        func charge(_ count: Int, _ dtype: DType, _ field: String? = nil) throws(PipelineError) {
            try meter.charge(count, of: dtype, step: at, field: field ?? writes.first)
        }
        func scoresMatrix(_ what: String) throws(PipelineError) -> (values: [Double], k: Int) {
            guard t.rank == 2 else { throw error("input", "`\(input)` has shape \(t.shape); `\(what)` needs [N, classes]", code: .runtime) }
            try charge(t.count, .float64)
            guard let d = t.storage.converted(to: .float64)?.doublesOrEmpty else { throw error("input", "`\(input)` holds \(t.dtype); `\(what)` needs numbers", code: .runtime) }
            return (d, t.shape[1])
        }
        func checkLabels(_ labels: [String]?, _ k: Int) throws(PipelineError) {
            if let labels, labels.count != k { throw error("labels", "has \(labels.count) labels; `\(input)` has \(k) columns", code: .runtime) }
        }
        /// Column indices to the step's class values: labels, map keys or the indices.
        func classes(_ idx: [Int], labels: [String]?, shape: [Int]) -> Tensor {
            if let labels { return Tensor(shape: shape, strings: idx.map { labels[$0] }) }
            switch t.mapKeys {
            case .int64(let k)?: return Tensor(shape: shape, int64s: idx.map { k[$0] })
            case .string(let k)?: return Tensor(shape: shape, strings: idx.map { k[$0] })
            case nil: return Tensor(shape: shape, int64s: idx.map { Int64($0) })
            }
        }
        switch op {
        case .argmax(_, let output, let labels):
            let (v, k) = try scoresMatrix("argmax")
            try checkLabels(labels, k)
            guard k > 0 else { throw error("input", "`\(input)` has no columns", code: .runtime) }
            try charge(n, .int64)
            try charge(n, .string)  // labels or keys: strings at most
            var idx = [Int](repeating: 0, count: n)
            for r in 0..<n {
                var best = 0
                var bestValue = -Double.infinity
                for c in 0..<k where v[r * k + c] > bestValue { best = c; bestValue = v[r * k + c] }
                idx[r] = best
            }
            frame[output] = classes(idx, labels: labels, shape: [n])

        case .topK(_, let kk, let labels, let output, let scores):
            let (v, k) = try scoresMatrix("top_k")
            try checkLabels(labels, k)
            guard kk <= k else { throw error("k", "\(kk) is more than the \(k) columns of `\(input)`", code: .runtime) }
            // Indices and scores, then the two outputs.
            try charge(n &* kk, .int64)
            try charge(n &* kk, .float64, scores)
            try charge(n &* kk, .string)
            try charge(n &* kk, t.dtype == .float64 ? .float64 : .float32, scores)
            try charge(k, .int64)
            var idx: [Int] = []
            idx.reserveCapacity(n * kk)
            var top: [Double] = []
            top.reserveCapacity(n * kk)
            var order = [Int](repeating: 0, count: k)
            for r in 0..<n {
                for c in 0..<k { order[c] = c }
                let row = r * k
                // Highest first; NaN last; ties keep the lower column first.
                order.sort { a, b in
                    let x = v[row + a], y = v[row + b]
                    if x.isNaN != y.isNaN { return !x.isNaN }
                    return x > y || (x == y && a < b) || (x.isNaN && y.isNaN && a < b)
                }
                for j in 0..<kk { idx.append(order[j]); top.append(v[row + order[j]]) }
            }
            frame[output] = classes(idx, labels: labels, shape: [n, kk])
            frame[scores] = t.dtype == .float64 ? Tensor(shape: [n, kk], doubles: top) : Tensor(shape: [n, kk], floats: top.map(Float.init))

        case .threshold(_, let output, let threshold, let column, let labels):
            guard t.dtype != .string, let v = t.storage.converted(to: .float64)?.doublesOrEmpty else {
                throw error("input", "`\(input)` holds \(t.dtype); `threshold` needs numbers", code: .runtime)
            }
            let w = t.rank == 2 ? t.shape[1] : 1
            guard t.rank == 1 || t.rank == 2 else { throw error("input", "`\(input)` has shape \(t.shape); `threshold` needs [N] or [N, columns]", code: .runtime) }
            let c = column ?? (w == 2 ? 1 : 0)
            guard c < w, column != nil || w <= 2 else { throw error("column", "`\(input)` has \(w) columns; set `column` to one of 0...\(w - 1)", code: .runtime) }
            try charge(t.count, .float64)
            try charge(n, .bool)
            try charge(n, labels == nil ? .int64 : .string)
            var hits = [Bool](repeating: false, count: n)
            for r in 0..<n { hits[r] = v[r * w + c] >= threshold }
            frame[output] = labels.map { l in Tensor(shape: [n], strings: hits.map { l[$0 ? 1 : 0] }) }
                ?? Tensor(shape: [n], int64s: hits.map { $0 ? 1 : 0 })

        case .softmax(_, let output):
            guard t.rank == 2 else { throw error("input", "`\(input)` has shape \(t.shape); `softmax` needs [N, classes]", code: .runtime) }
            let k = t.shape[1]
            try charge(t.count, t.dtype)
            func softmax<F: BinaryFloatingPoint>(_ x: [F], _ exp: (F) -> F) -> [F] {
                var out = x
                // Empty: nothing to do (and `n` may be large).
                guard !x.isEmpty else { return out }
                for r in 0..<n {
                    let row = (r * k)..<((r + 1) * k)
                    let m = x[row].max() ?? 0
                    var sum: F = 0
                    for i in row { out[i] = exp(x[i] - m); sum += out[i] }
                    for i in row { out[i] /= sum }
                }
                return out
            }
            switch t.storage {
            case .float32(let x): frame[output] = Tensor(shape: t.shape, storage: .float32(softmax(x) { Float(exp(Double($0))) }), mapKeys: t.mapKeys)
            case .float64(let x): frame[output] = Tensor(shape: t.shape, storage: .float64(softmax(x) { exp($0) }), mapKeys: t.mapKeys)
            default: throw error("input", "`\(input)` is \(t.dtype); `softmax` needs float32 or float64", code: .runtime)
            }

        case .labelMap(_, let output, let labels, let fallback):
            try charge(t.count, .string)
            var out: [String] = []
            out.reserveCapacity(t.count)
            func miss(_ i: Int, _ what: String) throws(PipelineError) -> String {
                if let fallback { return fallback }
                let row = n > 0 ? i / max(t.count / n, 1) : 0
                throw error("labels", "`\(input)` is \(what), which has no label; add it to `labels` or give a `default`", row: row, code: .invalidInput)
            }
            switch (labels, t.storage) {
            case (.list(let l), .int64(let v)):
                for (i, x) in v.enumerated() { out.append(x >= 0 && x < Int64(l.count) ? l[Int(x)] : try miss(i, "\(x)")) }
            case (.list(let l), .int32(let v)):
                for (i, x) in v.enumerated() { out.append(x >= 0 && Int(x) < l.count ? l[Int(x)] : try miss(i, "\(x)")) }
            case (.map(let m), .string(let v)):
                for (i, x) in v.enumerated() { if let s = m[x] { out.append(s) } else { out.append(try miss(i, "`\(x.prefix(80))`")) } }
            case (.map(let m), .int64(let v)):
                for (i, x) in v.enumerated() { if let s = m[String(x)] { out.append(s) } else { out.append(try miss(i, "\(x)")) } }
            case (.map(let m), .int32(let v)):
                for (i, x) in v.enumerated() { if let s = m[String(x)] { out.append(s) } else { out.append(try miss(i, "\(x)")) } }
            default:
                throw error("input", "`\(input)` is \(t.dtype); this `label_map` maps \({ if case .list = labels { "integer indices" } else { "classes" } }())", code: .runtime)
            }
            frame[output] = Tensor(shape: t.shape, strings: out)
        }
    }
}
