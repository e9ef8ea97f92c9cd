import Foundation
import Yams

/// A snapshot's pipeline spec, parsed: the named input fields a client sends, the steps that
/// turn them into graph inputs (pre), the steps applied to the graph's outputs (post), and
/// which outputs a caller receives. docs/pipeline.md describes the YAML.
///
/// Parsing checks everything that does not depend on the model: the YAML, the step kinds,
/// every key and the type of its value, field references, list lengths. What depends on the
/// model (graph input widths and dtypes, graph output names, label counts) is checked when a
/// ``Scorer`` binds the pipeline to a ``Model``.
public struct Pipeline: Sendable {
    /// One named input field a client sends, one tensor per field with the batch first.
    public struct Field: Sendable, Equatable {
        /// The field's name, as clients and batch files spell it.
        public var name: String
        /// The element type clients send (numeric fields also accept other numeric types).
        public var dtype: DType
        /// Values per row: 1 for a scalar field (`[N]` or `[N, 1]`), more for a vector field (`[N, width]`).
        public var width: Int
        /// The value of one row (shape `[width]`) used when the field is missing; `nil` makes the field required.
        public var defaultValue: Tensor?
    }

    /// The declared input fields, in the spec's order; empty when the client sends graph inputs.
    public let fields: [Field]
    /// The spec's text.
    public let source: String

    let pre: [PreStep]
    let post: [PostStep]
    /// The outputs a caller receives, renamed (`name`) from values (`from`); nil for all of them.
    let outputs: [(name: String, from: String)]?

    /// Whether the pipeline changes nothing (no fields, steps or output selection).
    public var isEmpty: Bool { fields.isEmpty && pre.isEmpty && post.isEmpty && outputs == nil }

    /// Parses and checks a pipeline spec. Throws ``PipelineError`` with code
    /// ``PipelineError/Code/invalidSpec`` naming the step (by section, index and kind), the
    /// key and the line at fault.
    ///
    /// The text is checked with ``YAMLSafety/check(_:what:maxBytes:maxDepth:)`` before it is
    /// parsed: a spec has at most 1 MiB, nests at most 64 levels and has no YAML anchors or
    /// aliases.
    public init(yaml: String) throws(PipelineError) {
        source = yaml
        do { try YAMLSafety.check(yaml, what: "pipeline specs") } catch {
            throw PipelineError(.invalidSpec, error.message)
        }
        let root: Node?
        do { root = try Yams.compose(yaml: yaml) } catch {
            throw PipelineError(.invalidSpec, "the pipeline is not valid YAML: \(Self.describe(error))")
        }
        guard let root else {
            fields = []; pre = []; post = []; outputs = nil
            return
        }
        if case .scalar(let s) = root, s.style == .plain, root.null != nil {
            fields = []; pre = []; post = []; outputs = nil
            return
        }
        var r = try SpecReader(root, what: "the pipeline")
        if let v = r.node("version") {
            guard v.int == 1 else { throw r.error("version", "this engine reads pipeline version 1, the spec says \(SpecReader.describe(v))", v) }
        }
        _ = try r.string("description")
        fields = try Self.parseFields(r.node("fields"))
        pre = try Self.parseSteps(r.node("pre"), section: "pre", parse: PreStep.parse)
        post = try Self.parseSteps(r.node("post"), section: "post", parse: PostStep.parse)
        outputs = try Self.parseOutputs(r.node("outputs"))
        try r.finish()
        try checkReferences()
    }

    static func describe(_ error: any Error) -> String {
        guard let y = error as? YamlError else { return "\(error)" }
        switch y {
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _), .composer(_, let problem, let mark, _):
            return "\(problem) at line \(mark.line), column \(mark.column)"
        default:
            return "\(y)"
        }
    }

    static func parseFields(_ node: Node?) throws(PipelineError) -> [Field] {
        guard let node else { return [] }
        guard let seq = node.sequence else {
            throw PipelineError(.invalidSpec, "`fields` must be a list of field names or mappings with `name`, got \(SpecReader.describe(node))\(SpecReader.at(node))", field: "fields")
        }
        var out: [Field] = []
        for (i, item) in seq.enumerated() {
            let field: Field
            if let name = item.scalar?.string {
                field = Field(name: name, dtype: .float32, width: 1, defaultValue: nil)
            } else {
                var r = try SpecReader(item, what: "fields item \(i + 1)")
                let name = try r.requiredString("name")
                let dtype = try r.string("dtype").map { (s) throws(PipelineError) -> DType in
                    guard let d = dtypeNamed(s) else {
                        throw PipelineError(.invalidSpec, "dtype `\(s)` is not one of float32, float64, int64, int32, bool, string\(SpecReader.at(item))", field: name)
                    }
                    return d
                } ?? .float32
                let width = try r.int("width") ?? 1
                guard width >= 1, width <= 1 << 24 else { throw PipelineError(.invalidSpec, "width \(width) must be between 1 and 16777216", field: name) }
                let def = try r.node("default").map { (v) throws(PipelineError) -> Tensor in
                    try defaultTensor(v, dtype: dtype, width: width, field: name)
                }
                _ = try r.string("description")
                try r.finish()
                field = Field(name: name, dtype: dtype, width: width, defaultValue: def)
            }
            guard !field.name.isEmpty else { throw PipelineError(.invalidSpec, "fields item \(i + 1) has an empty name\(SpecReader.at(item))") }
            if out.contains(where: { $0.name == field.name }) {
                throw PipelineError(.invalidSpec, "is declared twice in `fields`\(SpecReader.at(item))", field: field.name)
            }
            out.append(field)
        }
        return out
    }

    static func dtypeNamed(_ s: String) -> DType? {
        switch s.lowercased() {
        case "float32", "float", "fp32": .float32
        case "float64", "double", "fp64": .float64
        case "int64", "int": .int64
        case "int32": .int32
        case "bool": .bool
        case "string", "bytes": .string
        default: nil
        }
    }

    /// A field's default: a scalar (repeated over the width) or a list of `width` values.
    static func defaultTensor(_ v: Node, dtype: DType, width: Int, field: String) throws(PipelineError) -> Tensor {
        let items: [Node] = v.sequence.map(Array.init) ?? [v]
        if v.sequence != nil, items.count != width {
            throw PipelineError(.invalidSpec, "`default` has \(items.count) values; the field's width is \(width)\(SpecReader.at(v))", field: field)
        }
        func bad(_ n: Node) -> PipelineError {
            PipelineError(.invalidSpec, "`default` must be \(dtype == .string ? "a string" : dtype == .bool ? "true or false" : "a number") for a \(dtype) field, got \(SpecReader.describe(n))\(SpecReader.at(n))", field: field)
        }
        var doubles: [Double] = [], strings: [String] = [], bools: [Bool] = []
        for n in items {
            guard let s = n.scalar else { throw bad(n) }
            switch dtype {
            case .string: strings.append(s.string)
            case .bool:
                guard let b = n.bool else { throw bad(n) }
                bools.append(b)
            default:
                guard s.style == .plain, let d = n.float else { throw bad(n) }
                // An integer field's default must be an integer its dtype holds.
                if dtype == .int64, Int64(exactly: d) == nil { throw bad(n) }
                if dtype == .int32, Int32(exactly: d) == nil { throw bad(n) }
                if dtype == .uint8, UInt8(exactly: d) == nil { throw bad(n) }
                if dtype == .int8, Int8(exactly: d) == nil { throw bad(n) }
                doubles.append(d)
            }
        }
        func rep<T>(_ a: [T]) -> [T] { a.count == 1 && width > 1 ? Array(repeating: a[0], count: width) : a }
        let shape = [width]
        switch dtype {
        case .string: return Tensor(shape: shape, strings: rep(strings))
        case .bool: return Tensor(shape: shape, bools: rep(bools))
        case .float32: return Tensor(shape: shape, floats: rep(doubles).map(Float.init))
        case .float64: return Tensor(shape: shape, doubles: rep(doubles))
        case .int64: return Tensor(shape: shape, int64s: rep(doubles).map { Int64($0) })
        case .int32: return Tensor(shape: shape, int32s: rep(doubles).map { Int32($0) })
        case .uint8: return Tensor(shape: shape, uint8s: rep(doubles).map { UInt8($0) })
        case .int8: return Tensor(shape: shape, int8s: rep(doubles).map { Int8($0) })
        }
    }

    static func parseSteps<S>(_ node: Node?, section: String, parse: (inout SpecReader, String) throws(PipelineError) -> S) throws(PipelineError) -> [S] {
        guard let node else { return [] }
        guard let seq = node.sequence else {
            throw PipelineError(.invalidSpec, "`\(section)` must be a list of steps, each a mapping with `step: KIND`, got \(SpecReader.describe(node))\(SpecReader.at(node))", field: section)
        }
        var out: [S] = []
        for (i, item) in seq.enumerated() {
            let kind = item.mapping?[Node("step")]?.scalar?.string ?? "?"
            let at = PipelineError.Step(section: section, index: i + 1, kind: kind)
            var r = try SpecReader(item, what: "the step", step: at)
            guard r.node("step") != nil, kind != "?" else {
                throw PipelineError(.invalidSpec, "has no `step: KIND`\(SpecReader.at(item)); \(section) steps are \(section == "pre" ? PreStep.kinds : PostStep.kinds)", step: at, field: "step")
            }
            _ = r.node("description")
            out.append(try parse(&r, kind))
            try r.finish()
        }
        return out
    }

    static func parseOutputs(_ node: Node?) throws(PipelineError) -> [(name: String, from: String)]? {
        guard let node else { return nil }
        guard let seq = node.sequence else {
            throw PipelineError(.invalidSpec, "`outputs` must be a list of output names or mappings with `name` and `from`, got \(SpecReader.describe(node))\(SpecReader.at(node))", field: "outputs")
        }
        var out: [(name: String, from: String)] = []
        for (i, item) in seq.enumerated() {
            let entry: (name: String, from: String)
            if let s = item.scalar?.string {
                entry = (s, s)
            } else {
                var r = try SpecReader(item, what: "outputs item \(i + 1)")
                let name = try r.requiredString("name")
                entry = (name, try r.string("from") ?? name)
                try r.finish()
            }
            if out.contains(where: { $0.name == entry.name }) {
                throw PipelineError(.invalidSpec, "output `\(entry.name)` is listed twice in `outputs`\(SpecReader.at(item))", field: "outputs")
            }
            out.append(entry)
        }
        guard !out.isEmpty else { throw PipelineError(.invalidSpec, "`outputs` is empty; list at least one output or leave the key out for all of them", field: "outputs") }
        return out
    }

    /// Follows the pre steps through the values they read and write: every value a step reads
    /// exists by then, with a dtype and width the step can take.
    func checkReferences() throws(PipelineError) {
        var values: [String: PreValue] = [:]
        for f in fields { values[f.name] = PreValue(dtype: f.dtype, width: f.width) }
        var read = Set<String>()
        for step in pre {
            for name in step.reads {
                guard values[name] != nil else {
                    let known = values.keys.sorted().map { "`\($0)`" }.joined(separator: ", ")
                    throw PipelineError(.invalidSpec, "reads `\(name)`, which is neither a declared field nor written by an earlier pre step; known: \(known.isEmpty ? "none (declare it under `fields`)" : known)", step: step.at, field: name)
                }
                read.insert(name)
            }
            for (name, value) in try step.outputs(values) { values[name] = value }
        }
        for f in fields where !read.contains(f.name) {
            throw PipelineError(.invalidSpec, "is declared but no pre step reads it; add it to a `select` step or remove it", field: f.name)
        }
        if !fields.isEmpty, !pre.contains(where: { if case .select = $0.op { true } else { false } }) {
            throw PipelineError(.invalidSpec, "the pipeline declares fields but no `select` step puts them into a graph input", field: "pre")
        }
    }
}

/// A value between pre steps: a `[N, width]` block of one dtype.
struct PreValue: Equatable {
    var dtype: DType
    var width: Int
}
