/// A model with its pipeline: the one entry point that online serving and `kaa batch` both
/// call, so a row scores the same either way.
///
/// ```swift
/// let scorer = try Scorer(model: model, pipeline: try Pipeline(yaml: manifest.pipeline!))
/// let out = try scorer.run(["sepal_length": Tensor(shape: [2], floats: [5.1, 6.7]), ...])
/// ```
///
/// ``inputs`` and ``outputs`` describe exactly what a caller sends and receives (publish them
/// as the model's metadata; check requests against them). With a pipeline the inputs are its
/// fields, one tensor per field with the batch first: `[N]` (also accepted: `[N, 1]`) for a
/// scalar field, `[N, width]` for a vector field; numeric fields accept any numeric dtype and
/// convert it. Without a pipeline a `Scorer` is the graph itself: its inputs and outputs are
/// the model's.
///
/// Immutable and `Sendable`: any number of threads may call ``run(_:)`` at once.
public final class Scorer: Sendable {
    /// What a call sends: the pipeline's fields (batch dimension `N` first), then any graph
    /// inputs the pipeline does not fill, as the model declares them.
    public let inputs: [TensorSignature]
    /// What a call returns, in order. A sequence of maps (ZipMap's output) is a tensor
    /// `[N, keys]` whose ``Tensor/mapKeys`` are set, as from ``Model/run(_:)``.
    public let outputs: [TensorSignature]
    /// The value of one row (shape `[width]`) of each input that may be left out: a missing
    /// field takes it for every row. Batch readers use it for a row that lacks the field.
    public let defaults: [String: Tensor]
    /// The model.
    public let model: Model
    /// The pipeline, if there is one.
    public let pipeline: Pipeline?

    private let bound: Bound?

    /// A pipeline checked against a model.
    struct Bound: Sendable {
        struct Select: Sendable {
            var fields: [String]
            var dtype: DType
            /// The graph input's dimensions after the batch.
            var rowShape: [Int]
        }
        var fields: [String: Pipeline.Field]
        var passthrough: Set<String>
        var selects: [String: Select]
        var pre: [PreStep]
        var post: [PostStep]
        /// Final output name and the value it comes from, in order.
        var outputs: [(name: String, from: String)]
    }

    /// Binds `pipeline` to `model` and checks that they fit: every `select` fills a graph
    /// input with the width and dtype it declares, every post step reads a value that exists
    /// with a shape it can take, every label list has one label per class, every selected
    /// output exists. Throws ``PipelineError`` (code ``PipelineError/Code/incompatibleModel``
    /// or ``PipelineError/Code/invalidSpec``) naming the step and field at fault.
    public init(model: Model, pipeline: Pipeline?) throws(PipelineError) {
        self.model = model
        self.pipeline = pipeline
        guard let pipeline, !pipeline.isEmpty else {
            inputs = model.inputs
            outputs = model.outputs
            defaults = [:]
            bound = nil
            return
        }
        let graphInputs = Dictionary(model.inputs.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })

        // Pre: follow the values step by step; each select fills one graph input.
        var values: [String: PreValue] = [:]
        for f in pipeline.fields { values[f.name] = PreValue(dtype: f.dtype, width: f.width) }
        var selects: [String: Bound.Select] = [:]
        for step in pipeline.pre {
            if case .select(let into, let fields, let explicit) = step.op {
                selects[into] = try Self.bindSelect(step, into: into, fields: fields, explicit: explicit, values: values, graphInputs: graphInputs, model: model, already: selects)
            }
            for (name, v) in try step.outputs(values) { values[name] = v }
        }
        let passthrough = model.inputs.filter { selects[$0.name] == nil }
        for p in passthrough where pipeline.fields.contains(where: { $0.name == p.name }) {
            throw PipelineError(.incompatibleModel, "is both a pipeline field and a graph input that no `select` fills; rename the field or select it into `\(p.name)`", field: p.name)
        }
        var signatures = pipeline.fields.map { f in
            TensorSignature(name: f.name, dtype: f.dtype, shape: f.width == 1 ? [PostStep.batch] : [PostStep.batch, .fixed(f.width)])
        }
        signatures += passthrough
        inputs = signatures
        var defs: [String: Tensor] = [:]
        for f in pipeline.fields { if let d = f.defaultValue { defs[f.name] = d } }
        defaults = defs

        // Post: what the graph's outputs are, then each step in order.
        var infos = Self.graphOutputInfo(model, selects: selects)
        var graphOrder = model.outputs.map(\.name)
        for step in pipeline.post {
            try step.bind(&infos)
            for w in step.writes where !graphOrder.contains(w) { graphOrder.append(w) }
        }
        let selection: [(name: String, from: String)]
        if let chosen = pipeline.outputs {
            for o in chosen where infos[o.from] == nil {
                let known = graphOrder.map { "`\($0)`" }.joined(separator: ", ")
                throw PipelineError(.incompatibleModel, "`\(o.from)` is not a graph output or the output of a post step; known: \(known)", field: "outputs")
            }
            selection = chosen
        } else {
            selection = graphOrder.map { ($0, $0) }
        }
        outputs = selection.map { o in
            var s = infos[o.from]!.signature
            s.name = o.name
            return s
        }
        bound = Bound(fields: Dictionary(pipeline.fields.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a }),
                      passthrough: Set(passthrough.map(\.name)), selects: selects,
                      pre: pipeline.pre, post: pipeline.post, outputs: selection)
    }

    static func bindSelect(_ step: PreStep, into: String, fields: [String], explicit: DType?, values: [String: PreValue],
                           graphInputs: [String: TensorSignature], model: Model, already: [String: Bound.Select]) throws(PipelineError) -> Bound.Select {
        func fail(_ field: String, _ m: String) -> PipelineError { PipelineError(.incompatibleModel, m, step: step.at, field: field) }
        guard let sig = graphInputs[into] else {
            throw fail("into", "`\(into)` is not an input of the graph; the graph takes \(model.inputs.map { "`\($0.name)`" }.joined(separator: ", "))")
        }
        guard already[into] == nil else { throw fail("into", "graph input `\(into)` is already filled by an earlier `select`") }
        _ = try step.outputs(values) // dtype kinds agree among the fields
        let width = fields.reduce(0) { $0 + values[$1]!.width }
        let graphType = sig.dtype ?? .float32
        let describe = InferenceShape.describe(sig)
        // Dtype: an explicit dtype must be the graph's; otherwise the fields must convert safely.
        if let explicit, explicit != graphType {
            throw fail("dtype", "is \(explicit), but graph input `\(into)` is \(graphType) \(describe)")
        }
        for f in fields {
            let d = values[f]!.dtype
            if (d == .string) != (graphType == .string) {
                throw fail(f, "is \(d); graph input `\(into)` is \(graphType) \(describe)")
            }
            if explicit == nil, !Self.widens(d, to: graphType) {
                throw fail(f, "is \(d); graph input `\(into)` is \(graphType) \(describe); set `dtype: \(graphType)` on the step to convert")
            }
        }
        // Width: the graph input's dimensions after the batch hold `width` values per row.
        guard let dims = sig.shape else { return Bound.Select(fields: fields, dtype: graphType, rowShape: [width]) }
        guard !dims.isEmpty else { throw fail("into", "graph input `\(into)` is a scalar \(describe); a select makes a batch of rows") }
        let rest = Array(dims.dropFirst())
        var fixed = 1
        var open: [Int] = []
        for (i, d) in rest.enumerated() {
            if case .fixed(let n) = d { fixed *= n } else { open.append(i) }
        }
        var rowShape = rest.map { d -> Int in if case .fixed(let n) = d { n } else { 0 } }
        if open.isEmpty {
            guard fixed == width else {
                throw fail("fields", "make \(width) value\(width == 1 ? "" : "s") per row (\(fields.map { "`\($0)`\(values[$0]!.width > 1 ? "[\(values[$0]!.width)]" : "")" }.joined(separator: ", "))); graph input `\(into)` takes \(fixed) \(describe)")
            }
        } else if open.count == 1, fixed > 0, width % fixed == 0 {
            rowShape[open[0]] = width / fixed
        } else {
            throw fail("into", "graph input `\(into)` \(describe) leaves more than one dimension open; cannot tell how to shape \(width) values per row")
        }
        return Bound.Select(fields: fields, dtype: graphType, rowShape: rowShape)
    }

    /// Whether values of `a` convert to `b` without losing what they mean.
    static func widens(_ a: DType, to b: DType) -> Bool {
        if a == b { return true }
        switch b {
        case .float32, .float64: return a != .string
        case .int64: return a == .int32 || a == .bool
        case .int32: return a == .bool
        default: return false
        }
    }

    /// What is known of the graph's outputs: their signatures, completed by one run on a row
    /// of zeros (widths and map keys that signatures leave open). When that run fails, the
    /// signatures alone are used and the rest is checked at run time.
    static func graphOutputInfo(_ model: Model, selects: [String: Bound.Select]) -> [String: ValueInfo] {
        var probe: [String: Tensor] = [:]
        for sig in model.inputs {
            let rest = selects[sig.name]?.rowShape ?? (sig.shape?.dropFirst().map { d in if case .fixed(let n) = d { n } else { 1 } } ?? [1])
            let shape = [1] + rest
            let count = shape.reduce(1, *)
            let storage: Tensor.Storage = switch sig.dtype ?? .float32 {
            case .float32: .float32(.init(repeating: 0, count: count))
            case .float64: .float64(.init(repeating: 0, count: count))
            case .int64: .int64(.init(repeating: 0, count: count))
            case .int32: .int32(.init(repeating: 0, count: count))
            case .bool: .bool(.init(repeating: false, count: count))
            case .string: .string(.init(repeating: "", count: count))
            }
            probe[sig.name] = Tensor(shape: shape, storage: storage)
        }
        let ran = try? model.run(probe)
        var infos: [String: ValueInfo] = [:]
        for sig in model.outputs {
            var info = ValueInfo(dtype: sig.dtype, signature: sig)
            if let t = ran?[sig.name] {
                info.dtype = t.dtype
                info.rank = t.mapKeys != nil ? 2 : t.rank
                info.width = t.rank >= 2 ? t.shape[1] : 1
                info.keys = t.mapKeys
                if info.rank! > 2 { info.width = nil }
            } else if sig.isSequenceOfMaps {
                info.rank = 2
            } else if let dims = sig.shape {
                info.rank = dims.count
                if dims.count == 1 { info.width = 1 }
                if dims.count == 2, case .fixed(let w) = dims[1] { info.width = w }
            }
            infos[sig.name] = info
        }
        // A classifier's label output takes the classes that its probability map is keyed by.
        let maps = infos.values.compactMap(\.keys)
        if maps.count == 1 {
            for (name, info) in infos where info.keys == nil && info.rank == 1 {
                switch (maps[0], info.dtype) {
                case (.int64, .int64?), (.string, .string?): infos[name]!.classes = maps[0]
                default: break
                }
            }
        }
        return infos
    }

    // MARK: Running

    /// Scores one batch: checks and converts the inputs, runs the pre steps, the graph and the
    /// post steps, and returns ``outputs`` by name.
    ///
    /// Throws ``PipelineError``: ``PipelineError/Code/invalidInput`` when the inputs do not
    /// fit (the caller's fault: a missing field without default, a wrong dtype or shape, an
    /// unknown category; ``PipelineError/row`` says which row when one row is at fault),
    /// ``PipelineError/Code/runtime`` when the graph fails on inputs the pipeline accepted.
    public func run(_ given: [String: Tensor]) throws(PipelineError) -> [String: Tensor] {
        guard let b = bound else { return try runGraph(given) }
        var frame: [String: Tensor] = [:]
        var graphInputs: [String: Tensor] = [:]
        var n: Int?
        for (name, t) in given {
            if let f = b.fields[name] {
                let block = try Self.block(t, field: f)
                if let n, n != block.shape[0] {
                    throw PipelineError(.invalidInput, "has \(block.shape[0]) rows, other inputs have \(n); every input holds the same rows", field: name)
                }
                n = block.shape[0]
                frame[name] = block
            } else if b.passthrough.contains(name) {
                graphInputs[name] = t
            } else {
                throw PipelineError(.invalidInput, "is not an input of this model; it takes \(inputs.map { "`\($0.name)`" }.joined(separator: ", "))", field: name)
            }
        }
        for f in pipeline!.fields where frame[f.name] == nil {
            guard let d = f.defaultValue else {
                throw PipelineError(.invalidInput, "is missing and has no default; send it as \(f.dtype) \(f.width == 1 ? "[N]" : "[N, \(f.width)]")", field: f.name)
            }
            guard let rows = n ?? graphInputs.values.first?.shape.first else {
                throw PipelineError(.invalidInput, "no input was given; send at least one of \(inputs.map { "`\($0.name)`" }.joined(separator: ", "))")
            }
            n = rows
            frame[f.name] = Self.repeated(d, rows: rows)
        }
        let rows = n ?? 0
        for step in b.pre {
            if case .select(let into, let fields, _) = step.op {
                let s = b.selects[into]!
                let storage = PreStep.concatenate(fields.map { frame[$0]! }, rows: rows, dtype: s.dtype)
                graphInputs[into] = Tensor(shape: [rows] + s.rowShape, storage: storage)
            } else {
                try step.apply(&frame, rows: rows)
            }
        }
        var values = try runGraph(graphInputs)
        for step in b.post { try step.apply(&values) }
        var out: [String: Tensor] = [:]
        for o in b.outputs {
            guard let t = values[o.from] else { throw PipelineError(.runtime, "output `\(o.from)` was not computed") }
            out[o.name] = t
        }
        return out
    }

    /// Scores one batch as ``run(_:)``, writing the outputs into `outputs`.
    ///
    /// Whatever `outputs` holds when called is handed back: a caller that keeps no other copy of
    /// the previous call's outputs lets their memory serve this call (see
    /// ``Model/run(_:into:)``). Without a pipeline, such a call allocates no tensor memory.
    public func run(_ given: [String: Tensor], into outputs: inout [String: Tensor]) throws(PipelineError) {
        if bound == nil { try runGraph(given, into: &outputs) } else { outputs = try run(given) }
    }

    private func runGraph(_ inputs: [String: Tensor]) throws(PipelineError) -> [String: Tensor] {
        var out: [String: Tensor] = [:]
        try runGraph(inputs, into: &out)
        return out
    }

    private func runGraph(_ inputs: [String: Tensor], into out: inout [String: Tensor]) throws(PipelineError) {
        do {
            try model.run(inputs, into: &out)
        } catch let e as EngineError {
            throw PipelineError(e.code == .invalidInput ? .invalidInput : .runtime, e.message)
        } catch {
            throw PipelineError(.runtime, "\(error)")
        }
    }

    /// A field's tensor as a `[N, width]` block of the field's dtype.
    static func block(_ t: Tensor, field f: Pipeline.Field) throws(PipelineError) -> Tensor {
        let want = f.width == 1 ? "[N] or [N, 1]" : "[N, \(f.width)]"
        guard t.mapKeys == nil, t.rank >= 1 else {
            throw PipelineError(.invalidInput, "has shape \(t.shape); send \(f.dtype) \(want)", field: f.name)
        }
        let rows = t.shape[0]
        let perRow = t.shape.dropFirst().reduce(1, *)
        guard perRow == f.width else {
            throw PipelineError(.invalidInput, "has shape \(t.shape) (\(perRow) value\(perRow == 1 ? "" : "s") per row); send \(f.dtype) \(want)", field: f.name)
        }
        guard let storage = t.storage.converted(to: f.dtype) else {
            throw PipelineError(.invalidInput, "is \(t.dtype); send \(f.dtype) \(want)", field: f.name)
        }
        return Tensor(shape: [rows, f.width], storage: storage)
    }

    /// `row` (shape `[width]`) repeated `rows` times, as a `[rows, width]` block.
    static func repeated(_ row: Tensor, rows: Int) -> Tensor {
        let w = row.count
        func rep<T>(_ v: [T]) -> [T] {
            var out: [T] = []
            out.reserveCapacity(rows * w)
            for _ in 0..<rows { out.append(contentsOf: v) }
            return out
        }
        let s: Tensor.Storage = switch row.storage {
        case .float32(let v): .float32(rep(v))
        case .float64(let v): .float64(rep(v))
        case .int64(let v): .int64(rep(v))
        case .int32(let v): .int32(rep(v))
        case .bool(let v): .bool(rep(v))
        case .string(let v): .string(rep(v))
        }
        return Tensor(shape: [rows, w], storage: s)
    }
}

/// Renders a signature's shape for messages: `[N, 4]`, `-1` for open dimensions.
enum InferenceShape {
    static func describe(_ sig: TensorSignature) -> String {
        guard let dims = sig.shape else { return "(no declared shape)" }
        return "[" + dims.map { d in if case .fixed(let n) = d { String(n) } else { "N" } }.joined(separator: ", ") + "]"
    }
}
