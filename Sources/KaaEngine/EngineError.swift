/// An error from loading or running a model: a ``Code`` for programs and a message for people
/// that says what was wrong and, where there is something to do, what to do.
public struct EngineError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What kind of failure this is, and so whose fault it is. New codes may be added.
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
        /// The caller's fault (a server answers 400): a call's inputs do not match the model's
        /// signature, or a kernel cannot compute with the values given — an index or axis out
        /// of range, shapes that do not broadcast, multiply or concatenate, an impossible
        /// Reshape, a negative dimension in a shape tensor, a result whose size overflows or
        /// exceeds what one tensor may hold, a string that does not parse as a number.
        public static let invalidInput = Code(name: "invalid-input")
        /// The call would hold more memory than its ``RunLimits`` allow (see
        /// ``Model/run(_:into:limits:)``). The message says how many bytes it needed, which
        /// step asked, and the limit. The caller's to change (a server answers 400): send a
        /// smaller batch, or raise the per-call limit.
        public static let limitExceeded = Code(name: "limit-exceeded")
        /// What can only be a bug in the engine or the model, never the caller's values: a
        /// kernel produced fewer outputs than its node names, an output was not computed, a
        /// value reached a kernel with a type the loader should have refused.
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

    /// `bytes` for a person: `1.5 GiB (1610612736 bytes)`, or just the bytes below 1 KiB.
    static func bytes(_ n: Int) -> String {
        guard n >= 1024 else { return "\(n) bytes" }
        let units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
        var v = Double(n) / 1024
        var u = 0
        while v >= 1024, u < units.count - 1 { v /= 1024; u += 1 }
        let rounded = (v * 10).rounded() / 10
        return "\(rounded == rounded.rounded() ? String(Int(rounded)) : String(rounded)) \(units[u]) (\(n) bytes)"
    }
}
