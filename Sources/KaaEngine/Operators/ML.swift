import CKaaKernels
/// The ai.onnx.ml operators that scikit-learn exports use.
enum MLOps {
    static let ml = "ai.onnx.ml"

    /// Rows and columns of a 1-D or 2-D feature input.
    static func rows(_ x: Tensor) throws -> (n: Int, c: Int) {
        switch x.rank {
        case 1: return (1, x.shape[0])
        case 2: return (x.shape[0], x.shape[1])
        default: throw EngineError.input("expected a 1-D or 2-D input [N, C], got shape \(x.shape)")
        }
    }

    static let scaler = OperatorSpec(name: "Scaler", domain: ml, opsets: 1...5) { ctx in
        try ctx.inputs(1, 1)
        _ = try ctx.input(0, .numeric)
        let offset = try ctx.attributes.floats("offset") ?? []
        let scale = try ctx.attributes.floats("scale") ?? []
        return (ClosureKernel { inputs, ws in
            let x = try K.arg(inputs, 0)
            let (v, converted) = try K.floats(x, ws)
            let c = x.shape.last ?? 1
            for a in [offset.count, scale.count] where a != 1 && a != c && a != 0 {
                if converted { ws.giveBack(v) }
                throw EngineError.input("offset/scale have \(a) values for the \(c) columns of input \(x.shape)")
            }
            // One offset and one scale per column (a single value or none repeats), for the
            // vectorized kernel (CKaaKernels, at the engine's level).
            let offsets: [Float] = try ws.array(c) { o in for j in 0..<c { o[j] = offset.isEmpty ? 0 : offset[offset.count == 1 ? 0 : j] } }
            let scales: [Float] = try ws.array(c) { o in for j in 0..<c { o[j] = scale.isEmpty ? 1 : scale[scale.count == 1 ? 0 : j] } }
            let out: [Float] = try ws.array(v.count) { out in
                guard c > 0, !out.isEmpty else { return }
                v.withUnsafeBufferPointer { pv in offsets.withUnsafeBufferPointer { po in scales.withUnsafeBufferPointer { ps in
                    kaa_scale_columns(pv.baseAddress, out.count / c, c, po.baseAddress, ps.baseAddress, out.baseAddress)
                } } }
            }
            ws.giveBack(offsets)
            ws.giveBack(scales)
            if converted { ws.giveBack(v) }
            return Outputs(Tensor(shape: x.shape, floats: out))
        }, [.float32])
    }

    static func labels(_ a: inout Attributes, _ ctx: BuildContext, prefix: String = "classlabels") throws -> Tensor.MapKeys? {
        if let s = try a.strings("\(prefix)_strings") { return .string(s) }
        if let i = try a.int64s("\(prefix)_ints") { return .int64(i) }
        if let i = try a.int64s("\(prefix)_int64s") { return .int64(i) }
        return nil
    }

    static func labelTensor(_ keys: Tensor.MapKeys, _ idx: UnsafeMutableBufferPointer<Int>, _ ws: Workspace) throws -> Tensor {
        switch keys {
        case .int64(let k): Tensor(shape: ws.shape(idx.count), int64s: try ws.array(idx.count) { o in for i in idx.indices { o[i] = k[idx[i]] } })
        case .string(let k): Tensor(shape: ws.shape(idx.count), strings: try ws.strings(idx.count) { o in for i in idx.indices { o[i] = k[idx[i]] } })
        }
    }

    static let linearClassifier = OperatorSpec(name: "LinearClassifier", domain: ml, opsets: 1...5) { ctx in
        try ctx.inputs(1, 1)
        _ = try ctx.input(0, .numeric)
        guard let coef = try ctx.attributes.floats("coefficients") else { throw ctx.bad("needs attribute `coefficients`") }
        let intercepts = try ctx.attributes.floats("intercepts") ?? []
        guard let labels = try labels(&ctx.attributes, ctx) else { throw ctx.bad("needs classlabels_ints or classlabels_strings") }
        _ = try ctx.attributes.int("multi_class")
        let post = try PostTransform.read(&ctx.attributes, ctx)
        let classCount = intercepts.isEmpty ? labels.count : intercepts.count
        guard classCount > 0, coef.count % classCount == 0 else { throw ctx.bad("\(coef.count) coefficients for \(classCount) classes") }
        guard intercepts.isEmpty || intercepts.count == classCount else { throw ctx.bad("\(intercepts.count) intercepts for \(classCount) classes") }
        let binary = classCount == 1 && labels.count == 2
        guard binary || labels.count == classCount else { throw ctx.bad("\(labels.count) labels for \(classCount) score columns") }
        let c = coef.count / classCount
        let labelType: DType = if case .string = labels { .string } else { .int64 }
        return (ClosureKernel { inputs, ws in
            let x = try K.arg(inputs, 0)
            let (n, cx) = try rows(x)
            guard cx == c else { throw EngineError.input("input \(x.shape) has \(cx) features; the model takes \(c)") }
            _ = try K.product(n, binary ? 2 : classCount, "scoring \(n) rows of \(binary ? 2 : classCount) classes")
            let (v, converted) = try K.floats(x, ws)
            var scores = try linearScores(v, rows: n, features: c, coef, intercepts, outputs: classCount, ws)
            if converted { ws.giveBack(v) }
            return try ws.withScratch(n) { best in
                if binary {
                    var out = try ws.array(n * 2) { out in
                        for i in 0..<n {
                            let s = scores[i]
                            best[i] = s > 0 ? 1 : 0
                            out[2 * i] = -s
                            out[2 * i + 1] = s
                        }
                    }
                    if post == .logistic {
                        for i in 0..<n { out[2 * i + 1] = PostTransform.logistic(scores[i]); out[2 * i] = 1 - out[2 * i + 1] }
                    } else { post.apply(&out, rowLength: 2) }
                    ws.giveBack(scores)
                    return Outputs(try labelTensor(labels, best, ws), Tensor(shape: ws.shape(n, 2), floats: out))
                }
                for i in 0..<n {
                    var b = 0
                    for k in 1..<max(classCount, 1) where scores[i * classCount + k] > scores[i * classCount + b] { b = k }
                    best[i] = b
                }
                post.apply(&scores, rowLength: classCount)
                return Outputs(try labelTensor(labels, best, ws), Tensor(shape: ws.shape(n, classCount), floats: scores))
            }
        }, [labelType, .float32])
    }

    /// `rows × outputs` scores: each output's intercept (0 without intercepts) plus the dot
    /// product of a row's `features` values with that output's coefficients.
    private static func linearScores(_ v: [Float], rows n: Int, features c: Int, _ coef: [Float], _ intercepts: [Float],
                                     outputs: Int, _ ws: Workspace) throws -> [Float] {
        try ws.array(n * outputs) { out in
            for i in 0..<n {
                for k in 0..<outputs {
                    var s: Float = intercepts.isEmpty ? 0 : intercepts[k]
                    for j in 0..<c { s += v[i * c + j] * coef[k * c + j] }
                    out[i * outputs + k] = s
                }
            }
        }
    }

    static let linearRegressor = OperatorSpec(name: "LinearRegressor", domain: ml, opsets: 1...5) { ctx in
        try ctx.inputs(1, 1)
        _ = try ctx.input(0, .numeric)
        guard let coef = try ctx.attributes.floats("coefficients") else { throw ctx.bad("needs attribute `coefficients`") }
        let intercepts = try ctx.attributes.floats("intercepts") ?? []
        let targets = try ctx.attributes.int("targets", default: 1)
        let post = try PostTransform.read(&ctx.attributes, ctx)
        guard targets > 0, targets <= 1 << 24, coef.count % targets == 0, intercepts.isEmpty || intercepts.count == targets else {
            throw ctx.bad("\(coef.count) coefficients and \(intercepts.count) intercepts for \(targets) targets")
        }
        let c = coef.count / targets
        return (ClosureKernel { inputs, ws in
            let x = try K.arg(inputs, 0)
            let (n, cx) = try rows(x)
            guard cx == c else { throw EngineError.input("input \(x.shape) has \(cx) features; the model takes \(c)") }
            _ = try K.product(n, targets, "scoring \(n) rows of \(targets) targets")
            let (v, converted) = try K.floats(x, ws)
            var out = try linearScores(v, rows: n, features: c, coef, intercepts, outputs: targets, ws)
            if converted { ws.giveBack(v) }
            post.apply(&out, rowLength: targets)
            return Outputs(Tensor(shape: ws.shape(n, targets), floats: out))
        }, [.float32])
    }

    static let normalizer = OperatorSpec(name: "Normalizer", domain: ml, opsets: 1...5) { ctx in
        try ctx.inputs(1, 1)
        _ = try ctx.input(0, .numeric)
        let norm = try ctx.attributes.string("norm", default: "MAX")
        enum Norm { case max, l1, l2 }
        let kind: Norm
        switch norm {
        case "MAX": kind = .max
        case "L1": kind = .l1
        case "L2": kind = .l2
        default: throw ctx.bad("norm `\(norm)` is not MAX, L1 or L2")
        }
        return (ClosureKernel { inputs, ws in
            let x = try K.arg(inputs, 0)
            let (n, c) = try rows(x)
            let (input, converted) = try K.floats(x, ws)
            let v = try ws.array(input.count) { v in
                // Empty: nothing to write (and `n` may be large).
                guard !input.isEmpty else { return }
                for i in 0..<n {
                    let r = i * c..<(i + 1) * c
                    let d: Float
                    switch kind {
                    case .max: d = input[r].max() ?? 1
                    case .l1: d = input[r].reduce(0) { $0 + abs($1) }
                    case .l2: d = input[r].reduce(0) { $0 + $1 * $1 }.squareRoot()
                    }
                    for j in r { v[j] = d != 0 ? input[j] / d : input[j] }
                }
            }
            if converted { ws.giveBack(input) }
            return Outputs(Tensor(shape: x.shape, floats: v))
        }, [.float32])
    }

    static let zipMap = OperatorSpec(name: "ZipMap", domain: ml, opsets: 1...5) { ctx in
        try ctx.inputs(1, 1)
        _ = try ctx.input(0, [.float32])
        guard let keys = try labels(&ctx.attributes, ctx) else { throw ctx.bad("needs classlabels_int64s or classlabels_strings") }
        return (ClosureKernel(aliasesInputs: true) { inputs, ws in
            var x = try K.arg(inputs, 0)
            let (n, c) = try rows(x)
            guard c == keys.count else { throw EngineError.input("input \(x.shape) has \(c) columns for \(keys.count) keys") }
            x.shape = ws.shape(n, c)
            x.mapKeys = keys
            return Outputs(x)
        }, [.float32])
    }

    static let arrayFeatureExtractor = OperatorSpec(name: "ArrayFeatureExtractor", domain: ml, opsets: 1...5) { ctx in
        try ctx.inputs(2, 2)
        let t = try ctx.input(0)
        _ = try ctx.input(1, [.int64])
        return (ClosureKernel { inputs, ws in
            let x = try K.arg(inputs, 0)
            let indices = try K.arg(inputs, 1)
            guard case .int64(let idx) = indices.storage else { throw EngineError.runtime("indices are \(indices.dtype), expected int64") }
            guard x.rank >= 1 else { throw EngineError.input("input is a scalar; it needs rank 1 or more") }
            let c = x.shape[x.rank - 1]
            for i in idx where i < 0 || i >= Int64(c) { throw EngineError.input("index \(i) is out of range for the \(c) columns of \(x.shape)") }
            let width = idx.count
            let shape = x.rank == 1 ? ws.shape(1, width) : ws.shape(rank: x.rank) { d in
                for i in 0..<x.rank - 1 { d[i] = x.shape[i] }
                d[x.rank - 1] = width
            }
            let total = try K.count(shape, "extracting \(width) columns from \(x.shape)")
            let storage = try ws.gather(x.storage, total) { e in (e / width) * c + Int(idx[e % width]) }
            return Outputs(Tensor(shape: shape, storage: storage))
        }, [t])
    }

    static let binarizer = OperatorSpec(name: "Binarizer", domain: ml, opsets: 1...5) { ctx in
        try ctx.inputs(1, 1)
        let t = try ctx.input(0, .numeric)
        let th = Double(try ctx.attributes.float("threshold", default: 0))
        return (ClosureKernel { inputs, ws in
            let x = try K.arg(inputs, 0)
            func binarize<T: Reusable & Numeric>(_ v: [T], _ d: (T) -> Double) throws -> [T] {
                try ws.array(v.count) { o in for i in v.indices { o[i] = d(v[i]) > th ? 1 : 0 } }
            }
            let storage: Tensor.Storage = switch x.storage {
            case .float32(let v): .float32(try binarize(v) { Double($0) })
            case .float64(let v): .float64(try binarize(v) { $0 })
            case .int64(let v): .int64(try binarize(v) { Double($0) })
            case .int32(let v): .int32(try binarize(v) { Double($0) })
            default: throw EngineError.runtime("input is \(x.dtype)")
            }
            return Outputs(Tensor(shape: x.shape, storage: storage))
        }, [t])
    }

    static let imputer = OperatorSpec(name: "Imputer", domain: ml, opsets: 1...5) { ctx in
        try ctx.inputs(1, 1)
        let t = try ctx.input(0, .numeric)
        let fv = try ctx.attributes.floats("imputed_value_floats") ?? []
        let iv = try ctx.attributes.int64s("imputed_value_int64s") ?? []
        let rf = try ctx.attributes.float("replaced_value_float", default: .nan)
        let ri = Int64(try ctx.attributes.int("replaced_value_int64", default: 0))
        guard fv.isEmpty != iv.isEmpty else { throw ctx.bad("needs exactly one of imputed_value_floats, imputed_value_int64s") }
        return (ClosureKernel { inputs, ws in
            let x = try K.arg(inputs, 0)
            let c = x.shape.last ?? 1
            switch x.storage {
            case .float32(let v):
                guard fv.count == 1 || fv.count == c else { throw EngineError.input("\(fv.count) imputed values for the \(c) columns of input \(x.shape)") }
                let out = try ws.array(v.count) { o in
                    for (i, e) in v.enumerated() { o[i] = (e == rf || (rf.isNaN && e.isNaN)) ? fv[fv.count == 1 ? 0 : i % c] : e }
                }
                return Outputs(Tensor(shape: x.shape, floats: out))
            case .int64(let v):
                guard iv.count == 1 || iv.count == c else { throw EngineError.input("\(iv.count) imputed values for the \(c) columns of input \(x.shape)") }
                let out = try ws.array(v.count) { o in
                    for (i, e) in v.enumerated() { o[i] = e == ri ? iv[iv.count == 1 ? 0 : i % c] : e }
                }
                return Outputs(Tensor(shape: x.shape, int64s: out))
            default: throw EngineError.runtime("input is \(x.dtype); Imputer takes float or int64")
            }
        }, [t == .int64 ? .int64 : .float32])
    }

    static let oneHotEncoder = OperatorSpec(name: "OneHotEncoder", domain: ml, opsets: 1...5) { ctx in
        try ctx.inputs(1, 1)
        _ = try ctx.input(0, [.string, .int64, .int32, .float32, .float64])
        let cs = try ctx.attributes.strings("cats_strings")
        let ci = try ctx.attributes.int64s("cats_int64s")
        let zeros = try ctx.attributes.int("zeros", default: 1) != 0
        guard (cs == nil) != (ci == nil) else { throw ctx.bad("needs exactly one of cats_strings, cats_int64s") }
        let si = Dictionary((cs ?? []).enumerated().map { ($1, $0) }, uniquingKeysWith: { a, _ in a })
        let ii = Dictionary((ci ?? []).enumerated().map { ($1, $0) }, uniquingKeysWith: { a, _ in a })
        let k = cs?.count ?? ci?.count ?? 0
        return (ClosureKernel { inputs, ws in
            let x = try K.arg(inputs, 0)
            // The category's position for element e, or nil when unknown.
            func position(_ e: Int) -> Int? {
                switch x.storage {
                case .string(let v): si[v[e]]
                case .int64(let v): ii[v[e]]
                case .int32(let v): ii[Int64(v[e])]
                case .float32(let v): Int64(exactly: v[e].rounded(.towardZero)).flatMap { ii[$0] }
                case .float64(let v): Int64(exactly: v[e].rounded(.towardZero)).flatMap { ii[$0] }
                case .bool(let v): ii[v[e] ? 1 : 0]
                case .uint8(let v): ii[Int64(v[e])]
                case .int8(let v): ii[Int64(v[e])]
                }
            }
            for e in 0..<x.count where !zeros && position(e) == nil {
                let value = x.strings.map { "`\($0[e].prefix(80))`" } ?? x.asDoubles().map { "\($0[e])" } ?? "?"
                throw EngineError.input("category \(value) (element \(e)) is unknown, and the encoder has zeros=0")
            }
            let shape = ws.shape(rank: x.rank + 1) { d in
                for i in 0..<x.rank { d[i] = x.shape[i] }
                d[x.rank] = k
            }
            let total = try K.count(shape, "one-hot encoding \(x.shape) into \(k) categories")
            let out: [Float] = try ws.array(total) { o in
                o.initialize(repeating: 0)
                for e in 0..<x.count { if let p = position(e) { o[e * k + p] = 1 } }
            }
            return Outputs(Tensor(shape: shape, floats: out))
        }, [.float32])
    }

    static let labelEncoder = OperatorSpec(name: "LabelEncoder", domain: ml, opsets: 1...5) { ctx in
        try ctx.inputs(1, 1)
        let t = try ctx.input(0, [.string, .int64, .float32])
        // Opset 1: classes_strings maps strings <-> int64 by position.
        if ctx.opset < 2 {
            let classes = try ctx.attributes.strings("classes_strings") ?? []
            let ds = try ctx.attributes.string("default_string", default: "_Unused")
            let di = Int64(try ctx.attributes.int("default_int64", default: -1))
            let index = Dictionary(classes.enumerated().map { ($1, Int64($0)) }, uniquingKeysWith: { a, _ in a })
            return (ClosureKernel { inputs, ws in
                let x = try K.arg(inputs, 0)
                let n = x.count
                if let s = x.strings { return Outputs(Tensor(shape: x.shape, int64s: try ws.array(n) { o in for e in 0..<n { o[e] = index[s[e]] ?? di } })) }
                guard case .int64(let v) = x.storage else { throw EngineError.runtime("input is \(x.dtype); expected strings or int64") }
                return Outputs(Tensor(shape: x.shape, strings: try ws.strings(n) { o in
                    for e in 0..<n { o[e] = v[e] >= 0 && v[e] < classes.count ? classes[Int(v[e])] : ds }
                }))
            }, [t == .string ? .int64 : .string])
        }
        enum Key: Hashable { case s(String), i(Int64), f(Float) }
        var keys: [Key] = []
        if let s = try ctx.attributes.strings("keys_strings") { keys = s.map { .s($0) } }
        if let i = try ctx.attributes.int64s("keys_int64s") { keys = i.map { .i($0) } }
        if let f = try ctx.attributes.floats("keys_floats") { keys = f.map { .f($0) } }
        var values: Tensor.Storage?
        if let s = try ctx.attributes.strings("values_strings") { values = .string(s) }
        if let i = try ctx.attributes.int64s("values_int64s") { values = .int64(i) }
        if let f = try ctx.attributes.floats("values_floats") { values = .float32(f) }
        _ = try ctx.attributes.tensor("keys_tensor")
        _ = try ctx.attributes.tensor("values_tensor")
        _ = try ctx.attributes.tensor("default_tensor")
        guard let values, values.count == keys.count else { throw ctx.bad("keys and values must be given with the same length") }
        let ds = try ctx.attributes.string("default_string", default: "_Unused")
        let di = Int64(try ctx.attributes.int("default_int64", default: -1))
        let df = try ctx.attributes.float("default_float", default: -0.0)
        let map = Dictionary(keys.enumerated().map { ($1, $0) }, uniquingKeysWith: { a, _ in a })
        return (ClosureKernel { inputs, ws in
            let x = try K.arg(inputs, 0)
            // The position of element e's key among the keys, or nil when it has none.
            func position(_ e: Int) -> Int? {
                switch x.storage {
                case .string(let s): map[.s(s[e])]
                case .int64(let i): map[.i(i[e])]
                case .float32(let f): map[.f(f[e])]
                default: nil
                }
            }
            let n = x.count
            switch values {
            case .string(let v): return Outputs(Tensor(shape: x.shape, strings: try ws.strings(n) { o in for e in 0..<n { o[e] = position(e).map { v[$0] } ?? ds } }))
            case .int64(let v): return Outputs(Tensor(shape: x.shape, int64s: try ws.array(n) { o in for e in 0..<n { o[e] = position(e).map { v[$0] } ?? di } }))
            case .float32(let v): return Outputs(Tensor(shape: x.shape, floats: try ws.array(n) { o in for e in 0..<n { o[e] = position(e).map { v[$0] } ?? df } }))
            default: throw EngineError.runtime("unsupported value type")
            }
        }, [values.dtype])
    }

    static let specs: [OperatorSpec] = [
        scaler, linearClassifier, linearRegressor, normalizer, zipMap, arrayFeatureExtractor,
        binarizer, imputer, oneHotEncoder, labelEncoder,
        TreeEnsemble.classifier, TreeEnsemble.regressor,
    ]
}
