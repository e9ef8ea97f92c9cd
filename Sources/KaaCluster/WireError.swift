/// Bytes from the network that could not be decoded or authenticated. Never fatal: the packet
/// is dropped and the message says what was wrong.
public struct WireError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What kind of failure, for callers that count them (metrics) or match on them.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        public var description: String { name }
        public static let truncated = Code(name: "truncated")
        public static let malformed = Code(name: "malformed")
        public static let unsupportedVersion = Code(name: "unsupportedVersion")
        public static let unknownKind = Code(name: "unknownKind")
        public static let authenticationFailed = Code(name: "authenticationFailed")
        public static let encryptionMismatch = Code(name: "encryptionMismatch")
        public static let invalidKey = Code(name: "invalidKey")
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}
