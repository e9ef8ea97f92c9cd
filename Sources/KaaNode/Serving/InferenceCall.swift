import Foundation
import Logging
import Synchronization

/// One inference call as any transport hands it to the node: the request as the client sent
/// it, not yet parsed, so that a call can be forwarded or recorded without re-encoding.
public struct InferenceCall: Sendable {
    /// The model's name.
    public var model: String
    /// A version number or an alias; nil resolves through `stable`, else the latest version.
    public var version: String?
    /// The Open Inference Protocol request body: JSON, or a JSON header and binary tensor data.
    public var body: [UInt8]
    /// The JSON header's length when binary tensor data follows it
    /// (`Inference-Header-Content-Length`); nil for a JSON body.
    public var headerLength: Int?
    /// When the node took the call, on the loop's clock (nanoseconds).
    public var received: UInt64
    /// When the call must have finished, on the same clock.
    public var deadline: UInt64

    public init(model: String, version: String?, body: [UInt8], headerLength: Int?, received: UInt64, deadline: UInt64) {
        self.model = model
        self.version = version
        self.body = body
        self.headerLength = headerLength
        self.received = received
        self.deadline = deadline
    }
}

/// Why a call was not answered with outputs: a code for programs (and for each transport to
/// map to its own status) and a message for people that says what was wrong and what to do.
public struct CallError: Error, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        public var description: String { name }

        /// The request is malformed or does not fit the model (HTTP 400).
        public static let badRequest = Code(name: "bad-request")
        /// No such model or version on this node (404).
        public static let notFound = Code(name: "not-found")
        /// The model exists but cannot serve now: unloaded, or its load failed (503).
        public static let unavailable = Code(name: "unavailable")
        /// The model's queue is full (429).
        public static let overloaded = Code(name: "overloaded")
        /// The deadline passed before the call could finish (504).
        public static let deadlineExceeded = Code(name: "deadline-exceeded")
        /// The node is stopping and did not finish the call within its shutdown grace (503).
        public static let shuttingDown = Code(name: "shutting-down")
        /// The node failed where it should not have: a bug (500).
        public static let `internal` = Code(name: "internal")
    }

    public var code: Code
    public var message: String
    public var description: String { "\(code): \(message)" }

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
}

/// A call's successful answer, encoded as the protocol's response body.
public struct CallAnswer: Sendable {
    public var body: [UInt8]
    /// The JSON header's length when binary output data follows it.
    public var headerLength: Int?

    public init(body: [UInt8], headerLength: Int?) {
        self.body = body
        self.headerLength = headerLength
    }
}

public typealias CallResult = Result<CallAnswer, CallError>

/// Where a call's result goes: a transport's answer (an HTTP responder, a peer frame).
public protocol CallSink: Sendable {
    /// Delivers the result; called once, from any thread.
    func deliver(_ result: CallResult)
}

/// Completes one call exactly once.
///
/// The first ``complete(_:)`` delivers the result; later ones are ignored and return false (a
/// call the shutdown answered may still finish on a worker). A completion dropped without
/// being completed is a bug that would leave a client hanging: debug builds trap, release
/// builds deliver an `internal` error and log it.
public final class CallCompletion: Sendable {
    private let sink: any CallSink
    /// Set by the first completion (one atomic exchange, no lock).
    private let completed = Atomic<Bool>(false)
    /// Names the call in the log when it is dropped.
    let label: String

    public init(_ sink: any CallSink, label: String) {
        self.sink = sink
        self.label = label
    }

    /// Delivers `result` unless the call was completed before; returns whether it did.
    @discardableResult
    public func complete(_ result: CallResult) -> Bool {
        guard completed.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else { return false }
        sink.deliver(result)
        return true
    }

    public var isCompleted: Bool { completed.load(ordering: .acquiring) }

    deinit {
        guard !completed.load(ordering: .acquiring) else { return }
        assertionFailure("call \(label) was dropped without an answer")
        Logger(label: "kaa.node").error("a call was dropped without an answer; answering it with an internal error",
                                        metadata: ["call": "\(label)"])
        sink.deliver(.failure(CallError(.internal, "the node lost track of this call (a bug); retry it")))
    }
}
