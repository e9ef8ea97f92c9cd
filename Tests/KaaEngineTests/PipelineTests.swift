import Foundation
@testable import KaaEngine
import Testing

/// The pipeline: each step by hand, each validation error, and every sample pipeline against
/// its model and the onnxruntime reference outputs.
@Suite struct PipelineTests {
    // MARK: Helpers

    /// A value info with a symbolic batch dimension first (`N`) and `dims` after it.
    static func info(_ name: String, _ type: DType, _ dims: [Int64]) -> Onnx_ValueInfoProto {
        var v = Onnx_ValueInfoProto()
        v.name = name
        var t = Onnx_TypeProto.Tensor()
        t.elemType = Int32(type.rawValue)
        var s = Onnx_TensorShapeProto()
        var batch = Onnx_TensorShapeProto.Dimension()
        batch.dimParam = "N"
        s.dim = [batch] + dims.map { var d = Onnx_TensorShapeProto.Dimension(); d.dimValue = $0; return d }
        t.shape = s
        v.type.tensorType = t
        return v
    }

    /// A one-node model: `op` from input `X` to output `Y`, both `[N] + dims` of `type`.
    static func model(_ op: String = "Identity", _ type: DType = .float32, _ dims: [Int64] = [4],
                      output: [Int64]? = nil) throws -> Model {
        var m = Onnx_ModelProto()
        m.irVersion = 8
        var o = Onnx_OperatorSetIdProto()
        o.version = 17
        m.opsetImport = [o]
        var n = Onnx_NodeProto()
        n.opType = op
        n.input = ["X"]
        n.output = ["Y"]
        n.name = "node"
        m.graph.node = [n]
        m.graph.input = [info("X", type, dims)]
        m.graph.output = [info("Y", type, output ?? dims)]
        return try Model(onnx: m.serializedData())
    }

    static func floats(_ shape: [Int], _ v: [Float]) -> Tensor { Tensor(shape: shape, floats: v) }

    /// Runs the pre steps of `yaml` on `fields` (blocks `[N, width]`) without a model.
    static func pre(_ yaml: String, _ fields: [String: Tensor], rows: Int) throws -> [String: Tensor] {
        let p = try Pipeline(yaml: yaml)
        var frame = fields
        var meter = CallMeter(.default)
        for s in p.pre { try s.apply(&frame, rows: rows, meter: &meter) }
        return frame
    }

    /// Runs the post steps of `yaml` on `values` without a model.
    static func post(_ yaml: String, _ values: [String: Tensor]) throws -> [String: Tensor] {
        let p = try Pipeline(yaml: yaml)
        var frame = values
        var meter = CallMeter(.default)
        for s in p.post { try s.apply(&frame, meter: &meter) }
        return frame
    }

    /// The error `body` throws, as a `PipelineError`.
    static func error(_ body: () throws -> Void) -> PipelineError? {
        do { try body(); return nil } catch { return error as? PipelineError }
    }

    static func scorer(_ yaml: String, _ model: Model) throws -> Scorer {
        try Scorer(model: model, pipeline: Pipeline(yaml: yaml))
    }

    // MARK: Pre steps

    @Test func selectOrdersFieldsConvertsAndFillsDefaults() throws {
        let s = try Self.scorer("""
            fields:
              - a
              - {name: b, dtype: int64}
              - {name: v, width: 2, default: [7, 8]}
            pre:
              - step: select
                into: X
                fields: [v, b, a]
            """, Self.model())
        #expect(s.inputs.map(\.name) == ["a", "b", "v"])
        #expect(s.inputs[0].shape == [.symbolic("N")])
        #expect(s.inputs[2].shape == [.symbolic("N"), .fixed(2)])
        #expect(s.outputs.map(\.name) == ["Y"])
        #expect(s.defaults["v"] == Tensor(shape: [2], floats: [7, 8]))
        let y = try s.run([
            "a": Self.floats([2], [1, 2]),
            "b": Tensor(shape: [2, 1], int64s: [10, 20]),
            "v": Tensor(shape: [2, 2], doubles: [3, 4, 5, 6]),
        ])
        #expect(y["Y"] == Self.floats([2, 4], [3, 4, 10, 1, 5, 6, 20, 2]))
        // A missing field with a default takes it on every row.
        let d = try s.run(["a": Self.floats([2], [1, 2]), "b": Tensor(shape: [2], int64s: [10, 20])])
        #expect(d["Y"] == Self.floats([2, 4], [7, 8, 10, 1, 7, 8, 20, 2]))
        // A missing field without one is an error naming it.
        let e = try #require(Self.error { _ = try s.run(["a": Self.floats([2], [1, 2])]) })
        #expect(e.code == .invalidInput)
        #expect(e.field == "b")
        #expect(e.message.contains("field `b`") && e.message.contains("missing"), "\(e.message)")
        // Wrong dtype, wrong width, rows that disagree, unknown inputs.
        let wrongType = try #require(Self.error { _ = try s.run(["a": Tensor(shape: [1], strings: ["x"]), "b": Tensor(shape: [1], int64s: [1])]) })
        #expect(wrongType.field == "a" && wrongType.code == .invalidInput)
        let wrongWidth = try #require(Self.error { _ = try s.run(["a": Self.floats([1, 2], [1, 2]), "b": Tensor(shape: [1], int64s: [1])]) })
        #expect(wrongWidth.field == "a" && wrongWidth.message.contains("[N] or [N, 1]"), "\(wrongWidth.message)")
        let rows = try #require(Self.error { _ = try s.run(["a": Self.floats([1], [1]), "b": Tensor(shape: [2], int64s: [1, 2])]) })
        #expect(rows.message.contains("rows"), "\(rows.message)")
        let unknown = try #require(Self.error { _ = try s.run(["a": Self.floats([1], [1]), "b": Tensor(shape: [1], int64s: [1]), "zz": Self.floats([1], [1])]) })
        #expect(unknown.field == "zz")
    }

    @Test func scaleIsPerColumn() throws {
        let out = try Self.pre("""
            fields: [a, {name: v, width: 2}]
            pre:
              - step: scale
                fields: [a, v]
                mean: [1, 10, 100]
                scale: [2, 5, 0.5]
              - step: select
                into: X
                fields: [a, v]
            """, ["a": Self.floats([2, 1], [3, 5]), "v": Tensor(shape: [2, 2], doubles: [20, 99, 0, 101])], rows: 2)
        #expect(out["a"] == Self.floats([2, 1], [1, 2]))
        #expect(out["v"] == Tensor(shape: [2, 2], doubles: [2, -2, -2, 2]))
    }

    @Test func oneHotAndCategoricalIndex() throws {
        let yaml = """
            fields:
              - {name: color, dtype: string}
              - {name: size, dtype: int64}
            pre:
              - step: one_hot
                field: color
                categories: [red, green, blue]
                unknown: zeros
              - step: categorical
                field: size
                output: size_index
                categories: [36, 38, 40]
                unknown: -1
              - step: select
                into: X
                fields: [color, size_index]
                dtype: float32
            """
        let out = try Self.pre(yaml, ["color": Tensor(shape: [3, 1], strings: ["blue", "red", "mauve"]),
                                      "size": Tensor(shape: [3, 1], int64s: [40, 41, 36])], rows: 3)
        #expect(out["color"] == Self.floats([3, 3], [0, 0, 1, 1, 0, 0, 0, 0, 0]))
        #expect(out["size_index"] == Tensor(shape: [3, 1], int64s: [2, -1, 0]))
        let s = try Self.scorer(yaml, Self.model())
        let y = try s.run(["color": Tensor(shape: [3], strings: ["blue", "red", "mauve"]), "size": Tensor(shape: [3], int64s: [40, 41, 36])])
        #expect(y["Y"] == Self.floats([3, 4], [0, 0, 1, 2, 1, 0, 0, -1, 0, 0, 0, 0]))

        // The error policy names the step, the field and the row.
        let strict = """
            fields: [{name: color, dtype: string}]
            pre:
              - step: one_hot
                field: color
                categories: [red, green]
              - step: select
                into: X
                fields: [color]
            """
        let e = try #require(Self.error { _ = try Self.pre(strict, ["color": Tensor(shape: [2, 1], strings: ["red", "teal"])], rows: 2) })
        #expect(e.code == .invalidInput)
        #expect(e.step?.description == "pre step 1 (one_hot)")
        #expect(e.field == "color" && e.row == 1)
        #expect(e.message.contains("unknown category `teal`") && e.message.contains("`red`, `green`"), "\(e.message)")
    }

    @Test func textHashMatchesScikitLearnHashingVectorizer() throws {
        let url = SampleModelTests.root.appendingPathComponent("Tests/KaaEngineTests/Fixtures/pipeline/text-hash.json")
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
        let texts = json["texts"] as! [String]
        for c in json["cases"] as! [[String: Any]] {
            let args = c["args"] as! [String: Any]
            let width = c["width"] as! Int
            var yaml = "fields: [{name: text, dtype: string}]\npre:\n  - step: text_hash\n    field: text\n    width: \(width)\n"
            if let n = args["ngram_range"] as? [Int] { yaml += "    ngrams: [\(n[0]), \(n[1])]\n" }
            if let b = args["alternate_sign"] as? Bool { yaml += "    alternate_sign: \(b)\n" }
            if let b = args["binary"] as? Bool { yaml += "    binary: \(b)\n" }
            if let b = args["lowercase"] as? Bool { yaml += "    lowercase: \(b)\n" }
            if args.keys.contains("norm") { yaml += "    norm: \((args["norm"] as? String) ?? "none")\n" }
            yaml += "  - step: select\n    into: X\n    fields: [text]\n"
            let out = try Self.pre(yaml, ["text": Tensor(shape: [texts.count, 1], strings: texts)], rows: texts.count)
            let got = try #require(out["text"])
            #expect(got.shape == [texts.count, width])
            let want = (c["rows"] as! [[Double]]).flatMap { $0 }
            let values = try #require(got.floats)
            for (i, (g, w)) in zip(values, want).enumerated() {
                #expect(abs(Double(g) - w) <= 1e-6, "case \(c["name"]!) row \(i / width) column \(i % width): \(g), expected \(w)")
            }
        }
    }

    @Test func textHashByHand() throws {
        // Unsigned counts, no norm: "the" twice, "cat" once; bigrams join with a space.
        let h = TextHasher(width: 1 << 20, minN: 1, maxN: 2, alternateSign: false, norm: .none)
        var row = [Float](repeating: 0, count: h.width)
        row.withUnsafeMutableBufferPointer { h.hash("The cat, THE", into: $0) }
        func index(_ s: String) -> Int {
            var s = s
            let v = s.withUTF8 { TextHasher.murmur3(UnsafeRawBufferPointer($0)) }
            return Int(v.magnitude) % h.width
        }
        #expect(row[index("the")] == 2)
        #expect(row[index("cat")] == 1)
        #expect(row[index("the cat")] == 1 && row[index("cat the")] == 1)
        #expect(row.reduce(0, +) == 5)
        // Known MurmurHash3 x86_32 values (seed 0).
        func murmur(_ s: String) -> Int32 { var s = s; return s.withUTF8 { TextHasher.murmur3(UnsafeRawBufferPointer($0)) } }
        #expect(murmur("") == 0)
        #expect(UInt32(bitPattern: murmur("hello")) == 0x248b_fa47)
        #expect(TextHasher.tokens("a bc d_e f1 ü2", minLength: 2) == ["bc", "d_e", "f1", "ü2"])
    }

    // MARK: Post steps

    @Test func argmaxTopKSoftmaxThresholdLabelMap() throws {
        var scores = Self.floats([3, 3], [0.1, 0.7, 0.2, 0.5, 0.2, 0.5, 0.0, 0.1, 0.9])
        let out = try Self.post("""
            post:
              - {step: argmax, input: s, output: best}
              - {step: argmax, input: s, output: best_name, labels: [a, b, c]}
              - {step: top_k, input: s, k: 2, labels: [a, b, c], output: top}
              - {step: softmax, input: s, output: soft}
              - {step: label_map, input: best, output: mapped, labels: [x, y, z]}
              - {step: label_map, input: best_name, output: renamed, labels: {a: A, b: B}, default: other}
            """, ["s": scores])
        #expect(out["best"] == Tensor(shape: [3], int64s: [1, 0, 2]))
        #expect(out["best_name"] == Tensor(shape: [3], strings: ["b", "a", "c"]))
        // Ties keep the lower column first.
        #expect(out["top"] == Tensor(shape: [3, 2], strings: ["b", "c", "a", "c", "c", "b"]))
        #expect(out["top_scores"] == Self.floats([3, 2], [0.7, 0.2, 0.5, 0.5, 0.9, 0.1]))
        #expect(out["mapped"] == Tensor(shape: [3], strings: ["y", "x", "z"]))
        #expect(out["renamed"] == Tensor(shape: [3], strings: ["B", "A", "other"]))
        let soft = try #require(out["soft"]?.floats)
        #expect(abs(soft[0..<3].reduce(0, +) - 1) < 1e-6)
        #expect(abs(soft[0] - Float(exp(0.1) / (exp(0.1) + exp(0.7) + exp(0.2)))) < 1e-6)

        // Map keys (ZipMap) are the classes when no labels are given.
        scores.mapKeys = .int64([10, 20, 30])
        let keyed = try Self.post("post:\n  - {step: argmax, input: s, output: k}\n  - {step: top_k, input: s, k: 1, output: t}", ["s": scores])
        #expect(keyed["k"] == Tensor(shape: [3], int64s: [20, 10, 30]))
        #expect(keyed["t"] == Tensor(shape: [3, 1], int64s: [20, 10, 30]))

        // Threshold: one score per row, or the positive column of two.
        let t = try Self.post("""
            post:
              - {step: threshold, input: p, output: hit, threshold: 0.5}
              - {step: threshold, input: p2, output: named, labels: [no, yes]}
            """, ["p": Self.floats([3], [0.2, 0.5, 0.9]), "p2": Self.floats([2, 2], [0.9, 0.1, 0.3, 0.7])])
        #expect(t["hit"] == Tensor(shape: [3], int64s: [0, 1, 1]))
        #expect(t["named"] == Tensor(shape: [2], strings: ["no", "yes"]))

        // An index without a label names the row.
        let e = try #require(Self.error { _ = try Self.post("post:\n  - {step: label_map, input: i, labels: [a, b]}", ["i": Tensor(shape: [2], int64s: [1, 5])]) })
        #expect(e.code == .invalidInput && e.row == 1 && e.step?.description == "post step 1 (label_map)")
    }

    @Test func outputsPassThroughRenameAndSelect() throws {
        let model = try Self.model("Softmax", .float32, [3])
        // No pipeline: the graph itself.
        let plain = try Scorer(model: model, pipeline: nil)
        #expect(plain.inputs == model.inputs && plain.outputs == model.outputs)
        let empty = try Scorer(model: model, pipeline: Pipeline(yaml: ""))
        #expect(empty.inputs == model.inputs)
        // Post steps without selection: the graph's outputs, then what the steps write.
        let all = try Self.scorer("post:\n  - {step: argmax, input: Y, output: cls, labels: [a, b, c]}", model)
        #expect(all.inputs == model.inputs)
        #expect(all.outputs.map(\.name) == ["Y", "cls"])
        #expect(all.outputs[1].dtype == .string && all.outputs[1].shape == [.symbolic("N")])
        let r = try all.run(["X": Self.floats([1, 3], [0, 5, 0])])
        #expect(r["cls"] == Tensor(shape: [1], strings: ["b"]))
        // Selected and renamed.
        let some = try Self.scorer("""
            post:
              - {step: top_k, input: Y, k: 2, output: best}
            outputs:
              - {name: probabilities, from: Y}
              - best_scores
            """, model)
        #expect(some.outputs.map(\.name) == ["probabilities", "best_scores"])
        #expect(some.outputs[1].shape == [.symbolic("N"), .fixed(2)])
        #expect(try some.run(["X": Self.floats([1, 3], [0, 5, 0])]).keys.sorted() == ["best_scores", "probabilities"])
    }

    // MARK: Validation errors name the step and the field

    static func specError(_ yaml: String) -> PipelineError? { error { _ = try Pipeline(yaml: yaml) } }
    static func bindError(_ yaml: String, _ model: Model) -> PipelineError? { error { _ = try scorer(yaml, model) } }

    @Test func specErrors() throws {
        let unknownKind = try #require(Self.specError("fields: [a]\npre:\n  - step: select\n    into: X\n    fields: [a]\n  - step: normalise\n    fields: [a]\n"))
        #expect(unknownKind.code == .invalidSpec)
        #expect(unknownKind.message.hasPrefix("pre step 2 (normalise), field `step`: unknown pre step kind `normalise` (line 6)"), "\(unknownKind.message)")

        let misplaced = try #require(Self.specError("pre:\n  - step: argmax\n    input: y\n"))
        #expect(misplaced.message.contains("move it under `post`"), "\(misplaced.message)")

        let wrongType = try #require(Self.specError("fields: [a]\npre:\n  - step: scale\n    fields: [a]\n    mean: [zero]\n    scale: [1]\n"))
        #expect(wrongType.message.hasPrefix("pre step 1 (scale), field `mean`: item 1 must be a number"), "\(wrongType.message)")

        let k = try #require(Self.specError("post:\n  - step: top_k\n    input: y\n    k: two\n"))
        #expect(k.message.hasPrefix("post step 1 (top_k), field `k`: expected an integer"), "\(k.message)")

        let misspelt = try #require(Self.specError("fields: [a]\npre:\n  - step: scale\n    fields: [a]\n    meen: [0]\n    mean: [0]\n    scale: [1]\n"))
        #expect(misspelt.message.hasPrefix("pre step 1 (scale), field `meen`: unknown key `meen`"), "\(misspelt.message)")

        let lengths = try #require(Self.specError("fields: [a, b]\npre:\n  - step: scale\n    fields: [a, b]\n    mean: [0]\n    scale: [1, 1]\n  - step: select\n    into: X\n    fields: [a, b]\n"))
        #expect(lengths.message.hasPrefix("pre step 1 (scale), field `mean`: has 1 values for 2 columns"), "\(lengths.message)")

        let undeclared = try #require(Self.specError("fields: [a]\npre:\n  - step: select\n    into: X\n    fields: [a, b]\n"))
        #expect(undeclared.message.hasPrefix("pre step 1 (select), field `b`: reads `b`"), "\(undeclared.message)")

        let fieldType = try #require(Self.specError("fields: [a]\npre:\n  - step: one_hot\n    field: a\n    categories: [x]\n  - step: select\n    into: X\n    fields: [a]\n"))
        #expect(fieldType.message.hasPrefix("pre step 1 (one_hot), field `a`: is float32"), "\(fieldType.message)")

        let textType = try #require(Self.specError("fields: [a]\npre:\n  - step: text_hash\n    field: a\n    width: 8\n"))
        #expect(textType.message.hasPrefix("pre step 1 (text_hash), field `a`: is float32"), "\(textType.message)")

        let badDtype = try #require(Self.specError("fields:\n  - name: a\n    dtype: float16\n"))
        #expect(badDtype.field == "a" && badDtype.message.contains("float16"))

        let badDefault = try #require(Self.specError("fields:\n  - name: a\n    default: high\npre:\n  - {step: select, into: X, fields: [a]}\n"))
        #expect(badDefault.field == "a" && badDefault.message.contains("`default` must be a number"), "\(badDefault.message)")

        let unused = try #require(Self.specError("fields: [a, b]\npre:\n  - {step: select, into: X, fields: [a]}\n"))
        #expect(unused.field == "b" && unused.message.contains("no pre step reads it"))

        let topLevel = try #require(Self.specError("steps: []\n"))
        #expect(topLevel.message.contains("unknown key `steps`"), "\(topLevel.message)")

        let yaml = try #require(Self.specError("pre: [\n"))
        #expect(yaml.code == .invalidSpec && yaml.message.contains("not valid YAML"), "\(yaml.message)")

        let noKind = try #require(Self.specError("post:\n  - input: y\n"))
        #expect(noKind.message.hasPrefix("post step 1 (?), field `step`: has no `step: KIND`"), "\(noKind.message)")

        let thresholdLabels = try #require(Self.specError("post:\n  - {step: threshold, input: p, labels: [a, b, c]}\n"))
        #expect(thresholdLabels.message.hasPrefix("post step 1 (threshold), field `labels`"), "\(thresholdLabels.message)")
    }

    @Test func modelErrors() throws {
        let model = try Self.model() // X float32 [N, 4] -> Y
        let width = try #require(Self.bindError("fields: [a, b, c]\npre:\n  - {step: select, into: X, fields: [a, b, c]}\n", model))
        #expect(width.code == .incompatibleModel)
        #expect(width.message.hasPrefix("pre step 1 (select), field `fields`: make 3 values per row"), "\(width.message)")
        #expect(width.message.contains("takes 4 [N, 4]"), "\(width.message)")

        let into = try #require(Self.bindError("fields: [a]\npre:\n  - {step: select, into: input, fields: [a]}\n", model))
        #expect(into.message.hasPrefix("pre step 1 (select), field `into`: `input` is not an input of the graph; the graph takes `X`"), "\(into.message)")

        let stringInto = try #require(Self.bindError("fields: [{name: t, dtype: string, width: 4}]\npre:\n  - {step: select, into: X, fields: [t]}\n", model))
        #expect(stringInto.message.hasPrefix("pre step 1 (select), field `t`: is string; graph input `X` is float32"), "\(stringInto.message)")

        let dtype = try #require(Self.bindError("fields: [{name: a, width: 4}]\npre:\n  - {step: select, into: X, fields: [a], dtype: float64}\n", model))
        #expect(dtype.message.hasPrefix("pre step 1 (select), field `dtype`: is float64, but graph input `X` is float32"), "\(dtype.message)")

        let intModel = try Self.model("Identity", .int64, [2])
        let narrowing = try #require(Self.bindError("fields: [a, b]\npre:\n  - {step: select, into: X, fields: [a, b]}\n", intModel))
        #expect(narrowing.message.hasPrefix("pre step 1 (select), field `a`: is float32; graph input `X` is int64"), "\(narrowing.message)")

        let output = try #require(Self.bindError("post:\n  - {step: argmax, input: probabilities}\n", model))
        #expect(output.message.hasPrefix("post step 1 (argmax), field `input`: `probabilities` is not a graph output"), "\(output.message)")

        let labels = try #require(Self.bindError("post:\n  - {step: top_k, input: Y, k: 1, labels: [a, b, c]}\n", model))
        #expect(labels.message.hasPrefix("post step 1 (top_k), field `labels`: has 3 labels; `Y` has 4 columns"), "\(labels.message)")

        let k = try #require(Self.bindError("post:\n  - {step: top_k, input: Y, k: 5}\n", model))
        #expect(k.message.hasPrefix("post step 1 (top_k), field `k`: 5 is more than the 4 columns"), "\(k.message)")

        let selected = try #require(Self.bindError("outputs: [Z]\n", model))
        #expect(selected.field == "outputs" && selected.message.contains("`Z` is not a graph output"), "\(selected.message)")
    }

    // MARK: Sample pipelines against their models

    static func sample(_ name: String) throws -> Scorer {
        let dir = SampleModelTests.root.appendingPathComponent("snapshots/\(name)")
        let model = try Model(onnx: Data(contentsOf: dir.appendingPathComponent("model.onnx")))
        return try Scorer(model: model, pipeline: Pipeline(yaml: String(contentsOf: dir.appendingPathComponent("pipeline.yaml"), encoding: .utf8)))
    }

    /// Column `c` of a `[N, w]` float tensor as a field tensor `[N]`.
    static func column(_ t: Tensor, _ c: Int) -> Tensor {
        let w = t.shape[1]
        let v = t.floats!
        return Tensor(shape: [t.shape[0]], floats: (0..<t.shape[0]).map { v[$0 * w + c] })
    }

    static func expectSame(_ got: Tensor?, _ want: Tensor, _ what: String) {
        guard let got else { Issue.record("\(what) is missing"); return }
        let problems = SampleModelTests.compare(got, want)
        #expect(problems.isEmpty, "\(what): \(problems.joined(separator: "; "))")
    }

    @Test func irisNamedFieldsGiveTheReferenceProbabilities() throws {
        let s = try Self.sample("iris-logreg")
        let names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
        #expect(s.inputs.map(\.name) == names)
        #expect(s.outputs.map(\.name) == ["species", "probabilities", "top_species", "top_scores"])
        let x = try #require(SampleModelTests.load("iris-logreg", "inputs.json")["input"])
        let want = try SampleModelTests.load("iris-logreg", "outputs.json")
        var fields: [String: Tensor] = [:]
        for (i, n) in names.enumerated() { fields[n] = Self.column(x, i) }
        let got = try s.run(fields)
        Self.expectSame(got["probabilities"], want["output_probability"]!, "iris probabilities")
        let species = ["setosa", "versicolor", "virginica"]
        #expect(got["species"]?.strings == want["output_label"]!.int64s!.map { species[Int($0)] })
        #expect(got["top_species"]?.shape == [150, 2])
        let top = try #require(got["top_species"]?.strings)
        #expect(stride(from: 0, to: top.count, by: 2).map { top[$0] } == got["species"]?.strings)
        // One row at a time, the same answers.
        let one = try s.run(fields.mapValues { SampleModelTests.rowSlice($0, 77) })
        #expect(one["species"]?.strings == [got["species"]!.strings![77]])
    }

    @Test func digitsPixelsGiveTheReferenceProbabilities() throws {
        let s = try Self.sample("digits-mlp")
        #expect(s.inputs == [TensorSignature(name: "pixels", dtype: .float32, shape: [.symbolic("N"), .fixed(64)])])
        let x = try #require(SampleModelTests.load("digits-mlp", "inputs.json")["input"])
        let want = try SampleModelTests.load("digits-mlp", "outputs.json")
        let got = try s.run(["pixels": x])
        Self.expectSame(got["probabilities"], want["output_probability"]!, "digits probabilities")
        #expect(got["label"] == want["output_label"])
        let names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
        #expect(got["digit"]?.strings == want["output_label"]!.int64s!.map { names[Int($0)] })
    }

    @Test func diabetesNamedFieldsGiveTheReferencePrediction() throws {
        let s = try Self.sample("diabetes-gbr")
        let names = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
        #expect(s.inputs.map(\.name) == names)
        #expect(s.outputs.map(\.name) == ["progression"])
        let x = try #require(SampleModelTests.load("diabetes-gbr", "inputs.json")["input"])
        let want = try SampleModelTests.load("diabetes-gbr", "outputs.json")
        var fields: [String: Tensor] = [:]
        for (i, n) in names.enumerated() { fields[n] = Self.column(x, i) }
        Self.expectSame(try s.run(fields)["progression"], want["variable"]!, "diabetes progression")
    }

    @Test func wineNamedFieldsGiveTheReferenceProbabilities() throws {
        let s = try Self.sample("wine-forest")
        #expect(s.inputs.count == 13)
        let x = try #require(SampleModelTests.load("wine-forest", "inputs.json")["input"])
        let want = try SampleModelTests.load("wine-forest", "outputs.json")
        var fields: [String: Tensor] = [:]
        for (i, sig) in s.inputs.enumerated() { fields[sig.name] = Self.column(x, i) }
        let got = try s.run(fields)
        Self.expectSame(got["probabilities"], want["output_probability"]!, "wine probabilities")
        #expect(got["cultivar"]?.strings == want["output_label"]!.int64s!.map { "class_\($0)" })
    }

    @Test func newsTextGivesTheReferenceProbabilities() throws {
        let s = try Self.sample("news-text")
        #expect(s.inputs == [TensorSignature(name: "text", dtype: .string, shape: [.symbolic("N")])])
        let x = try #require(SampleModelTests.load("news-text", "inputs.json")["input"])
        let want = try SampleModelTests.load("news-text", "outputs.json")
        let got = try s.run(["text": Tensor(shape: [x.shape[0]], strings: x.strings!)])
        Self.expectSame(got["probabilities"], want["output_probability"]!, "news probabilities")
        let groups = ["food": "rec.food.cooking", "sports": "rec.sport", "tech": "comp.tech"]
        #expect(got["newsgroup"]?.strings == want["output_label"]!.strings!.map { groups[$0]! })
        #expect(got["top_newsgroups"]?.shape == [x.shape[0], 2])
    }

    /// An integer field's default must fit its dtype (1e300 for an int64 field once trapped
    /// converting it).
    @Test func integerDefaultsOutOfRangeAreRefused() throws {
        for (dtype, value) in [("int64", "1e300"), ("int64", "-1e19"), ("int32", "3000000000"), ("int64", ".inf"), ("int32", "1.5")] {
            let yaml = "fields: [{name: a, dtype: \(dtype), default: \(value)}]\npre: [{step: select, into: X, fields: [a]}]\n"
            let e = try #require(Self.error { _ = try Pipeline(yaml: yaml) }, "\(dtype) default \(value)")
            #expect(e.code == .invalidSpec && e.field == "a", "\(e)")
        }
        let ok = try Pipeline(yaml: "fields: [{name: a, dtype: int32, default: -2147483648}]\npre: [{step: select, into: X, fields: [a]}]\n")
        #expect(ok.fields[0].defaultValue == Tensor(shape: [1], int32s: [.min]))
    }

    /// A batch of no rows gives every output with no rows, through each sample's pipeline and
    /// model (the news text model once answered one row: StringNormalizer turned an empty
    /// input into one empty string).
    @Test(arguments: ["news-text", "iris-logreg", "digits-mlp", "wine-forest", "diabetes-gbr"])
    func zeroRowsGiveZeroRows(name: String) throws {
        let s = try Self.sample(name)
        var empty: [String: Tensor] = [:]
        for input in s.inputs {
            let width = input.shape?.dropFirst().reduce(1) { w, d in if case .fixed(let n) = d { w * n } else { w } } ?? 1
            let shape = width == 1 ? [0] : [0, width]
            empty[input.name] = Tensor.empty(shape, input.dtype ?? .float32)
        }
        let out = try s.run(empty)
        #expect(Set(out.keys) == Set(s.outputs.map(\.name)))
        for (k, t) in out { #expect(t.shape.first == 0 && t.count == 0, "\(name) output `\(k)` has shape \(t.shape)") }
        // And the model alone: the news model's raw input is [N, 1] strings.
        if name == "news-text" {
            let raw = try s.model.run(["input": Tensor(shape: [0, 1], strings: [])])
            for (k, t) in raw { #expect(t.shape.first == 0, "graph output `\(k)` has shape \(t.shape)") }
        }
    }

    @Test func samplePipelinesRefuseWrongLabelCounts() throws {
        let dir = SampleModelTests.root.appendingPathComponent("snapshots/iris-logreg")
        let model = try Model(onnx: Data(contentsOf: dir.appendingPathComponent("model.onnx")))
        let yaml = "fields: [a, b, c, d]\npre:\n  - {step: select, into: input, fields: [a, b, c, d]}\npost:\n  - {step: label_map, input: output_label, labels: [setosa, versicolor]}\n"
        let e = try #require(Self.bindError(yaml, model))
        #expect(e.message.hasPrefix("post step 1 (label_map), field `labels`: has 2 labels; `output_label` takes 3 classes"), "\(e.message)")
        let k = try #require(Self.bindError("post:\n  - {step: argmax, input: output_probability, labels: [a, b]}\n", model))
        #expect(k.message.hasPrefix("post step 1 (argmax), field `labels`: has 2 labels; `output_probability` has 3 columns"), "\(k.message)")
    }
}

extension Tensor {
    /// A tensor of `dtype` whose `shape` holds no elements.
    static func empty(_ shape: [Int], _ dtype: DType) -> Tensor {
        switch dtype {
        case .float32: Tensor(shape: shape, floats: [])
        case .float64: Tensor(shape: shape, doubles: [])
        case .int64: Tensor(shape: shape, int64s: [])
        case .int32: Tensor(shape: shape, int32s: [])
        case .bool: Tensor(shape: shape, bools: [])
        case .string: Tensor(shape: shape, strings: [])
        case .uint8: Tensor(shape: shape, uint8s: [])
        case .int8: Tensor(shape: shape, int8s: [])
        }
    }
}
