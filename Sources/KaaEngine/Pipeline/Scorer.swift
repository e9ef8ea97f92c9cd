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
/// Immutable and `Sendable`: any number of threads may call ``run(_:limits:)`` at once.
public final class Scorer: Sendable {
    /// What a call sends: the pipeline's fields (batch dimension `N` first), then any graph
    /// inputs the pipeline does not fill, as the model declares them.
    public let inputs: [TensorSignature]
    /// What a call returns, in order. A sequence of maps (ZipMap's output) is a tensor
    /// `[N, keys]` whose ``Tensor/mapKeys`` are set, as from ``Model/run(_:limits:)``.
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
            if case .fixed(let n) = d {
                let (p, overflow) = fixed.multipliedReportingOverflow(by: n)
                guard !overflow, p <= Limits.maxElements else {
                    throw fail("into", "graph input `\(into)` \(describe) declares more than \(Limits.maxElements) values per row")
                }
                fixed = p
            } else {
                open.append(i)
            }
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

    /// The most elements one input of the probe run may have, and what that run may hold: a
    /// model whose one row needs more is bound by its signatures alone.
    static let probeElements = 1 << 22
    static let probeLimits = RunLimits(maxBytes: 256 << 20)

    /// What is known of the graph's outputs: their signatures, completed by one run on a row
    /// of zeros (widths and map keys that signatures leave open). When that run fails, or its
    /// row would be too large (``probeElements``, ``probeLimits``), the signatures alone are
    /// used and the rest is checked at run time.
    static func graphOutputInfo(_ model: Model, selects: [String: Bound.Select]) -> [String: ValueInfo] {
        var probe: [String: Tensor]? = [:]
        for sig in model.inputs {
            let rest = selects[sig.name]?.rowShape ?? (sig.shape?.dropFirst().map { d in if case .fixed(let n) = d { n } else { 1 } } ?? [1])
            let shape = [1] + rest
            // A row the model declares absurdly wide is not made: the signatures are used.
            guard let count = try? K.count(shape), count <= Self.probeElements else { probe = nil; break }
            let storage: Tensor.Storage = switch sig.dtype ?? .float32 {
            case .float32: .float32(.init(repeating: 0, count: count))
            case .float64: .float64(.init(repeating: 0, count: count))
            case .int64: .int64(.init(repeating: 0, count: count))
            case .int32: .int32(.init(repeating: 0, count: count))
            case .bool: .bool(.init(repeating: false, count: count))
            case .string: .string(.init(repeating: "", count: count))
            case .uint8: .uint8(.init(repeating: 0, count: count))
            case .int8: .int8(.init(repeating: 0, count: count))
            }
            probe?[sig.name] = Tensor(shape: shape, storage: storage)
        }
        let ran = try? probe.map { try model.run($0, limits: Self.probeLimits) }
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
    /// post steps, and returns ``outputs`` by name. A batch of zero rows gives zero rows.
    ///
    /// Throws ``PipelineError``, never traps, whatever the inputs:
    /// ``PipelineError/Code/invalidInput`` when the inputs do not fit (the caller's fault: a
    /// missing field without default, a wrong dtype or shape, an unknown category, values the
    /// graph cannot compute with; ``PipelineError/row`` says which row when one row is at
    /// fault), ``PipelineError/Code/limitExceeded`` when the call would hold more memory than
    /// `limits` allow (by default ``RunLimits/default``, 1 GiB: the pre and post steps' blocks
    /// and the graph's run count together), ``PipelineError/Code/runtime`` when the graph fails
    /// on inputs the pipeline accepted for a reason that is not theirs.
    public func run(_ given: [String: Tensor], limits: RunLimits = .default) throws(PipelineError) -> [String: Tensor] {
        guard let b = bound else { return try runGraph(given, limits: limits) }
        var meter = CallMeter(limits)
        var frame: [String: Tensor] = [:]
        var graphInputs: [String: Tensor] = [:]
        var n: Int?
        for (name, t) in given {
            if let f = b.fields[name] {
                let block = try Self.block(t, field: f, meter: &meter)
                if let n, n != block.shape[0] {
                    throw PipelineError(.invalidInput, "has \(block.shape[0]) rows, other inputs have \(n); every input holds the same rows", field: name)
                }
                n = block.shape[0]
                frame[name] = block
            } else if b.passthrough.contains(name) {
                try Self.checkShape(t, field: name, send: nil)
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
            try meter.charge(rows &* d.count, of: d.dtype, step: nil, field: f.name)
            frame[f.name] = Self.repeated(d, rows: rows)
        }
        let rows = n ?? 0
        for step in b.pre {
            if case .select(let into, let fields, _) = step.op {
                let s = b.selects[into]!
                // New arrays: blocks converted to the graph input's dtype, and their
                // concatenation when there are several.
                for f in fields where frame[f]!.dtype != s.dtype {
                    try meter.charge(frame[f]!.count, of: .float64, step: step.at, field: f)
                    try meter.charge(frame[f]!.count, of: s.dtype, step: step.at, field: f)
                }
                if fields.count > 1 {
                    try meter.charge(fields.reduce(0) { $0 &+ frame[$1]!.count }, of: s.dtype, step: step.at, field: "into")
                }
                let storage = PreStep.concatenate(fields.map { frame[$0]! }, rows: rows, dtype: s.dtype)
                graphInputs[into] = Tensor(shape: [rows] + s.rowShape, storage: storage)
            } else {
                try step.apply(&frame, rows: rows, meter: &meter)
            }
        }
        var values: [String: Tensor] = [:]
        meter.held = try runGraph(graphInputs, into: &values, limits: limits, held: meter.held)
        for step in b.post { try step.apply(&values, meter: &meter) }
        var out: [String: Tensor] = [:]
        for o in b.outputs {
            guard let t = values[o.from] else { throw PipelineError(.runtime, "output `\(o.from)` was not computed") }
            out[o.name] = t
        }
        return out
    }

    /// Scores one batch as ``run(_:limits:)``, writing the outputs into `outputs`.
    ///
    /// Whatever `outputs` holds when called is handed back: a caller that keeps no other copy of
    /// the previous call's outputs lets their memory serve this call (see
    /// ``Model/run(_:into:limits:)``). Without a pipeline, such a call allocates no tensor memory.
    public func run(_ given: [String: Tensor], into outputs: inout [String: Tensor], limits: RunLimits = .default) throws(PipelineError) {
        if bound == nil { try runGraph(given, into: &outputs, limits: limits, held: 0) } else { outputs = try run(given, limits: limits) }
    }

    private func runGraph(_ inputs: [String: Tensor], limits: RunLimits) throws(PipelineError) -> [String: Tensor] {
        var out: [String: Tensor] = [:]
        try runGraph(inputs, into: &out, limits: limits, held: 0)
        return out
    }

    /// Runs the graph, the call already holding `held` bytes; returns what it holds after.
    @discardableResult
    private func runGraph(_ inputs: [String: Tensor], into out: inout [String: Tensor], limits: RunLimits, held: Int) throws(PipelineError) -> Int {
        do {
            return try model.run(inputs, into: &out, limits: limits, held: held)
        } catch let e as EngineError {
            let code: PipelineError.Code = switch e.code {
            case .invalidInput: .invalidInput
            case .limitExceeded: .limitExceeded
            default: .runtime
            }
            throw PipelineError(code, e.message)
        } catch {
            throw PipelineError(.runtime, "\(error)")
        }
    }

    /// A field's tensor as a `[N, width]` block of the field's dtype; a conversion is counted
    /// on `meter`.
    static func block(_ t: Tensor, field f: Pipeline.Field, meter: inout CallMeter) throws(PipelineError) -> Tensor {
        let want = f.width == 1 ? "[N] or [N, 1]" : "[N, \(f.width)]"
        guard t.mapKeys == nil, t.rank >= 1 else {
            throw PipelineError(.invalidInput, "has shape \(t.shape); send \(f.dtype) \(want)", field: f.name)
        }
        try checkShape(t, field: f.name, send: "\(f.dtype) \(want)")
        let rows = t.shape[0]
        let perRow = t.shape.dropFirst().reduce(1, *)
        guard perRow == f.width else {
            throw PipelineError(.invalidInput, "has shape \(t.shape) (\(perRow) value\(perRow == 1 ? "" : "s") per row); send \(f.dtype) \(want)", field: f.name)
        }
        if t.dtype != f.dtype, t.dtype != .string, f.dtype != .string {
            // Converted through float64: both arrays are made.
            try meter.charge(t.count, of: .float64, step: nil, field: f.name)
            try meter.charge(t.count, of: f.dtype, step: nil, field: f.name)
        }
        guard let storage = t.storage.converted(to: f.dtype) else {
            throw PipelineError(.invalidInput, "is \(t.dtype); send \(f.dtype) \(want)", field: f.name)
        }
        return Tensor(shape: [rows, f.width], storage: storage)
    }

    /// Refuses a shape no tensor may have (see ``K/count(_:_:)``): a negative dimension, or
    /// dimensions that multiply to more than 2^31 even where one is zero.
    static func checkShape(_ t: Tensor, field: String, send: String?) throws(PipelineError) {
        do { _ = try K.count(t.shape, "has shape \(t.shape)") } catch let e as EngineError {
            throw PipelineError(.invalidInput, e.message + (send.map { "; send \($0)" } ?? ""), field: field)
        } catch {
            throw PipelineError(.invalidInput, "\(error)", field: field)
        }
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
        case .uint8(let v): .uint8(rep(v))
        case .int8(let v): .int8(rep(v))
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
