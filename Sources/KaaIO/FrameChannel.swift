import Dispatch
public import KaaCore

/// One message of the peer plane.
///
/// On the wire (big-endian, `docs/peer-frames.md`) each frame is a record: `u32 length`, then
/// `length` bytes that are the frame's body, sealed by the connection's record protection
/// (encrypted or authenticated; as they are on a connection without a cluster key). The body:
/// `u8 kind` · `u8 flags` · `u16 type` · `u64 id` · payload.
public struct Frame: Sendable, Equatable {
    public enum Kind: UInt8, Sendable {
        case request = 0
        case response = 1
        /// A response that failed: the payload is a ``PeerErrorCode`` (u16) and a UTF-8 message.
        case error = 2
        /// A message that expects no answer.
        case oneWay = 3
        /// Bytes of a stream (a request's or a response's body that follows it).
        case chunk = 4
        /// A stream is complete.
        case end = 5
        /// The receiver of a stream grants its sender more bytes: the payload is a u32.
        case window = 6
        /// A stream is abandoned (by either side); the payload is an error as in ``error``.
        case cancel = 7
    }

    /// The request or response is followed by a stream of ``Kind/chunk`` frames and an ``Kind/end``.
    public static let streamFollows: UInt8 = 1
    /// On stream frames: the exchange was started by the frame's sender (its request's body,
    /// or its grant for a response), not by its receiver. Ids are chosen by each side for its own
    /// requests, so this tells the two exchanges that may share an id apart.
    static let senderStarted: UInt8 = 2
    /// On ``Kind/cancel`` frames: sent by the stream's receiver (it wants no more), not by its sender.
    static let fromReceiver: UInt8 = 4

    public var kind: Kind
    public var flags: UInt8
    /// What the payload is (ping, push-pull, fetch a snapshot, forward a call, ...).
    public var type: UInt16
    /// Chosen by the requester, echoed by the response and by every frame of its streams.
    public var id: UInt64
    public var payload: [UInt8]

    public init(kind: Kind, type: UInt16, id: UInt64, payload: [UInt8], flags: UInt8 = 0) {
        self.kind = kind
        self.flags = flags
        self.type = type
        self.id = id
        self.payload = payload
    }

    /// Bytes of a frame's body before its payload.
    static let bodyHeaderSize = 1 + 1 + 2 + 8
    /// Bytes of a whole unprotected record before the payload: the length field and the body header.
    static let headerSize = 4 + bodyHeaderSize

    var streams: Bool { flags & Frame.streamFollows != 0 }

    /// The frame's body (what a record protects).
    public func body() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(Frame.bodyHeaderSize + payload.count)
        out.append(kind.rawValue)
        out.append(flags)
        withUnsafeBytes(of: type.bigEndian) { out.append(contentsOf: $0) }
        withUnsafeBytes(of: id.bigEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: payload)
        return out
    }

    /// Appends the frame as an unprotected record (a connection without a cluster key).
    public func encode(into out: inout [UInt8]) {
        precondition(payload.count <= Int(UInt32.max) - Frame.bodyHeaderSize,
                     "a frame payload of \(payload.count) bytes does not fit a 32-bit length")
        withUnsafeBytes(of: UInt32(Frame.bodyHeaderSize + payload.count).bigEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: body())
    }

    /// Reads a frame's body; throws for an unknown kind or a body shorter than its header.
    public static func parse(_ body: ArraySlice<UInt8>) throws(FrameError) -> Frame {
        guard body.count >= bodyHeaderSize else {
            throw FrameError(.protocolViolation, "a frame of \(body.count) bytes is shorter than a frame header")
        }
        let s = body.startIndex
        guard let kind = Kind(rawValue: body[s]) else {
            throw FrameError(.protocolViolation, "unknown frame kind \(body[s])")
        }
        var type: UInt16 = 0, id: UInt64 = 0
        for i in 0..<2 { type = type << 8 | UInt16(body[s + 2 + i]) }
        for i in 0..<8 { id = id << 8 | UInt64(body[s + 4 + i]) }
        return Frame(kind: kind, type: type, id: id, payload: Array(body[(s + bodyHeaderSize)...]), flags: body[s + 1])
    }
}

/// What kind of failure a peer reported, so a caller can tell them apart (retry elsewhere,
/// give up, report). Carried in ``Frame/Kind/error`` and ``Frame/Kind/cancel`` frames.
public struct PeerErrorCode: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// The peer does not have what was asked for (a snapshot, a model, a version).
    public static let notFound = PeerErrorCode(rawValue: 1)
    /// It has it but cannot serve it now (loading, unloaded, starting, stopping).
    public static let notReady = PeerErrorCode(rawValue: 2)
    /// It is over a limit (queue, connection, bytes in flight); retry later or elsewhere.
    public static let overloaded = PeerErrorCode(rawValue: 3)
    /// The deadline passed there.
    public static let deadlineExceeded = PeerErrorCode(rawValue: 4)
    /// The request is malformed or does not fit what it names.
    public static let badRequest = PeerErrorCode(rawValue: 5)
    /// The sender may not ask this.
    public static let unauthorized = PeerErrorCode(rawValue: 6)
    /// The peer failed where it should not have.
    public static let `internal` = PeerErrorCode(rawValue: 7)
    /// The peer does not know the frame type.
    public static let unknownType = PeerErrorCode(rawValue: 8)
    /// The frame broke the protocol; the connection closes.
    public static let protocolViolation = PeerErrorCode(rawValue: 9)

    static let names: [UInt16: String] = [1: "not found", 2: "not ready", 3: "overloaded", 4: "deadline exceeded",
                                          5: "bad request", 6: "unauthorized", 7: "internal", 8: "unknown type",
                                          9: "protocol violation"]
    public var description: String { PeerErrorCode.names[rawValue] ?? "code \(rawValue)" }

    /// An error payload: the code and the message.
    public static func payload(_ code: PeerErrorCode, _ message: String) -> [UInt8] {
        [UInt8(code.rawValue >> 8), UInt8(code.rawValue & 0xFF)] + Array(message.utf8.prefix(8 << 10))
    }

    public static func read(_ payload: [UInt8]) -> (PeerErrorCode, String) {
        guard payload.count >= 2 else { return (.internal, String(decoding: payload, as: UTF8.self)) }
        return (PeerErrorCode(rawValue: UInt16(payload[0]) << 8 | UInt16(payload[1])),
                String(decoding: payload[2...], as: UTF8.self))
    }
}

/// Why a frame exchange failed.
public struct FrameError: Error, CustomStringConvertible, Sendable {
    public struct Code: Hashable, Sendable {
        let name: String
        public static let connectFailed = Code(name: "connect failed")
        public static let closed = Code(name: "connection closed")
        public static let deadlineExceeded = Code(name: "deadline exceeded")
        public static let protocolViolation = Code(name: "protocol violation")
        /// The peer answered with an error; ``FrameError/remote`` says which kind.
        public static let remoteError = Code(name: "remote error")
        public static let overloaded = Code(name: "overloaded")
        /// A request's payload does not fit in a frame (``FrameServer/Configuration/maxFrameBytes``).
        public static let frameTooLarge = Code(name: "frame too large")
        /// The connection's opening failed: the peer lacks the cluster key, or speaks no common version.
        public static let handshakeFailed = Code(name: "handshake failed")
    }

    public var code: Code
    public var message: String
    /// For ``Code/remoteError``: the code the peer sent.
    public var remote: PeerErrorCode?
    public var description: String { message }

    public init(_ code: Code, _ message: String, remote: PeerErrorCode? = nil) {
        self.code = code
        self.message = message
        self.remote = remote
    }

    static func fromPeer(_ payload: [UInt8]) -> FrameError {
        let (code, message) = PeerErrorCode.read(payload)
        return FrameError(.remoteError, message, remote: code)
    }
}

/// Splits a byte stream into records (`u32 length`, then the body); refuses records over
/// `maxFrameBytes` (length field included).
///
/// It holds only the bytes that arrived: a record's declared length is checked as soon as its
/// four bytes are in, and never reserves memory by itself.
public struct FrameDecoder: Sendable {
    public let maxFrameBytes: Int
    /// The smallest body a record may have.
    let minimumBody: Int
    private var buffer: [UInt8] = []
    private var start = 0

    public init(maxFrameBytes: Int) { self.init(maxFrameBytes: maxFrameBytes, minimumBody: Frame.bodyHeaderSize) }

    init(maxFrameBytes: Int, minimumBody: Int) {
        self.maxFrameBytes = maxFrameBytes
        self.minimumBody = minimumBody
    }

    public mutating func append(_ bytes: UnsafeRawBufferPointer) { buffer.append(contentsOf: bytes) }

    /// Bytes received and not yet returned (an incomplete record, or records not asked for).
    public var bufferedBytes: Int { buffer.count - start }

    /// The whole length of the record being received (length field included), once its length
    /// field has arrived.
    public var pendingFrameLength: Int? { bufferedBytes >= 4 ? declaredLength + 4 : nil }

    /// The buffer's storage, for tests that check what a declared length alone costs.
    var storageCapacity: Int { buffer.capacity }

    private var declaredLength: Int {
        buffer.withUnsafeBytes { raw in Int(UInt32(bigEndian: raw.loadUnaligned(fromByteOffset: start, as: UInt32.self))) }
    }

    /// Takes `count` raw bytes off the front (the handshake's fixed-size messages), nil until
    /// that many have arrived.
    mutating func take(_ count: Int) -> [UInt8]? {
        guard bufferedBytes >= count else { return nil }
        let out = Array(buffer[start..<(start + count)])
        start += count
        compact()
        return out
    }

    /// The next complete record's body, nil when more bytes are needed. A length that breaks the
    /// protocol throws as soon as its four bytes are in.
    mutating func nextRecord() throws(FrameError) -> ArraySlice<UInt8>? {
        let available = buffer.count - start
        guard available >= 4 else { compact(); return nil }
        let length = declaredLength
        guard length >= minimumBody else {
            throw FrameError(.protocolViolation, "frame length \(length) is shorter than a frame header")
        }
        guard length <= maxFrameBytes - 4 else {
            throw FrameError(.protocolViolation, "frame of \(length + 4) bytes exceeds the limit of \(maxFrameBytes) bytes")
        }
        guard available >= length + 4 else { compact(); return nil }
        let body = buffer[(start + 4)..<(start + 4 + length)]
        start += length + 4
        return body
    }

    /// The next complete unprotected frame (a connection without a cluster key), nil when more
    /// bytes are needed.
    public mutating func next() throws(FrameError) -> Frame? {
        guard let body = try nextRecord() else { return nil }
        return try Frame.parse(body)
    }

    private mutating func compact() {
        if start == buffer.count {
            // Everything consumed: a large buffer (a large frame's) is not kept by an idle connection.
            if buffer.capacity > 64 << 10 { buffer = [] } else { buffer.removeAll(keepingCapacity: true) }
            start = 0
        } else if start > 64 << 10 {
            buffer.removeSubrange(0..<start)
            start = 0
        }
    }
}

/// Answers one request, once, from any thread; a second answer is dropped.
public struct FrameResponder: Sendable {
    let connection: LoopBound<FrameConnection>
    let kind: Frame.Kind
    let type: UInt16
    let id: UInt64
    /// Whether the request's body follows it as a stream (``attachBody(_:)``).
    public let hasBody: Bool

    init(connection: LoopBound<FrameConnection>, request: Frame) {
        self.connection = connection
        kind = request.kind
        type = request.type
        id = request.id
        hasBody = request.kind == .request && request.streams
    }

    public func respond(_ payload: [UInt8]) { send(Frame(kind: .response, type: type, id: id, payload: payload)) }

    /// Answers with an error the requester can tell apart by its code.
    public func fail(_ code: PeerErrorCode, _ message: String) {
        send(Frame(kind: .error, type: type, id: id, payload: PeerErrorCode.payload(code, message)))
    }

    private func send(_ frame: Frame) {
        guard kind == .request else { return }
        let connection = self.connection
        if connection.loop.inLoop { connection.value.answer(frame) } else { connection.loop.execute { connection.value.answer(frame) } }
    }

    /// Answers with `head` followed by a stream the returned writer sends; nil when the request
    /// was answered already or its connection ended. On the loop.
    public func respondStream(_ head: [UInt8]) -> FrameStreamWriter? {
        guard kind == .request else { return nil }
        return connection.value.answerStream(Frame(kind: .response, type: type, id: id, payload: head, flags: Frame.streamFollows))
    }

    /// Takes the request's body (``hasBody``): `receiver` gets its chunks in order. On the loop.
    public func attachBody(_ receiver: any FrameStreamReceiver) {
        connection.value.attach(receiver, to: StreamKey(id: id, mine: false))
    }
}

/// Takes a stream's chunks. Loop-confined: every call comes on the loop.
///
/// The next chunk comes only after `consumed` was called for the previous one, so a receiver
/// that hands chunks to a worker gets them one at a time, in order; calling it also grants the
/// sender more bytes (flow control), so a receiver that never calls it stops the stream.
public protocol FrameStreamReceiver: AnyObject {
    func receive(_ chunk: [UInt8], consumed: @escaping () -> Void)
    /// The stream ended: `nil` when it completed, else why it failed. Called once.
    func end(_ error: FrameError?)
}

/// Identifies a stream on a connection: the exchange's id, and whether this side started it.
struct StreamKey: Hashable {
    var id: UInt64
    var mine: Bool
}

/// Sends one stream's chunks as the receiver grants room. Loop-confined.
public final class FrameStreamWriter {
    /// The most bytes one chunk may carry.
    public static let maxChunkBytes = 1 << 20
    /// What a receiver may be sent before it grants more: each stream starts with this credit.
    public static let initialWindow = 4 << 20

    weak var connection: FrameConnection?
    let key: StreamKey
    let type: UInt16
    var credit = FrameStreamWriter.initialWindow
    private var waiting: (chunk: [UInt8], ready: () -> Void)?
    private(set) var done = false
    /// When the writer last sent or was granted bytes (loop milliseconds).
    var lastProgress: UInt64
    /// Called when the receiver cancelled the stream or the connection ended before ``finish()``.
    public var onCancel: ((FrameError) -> Void)?

    init(connection: FrameConnection, key: StreamKey, type: UInt16) {
        self.connection = connection
        self.key = key
        self.type = type
        lastProgress = connection.tcp.loop.nowMilliseconds
    }

    /// Whether a chunk waits for room (credit, or the socket's write queue).
    var isBlocked: Bool { waiting != nil }

    /// Sends `chunk` (at most ``maxChunkBytes``) as soon as there is room; `ready` runs (on the
    /// loop) when the writer can take the next one. A write after the stream ended is dropped.
    public func write(_ chunk: [UInt8], ready: @escaping () -> Void) {
        precondition(chunk.count <= FrameStreamWriter.maxChunkBytes, "a stream chunk of \(chunk.count) bytes is over \(FrameStreamWriter.maxChunkBytes)")
        precondition(waiting == nil, "write called again before the previous write's ready")
        guard !done else { return }
        waiting = (chunk, ready)
        pump()
    }

    /// Sends the waiting chunk when the receiver has room for it and the socket is not backed up.
    func pump() {
        guard let (chunk, ready) = waiting, let connection, !done else { return }
        guard credit >= chunk.count, connection.tcp.isWritable else { return }
        waiting = nil
        credit -= chunk.count
        lastProgress = connection.tcp.loop.nowMilliseconds
        connection.sendStream(.chunk, key: key, type: type, payload: chunk)
        ready()
    }

    func grant(_ bytes: Int) {
        credit += bytes
        if let connection { lastProgress = connection.tcp.loop.nowMilliseconds }
        pump()
    }

    /// The stream is complete.
    public func finish() {
        guard !done else { return }
        done = true
        connection?.sendStream(.end, key: key, type: type, payload: [])
        connection?.streamFinished(key)
    }

    /// Abandons the stream, telling the receiver why.
    public func fail(_ code: PeerErrorCode, _ message: String) {
        guard !done else { return }
        done = true
        connection?.sendStream(.cancel, key: key, type: type, payload: PeerErrorCode.payload(code, message))
        connection?.streamFinished(key)
    }

    /// The receiver cancelled, or the connection ended.
    func cancelled(_ error: FrameError) {
        guard !done else { return }
        done = true
        waiting = nil
        onCancel?(error)
        onCancel = nil
    }
}

/// An incoming stream: chunks held until its receiver takes them, one at a time.
final class StreamIn {
    var receiver: (any FrameStreamReceiver)?
    var queue: [[UInt8]] = []
    /// Bytes received and not yet consumed (queued, or with the receiver).
    var heldBytes = 0
    var delivering = false
    /// Bytes the sender may still send before it must wait for a grant.
    var window = FrameStreamWriter.initialWindow
    var consumedSinceGrant = 0
    /// `.some(nil)`: ended complete, `.some(error)`: failed; delivered once the queue is empty.
    var ending: FrameError??
    var lastChunkAt: UInt64
    init(now: UInt64) { lastChunkAt = now }
}

/// What one frame connection enforces; from its server's or client's configuration.
struct FrameLimits {
    var maxFrameBytes: Int
    var frameTimeout: Duration
    var minFrameRate: Int
    var idleTimeout: Duration
    var maxUnansweredRequests: Int
    /// Streams at once on one connection, both ways.
    var maxStreams: Int
    let frameTimeoutMs: UInt64
    let idleTimeoutMs: UInt64

    init(maxFrameBytes: Int, frameTimeout: Duration, minFrameRate: Int, idleTimeout: Duration,
         maxUnansweredRequests: Int, maxStreams: Int) {
        // A record's length field is 32 bits wide, and a stream chunk must fit in one.
        self.maxFrameBytes = min(max(maxFrameBytes, Frame.headerSize + 32), Int(UInt32.max))
        self.frameTimeout = frameTimeout
        self.minFrameRate = max(1, minFrameRate)
        self.idleTimeout = idleTimeout
        self.maxUnansweredRequests = max(1, maxUnansweredRequests)
        self.maxStreams = max(1, maxStreams)
        frameTimeoutMs = frameTimeout.millisecondsRoundedUp
        idleTimeoutMs = idleTimeout.millisecondsRoundedUp
    }

    /// How often the owner checks its connections' deadlines.
    var sweepInterval: Duration {
        let shortest = idleTimeoutMs > 0 ? min(frameTimeout, idleTimeout) : frameTimeout
        return min(.seconds(1), max(.milliseconds(10), shortest / 4))
    }
}

/// A multiplexed, authenticated frame connection: many requests in flight both ways, and
/// streams. Loop-confined.
///
/// It opens with the handshake (``PeerHandshake``): nothing is answered before the client has
/// proven it holds the cluster key, and a client does not send a request before the server has.
/// After it every frame travels in a record sealed by the connection's own keys.
///
/// It closes a connection whose handshake or frame does not arrive in time
/// (``FrameServer/Configuration/frameTimeout``) or that carries nothing for
/// ``FrameServer/Configuration/idleTimeout`` while nothing is in flight either way, when its owner
/// sweeps it. A peer that breaks the protocol gets an error frame with id 0 saying why, then the
/// connection closes.
public final class FrameConnection: TCPConnectionDelegate {
    public typealias Handler = @Sendable (Frame, FrameResponder) -> Void

    private enum Phase {
        case awaitingHello
        case awaitingReply(hello: [UInt8])
        case awaitingFinish(hello: [UInt8], reply: [UInt8], session: PeerHandshake.SessionKeys)
        case open
    }

    let tcp: TCPConnection
    private var decoder: FrameDecoder
    private let handler: Handler?
    let limits: FrameLimits
    let keys: PeerKeys
    private var phase: Phase
    private var inbound = RecordProtection.none
    private var outbound = RecordProtection.none
    /// The peer-plane version agreed on; 0 until the handshake completes.
    private(set) var version: UInt16 = 0
    /// Called once when the handshake completes (a client's waiting requests go out then).
    var onOpen: (() -> Void)?
    /// The server that accepted this connection, whose byte budget it draws on; nil for a
    /// client's. Strong: the server drops the connection when it closes, which breaks the cycle.
    var server: FrameServerState?
    private var nextID: UInt64 = 1
    private struct Pending {
        var completion: (Result<Frame, FrameError>) -> Void
        var timer: LoopTimer?
        /// Takes the response's stream, for a request that asked for one.
        var receiver: (any FrameStreamReceiver)?
    }
    private var pending: [UInt64: Pending] = [:]
    /// The peer's requests this side has not answered yet, with their payload sizes.
    private var answering: [UInt64: Int] = [:]
    private var outStreams: [StreamKey: FrameStreamWriter] = [:]
    private var inStreams: [StreamKey: StreamIn] = [:]
    /// Bytes counted in the server's budget: the decoder's, requests' being answered, and
    /// stream chunks not yet consumed.
    private(set) var partialBytes = 0
    private var answeringBytes = 0
    private var streamBytes = 0
    private let openedAt: UInt64
    /// When the first byte of the record being received arrived (loop milliseconds); 0 for none.
    private var frameStartedAt: UInt64 = 0
    /// When bytes last arrived.
    private var lastReceivedAt: UInt64 = 0
    /// When a frame last went either way, or bytes arrived.
    private var lastActivity: UInt64
    /// Frames received so far.
    private(set) var framesReceived: UInt64 = 0
    /// Past this many queued output bytes, new requests fail with ``FrameError/Code/overloaded``.
    let maxQueuedBytes: Int
    var onClose: (() -> Void)?
    private var closeReason: FrameError?
    /// Why the connection ended, once it has.
    var failure: FrameError? { closeReason }
    /// What the peer said (an error frame with id 0) before closing.
    private var peerReason: String?
    /// Closing: takes no more requests, answers nothing more.
    private var ending = false

    /// A connection this side opened (`client`) or accepted.
    init(tcp: TCPConnection, limits: FrameLimits, keys: PeerKeys, client: Bool, handler: Handler?) {
        self.tcp = tcp
        self.limits = limits
        self.keys = keys
        self.decoder = FrameDecoder(maxFrameBytes: limits.maxFrameBytes)
        self.handler = handler
        self.maxQueuedBytes = max(limits.maxFrameBytes * 2, 8 << 20)
        let now = tcp.loop.nowMilliseconds
        lastActivity = now
        openedAt = now
        if client {
            let hello = PeerHandshake.hello(keys: keys, nonce: PeerHandshake.nonce())
            phase = .awaitingReply(hello: hello)
            tcp.delegate = self
            tcp.write(hello)
        } else {
            phase = .awaitingHello
            tcp.delegate = self
        }
        tcp.startReading()
        LiveObjects.frameConnections.add(1, ordering: .relaxed)
    }

    deinit { LiveObjects.frameConnections.subtract(1, ordering: .relaxed) }

    public var isOpen: Bool { tcp.isOpen && !ending }
    /// Whether the handshake completed.
    var isEstablished: Bool { if case .open = phase { true } else { false } }
    public var inFlight: Int { pending.count }
    /// Requests of the peer not answered yet.
    var unanswered: Int { answering.count }
    /// Streams in progress, both ways.
    var streamCount: Int { outStreams.count + inStreams.count }
    /// The largest payload a frame on this connection may carry.
    var maxPayload: Int { limits.maxFrameBytes - Frame.headerSize - outbound.overhead }

    // MARK: requests

    /// Sends a request; `completion` runs once on the loop with the response or an error. With
    /// `receiver`, the request asks for a streamed response: `completion` gets its head, and the
    /// receiver its chunks. With `body`, the request's body follows as a stream the writer sends.
    public func request(type: UInt16, payload: [UInt8], deadline: Duration,
                        receiver: (any FrameStreamReceiver)? = nil, body: ((FrameStreamWriter) -> Void)? = nil,
                        completion: @escaping (Result<Frame, FrameError>) -> Void) {
        guard isOpen, isEstablished else {
            completion(.failure(closeReason ?? FrameError(.closed, "peer connection is closed")))
            return
        }
        guard payload.count <= maxPayload else {
            completion(.failure(FrameError(.frameTooLarge,
                "a request of \(payload.count) bytes does not fit in a frame (limit \(limits.maxFrameBytes) bytes)")))
            return
        }
        guard tcp.pendingWriteBytes + payload.count <= maxQueuedBytes else {
            completion(.failure(FrameError(.overloaded,
                "peer connection to \(tcp.remoteAddress.map(\.description) ?? "?") has \(tcp.pendingWriteBytes) bytes queued")))
            return
        }
        guard (receiver == nil && body == nil) || streamCount < limits.maxStreams else {
            completion(.failure(FrameError(.overloaded, "\(streamCount) streams are open on this peer connection (limit \(limits.maxStreams))")))
            return
        }
        let id = nextID
        nextID = nextID == .max ? 1 : nextID + 1 // 0 is never a request's id
        let timer = tcp.loop.schedule(after: deadline) { [weak self] in
            guard let self, let entry = self.pending.removeValue(forKey: id) else { return }
            self.outStreams[StreamKey(id: id, mine: true)]?.cancelled(FrameError(.deadlineExceeded, "no answer within \(deadline)"))
            self.outStreams[StreamKey(id: id, mine: true)] = nil
            entry.completion(.failure(FrameError(.deadlineExceeded, "no answer to frame type \(type) within \(deadline)")))
        }
        pending[id] = Pending(completion: completion, timer: timer, receiver: receiver)
        send(Frame(kind: .request, type: type, id: id, payload: payload, flags: body != nil ? Frame.streamFollows : 0))
        if let body {
            let writer = FrameStreamWriter(connection: self, key: StreamKey(id: id, mine: true), type: type)
            outStreams[writer.key] = writer
            body(writer)
        }
    }

    /// Sends a message that expects no answer; dropped when it does not fit in a frame (the
    /// peer would refuse it and close the connection).
    public func sendOneWay(type: UInt16, payload: [UInt8]) {
        guard isEstablished, payload.count <= maxPayload else { return }
        send(Frame(kind: .oneWay, type: type, id: 0, payload: payload))
    }

    func send(_ frame: Frame) {
        guard tcp.isOpen else { return }
        lastActivity = tcp.loop.nowMilliseconds
        let record = outbound.seal(frame.body())
        var out: [UInt8] = []
        out.reserveCapacity(4 + record.count)
        withUnsafeBytes(of: UInt32(record.count).bigEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: record)
        tcp.write(out)
    }

    /// Sends the answer to the peer's request `frame.id`, once.
    func answer(_ frame: Frame) {
        guard let size = answering.removeValue(forKey: frame.id) else { return } // answered, or the connection ended
        answeringBytes -= size
        server?.held -= size
        // An answer ends the exchange: the rest of the request's body is not wanted.
        if let body = inStreams.removeValue(forKey: StreamKey(id: frame.id, mine: false)) {
            dropStream(body, notify: FrameError(.closed, "the request was answered before its body ended"))
            sendStream(.cancel, key: StreamKey(id: frame.id, mine: false), type: frame.type,
                       payload: PeerErrorCode.payload(.badRequest, "answered before the body ended; stop sending it"), fromReceiver: true)
        }
        guard frame.payload.count <= maxPayload else {
            send(Frame(kind: .error, type: frame.type, id: frame.id, payload: PeerErrorCode.payload(.internal,
                "the answer of \(frame.payload.count) bytes does not fit in a frame (limit \(limits.maxFrameBytes) bytes)")))
            return
        }
        send(frame)
    }

    /// Sends a streamed answer's head and returns the writer for the rest.
    func answerStream(_ head: Frame) -> FrameStreamWriter? {
        guard answering[head.id] != nil, isOpen else { return nil }
        let key = StreamKey(id: head.id, mine: false)
        guard head.payload.count <= maxPayload, outStreams[key] == nil else { return nil }
        answer(head)
        let writer = FrameStreamWriter(connection: self, key: key, type: head.type)
        outStreams[key] = writer
        return writer
    }

    /// Sends one frame of a stream (chunk, end, cancel or window); `fromReceiver` for a cancel
    /// by the stream's receiver.
    func sendStream(_ kind: Frame.Kind, key: StreamKey, type: UInt16, payload: [UInt8], fromReceiver: Bool = false) {
        let flags = (key.mine ? Frame.senderStarted : 0) | (fromReceiver ? Frame.fromReceiver : 0)
        send(Frame(kind: kind, type: type, id: key.id, payload: payload, flags: flags))
    }

    func streamFinished(_ key: StreamKey) { outStreams[key] = nil }

    /// Sets the receiver of an incoming stream and starts handing it chunks.
    func attach(_ receiver: any FrameStreamReceiver, to key: StreamKey) {
        guard let stream = inStreams[key] else {
            receiver.end(closeReason ?? FrameError(.closed, "the stream is gone (its connection ended or it was cancelled)"))
            return
        }
        stream.receiver = receiver
        deliver(key)
    }

    public func close() {
        ending = true
        tcp.close()
    }

    // MARK: receiving

    public func connection(_ connection: TCPConnection, received bytes: UnsafeRawBufferPointer) {
        guard !ending else { return }
        let now = tcp.loop.nowMilliseconds
        lastActivity = now
        lastReceivedAt = now
        decoder.append(bytes)
        if !isEstablished {
            handshake()
            guard isEstablished, !ending else { return }
        }
        var completed = false
        do throws(FrameError) {
            while let record = try decoder.nextRecord() {
                completed = true
                framesReceived &+= 1
                syncPartialBytes() // the frame left the decoder before anyone handles it
                guard let body = inbound.open(record) else {
                    throw FrameError(.protocolViolation, "a record does not authenticate (altered, replayed or out of order)")
                }
                dispatch(try Frame.parse(body[...]))
                guard !ending else { return }
            }
        } catch {
            violate(error)
            return
        }
        syncPartialBytes()
        if decoder.bufferedBytes == 0 {
            frameStartedAt = 0
        } else if completed || frameStartedAt == 0 {
            frameStartedAt = now
        }
        server?.enforceBudget()
    }

    /// Advances the handshake with the bytes received so far.
    private func handshake() {
        switch phase {
        case .awaitingHello:
            guard let hello = decoder.take(PeerHandshake.helloSize) else { return }
            let answer: (reply: [UInt8], session: PeerHandshake.SessionKeys?)
            do { answer = try PeerHandshake.answer(hello, keys: keys, nonce: PeerHandshake.nonce()) } catch {
                // A peer without the key, or not a Kaa node: closed without a word.
                closeReason = FrameError(.handshakeFailed, error.description)
                server?.refused(error.description, from: tcp.remoteAddress)
                return closeQuietly()
            }
            tcp.write(answer.reply)
            guard let session = answer.session else {
                closeReason = FrameError(.handshakeFailed, "no peer-plane version in common")
                ending = true
                tcp.closeAfterFlush(linger: .milliseconds(500))
                return
            }
            phase = .awaitingFinish(hello: hello, reply: answer.reply, session: session)
            handshake()
        case .awaitingFinish(let hello, let reply, let session):
            guard let finish = decoder.take(PeerHandshake.finishSize) else { return }
            guard PeerHandshake.verify(finish: finish, hello: hello, reply: reply, session: session,
                                       authenticated: keys.isAuthenticated) else {
                closeReason = FrameError(.handshakeFailed, "the peer does not hold the cluster key")
                server?.refused("its handshake does not authenticate: it does not hold the cluster key", from: tcp.remoteAddress)
                return closeQuietly()
            }
            establish(session, client: false)
        case .awaitingReply(let hello):
            guard let reply = decoder.take(PeerHandshake.replySize) else { return }
            let finished: (finish: [UInt8], session: PeerHandshake.SessionKeys)
            do { finished = try PeerHandshake.finish(hello: hello, reply: reply, keys: keys) } catch {
                closeReason = FrameError(.handshakeFailed, "peer \(tcp.remoteAddress.map(\.description) ?? "?"): \(error.description)")
                return closeQuietly()
            }
            tcp.write(finished.finish)
            establish(finished.session, client: true)
        case .open:
            return
        }
    }

    private func establish(_ session: PeerHandshake.SessionKeys, client: Bool) {
        version = session.version
        (inbound, outbound) = keys.isAuthenticated ? session.protections(client: client) : (.none, .none)
        var next = FrameDecoder(maxFrameBytes: limits.maxFrameBytes, minimumBody: Frame.bodyHeaderSize + self.inbound.overhead)
        // Bytes that came with the handshake's last message belong to the first records.
        if let rest = decoder.take(decoder.bufferedBytes) { rest.withUnsafeBytes { next.append($0) } }
        decoder = next
        phase = .open
        let opened = onOpen
        onOpen = nil
        opened?()
    }

    private func closeQuietly() {
        end()
        tcp.close()
    }

    /// Counts the decoder's bytes in the server's budget.
    private func syncPartialBytes() {
        let now = decoder.bufferedBytes
        guard now != partialBytes else { return }
        server?.held += now - partialBytes
        partialBytes = now
    }

    private func dispatch(_ frame: Frame) {
        switch frame.kind {
        case .request:
            guard let handler else {
                return reply(to: frame, .unknownType, "this endpoint serves no requests")
            }
            guard frame.id != 0 else {
                return violate(FrameError(.protocolViolation, "a request with id 0; request ids are non-zero"))
            }
            guard answering[frame.id] == nil, inStreams[StreamKey(id: frame.id, mine: false)] == nil,
                  outStreams[StreamKey(id: frame.id, mine: false)] == nil else {
                return violate(FrameError(.protocolViolation, "request id \(frame.id) is already in flight on this connection"))
            }
            guard answering.count < limits.maxUnansweredRequests else {
                return reply(to: frame, .overloaded, "overloaded: \(answering.count) requests on this connection are still being "
                             + "answered (limit \(limits.maxUnansweredRequests)); retry later")
            }
            if let server, !server.admits(frame.payload.count) {
                return reply(to: frame, .overloaded, "overloaded: the node holds \(server.held) bytes of peer frames "
                             + "(limit \(server.configuration.maxBufferedBytes)); retry later")
            }
            if frame.streams {
                guard streamCount < limits.maxStreams else {
                    return reply(to: frame, .overloaded, "overloaded: \(streamCount) streams are open on this connection (limit \(limits.maxStreams))")
                }
                inStreams[StreamKey(id: frame.id, mine: false)] = StreamIn(now: tcp.loop.nowMilliseconds)
            }
            answering[frame.id] = frame.payload.count
            answeringBytes += frame.payload.count
            server?.held += frame.payload.count
            handler(frame, FrameResponder(connection: LoopBound(self, loop: tcp.loop), request: frame))
        case .oneWay:
            handler?(frame, FrameResponder(connection: LoopBound(self, loop: tcp.loop), request: frame))
        case .response, .error:
            guard let entry = pending.removeValue(forKey: frame.id) else {
                // A late answer, or (id 0, which no request has) why the peer is closing.
                if frame.kind == .error && frame.id == 0 { peerReason = PeerErrorCode.read(Array(frame.payload.prefix(1024))).1 }
                return
            }
            entry.timer?.cancel()
            // The exchange is over: a request body still being sent is not wanted any more.
            if let writer = outStreams.removeValue(forKey: StreamKey(id: frame.id, mine: true)) {
                writer.cancelled(FrameError(.closed, "the peer answered before the body ended"))
            }
            if frame.kind == .error {
                entry.receiver?.end(FrameError.fromPeer(frame.payload))
                entry.completion(.failure(FrameError.fromPeer(frame.payload)))
            } else {
                if let receiver = entry.receiver {
                    if frame.streams {
                        let stream = StreamIn(now: tcp.loop.nowMilliseconds)
                        stream.receiver = receiver
                        inStreams[StreamKey(id: frame.id, mine: true)] = stream
                    } else {
                        receiver.end(nil) // an answer without a stream: an empty one
                    }
                }
                entry.completion(.success(frame))
            }
        case .chunk, .end, .cancel:
            let key = StreamKey(id: frame.id, mine: frame.flags & Frame.senderStarted == 0)
            if frame.kind == .cancel && frame.flags & Frame.fromReceiver != 0 {
                // The receiver of a stream this side sends gave up on it.
                outStreams.removeValue(forKey: key)?.cancelled(FrameError.fromPeer(frame.payload))
                return
            }
            guard let stream = inStreams[key] else { return } // a stream this side dropped already
            stream.lastChunkAt = tcp.loop.nowMilliseconds
            switch frame.kind {
            case .chunk:
                guard frame.payload.count <= stream.window else {
                    return violate(FrameError(.protocolViolation, "stream \(frame.id) sent \(frame.payload.count) bytes with \(stream.window) granted"))
                }
                stream.window -= frame.payload.count
                stream.queue.append(frame.payload)
                stream.heldBytes += frame.payload.count
                streamBytes += frame.payload.count
                server?.held += frame.payload.count
            case .end:
                stream.ending = .some(nil)
            default:
                // The sender gave up: the receiver hears it now, chunks still queued or not.
                inStreams[key] = nil
                return dropStream(stream, notify: FrameError.fromPeer(frame.payload))
            }
            deliver(key)
        case .window:
            let key = StreamKey(id: frame.id, mine: frame.flags & Frame.senderStarted == 0)
            guard frame.payload.count == 4, let writer = outStreams[key] else { return }
            let bytes = frame.payload.reduce(0) { $0 << 8 | Int($1) }
            writer.grant(bytes)
        }
    }

    /// Hands the next chunk (or the end) of stream `key` to its receiver, if it is free.
    private func deliver(_ key: StreamKey) {
        guard let stream = inStreams[key], let receiver = stream.receiver, !stream.delivering else { return }
        if stream.queue.isEmpty {
            guard let ending = stream.ending else { return }
            inStreams[key] = nil
            receiver.end(ending)
            return
        }
        let chunk = stream.queue.removeFirst()
        stream.delivering = true
        receiver.receive(chunk) { [weak self, weak stream] in
            // A stream dropped meanwhile gave back what it held when it was dropped.
            guard let self, let stream, self.inStreams[key] === stream else { return }
            stream.delivering = false
            stream.heldBytes -= chunk.count
            self.streamBytes -= chunk.count
            self.server?.held -= chunk.count
            stream.consumedSinceGrant += chunk.count
            // Grant what was consumed once it is half a window, or when the sender may not have
            // room for another full chunk.
            if stream.ending == nil, stream.consumedSinceGrant >= FrameStreamWriter.initialWindow / 2
                || stream.window < FrameStreamWriter.maxChunkBytes {
                let grant = stream.consumedSinceGrant
                stream.consumedSinceGrant = 0
                stream.window += grant
                self.sendStream(.window, key: key, type: 0,
                                payload: [UInt8(truncatingIfNeeded: grant >> 24), UInt8(truncatingIfNeeded: grant >> 16),
                                          UInt8(truncatingIfNeeded: grant >> 8), UInt8(truncatingIfNeeded: grant)])
            }
            self.deliver(key)
        }
    }

    /// Forgets an incoming stream, giving back the bytes it held; tells its receiver `notify`.
    private func dropStream(_ stream: StreamIn, notify: FrameError) {
        streamBytes -= stream.heldBytes
        server?.held -= stream.heldBytes
        stream.queue = []
        stream.heldBytes = 0
        stream.receiver?.end(notify)
        stream.receiver = nil
    }

    private func reply(to request: Frame, _ code: PeerErrorCode, _ message: String) {
        send(Frame(kind: .error, type: request.type, id: request.id, payload: PeerErrorCode.payload(code, message)))
    }

    /// Ends the connection because of `error`: requests in flight fail with it at once, the
    /// peer is told why (an error frame with id 0), and the connection closes once that is written.
    private func violate(_ error: FrameError) {
        guard !ending else { return }
        closeReason = error
        if isEstablished { send(Frame(kind: .error, type: 0, id: 0, payload: PeerErrorCode.payload(.protocolViolation, error.message))) }
        end()
        tcp.closeAfterFlush(linger: .milliseconds(500))
    }

    /// Stops taking and answering requests; fails this side's requests and streams and gives
    /// back the budget.
    private func end() {
        ending = true
        decoder = FrameDecoder(maxFrameBytes: limits.maxFrameBytes)
        syncPartialBytes()
        server?.held -= answeringBytes + streamBytes
        answeringBytes = 0
        streamBytes = 0
        answering = [:]
        frameStartedAt = 0
        let reason = closeReason ?? FrameError(.closed, "peer connection closed")
        let failed = pending
        pending = [:]
        for entry in failed.values {
            entry.timer?.cancel()
            entry.receiver?.end(reason)
            entry.completion(.failure(reason))
        }
        let writers = outStreams
        outStreams = [:]
        for writer in writers.values { writer.cancelled(reason) }
        let readers = inStreams
        inStreams = [:]
        for stream in readers.values {
            stream.queue = []
            stream.receiver?.end(reason)
            stream.receiver = nil
        }
        onOpen = nil
    }

    /// Closes the connection when its handshake or frame is overdue, a stream stalled, or it
    /// has been idle too long. Called by the owner's sweeper.
    func checkDeadlines(now: UInt64) {
        guard tcp.isOpen, !ending else { return }
        guard isEstablished else {
            if now >= openedAt.addingSaturated(limits.frameTimeoutMs) {
                closeReason = FrameError(.handshakeFailed, "the peer-plane handshake did not complete within \(limits.frameTimeout)")
                closeQuietly()
            }
            return
        }
        if frameStartedAt != 0 {
            // As an HTTP body: no stall of `frameTimeout`, and after it, `minFrameRate` on average.
            let received = decoder.bufferedBytes
            let stalled = now >= lastReceivedAt.addingSaturated(limits.frameTimeoutMs)
            let late = now >= frameStartedAt.addingSaturated(limits.frameTimeoutMs)
                .addingSaturated(transferMilliseconds(received, atRate: limits.minFrameRate))
            guard stalled || late else { return checkStreams(now: now) }
            let why: String
            if let length = decoder.pendingFrameLength {
                why = stalled
                    ? "no byte of a frame of \(length) bytes for \(limits.frameTimeout) (\(received) bytes arrived)"
                    : "a frame of \(length) bytes did not arrive in time (\(received) bytes in \(now - frameStartedAt) ms); "
                        + "after the first \(limits.frameTimeout) a frame must arrive at \(limits.minFrameRate) bytes/s"
            } else {
                why = "a frame's length did not arrive within \(limits.frameTimeout)"
            }
            violate(FrameError(.protocolViolation, why))
        } else if limits.idleTimeoutMs > 0, pending.isEmpty, answering.isEmpty, streamCount == 0,
                  now >= lastActivity.addingSaturated(limits.idleTimeoutMs) {
            // Quietly: nothing is in flight, and the peer reconnects when it needs to.
            closeReason = FrameError(.closed, "peer connection closed after \(limits.idleTimeout) without frames")
            end()
            tcp.close()
        } else {
            checkStreams(now: now)
        }
    }

    /// Cancels streams that stalled for `frameTimeout`: an incoming one whose sender sends
    /// nothing while this side waits, an outgoing one whose receiver grants nothing.
    private func checkStreams(now: UInt64) {
        for (key, stream) in inStreams where !stream.delivering && stream.queue.isEmpty
            && now >= stream.lastChunkAt.addingSaturated(limits.frameTimeoutMs) {
            inStreams[key] = nil
            let error = FrameError(.deadlineExceeded, "stream \(key.id) sent nothing for \(limits.frameTimeout)")
            sendStream(.cancel, key: key, type: 0, payload: PeerErrorCode.payload(.deadlineExceeded, error.message), fromReceiver: true)
            dropStream(stream, notify: error)
        }
        for (key, writer) in outStreams where writer.isBlocked && now >= writer.lastProgress.addingSaturated(limits.frameTimeoutMs) {
            outStreams[key] = nil
            sendStream(.cancel, key: key, type: writer.type, payload: PeerErrorCode.payload(.deadlineExceeded, "no room granted for \(limits.frameTimeout)"))
            writer.cancelled(FrameError(.deadlineExceeded, "the receiver granted no room for \(limits.frameTimeout)"))
        }
    }

    /// Closes the connection that holds the most of an over-spent budget.
    func shed(budget: Int) {
        violate(FrameError(.overloaded, "the node holds more than \(budget) bytes of incoming peer frames, and this "
                           + "connection's incomplete frame (\(partialBytes) bytes) is the largest; retry later"))
    }

    public func connection(_ connection: TCPConnection, readEndedWith error: IOError?) {
        if closeReason == nil, !isEstablished {
            closeReason = FrameError(.handshakeFailed, "peer \(tcp.remoteAddress.map(\.description) ?? "?") closed the connection "
                + "during the handshake: it does not hold this cluster's key, or speaks no peer-plane version this node does")
        }
        if closeReason == nil {
            let why = error.map { "peer connection failed: \($0.message)" } ?? "peer closed the connection"
            closeReason = FrameError(.closed, peerReason.map { "\(why): \($0)" } ?? why)
        }
        end()
        tcp.close()
    }

    public func connection(_ connection: TCPConnection, writabilityChanged writable: Bool) {
        // Stop taking requests while our answers cannot be written; streams wait too.
        if writable && !ending {
            tcp.startReading()
            for writer in Array(outStreams.values) { writer.pump() }
        } else {
            tcp.stopReading()
        }
    }

    public func connectionClosed(_ connection: TCPConnection) {
        end()
        onClose?()
        onClose = nil
    }
}

/// Accepts frame connections on the peer address. Thread-safe handle.
public final class FrameServer: Sendable {
    /// Limits on what peers may make this node hold; each has a default that suits the peer
    /// plane (small requests, and streams for anything large). See `docs/peer-frames.md`.
    public struct Configuration: Sendable {
        /// The largest frame, length field included; a longer one breaks the protocol and
        /// closes the connection. Frames are read whole, so this bounds what one frame costs;
        /// anything larger travels as a stream of chunks of at most 1 MiB.
        public var maxFrameBytes = 4 << 20
        /// Open peer connections; the next one is closed at once.
        public var maxConnections = 256
        /// A connection with no request or stream in flight either way and no frame for this
        /// long is closed; ``FrameClient`` reconnects on its next request. Zero: never.
        public var idleTimeout: Duration = .seconds(60)
        /// The handshake must complete within this; a frame begun closes its connection when no
        /// byte of it arrives for this long, or when it falls behind ``minFrameRate``: `t` after
        /// its first byte, at least `(t - frameTimeout) * minFrameRate` bytes of it must be in.
        /// A stream that sends nothing (or grants nothing) for this long is cancelled.
        public var frameTimeout: Duration = .seconds(10)
        /// The slowest average rate, in bytes per second, at which a frame may arrive once its
        /// ``frameTimeout`` of grace is spent. Values below 1 count as 1.
        public var minFrameRate = 64 << 10
        /// Bytes all connections together may hold: incomplete frames, requests still being
        /// answered and stream chunks not yet consumed. A request that would take the total past
        /// it is answered with an `overloaded` error; when incomplete frames take it past, the
        /// connection holding the largest is closed. Kept at least ``maxFrameBytes``.
        public var maxBufferedBytes = 64 << 20
        /// Requests of one connection being answered at once; past it, requests are answered
        /// with an `overloaded` error.
        public var maxUnansweredRequests = 1024
        /// Streams open at once on one connection, both ways (each holds at most 4 MiB).
        public var maxStreams = 16

        public init() {}

        var limits: FrameLimits {
            FrameLimits(maxFrameBytes: maxFrameBytes, frameTimeout: frameTimeout, minFrameRate: minFrameRate,
                        idleTimeout: idleTimeout, maxUnansweredRequests: maxUnansweredRequests, maxStreams: maxStreams)
        }
    }

    public let loop: EventLoop
    public let localAddress: SocketAddress
    private let state: LoopBound<FrameServerState>

    /// Listens on `address`; connections must open with a handshake authenticated by `keys`.
    /// `onRefused` hears of each connection turned away at the handshake (why, and from where),
    /// on the loop.
    public init(on loop: EventLoop, address: SocketAddress, configuration: Configuration = .init(), keys: PeerKeys = .none,
                onRefused: (@Sendable (String, SocketAddress?) -> Void)? = nil,
                handler: @escaping FrameConnection.Handler) throws {
        self.loop = loop
        let state = try loop.runBlocking { () throws -> LoopBound<FrameServerState> in
            let state = try FrameServerState(loop: loop, address: address, configuration: configuration, keys: keys, handler: handler)
            state.onRefused = onRefused
            return LoopBound(state, loop: loop)
        }
        self.state = state
        self.localAddress = loop.runBlocking { state.value.listener.localAddress }
    }

    /// Stops listening and closes every connection. Not on the loop.
    public func shutdown() {
        let state = self.state
        loop.runBlocking { state.value.close() }
    }

    public func shutdownOnLoop() { state.value.close() }

    /// Open peer connections. Not on the loop.
    public var openConnections: Int {
        let state = self.state
        return loop.runBlocking { state.value.connections.count }
    }

    /// Bytes held for incomplete frames, requests being answered and stream chunks, over all
    /// connections (what ``Configuration/maxBufferedBytes`` bounds). Not on the loop.
    public var bufferedBytes: Int {
        let state = self.state
        return loop.runBlocking { state.value.held }
    }

    deinit {
        let state = self.state
        loop.execute { state.value.close() }
    }
}

final class FrameServerState {
    let loop: EventLoop
    let configuration: FrameServer.Configuration
    let limits: FrameLimits
    let keys: PeerKeys
    let listener: TCPListener
    var connections: [ObjectIdentifier: FrameConnection] = [:]
    /// Bytes the connections hold: incomplete frames, requests being answered, stream chunks.
    var held = 0
    var onRefused: (@Sendable (String, SocketAddress?) -> Void)?
    /// Connections turned away at the handshake so far.
    private(set) var refusedHandshakes = 0
    private var sweeper: LoopTimer?
    private var closed = false

    init(loop: EventLoop, address: SocketAddress, configuration: FrameServer.Configuration, keys: PeerKeys,
         handler: @escaping FrameConnection.Handler) throws {
        self.loop = loop
        var configuration = configuration
        let limits = configuration.limits
        configuration.maxBufferedBytes = max(configuration.maxBufferedBytes, limits.maxFrameBytes)
        self.configuration = configuration
        self.limits = limits
        self.keys = keys
        var accept: ((TCPConnection) -> Void)?
        listener = try TCPListener(loop: loop, address: address) { accept?($0) }
        accept = { [weak self] tcp in
            guard let self else { tcp.close(); return }
            self.accept(tcp, handler: handler)
        }
        let interval = limits.sweepInterval
        sweeper = loop.schedule(after: interval, repeating: interval) { [weak self] in self?.sweep() }
    }

    private func accept(_ tcp: TCPConnection, handler: @escaping FrameConnection.Handler) {
        guard !closed, connections.count < configuration.maxConnections else {
            // Before the handshake nothing can be said to an unknown peer: the connection closes.
            tcp.close()
            return
        }
        let connection = FrameConnection(tcp: tcp, limits: limits, keys: keys, client: false, handler: handler)
        connection.server = self
        let key = ObjectIdentifier(connection)
        connections[key] = connection
        connection.onClose = { [weak self] in self?.connections[key] = nil }
    }

    /// Whether a request of `bytes` may be taken now.
    func admits(_ bytes: Int) -> Bool { held + bytes <= configuration.maxBufferedBytes }

    func refused(_ why: String, from address: SocketAddress?) {
        refusedHandshakes += 1
        onRefused?(why, address)
    }

    /// While incomplete frames take the total over the budget, closes the connection holding
    /// the largest (the one spending it, not whichever peer happened to send next).
    func enforceBudget() {
        while held > configuration.maxBufferedBytes {
            guard let largest = connections.values.max(by: { $0.partialBytes < $1.partialBytes }),
                  largest.partialBytes > 0 else { return }
            largest.shed(budget: configuration.maxBufferedBytes)
        }
    }

    private func sweep() {
        let now = loop.nowMilliseconds
        for connection in Array(connections.values) { connection.checkDeadlines(now: now) }
    }

    func close() {
        closed = true
        sweeper?.cancel()
        sweeper = nil
        listener.close()
        for connection in Array(connections.values) { connection.close() }
    }
}

/// Sends requests to peers over one multiplexed, authenticated connection per peer, connecting
/// on demand. Thread-safe handle.
///
/// A pooled connection closes after ``Configuration/idleTimeout`` without frames (shorter than
/// the server's, so the client is normally the one to close it). A request sent on a pooled
/// connection just as the peer closed it as idle (the connection closes before any frame
/// arrives, with nothing else in flight) is sent once more on a new connection: the peer
/// closes a connection as idle only while no request is in flight on it, so it never saw the
/// first one. Frame requests must be safe to receive twice for the rare peer that crashed
/// after reading one.
public final class FrameClient: Sendable {
    public struct Configuration: Sendable {
        /// The largest frame this side receives (answers, and requests when it has a handler).
        public var maxFrameBytes = 4 << 20
        /// Connecting and the handshake must complete within this.
        public var connectTimeout: Duration = .seconds(2)
        /// A pooled connection with nothing in flight and no frame for this long is closed.
        /// Keep it under the peers' ``FrameServer/Configuration/idleTimeout``. Zero: never.
        public var idleTimeout: Duration = .seconds(30)
        /// As ``FrameServer/Configuration/frameTimeout``, for frames this side receives.
        public var frameTimeout: Duration = .seconds(10)
        /// As ``FrameServer/Configuration/minFrameRate``.
        public var minFrameRate = 64 << 10
        /// As ``FrameServer/Configuration/maxUnansweredRequests``, when the client has a handler.
        public var maxUnansweredRequests = 1024
        /// As ``FrameServer/Configuration/maxStreams``.
        public var maxStreams = 16

        public init() {}

        var limits: FrameLimits {
            FrameLimits(maxFrameBytes: maxFrameBytes, frameTimeout: frameTimeout, minFrameRate: minFrameRate,
                        idleTimeout: idleTimeout, maxUnansweredRequests: maxUnansweredRequests, maxStreams: maxStreams)
        }
    }

    public let loop: EventLoop
    private let state: LoopBound<FrameClientState>

    /// A client whose connections authenticate with `keys`.
    public init(loop: EventLoop, configuration: Configuration = .init(), keys: PeerKeys = .none,
                handler: FrameConnection.Handler? = nil) {
        self.loop = loop
        self.state = loop.runBlocking {
            LoopBound(FrameClientState(loop: loop, configuration: configuration, keys: keys, handler: handler), loop: loop)
        }
    }

    /// Sends a request to `peer`; `completion` runs once on the loop.
    public func request(to peer: HostPort, type: UInt16, payload: [UInt8], deadline: Duration,
                        completion: @escaping @Sendable (Result<Frame, FrameError>) -> Void) {
        let state = self.state
        loop.execute { state.value.request(to: peer, type: type, payload: payload, deadline: deadline, completion: completion) }
    }

    public func request(to peer: HostPort, type: UInt16, payload: [UInt8],
                        deadline: Duration) async throws(FrameError) -> Frame {
        let result = await withCheckedContinuation { continuation in
            request(to: peer, type: type, payload: payload, deadline: deadline) { continuation.resume(returning: $0) }
        }
        return try result.get()
    }

    /// Sends a request whose answer is a stream; on the loop. `completion` gets the answer's
    /// head (or the failure); `receiver` then gets its chunks and its end. With `body`, the
    /// request's own body follows it as a stream the writer sends.
    public func requestStream(to peer: HostPort, type: UInt16, payload: [UInt8], deadline: Duration,
                              receiver: (any FrameStreamReceiver)?, body: ((FrameStreamWriter) -> Void)? = nil,
                              completion: @escaping (Result<Frame, FrameError>) -> Void) {
        state.value.request(to: peer, type: type, payload: payload, deadline: deadline, receiver: receiver, body: body,
                            completion: completion)
    }

    /// Open connections (for tests and metrics). Not on the loop.
    public var openConnections: Int {
        let state = self.state
        return loop.runBlocking { state.value.connections.values.filter(\.isOpen).count }
    }

    public func shutdown() {
        let state = self.state
        loop.runBlocking { state.value.close() }
    }

    deinit {
        let state = self.state
        loop.execute { state.value.close() }
    }
}

final class FrameClientState {
    let loop: EventLoop
    let configuration: FrameClient.Configuration
    let limits: FrameLimits
    let keys: PeerKeys
    let handler: FrameConnection.Handler?
    let resolver: HostResolver
    var connections: [HostPort: FrameConnection] = [:]
    private var connecting: [HostPort: [(FrameConnection?, Bool) -> Void]] = [:]
    private var failures: [HostPort: FrameError] = [:]
    private var sweeper: LoopTimer?
    private var closed = false

    init(loop: EventLoop, configuration: FrameClient.Configuration, keys: PeerKeys, handler: FrameConnection.Handler?) {
        self.loop = loop
        self.configuration = configuration
        self.limits = configuration.limits
        self.keys = keys
        self.handler = handler
        self.resolver = HostResolver(loop: loop)
        let interval = limits.sweepInterval
        sweeper = loop.schedule(after: interval, repeating: interval) { [weak self] in self?.sweep() }
    }

    func request(to peer: HostPort, type: UInt16, payload: [UInt8], deadline: Duration,
                 receiver: (any FrameStreamReceiver)? = nil, body: ((FrameStreamWriter) -> Void)? = nil,
                 completion: @escaping (Result<Frame, FrameError>) -> Void) {
        let due = loop.nowMilliseconds.addingSaturated(deadline.millisecondsRoundedUp)
        send(to: peer, type: type, payload: payload, due: due, deadline: deadline, retried: false,
             receiver: receiver, body: body, completion: completion)
    }

    private func send(to peer: HostPort, type: UInt16, payload: [UInt8], due: UInt64, deadline: Duration, retried: Bool,
                      receiver: (any FrameStreamReceiver)?, body: ((FrameStreamWriter) -> Void)?,
                      completion: @escaping (Result<Frame, FrameError>) -> Void) {
        withConnection(to: peer) { [weak self] connection, pooled in
            guard let connection else {
                let error = self?.failures[peer] ?? FrameError(.connectFailed, "cannot connect to \(peer)")
                receiver?.end(error)
                completion(.failure(error))
                return
            }
            guard let self else {
                receiver?.end(FrameError(.closed, "the frame client is shut down"))
                completion(.failure(FrameError(.closed, "the frame client is shut down")))
                return
            }
            let now = self.loop.nowMilliseconds
            guard now < due else {
                let error = FrameError(.deadlineExceeded, "no answer to frame type \(type) within \(deadline)")
                receiver?.end(error)
                completion(.failure(error))
                return
            }
            // The peer may have closed a quiet pooled connection as idle while this went out;
            // a request with a body is not sent twice (its body may be gone).
            let quiet = pooled && !retried && body == nil && connection.inFlight == 0 && connection.unanswered == 0
                && connection.streamCount == 0
            let mark = connection.framesReceived
            let retry = RetryReceiver(receiver)
            connection.request(type: type, payload: payload, deadline: .milliseconds(Int64(clamping: due - now)),
                               receiver: receiver == nil ? nil : retry, body: body) { [weak self, weak connection] result in
                if case .failure(let error) = result, error.code == .closed, quiet,
                   let self, !self.closed, let connection, connection.framesReceived == mark {
                    retry.forward = false
                    self.send(to: peer, type: type, payload: payload, due: due, deadline: deadline, retried: true,
                              receiver: receiver, body: body, completion: completion)
                    return
                }
                completion(result)
            }
        }
    }

    /// Runs `body` with an open, established connection to `peer` (and whether it was pooled), or nil.
    private func withConnection(to peer: HostPort, _ body: @escaping (FrameConnection?, Bool) -> Void) {
        if let connection = connections[peer], connection.isOpen, connection.isEstablished { return body(connection, true) }
        guard !closed else { return body(nil, false) }
        if connecting[peer] != nil {
            connecting[peer]!.append(body)
            return
        }
        connecting[peer] = [body]
        resolver.resolve(peer) { [weak self] resolved in
            guard let self else { return }
            switch resolved {
            case .failure(let error):
                self.failures[peer] = FrameError(.connectFailed, error.message)
                self.finishConnecting(peer, nil)
            case .success(let address):
                self.connect(peer, address)
            }
        }
    }

    private func connect(_ peer: HostPort, _ address: SocketAddress) {
        TCPConnection.connect(on: loop, to: address, timeout: configuration.connectTimeout) { [weak self] result in
            guard let self else {
                if case .success(let tcp) = result { tcp.close() }
                return
            }
            switch result {
            case .success(let tcp):
                guard !self.closed else { tcp.close(); self.finishConnecting(peer, nil); return }
                let connection = FrameConnection(tcp: tcp, limits: self.limits, keys: self.keys, client: true, handler: self.handler)
                connection.onOpen = { [weak self, unowned connection] in
                    self?.failures[peer] = nil
                    self?.finishConnecting(peer, connection)
                }
                connection.onClose = { [weak self, unowned connection] in
                    guard let self else { return }
                    if self.connections[peer] === connection { self.connections[peer] = nil }
                    if !connection.isEstablished {
                        // Closed during the handshake: the waiting requests fail with the reason.
                        self.failures[peer] = connection.failure ?? FrameError(.handshakeFailed, "peer \(peer) closed the connection during the handshake")
                        self.finishConnecting(peer, nil)
                    }
                }
                self.connections[peer] = connection
            case .failure(let error):
                self.failures[peer] = FrameError(.connectFailed, "cannot connect to peer \(peer): \(error.message)")
                self.finishConnecting(peer, nil)
            }
        }
    }

    private func finishConnecting(_ peer: HostPort, _ connection: FrameConnection?) {
        let waiting = connecting.removeValue(forKey: peer) ?? []
        for body in waiting { body(connection, false) }
    }

    private func sweep() {
        let now = loop.nowMilliseconds
        for connection in Array(connections.values) { connection.checkDeadlines(now: now) }
    }

    func close() {
        closed = true
        sweeper?.cancel()
        sweeper = nil
        for connection in Array(connections.values) { connection.close() }
    }
}

/// Passes a stream's events on, unless the request is being sent again (then the retry's
/// stream goes to the receiver instead).
final class RetryReceiver: FrameStreamReceiver {
    let receiver: (any FrameStreamReceiver)?
    var forward = true
    init(_ receiver: (any FrameStreamReceiver)?) { self.receiver = receiver }
    func receive(_ chunk: [UInt8], consumed: @escaping () -> Void) {
        if forward, let receiver { receiver.receive(chunk, consumed: consumed) } else { consumed() }
    }
    func end(_ error: FrameError?) { if forward { receiver?.end(error) } }
}
