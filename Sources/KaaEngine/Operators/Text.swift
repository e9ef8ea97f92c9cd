/// Text operators: StringNormalizer and TfIdfVectorizer (ai.onnx), Tokenizer (com.microsoft),
/// as skl2onnx emits them for scikit-learn's TfidfVectorizer / CountVectorizer.
enum TextOps {
    static let stringNormalizer = OperatorSpec(name: "StringNormalizer", domain: "ai.onnx", opsets: 10...22) { ctx in
        try ctx.inputs(1, 1)
        _ = try ctx.input(0, [.string])
        let action = try ctx.attributes.string("case_change_action", default: "NONE")
        guard ["NONE", "LOWER", "UPPER"].contains(action) else { throw ctx.bad("case_change_action `\(action)` is not NONE, LOWER or UPPER") }
        let caseSensitive = try ctx.attributes.int("is_case_sensitive", default: 0) != 0
        let locale = try ctx.attributes.string("locale", default: "en_US")
        let stopwords = try ctx.attributes.strings("stopwords") ?? []
        let asciiOnly = locale == "C" || locale == "POSIX"
        let stops = Set(caseSensitive ? stopwords : stopwords.map { $0.lowercased() })
        @Sendable func change(_ s: String, upper: Bool) -> String {
            if !asciiOnly { return upper ? s.uppercased() : s.lowercased() }
            return String(decoding: s.utf8.map { b in
                if upper, b >= 0x61, b <= 0x7A { return b - 32 }
                if !upper, b >= 0x41, b <= 0x5A { return b + 32 }
                return b
            }, as: UTF8.self)
        }
        // The output is the input itself when nothing changes: it may share the input's elements.
        return (ClosureKernel(aliasesInputs: true) { inputs, ws in
            let x = try K.arg(inputs, 0)
            guard let v = x.strings else { throw EngineError.runtime("input is \(x.dtype)") }
            guard x.rank == 1 || (x.rank == 2 && x.shape[0] == 1) else {
                throw EngineError.input("input must be [C] or [1, C], got shape \(x.shape)")
            }
            if !stops.isEmpty || action != "NONE" {
                // A new array, and new text where the case changes.
                try ws.charge(v.count, MemoryLayout<String>.stride, what: String.self)
                if action != "NONE" { try ws.charge(v.reduce(0) { $0 + K.stringBytes($1) }, 1, what: TextBytes.self) }
            }
            var out = stops.isEmpty ? v : v.filter { !stops.contains(caseSensitive ? $0 : $0.lowercased()) }
            switch action {
            case "LOWER": out = out.map { change($0, upper: false) }
            case "UPPER": out = out.map { change($0, upper: true) }
            default: break
            }
            // As the operator specifies: when every string was a stopword, one empty string.
            // An empty input stays empty (a batch of no rows).
            if out.isEmpty && !v.isEmpty { out = [""] }
            return Outputs(Tensor(shape: x.rank == 1 ? [out.count] : [1, out.count], strings: out))
        }, [.string])
    }

    /// A compiled regular expression shared by concurrent runs.
    /// `@unchecked Sendable`: the `Regex` is created once at load and only read afterwards
    /// (matching does not mutate it).
    struct Pattern: @unchecked Sendable {
        let regex: Regex<AnyRegexOutput>
        let source: String

        /// Why matching `pattern` may backtrack exponentially in the length of a text, or
        /// `nil`: a repeated group that itself repeats (`(a+)+`, `(\w*x?)*`) or a
        /// backreference. Swift's `Regex` backtracks, and a model's pattern meets every
        /// request's text. Slower forms remain possible (`\w*\w*\w*!` is cubic); those
        /// exporters write (`[a-zA-Z0-9_]+`, `(?u)\b\w\w+\b`) pass.
        static func backtrackingRisk(_ pattern: String) -> String? {
            let c = Array(pattern.unicodeScalars)
            // Per open group: whether something inside it repeats.
            var groups: [Bool] = [false]
            var i = 0
            /// Whether a quantifier that repeats (not `?`) starts at `j`.
            func repeats(_ j: Int) -> Bool {
                guard j < c.count else { return false }
                if c[j] == "*" || c[j] == "+" { return true }
                guard c[j] == "{", let close = c[j...].firstIndex(of: "}") else { return false }
                let bounds = String(String.UnicodeScalarView(c[(j + 1)..<close])).split(separator: ",", omittingEmptySubsequences: false)
                return bounds.count == 2 ? bounds[1] != "0" && bounds[1] != "1" : (Int(bounds.first ?? "") ?? 0) > 1
            }
            while i < c.count {
                switch c[i] {
                case "\\":
                    guard i + 1 < c.count else { return nil }
                    let e = c[i + 1]
                    if ("1"..."9").contains(e) || e == "k" || e == "g" { return "uses a backreference" }
                    i += 2
                    // `\p{...}`: the braces are a property name, not a quantifier.
                    if (e == "p" || e == "P"), i < c.count, c[i] == "{", let close = c[i...].firstIndex(of: "}") { i = close + 1 }
                    if repeats(i) { groups[groups.count - 1] = true }
                    continue
                case "[":
                    // A character class, to its closing bracket (a first `]` or `^]` is literal).
                    var j = i + 1
                    if j < c.count, c[j] == "^" { j += 1 }
                    if j < c.count, c[j] == "]" { j += 1 }
                    while j < c.count, c[j] != "]" { j += c[j] == "\\" ? 2 : 1 }
                    i = j + 1
                    if repeats(i) { groups[groups.count - 1] = true }
                    continue
                case "(":
                    groups.append(false)
                case ")":
                    guard groups.count > 1 else { return nil }
                    let inner = groups.removeLast()
                    if repeats(i + 1) {
                        if inner { return "repeats a group that itself repeats" }
                        groups[groups.count - 1] = true
                    } else if inner {
                        groups[groups.count - 1] = true
                    }
                default:
                    if repeats(i + 1) { groups[groups.count - 1] = true }
                }
                i += 1
            }
            return nil
        }
    }

    static let tokenizer = OperatorSpec(name: "Tokenizer", domain: "com.microsoft", opsets: 1...1) { ctx in
        try ctx.inputs(1, 1)
        _ = try ctx.input(0, [.string])
        let mark = try ctx.attributes.int("mark", default: 0) != 0
        let minChars = try ctx.attributes.int("mincharnum", default: 1)
        let pad = try ctx.attributes.string("pad_value", default: "#")
        let tokenexp = try ctx.attributes.string("tokenexp")
        let separators = try ctx.attributes.strings("separators")
        guard (tokenexp == nil) != (separators == nil) else { throw ctx.bad("needs exactly one of tokenexp, separators") }
        func compile(_ p: String) throws -> Pattern {
            if let problem = Pattern.backtrackingRisk(p) {
                throw EngineError.unsupported("\(ctx.owner): the regular expression `\(p.prefix(80))` \(problem); a text could make matching it take exponential time")
            }
            do { return Pattern(regex: try Regex(p), source: p) } catch { throw ctx.bad("the regular expression `\(p)` does not compile: \(error)") }
        }
        let exp = try tokenexp.map(compile)
        let seps = try (separators ?? []).map(compile)
        return (ClosureKernel { inputs, ws in
            let x = try K.arg(inputs, 0)
            guard let v = x.strings else { throw EngineError.runtime("input is \(x.dtype)") }
            guard x.rank == 1 || x.rank == 2 else { throw EngineError.input("input must be 1-D or 2-D strings, got shape \(x.shape)") }
            var tokens: [[String]] = []
            try ws.charge(v.count, MemoryLayout<[String]>.stride, what: [String].self)
            tokens.reserveCapacity(v.count)
            for s in v {
                var t: [String] = []
                if let exp {
                    for m in s.matches(of: exp.regex) where m.range.lowerBound != m.range.upperBound {
                        t.append(String(s[m.range]))
                    }
                } else if seps.contains(where: { $0.source.isEmpty }) {
                    t = s.map { String($0) }
                } else {
                    var parts = [Substring(s)]
                    for sep in seps {
                        parts = parts.flatMap { $0.split(separator: sep.regex, omittingEmptySubsequences: true) }
                    }
                    t = parts.map(String.init)
                }
                t = t.filter { $0.count >= minChars }
                if mark { t = ["\u{2}"] + t + ["\u{3}"] }
                // The row's tokens, kept until the output holds them: counted as they are made.
                try ws.charge(t.count, MemoryLayout<String>.stride, what: String.self)
                try ws.charge(t.reduce(0) { $0 + K.stringBytes($1) }, 1, what: TextBytes.self)
                tokens.append(t)
            }
            let width = tokens.map(\.count).max() ?? 0
            // Rows pad to the longest: one long text in a batch of many widens every row.
            let shape = x.shape + [width]
            let total = try K.count(shape, "tokenizing \(x.shape) texts into rows of \(width) tokens")
            let out = try ws.strings(total) { o in
                var e = 0
                for t in tokens {
                    for token in t { o[e] = token; e += 1 }
                    for _ in t.count..<width { o[e] = pad; e += 1 }
                }
            }
            return Outputs(Tensor(shape: shape, strings: out))
        }, [.string])
    }

    /// The n-gram pool of a TfIdfVectorizer: each n-gram (as its items) to its output column
    /// and its weight.
    struct Pool<Item: Hashable & Sendable>: Sendable {
        var index: [[Item]: (column: Int, weight: Float)] = [:]

        /// The heap bytes of the index: its buckets (a dictionary keeps at most 3/4 of them
        /// full), each n-gram's array, and each string's storage beyond what a string holds inline.
        var heldBytes: Int {
            let buckets = index.capacity * 4 / 3
            var bytes = 64 + buckets * (MemoryLayout<[Item]>.stride + MemoryLayout<(column: Int, weight: Float)>.stride) + buckets / 8
            for gram in index.keys {
                bytes += K.arrayBytes(gram)
                for item in gram { if let s = item as? String { bytes += K.stringBytes(s) } }
            }
            return bytes
        }
    }

    static let tfIdfVectorizer = OperatorSpec(name: "TfIdfVectorizer", domain: "ai.onnx", opsets: 9...22) { ctx in
        try ctx.inputs(1, 1)
        let t = try ctx.input(0, [.string, .int32, .int64])
        let minN = try ctx.attributes.int("min_gram_length") ?? 1
        let maxN = try ctx.attributes.int("max_gram_length") ?? 1
        let maxSkip = try ctx.attributes.int("max_skip_count") ?? 0
        let mode = try ctx.attributes.string("mode") ?? "TF"
        guard ["TF", "IDF", "TFIDF"].contains(mode) else { throw ctx.bad("mode `\(mode)` is not TF, IDF or TFIDF") }
        guard minN >= 1, maxN >= minN, maxN <= 64, maxSkip >= 0, maxSkip <= 1024 else {
            throw ctx.bad("gram lengths \(minN)...\(maxN) and max_skip_count \(maxSkip) are out of range")
        }
        // Each token starts up to 1 + (maxN - 1)(maxSkip + 1) n-grams of up to maxN items: a
        // call's work is that times its tokens. Bounded, so that no request makes it stall
        // (scikit-learn exports skip nothing and n-grams up to 3 or so: a few lookups per token).
        guard maxN <= Self.maxGramLength, (maxN - 1) * (maxSkip + 1) <= Self.maxGramsPerToken else {
            throw EngineError.unsupported("\(ctx.owner): gram lengths up to \(maxN) with max_skip_count \(maxSkip) would look up \(1 + (maxN - 1) * (maxSkip + 1)) n-grams per token; at most \(Self.maxGramsPerToken + 1) are supported, with n-grams of up to \(Self.maxGramLength)")
        }
        let counts = try ctx.attributes.ints("ngram_counts") ?? []
        let columns = try ctx.attributes.ints("ngram_indexes") ?? []
        let weights = try ctx.attributes.floats("weights") ?? []
        let strPool = try ctx.attributes.strings("pool_strings")
        let intPool = try ctx.attributes.int64s("pool_int64s")
        guard (strPool == nil) != (intPool == nil) else { throw ctx.bad("needs exactly one of pool_strings, pool_int64s") }
        guard (strPool == nil) == (t != .string) else { throw ctx.bad("the pool's type does not match the input's \(t)") }
        let poolCount = strPool?.count ?? intPool?.count ?? 0
        guard columns.allSatisfy({ $0 >= 0 && $0 < 1 << 24 }) else { throw ctx.bad("ngram_indexes has an index out of range") }
        let width = (columns.max() ?? -1) + 1
        guard weights.isEmpty || weights.count == columns.count else { throw ctx.bad("\(weights.count) weights for \(columns.count) n-grams") }
        // Split the pool into n-grams: n-grams of length n start at counts[n - 1].
        func grams<Item>(_ pool: [Item]) throws -> [[Item]] {
            var out: [[Item]] = []
            for (i, start) in counts.enumerated() {
                let end = i + 1 < counts.count ? counts[i + 1] : pool.count
                let n = i + 1
                guard start >= 0, start <= end, end <= pool.count, (end - start) % n == 0 else {
                    throw ctx.bad("ngram_counts \(counts) does not fit a pool of \(pool.count) items")
                }
                var p = start
                while p < end { out.append(Array(pool[p..<p + n])); p += n }
            }
            return out
        }
        func pool<Item: Hashable & Sendable>(_ items: [Item]) throws -> Pool<Item> {
            let g = try grams(items)
            guard g.count == columns.count else { throw ctx.bad("the pool has \(g.count) n-grams and ngram_indexes \(columns.count)") }
            var p = Pool<Item>()
            for (i, gram) in g.enumerated() { p.index[gram] = (columns[i], weights.isEmpty ? 1 : weights[i]) }
            return p
        }
        _ = poolCount
        let sPool = try strPool.map { try pool($0) }
        let iPool = try intPool.map { try pool($0) }
        ctx.kernelBytes += (sPool?.heldBytes ?? 0) + (iPool?.heldBytes ?? 0)
        ctx.countedTables = true
        return (ClosureKernel { inputs, ws in
            let x = try K.arg(inputs, 0)
            guard x.rank == 1 || x.rank == 2 else { throw EngineError.input("input must be 1-D or 2-D, got shape \(x.shape)") }
            let rows = x.rank == 1 ? 1 : x.shape[0]
            let c = x.shape.last ?? 0
            let shape = x.rank == 1 ? ws.shape(width) : ws.shape(rows, width)
            var out = try ws.array(try K.count(shape, "counting \(width) n-grams in \(rows) rows"), repeating: Float(0))
            func count<Item: Hashable>(_ items: [Item], _ pool: Pool<Item>) {
                for r in 0..<rows {
                    let row = items[r * c..<(r + 1) * c]
                    let base = row.startIndex
                    for n in minN...maxN {
                        for skip in 0...(n == 1 ? 0 : maxSkip) {
                            let span = (n - 1) * (skip + 1)
                            var i = 0
                            while i + span < row.count {
                                let gram = (0..<n).map { row[base + i + $0 * (skip + 1)] }
                                if let hit = pool.index[gram] { out[r * width + hit.column] += 1 }
                                i += 1
                            }
                        }
                    }
                }
            }
            // Empty: nothing to count (and `rows` may be large).
            if x.count > 0 {
                switch x.storage {
                case .string(let v): count(v, sPool!)
                case .int64(let v): count(v, iPool!)
                case .int32(let v):
                    try ws.charge(v.count, MemoryLayout<Int64>.stride, what: Int64.self)
                    count(v.map { Int64($0) }, iPool!)
                default: throw EngineError.runtime("input is \(x.dtype)")
                }
            }
            if mode != "TF" {
                var w = try ws.array(width, repeating: Float(1))
                for (_, hit) in sPool?.index.map({ ($0.key.count, $0.value) }) ?? iPool!.index.map({ ($0.key.count, $0.value) }) {
                    w[hit.column] = hit.weight
                }
                for i in out.indices {
                    let col = i % max(width, 1)
                    out[i] = mode == "IDF" ? (out[i] > 0 ? w[col] : 0) : out[i] * w[col]
                }
                ws.giveBack(w)
            }
            return Outputs(Tensor(shape: shape, floats: out))
        }, [.float32])
    }

    /// The longest n-gram, and the most n-grams beyond the first, a TfIdfVectorizer may look
    /// up per token.
    static let maxGramLength = 16
    static let maxGramsPerToken = 256

    static let specs: [OperatorSpec] = [stringNormalizer, tokenizer, tfIdfVectorizer]
}
