/// The ai.onnx.ml operators that scikit-learn exports use.
enum MLOps {
    static let ml = "ai.onnx.ml"

    /// Rows and columns of a 1-D or 2-D feature input.
    static func rows(_ x: Tensor) throws -> (n: Int, c: Int) {
        switch x.rank {
        case 1: return (1, x.shape[0])
        case 2: return (x.shape[0], x.shape[1])
        default: throw EngineError.runtime("expected a 2-D input [N, C], got \(x.shape)")
        }
    }

    static let scaler = OperatorSpec(name: "Scaler", domain: ml, opsets: 1...5) { ctx in
        try ctx.inputs(1, 1)
        _ = try ctx.input(0, .numeric)
        let offset = try ctx.attributes.floats("offset") ?? []
        let scale = try ctx.attributes.floats("scale") ?? []
        return (ClosureKernel { inputs in
            let x = try K.arg(inputs, 0)
            let v = try K.floats(x)
            let c = x.shape.last ?? 1
            for a in [offset, scale] where a.count != 1 && a.count != c && !a.isEmpty {
                throw EngineError.runtime("offset/scale have \(a.count) values for \(c) columns")
            }
            let off = offset.isEmpty ? [Float](repeating: 0, count: c) : offset.count == 1 ? [Float](repeating: offset[0], count: c) : offset
            let sc = scale.isEmpty ? [Float](repeating: 1, count: c) : scale.count == 1 ? [Float](repeating: scale[0], count: c) : scale
            var out = v
            var i = 0
            while i < out.count { for j in 0..<c { out[i + j] = (v[i + j] - off[j]) * sc[j] }; i += c }
            return [Tensor(shape: x.shape, floats: out)]
        }, [.float32])
    }

    static func labels(_ a: inout Attributes, _ ctx: BuildContext, prefix: String = "classlabels") throws -> Tensor.MapKeys? {
        if let s = try a.strings("\(prefix)_strings") { return .string(s) }
        if let i = try a.int64s("\(prefix)_ints") { return .int64(i) }
        if let i = try a.int64s("\(prefix)_int64s") { return .int64(i) }
        return nil
    }

    static func labelTensor(_ keys: Tensor.MapKeys, _ idx: [Int]) -> Tensor {
        switch keys {
        case .int64(let k): Tensor(shape: [idx.count], int64s: idx.map { k[$0] })
        case .string(let k): Tensor(shape: [idx.count], strings: idx.map { k[$0] })
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
        return (ClosureKernel { inputs in
            let x = try K.arg(inputs, 0)
            let (n, cx) = try rows(x)
            guard cx == c else { throw EngineError.runtime("input has \(cx) features; the model has \(c)") }
            var scores = linearScores(try K.floats(x), rows: n, features: c, coef, intercepts, outputs: classCount)
            var best = [Int](repeating: 0, count: n)
            if binary {
                var out = [Float](repeating: 0, count: n * 2)
                for i in 0..<n {
                    let s = scores[i]
                    best[i] = s > 0 ? 1 : 0
                    out[2 * i] = -s
                    out[2 * i + 1] = s
                }
                if post == .logistic {
                    for i in 0..<n { out[2 * i + 1] = PostTransform.logistic(scores[i]); out[2 * i] = 1 - out[2 * i + 1] }
                } else { post.apply(&out, rowLength: 2) }
                return [labelTensor(labels, best), Tensor(shape: [n, 2], floats: out)]
            }
            for i in 0..<n {
                var b = 0
                for k in 1..<max(classCount, 1) where scores[i * classCount + k] > scores[i * classCount + b] { b = k }
                best[i] = b
            }
            post.apply(&scores, rowLength: classCount)
            return [labelTensor(labels, best), Tensor(shape: [n, classCount], floats: scores)]
        }, [labelType, .float32])
    }

    /// `rows × outputs` scores: each output's intercept (0 without intercepts) plus the dot
    /// product of a row's `features` values with that output's coefficients.
    private static func linearScores(_ v: [Float], rows n: Int, features c: Int, _ coef: [Float], _ intercepts: [Float],
                                     outputs: Int) -> [Float] {
        var out = [Float](repeating: 0, count: n * outputs)
        for i in 0..<n {
            for k in 0..<outputs {
                var s: Float = intercepts.isEmpty ? 0 : intercepts[k]
                for j in 0..<c { s += v[i * c + j] * coef[k * c + j] }
                out[i * outputs + k] = s
            }
        }
        return out
    }

    static let linearRegressor = OperatorSpec(name: "LinearRegressor", domain: ml, opsets: 1...5) { ctx in
        try ctx.inputs(1, 1)
        _ = try ctx.input(0, .numeric)
        guard let coef = try ctx.attributes.floats("coefficients") else { throw ctx.bad("needs attribute `coefficients`") }
        let intercepts = try ctx.attributes.floats("intercepts") ?? []
        let targets = try ctx.attributes.int("targets", default: 1)
        let post = try PostTransform.read(&ctx.attributes, ctx)
        guard targets > 0, coef.count % targets == 0, intercepts.isEmpty || intercepts.count == targets else {
            throw ctx.bad("\(coef.count) coefficients and \(intercepts.count) intercepts for \(targets) targets")
        }
        let c = coef.count / targets
        return (ClosureKernel { inputs in
            let x = try K.arg(inputs, 0)
            let (n, cx) = try rows(x)
            guard cx == c else { throw EngineError.runtime("input has \(cx) features; the model has \(c)") }
            var out = linearScores(try K.floats(x), rows: n, features: c, coef, intercepts, outputs: targets)
            post.apply(&out, rowLength: targets)
            return [Tensor(shape: [n, targets], floats: out)]
        }, [.float32])
    }

    static let normalizer = OperatorSpec(name: "Normalizer", domain: ml, opsets: 1...5) { ctx in
        try ctx.inputs(1, 1)
        _ = try ctx.input(0, .numeric)
        let norm = try ctx.attributes.string("norm", default: "MAX")
        guard ["MAX", "L1", "L2"].contains(norm) else { throw ctx.bad("norm `\(norm)` is not MAX, L1 or L2") }
        return (ClosureKernel { inputs in
            let x = try K.arg(inputs, 0)
            let (n, c) = try rows(x)
            var v = try K.floats(x)
            for i in 0..<n {
                let r = i * c..<(i + 1) * c
                let d: Float
                switch norm {
                case "MAX": d = v[r].max() ?? 1
                case "L1": d = v[r].reduce(0) { $0 + abs($1) }
                default: d = v[r].reduce(0) { $0 + $1 * $1 }.squareRoot()
                }
                if d != 0 { for j in r { v[j] /= d } }
            }
            return [Tensor(shape: x.shape, floats: v)]
        }, [.float32])
    }

    static let zipMap = OperatorSpec(name: "ZipMap", domain: ml, opsets: 1...5) { ctx in
        try ctx.inputs(1, 1)
        _ = try ctx.input(0, [.float32])
        guard let keys = try labels(&ctx.attributes, ctx) else { throw ctx.bad("needs classlabels_int64s or classlabels_strings") }
        return (ClosureKernel { inputs in
            var x = try K.arg(inputs, 0)
            let (n, c) = try rows(x)
            guard c == keys.count else { throw EngineError.runtime("\(c) columns for \(keys.count) keys") }
            x.shape = [n, c]
            x.mapKeys = keys
            return [x]
        }, [.float32])
    }

    static let arrayFeatureExtractor = OperatorSpec(name: "ArrayFeatureExtractor", domain: ml, opsets: 1...5) { ctx in
        try ctx.inputs(2, 2)
        let t = try ctx.input(0)
        _ = try ctx.input(1, [.int64])
        return (ClosureKernel { inputs in
            let x = try K.arg(inputs, 0)
            let idx = try K.ints(try K.arg(inputs, 1))
            guard x.rank >= 1 else { throw EngineError.runtime("input is a scalar") }
            let c = x.shape[x.rank - 1]
            for i in idx where i < 0 || i >= c { throw EngineError.runtime("index \(i) is out of range for \(c) columns") }
            let rowsN = x.count / max(c, 1)
            var sel: [Int] = []
            sel.reserveCapacity(rowsN * idx.count)
            for r in 0..<rowsN { for i in idx { sel.append(r * c + i) } }
            let shape = x.rank == 1 ? [1, idx.count] : Array(x.shape.dropLast()) + [idx.count]
            return [Tensor(shape: shape, storage: x.storage.gather(sel))]
        }, [t])
    }

    static let binarizer = OperatorSpec(name: "Binarizer", domain: ml, opsets: 1...5) { ctx in
        try ctx.inputs(1, 1)
        let t = try ctx.input(0, .numeric)
        let th = Double(try ctx.attributes.float("threshold", default: 0))
        return (ClosureKernel { inputs in
            let x = try K.arg(inputs, 0)
            let d = x.asDoubles()!.map { $0 > th ? 1.0 : 0.0 }
            return [try Cast.convert(Tensor(shape: x.shape, doubles: d), to: x.dtype)]
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
        return (ClosureKernel { inputs in
            let x = try K.arg(inputs, 0)
            let c = x.shape.last ?? 1
            switch x.storage {
            case .float32(let v):
                guard fv.count == 1 || fv.count == c else { throw EngineError.runtime("\(fv.count) imputed values for \(c) columns") }
                let out = v.enumerated().map { i, e in (e == rf || (rf.isNaN && e.isNaN)) ? fv[fv.count == 1 ? 0 : i % c] : e }
                return [Tensor(shape: x.shape, floats: out)]
            case .int64(let v):
                guard iv.count == 1 || iv.count == c else { throw EngineError.runtime("\(iv.count) imputed values for \(c) columns") }
                let out = v.enumerated().map { i, e in e == ri ? iv[iv.count == 1 ? 0 : i % c] : e }
                return [Tensor(shape: x.shape, int64s: out)]
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
        return (ClosureKernel { inputs in
            let x = try K.arg(inputs, 0)
            var out = [Float](repeating: 0, count: x.count * k)
            func set(_ e: Int, _ pos: Int?, _ what: String) throws {
                if let pos { out[e * k + pos] = 1 } else if !zeros { throw EngineError.runtime("category \(what) is unknown and zeros=0") }
            }
            if let s = x.strings {
                for (e, v) in s.enumerated() { try set(e, si[v], "`\(v)`") }
            } else {
                for (e, v) in x.asDoubles()!.enumerated() { try set(e, ii[Int64(v)], "\(v)") }
            }
            return [Tensor(shape: x.shape + [k], floats: out)]
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
            return (ClosureKernel { inputs in
                let x = try K.arg(inputs, 0)
                if let s = x.strings { return [Tensor(shape: x.shape, int64s: s.map { index[$0] ?? di })] }
                let v = try K.ints(x)
                return [Tensor(shape: x.shape, strings: v.map { $0 >= 0 && $0 < classes.count ? classes[$0] : ds })]
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
        return (ClosureKernel { inputs in
            let x = try K.arg(inputs, 0)
            let k: [Key] = switch x.storage {
            case .string(let s): s.map { .s($0) }
            case .int64(let i): i.map { .i($0) }
            case .float32(let f): f.map { .f($0) }
            default: []
            }
            let pos = k.map { map[$0] }
            switch values {
            case .string(let v): return [Tensor(shape: x.shape, strings: pos.map { $0.map { v[$0] } ?? ds })]
            case .int64(let v): return [Tensor(shape: x.shape, int64s: pos.map { $0.map { v[$0] } ?? di })]
            case .float32(let v): return [Tensor(shape: x.shape, floats: pos.map { $0.map { v[$0] } ?? df })]
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
