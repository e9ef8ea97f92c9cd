/// An error from loading or running a model: a ``Code`` for programs and a message for people
/// that says what was wrong and, where there is something to do, what to do.
public struct EngineError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What kind of failure this is. New codes may be added.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        public var description: String { name }

        /// The bytes are not a valid ONNX protobuf.
        public static let malformedModel = Code(name: "malformed-model")
        /// The graph is well-formed protobuf but not a valid graph (dangling, duplicate or
        /// cyclic names, wrong sizes, bad attributes).
        public static let invalidGraph = Code(name: "invalid-graph")
        /// The model uses an operator the engine lacks, or one at an opset it lacks.
        public static let unsupportedOperator = Code(name: "unsupported-operator")
        /// The model uses an opset, attribute value or dtype the engine lacks.
        public static let unsupported = Code(name: "unsupported")
        /// A call's inputs do not match the model's signature.
        public static let invalidInput = Code(name: "invalid-input")
        /// A kernel met values it cannot compute with (shape mismatch at run time, index
        /// out of range).
        public static let runtime = Code(name: "runtime")
    }

    /// The kind of failure.
    public var code: Code
    /// What was wrong, for a person.
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }

    static func malformed(_ m: String) -> EngineError { EngineError(.malformedModel, m) }
    static func invalid(_ m: String) -> EngineError { EngineError(.invalidGraph, m) }
    static func unsupported(_ m: String) -> EngineError { EngineError(.unsupported, m) }
    static func input(_ m: String) -> EngineError { EngineError(.invalidInput, m) }
    static func runtime(_ m: String) -> EngineError { EngineError(.runtime, m) }
}
