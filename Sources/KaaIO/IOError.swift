internal import CLibUV

/// An I/O failure from the event loop, a socket or a timer, with what was being done.
///
/// The raw libuv code stays internal; callers match on ``Code``.
public struct IOError: Error, CustomStringConvertible, Sendable, Equatable {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        public var description: String { name }
        public static let connectionRefused = Code(name: "connection refused")
        public static let connectionReset = Code(name: "connection reset")
        public static let addressInUse = Code(name: "address in use")
        public static let addressNotAvailable = Code(name: "address not available")
        public static let timedOut = Code(name: "timed out")
        public static let endOfFile = Code(name: "end of file")
        public static let closed = Code(name: "closed")
        public static let canceled = Code(name: "canceled")
        public static let badAddress = Code(name: "bad address")
        public static let tooManyOpenFiles = Code(name: "too many open files")
        public static let other = Code(name: "I/O error")
    }

    public var code: Code
    /// What was being done and what went wrong, for people.
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// Wraps a negative libuv result; reads its name and text at once.
    init(uv rc: Int32, _ what: String) {
        let text = String(cString: uv_strerror(rc))
        let code: Code
        switch rc {
        case UV_ECONNREFUSED.rawValue: code = .connectionRefused
        case UV_ECONNRESET.rawValue, UV_EPIPE.rawValue: code = .connectionReset
        case UV_EADDRINUSE.rawValue: code = .addressInUse
        case UV_EADDRNOTAVAIL.rawValue: code = .addressNotAvailable
        case UV_ETIMEDOUT.rawValue: code = .timedOut
        case UV_EOF.rawValue: code = .endOfFile
        case UV_ECANCELED.rawValue: code = .canceled
        case UV_EINVAL.rawValue, UV_EAI_NONAME.rawValue, UV_EAI_AGAIN.rawValue: code = .badAddress
        case UV_EMFILE.rawValue, UV_ENFILE.rawValue: code = .tooManyOpenFiles
        default: code = .other
        }
        self.init(code, "\(what): \(text)")
    }

    public var description: String { message }
}

/// Throws ``IOError`` when a libuv call returned a negative code.
@inline(__always)
func uvCheck(_ rc: Int32, _ what: @autoclosure () -> String) throws(IOError) {
    if rc < 0 { throw IOError(uv: rc, what()) }
}
