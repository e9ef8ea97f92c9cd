/// An error from parsing a pipeline spec, checking it against a model, or scoring through it.
///
/// The ``code`` says whose fault it is: ``Code/invalidInput`` and ``Code/limitExceeded`` are
/// the caller's (a request or a batch row; HTTP 400), ``Code/runtime`` is not (HTTP 500),
/// ``Code/invalidSpec`` and ``Code/incompatibleModel`` belong to whoever built the snapshot. The ``message`` names the
/// step (`pre step 2 (scale)`), the field and, for inputs, the row, and says what to do.
public struct PipelineError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What kind of failure this is. New codes may be added; switch with a `default`.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        public var description: String { name }

        /// The YAML does not parse, or a step is unknown, misspelled or has a value of the
        /// wrong type.
        public static let invalidSpec = Code(name: "invalid-spec")
        /// The spec is well-formed but disagrees with the model: a tensor of the wrong width
        /// or dtype, a graph input or output that does not exist, labels of the wrong length.
        public static let incompatibleModel = Code(name: "incompatible-model")
        /// The inputs of a call do not fit: a missing field, a wrong dtype or shape, an
        /// unknown category, a class index out of range of the labels, or values the graph
        /// cannot compute with (``EngineError/Code/invalidInput``).
        public static let invalidInput = Code(name: "invalid-input")
        /// The call would hold more memory than its ``RunLimits`` allow: the message says how
        /// much it needed, which step asked and the limit. The caller's to change: a smaller
        /// batch, or a higher per-call limit.
        public static let limitExceeded = Code(name: "limit-exceeded")
        /// The graph failed on inputs the pipeline accepted.
        public static let runtime = Code(name: "runtime")
    }

    /// Where in the spec an error is, when it is in one step.
    public struct Step: Sendable, Equatable, CustomStringConvertible {
        /// `pre` or `post`.
        public var section: String
        /// The step's position in its section, from 1.
        public var index: Int
        /// The step's kind (`scale`, `top_k`, ...), or `?` when it has none.
        public var kind: String

        public var description: String { "\(section) step \(index) (\(kind))" }
    }

    /// The kind of failure.
    public var code: Code
    /// What was wrong and what to do, for a person; includes ``step``, ``field`` and ``row``.
    public var message: String
    /// The step at fault, if the error is in one.
    public var step: Step?
    /// The spec key or input field at fault (`mean`, `sepal_length`), if there is one.
    public var field: String?
    /// What was wrong and what to do, without the step, field and row that ``message`` starts with.
    public var reason: String
    /// The row of the batch (from 0) whose value is at fault, for ``Code/invalidInput``
    /// errors that concern one row.
    public var row: Int?

    public init(_ code: Code, _ message: String, step: Step? = nil, field: String? = nil, row: Int? = nil) {
        self.code = code
        self.step = step
        self.field = field
        self.row = row
        self.reason = message
        var prefix: [String] = []
        if let step { prefix.append("\(step)") }
        if let field { prefix.append("field `\(field)`") }
        if let row { prefix.append("row \(row)") }
        self.message = prefix.isEmpty ? message : prefix.joined(separator: ", ") + ": " + message
    }

    public var description: String { "\(code): \(message)" }
}
