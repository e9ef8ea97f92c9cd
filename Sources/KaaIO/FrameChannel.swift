import Dispatch
public import KaaCore
import Synchronization

/// One message of the peer plane: a length-prefixed binary frame.
///
/// Wire layout (big-endian), documented in `docs/peer-frames.md`:
/// `u32 length` (bytes after this field) · `u8 kind` · `u16 type` · `u64 id` · payload.
public struct Frame: Sendable, Equatable {
    public enum Kind: UInt8, Sendable {
        case request = 0
        case response = 1
        /// A response whose payload is a UTF-8 error message.
        case error = 2
        /// A message that expects no answer.
        case oneWay = 3
    }

    public var kind: Kind
    /// What the payload is (forward an inference call, fetch a snapshot, ...); owned by callers.
    public var type: UInt16
    /// Chosen by the requester, echoed by the response.
    public var id: UInt64
    public var payload: [UInt8]

    public init(kind: Kind, type: UInt16, id: UInt64, payload: [UInt8]) {
        self.kind = kind
        self.type = type
        self.id = id
        self.payload = payload
    }

    static let headerSize = 4 + 1 + 2 + 8

    /// Appends the frame's wire bytes to `out`.
    public func encode(into out: inout [UInt8]) {
        precondition(payload.count <= Int(UInt32.max) - (Frame.headerSize - 4),
                     "a frame payload of \(payload.count) bytes does not fit a 32-bit length")
        let length = UInt32(Frame.headerSize - 4 + payload.count)
        out.reserveCapacity(out.count + Frame.headerSize + payload.count)
        withUnsafeBytes(of: length.bigEndian) { out.append(contentsOf: $0) }
        out.append(kind.rawValue)
        withUnsafeBytes(of: type.bigEndian) { out.append(contentsOf: $0) }
        withUnsafeBytes(of: id.bigEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: payload)
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
        public static let remoteError = Code(name: "remote error")
        public static let overloaded = Code(name: "overloaded")
        /// A request's payload does not fit in a frame (``FrameServer/Configuration/maxFrameBytes``).
        public static let frameTooLarge = Code(name: "frame too large")
    }

    public var code: Code
    public var message: String
    public var description: String { message }
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
}

/// Splits a byte stream into frames; refuses frames over `maxFrameBytes`.
///
/// It holds only the bytes that arrived: a frame's declared length is checked as soon as its
/// four bytes are in, and never reserves memory by itself.
public struct FrameDecoder: Sendable {
    public let maxFrameBytes: Int
    private var buffer: [UInt8] = []
    private var start = 0

    public init(maxFrameBytes: Int) { self.maxFrameBytes = maxFrameBytes }

    public mutating func append(_ bytes: UnsafeRawBufferPointer) { buffer.append(contentsOf: bytes) }

    /// Bytes received and not yet returned as frames (an incomplete frame, or frames `next()`
    /// has not been asked for).
    public var bufferedBytes: Int { buffer.count - start }

    /// The whole length of the frame being received (its length field included), once the
    /// length field has arrived.
    public var pendingFrameLength: Int? { bufferedBytes >= 4 ? declaredLength + 4 : nil }

    /// The buffer's storage, for tests that check what a declared length alone costs.
    var storageCapacity: Int { buffer.capacity }

    private var declaredLength: Int {
        buffer.withUnsafeBytes { raw in Int(UInt32(bigEndian: raw.loadUnaligned(fromByteOffset: start, as: UInt32.self))) }
    }

    /// The next complete frame, `nil` when more bytes are needed. A length or kind that breaks
    /// the protocol throws as soon as its bytes are in, before the rest of the frame.
    public mutating func next() throws(FrameError) -> Frame? {
        let available = buffer.count - start
        guard available >= 4 else { compact(); return nil }
        let length = declaredLength
        guard length >= Frame.headerSize - 4 else {
            throw FrameError(.protocolViolation, "frame length \(length) is shorter than a frame header")
        }
        guard length <= maxFrameBytes - 4 else {
            throw FrameError(.protocolViolation, "frame of \(length + 4) bytes exceeds the limit of \(maxFrameBytes) bytes")
        }
        guard available >= 5 else { compact(); return nil }
        let kindByte = buffer[start + 4]
        guard let kind = Frame.Kind(rawValue: kindByte) else {
            throw FrameError(.protocolViolation, "unknown frame kind \(kindByte)")
        }
        guard available >= length + 4 else { compact(); return nil }
        let frame = buffer.withUnsafeBytes { raw -> Frame in
            let type = UInt16(bigEndian: raw.loadUnaligned(fromByteOffset: start + 5, as: UInt16.self))
            let id = UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: start + 7, as: UInt64.self))
            let payload = Array(raw[(start + Frame.headerSize)..<(start + 4 + length)])
            return Frame(kind: kind, type: type, id: id, payload: payload)
        }
        start += length + 4
        return frame
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

/// Answers one request frame, once, from any thread; a second answer is dropped.
public struct FrameResponder: Sendable {
    let connection: LoopBound<FrameConnection>
    let kind: Frame.Kind
    let type: UInt16
    let id: UInt64

    init(connection: LoopBound<FrameConnection>, request: Frame) {
        self.connection = connection
        kind = request.kind
        type = request.type
        id = request.id
    }

    public func respond(_ payload: [UInt8]) { send(.response, payload) }
    public func fail(_ message: String) { send(.error, Array(message.utf8)) }

    private func send(_ kind: Frame.Kind, _ payload: [UInt8]) {
        guard self.kind == .request else { return }
        let frame = Frame(kind: kind, type: type, id: id, payload: payload)
        let connection = self.connection
        if connection.loop.inLoop { connection.value.answer(frame) } else { connection.loop.execute { connection.value.answer(frame) } }
    }
}

/// What one frame connection enforces; from its server's or client's configuration.
struct FrameLimits {
    var maxFrameBytes: Int
    var frameTimeout: Duration
    var minFrameRate: Int
    var idleTimeout: Duration
    var maxUnansweredRequests: Int
    let frameTimeoutMs: UInt64
    let idleTimeoutMs: UInt64

    init(maxFrameBytes: Int, frameTimeout: Duration, minFrameRate: Int, idleTimeout: Duration, maxUnansweredRequests: Int) {
        // A frame's length field is 32 bits wide.
        self.maxFrameBytes = min(max(maxFrameBytes, Frame.headerSize), Int(UInt32.max))
        self.frameTimeout = frameTimeout
        self.minFrameRate = max(1, minFrameRate)
        self.idleTimeout = idleTimeout
        self.maxUnansweredRequests = max(1, maxUnansweredRequests)
        frameTimeoutMs = frameTimeout.millisecondsRoundedUp
        idleTimeoutMs = idleTimeout.millisecondsRoundedUp
    }

    /// How often the owner checks its connections' deadlines.
    var sweepInterval: Duration {
        let shortest = idleTimeoutMs > 0 ? min(frameTimeout, idleTimeout) : frameTimeout
        return min(.seconds(1), max(.milliseconds(10), shortest / 4))
    }
}

/// A multiplexed frame connection: many requests in flight both ways. Loop-confined.
///
/// It closes a connection whose frame does not arrive in time (``FrameServer/Configuration/frameTimeout``)
/// or that carries nothing for ``FrameServer/Configuration/idleTimeout`` while no request is in flight
/// either way, when its owner sweeps it. A peer that breaks the protocol gets an error frame
/// with id 0 saying why, then the connection closes.
public final class FrameConnection: TCPConnectionDelegate {
    public typealias Handler = @Sendable (Frame, FrameResponder) -> Void

    let tcp: TCPConnection
    private var decoder: FrameDecoder
    private let handler: Handler?
    let limits: FrameLimits
    /// The server that accepted this connection, whose byte budget it draws on; nil for a
    /// client's. Strong: the server drops the connection when it closes, which breaks the cycle.
    var server: FrameServerState?
    private var nextID: UInt64 = 1
    private var pending: [UInt64: (completion: (Result<Frame, FrameError>) -> Void, timer: LoopTimer?)] = [:]
    /// The peer's requests this side has not answered yet, with their payload sizes.
    private var answering: [UInt64: Int] = [:]
    /// Bytes counted in the server's budget: the decoder's, and requests' being answered.
    private(set) var partialBytes = 0
    private var answeringBytes = 0
    /// When the first byte of the frame being received arrived (loop milliseconds); 0 for none.
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
    /// What the peer said (an error frame with id 0) before closing.
    private var peerReason: String?
    /// Closing: takes no more requests, answers nothing more.
    private var ending = false

    init(tcp: TCPConnection, limits: FrameLimits, handler: Handler?) {
        self.tcp = tcp
        self.limits = limits
        self.decoder = FrameDecoder(maxFrameBytes: limits.maxFrameBytes)
        self.handler = handler
        self.maxQueuedBytes = max(limits.maxFrameBytes * 2, 4 << 20)
        lastActivity = tcp.loop.nowMilliseconds
        tcp.delegate = self
        tcp.startReading()
        LiveObjects.frameConnections.add(1, ordering: .relaxed)
    }

    deinit { LiveObjects.frameConnections.subtract(1, ordering: .relaxed) }

    public var isOpen: Bool { tcp.isOpen && !ending }
    public var inFlight: Int { pending.count }
    /// Requests of the peer not answered yet.
    var unanswered: Int { answering.count }

    /// Sends a request; `completion` runs once on the loop with the response or an error.
    public func request(type: UInt16, payload: [UInt8], deadline: Duration,
                        completion: @escaping (Result<Frame, FrameError>) -> Void) {
        guard isOpen else {
            completion(.failure(closeReason ?? FrameError(.closed, "peer connection is closed")))
            return
        }
        guard Frame.headerSize + payload.count <= limits.maxFrameBytes else {
            completion(.failure(FrameError(.frameTooLarge,
                "a request of \(payload.count) bytes does not fit in a frame (limit \(limits.maxFrameBytes) bytes)")))
            return
        }
        guard tcp.pendingWriteBytes + payload.count <= maxQueuedBytes else {
            completion(.failure(FrameError(.overloaded,
                "peer connection to \(tcp.remoteAddress.map(\.description) ?? "?") has \(tcp.pendingWriteBytes) bytes queued")))
            return
        }
        let id = nextID
        nextID = nextID == .max ? 1 : nextID + 1 // 0 is never a request's id
        let timer = tcp.loop.schedule(after: deadline) { [weak self] in
            guard let self, let entry = self.pending.removeValue(forKey: id) else { return }
            entry.completion(.failure(FrameError(.deadlineExceeded, "no answer to frame type \(type) within \(deadline)")))
        }
        pending[id] = (completion, timer)
        send(Frame(kind: .request, type: type, id: id, payload: payload))
    }

    /// Sends a message that expects no answer; dropped when it does not fit in a frame (the
    /// peer would refuse it and close the connection).
    public func sendOneWay(type: UInt16, payload: [UInt8]) {
        guard Frame.headerSize + payload.count <= limits.maxFrameBytes else { return }
        send(Frame(kind: .oneWay, type: type, id: 0, payload: payload))
    }

    func send(_ frame: Frame) {
        guard tcp.isOpen else { return }
        lastActivity = tcp.loop.nowMilliseconds
        var out: [UInt8] = []
        frame.encode(into: &out)
        tcp.write(out)
    }

    /// Sends the answer to the peer's request `frame.id`, once.
    func answer(_ frame: Frame) {
        guard let size = answering.removeValue(forKey: frame.id) else { return } // answered, or the connection ended
        answeringBytes -= size
        server?.held -= size
        guard Frame.headerSize + frame.payload.count <= limits.maxFrameBytes else {
            send(Frame(kind: .error, type: frame.type, id: frame.id, payload: Array(
                "the answer of \(frame.payload.count) bytes does not fit in a frame (limit \(limits.maxFrameBytes) bytes)".utf8)))
            return
        }
        send(frame)
    }

    public func close() {
        ending = true
        tcp.close()
    }

    public func connection(_ connection: TCPConnection, received bytes: UnsafeRawBufferPointer) {
        guard !ending else { return }
        let now = tcp.loop.nowMilliseconds
        lastActivity = now
        lastReceivedAt = now
        decoder.append(bytes)
        var completed = false
        do {
            while let frame = try decoder.next() {
                completed = true
                framesReceived &+= 1
                syncPartialBytes() // the frame left the decoder before anyone handles it
                dispatch(frame)
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
                return reply(to: frame, error: "this endpoint serves no requests")
            }
            guard frame.id != 0 else {
                return violate(FrameError(.protocolViolation, "a request with id 0; request ids are non-zero"))
            }
            guard answering[frame.id] == nil else {
                return violate(FrameError(.protocolViolation, "request id \(frame.id) is already in flight on this connection"))
            }
            guard answering.count < limits.maxUnansweredRequests else {
                return reply(to: frame, error: "overloaded: \(answering.count) requests on this connection are still being "
                             + "answered (limit \(limits.maxUnansweredRequests)); retry later")
            }
            if let server, !server.admits(frame.payload.count) {
                return reply(to: frame, error: "overloaded: the node holds \(server.held) bytes of peer frames "
                             + "(limit \(server.configuration.maxBufferedBytes)); retry later")
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
                if frame.kind == .error && frame.id == 0 { peerReason = String(decoding: frame.payload.prefix(1024), as: UTF8.self) }
                return
            }
            entry.timer?.cancel()
            if frame.kind == .error {
                entry.completion(.failure(FrameError(.remoteError, String(decoding: frame.payload, as: UTF8.self))))
            } else {
                entry.completion(.success(frame))
            }
        }
    }

    private func reply(to request: Frame, error message: String) {
        send(Frame(kind: .error, type: request.type, id: request.id, payload: Array(message.utf8)))
    }

    /// Ends the connection because of `error`: requests in flight fail with it at once, the
    /// peer is told why (an error frame with id 0), and the connection closes once that is written.
    private func violate(_ error: FrameError) {
        guard !ending else { return }
        closeReason = error
        send(Frame(kind: .error, type: 0, id: 0, payload: Array(error.message.utf8)))
        end()
        tcp.closeAfterFlush(linger: .milliseconds(500))
    }

    /// Stops taking and answering requests; fails this side's requests and gives back the budget.
    private func end() {
        ending = true
        decoder = FrameDecoder(maxFrameBytes: limits.maxFrameBytes)
        syncPartialBytes()
        server?.held -= answeringBytes
        answeringBytes = 0
        answering = [:]
        frameStartedAt = 0
        let reason = closeReason ?? FrameError(.closed, "peer connection closed")
        let failed = pending
        pending = [:]
        for entry in failed.values {
            entry.timer?.cancel()
            entry.completion(.failure(reason))
        }
    }

    /// Closes the connection when its frame is overdue or it has been idle too long.
    /// Called by the owner's sweeper.
    func checkDeadlines(now: UInt64) {
        guard tcp.isOpen, !ending else { return }
        if frameStartedAt != 0 {
            // As an HTTP body: no stall of `frameTimeout`, and after it, `minFrameRate` on average.
            let received = decoder.bufferedBytes
            let stalled = now >= lastReceivedAt.addingSaturated(limits.frameTimeoutMs)
            let late = now >= frameStartedAt.addingSaturated(limits.frameTimeoutMs)
                .addingSaturated(transferMilliseconds(received, atRate: limits.minFrameRate))
            guard stalled || late else { return }
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
        } else if limits.idleTimeoutMs > 0, pending.isEmpty, answering.isEmpty,
                  now >= lastActivity.addingSaturated(limits.idleTimeoutMs) {
            // Quietly: nothing is in flight, and the peer reconnects when it needs to.
            closeReason = FrameError(.closed, "peer connection closed after \(limits.idleTimeout) without frames")
            end()
            tcp.close()
        }
    }

    /// Closes the connection that holds the most of an over-spent budget.
    func shed(budget: Int) {
        violate(FrameError(.overloaded, "the node holds more than \(budget) bytes of incoming peer frames, and this "
                           + "connection's incomplete frame (\(partialBytes) bytes) is the largest; retry later"))
    }

    public func connection(_ connection: TCPConnection, readEndedWith error: IOError?) {
        if closeReason == nil {
            let why = error.map { "peer connection failed: \($0.message)" } ?? "peer closed the connection"
            closeReason = FrameError(.closed, peerReason.map { "\(why): \($0)" } ?? why)
        }
        end()
        tcp.close()
    }

    public func connection(_ connection: TCPConnection, writabilityChanged writable: Bool) {
        // Stop taking requests while our answers cannot be written.
        if writable && !ending { tcp.startReading() } else { tcp.stopReading() }
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
    /// plane as it is (small push-pull and forwarding frames). See `docs/peer-frames.md`.
    public struct Configuration: Sendable {
        /// The largest frame, length field included; a longer one breaks the protocol and
        /// closes the connection. Frames are read whole, so this bounds what one frame costs.
        public var maxFrameBytes = 4 << 20
        /// Open peer connections; the next one is told why (an error frame) and closed.
        public var maxConnections = 256
        /// A connection with no request in flight either way and no frame for this long is
        /// closed; ``FrameClient`` reconnects on its next request. Zero: never.
        public var idleTimeout: Duration = .seconds(60)
        /// A frame begun closes its connection when no byte of it arrives for this long, or when
        /// it falls behind ``minFrameRate``: `t` after its first byte, at least
        /// `(t - frameTimeout) * minFrameRate` bytes of it must be in. So a frame of `n` bytes
        /// has at most `frameTimeout + n / minFrameRate`, and trickling does not extend it.
        public var frameTimeout: Duration = .seconds(10)
        /// The slowest average rate, in bytes per second, at which a frame may arrive once its
        /// ``frameTimeout`` of grace is spent. Values below 1 count as 1.
        public var minFrameRate = 64 << 10
        /// Bytes all connections together may hold: incomplete frames, and requests still being
        /// answered. A request that would take the total past it is answered with an
        /// `overloaded` error; when incomplete frames take it past, the connection holding the
        /// largest is closed. Kept at least ``maxFrameBytes``.
        public var maxBufferedBytes = 64 << 20
        /// Requests of one connection being answered at once; past it, requests are answered
        /// with an `overloaded` error.
        public var maxUnansweredRequests = 1024

        public init() {}

        var limits: FrameLimits {
            FrameLimits(maxFrameBytes: maxFrameBytes, frameTimeout: frameTimeout, minFrameRate: minFrameRate,
                        idleTimeout: idleTimeout, maxUnansweredRequests: maxUnansweredRequests)
        }
    }

    public let loop: EventLoop
    public let localAddress: SocketAddress
    private let state: LoopBound<FrameServerState>

    public init(on loop: EventLoop, address: SocketAddress, configuration: Configuration = .init(),
                handler: @escaping FrameConnection.Handler) throws {
        self.loop = loop
        let state = try loop.runBlocking { () throws -> LoopBound<FrameServerState> in
            LoopBound(try FrameServerState(loop: loop, address: address, configuration: configuration, handler: handler), loop: loop)
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

    /// Bytes held for incomplete frames and requests being answered, over all connections
    /// (what ``Configuration/maxBufferedBytes`` bounds). Not on the loop.
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
    let listener: TCPListener
    var connections: [ObjectIdentifier: FrameConnection] = [:]
    /// Bytes the connections hold: incomplete frames and requests being answered.
    var held = 0
    private var sweeper: LoopTimer?
    private var closed = false

    init(loop: EventLoop, address: SocketAddress, configuration: FrameServer.Configuration,
         handler: @escaping FrameConnection.Handler) throws {
        self.loop = loop
        var configuration = configuration
        let limits = configuration.limits
        configuration.maxBufferedBytes = max(configuration.maxBufferedBytes, limits.maxFrameBytes)
        self.configuration = configuration
        self.limits = limits
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
        guard !closed else { tcp.close(); return }
        guard connections.count < configuration.maxConnections else {
            let why = "too many peer connections (limit \(configuration.maxConnections)); retry later"
            var out: [UInt8] = []
            Frame(kind: .error, type: 0, id: 0, payload: Array(why.utf8)).encode(into: &out)
            tcp.write(out)
            tcp.closeAfterFlush(linger: .milliseconds(500))
            return
        }
        let connection = FrameConnection(tcp: tcp, limits: limits, handler: handler)
        connection.server = self
        let key = ObjectIdentifier(connection)
        connections[key] = connection
        connection.onClose = { [weak self] in self?.connections[key] = nil }
    }

    /// Whether a request of `bytes` may be taken now.
    func admits(_ bytes: Int) -> Bool { held + bytes <= configuration.maxBufferedBytes }

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

/// Sends requests to peers over one multiplexed connection per peer, connecting on demand.
/// Thread-safe handle.
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

        public init() {}

        var limits: FrameLimits {
            FrameLimits(maxFrameBytes: maxFrameBytes, frameTimeout: frameTimeout, minFrameRate: minFrameRate,
                        idleTimeout: idleTimeout, maxUnansweredRequests: maxUnansweredRequests)
        }
    }

    public let loop: EventLoop
    private let state: LoopBound<FrameClientState>

    public init(loop: EventLoop, configuration: Configuration = .init(), handler: FrameConnection.Handler? = nil) {
        self.loop = loop
        self.state = loop.runBlocking {
            LoopBound(FrameClientState(loop: loop, configuration: configuration, handler: handler), loop: loop)
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
    let handler: FrameConnection.Handler?
    var connections: [HostPort: FrameConnection] = [:]
    private var connecting: [HostPort: [(FrameConnection?, Bool) -> Void]] = [:]
    private var failures: [HostPort: FrameError] = [:]
    private var sweeper: LoopTimer?
    private var closed = false

    init(loop: EventLoop, configuration: FrameClient.Configuration, handler: FrameConnection.Handler?) {
        self.loop = loop
        self.configuration = configuration
        self.limits = configuration.limits
        self.handler = handler
        let interval = limits.sweepInterval
        sweeper = loop.schedule(after: interval, repeating: interval) { [weak self] in self?.sweep() }
    }

    func request(to peer: HostPort, type: UInt16, payload: [UInt8], deadline: Duration,
                 completion: @escaping (Result<Frame, FrameError>) -> Void) {
        let due = loop.nowMilliseconds.addingSaturated(deadline.millisecondsRoundedUp)
        send(to: peer, type: type, payload: payload, due: due, deadline: deadline, retried: false, completion: completion)
    }

    private func send(to peer: HostPort, type: UInt16, payload: [UInt8], due: UInt64, deadline: Duration, retried: Bool,
                      completion: @escaping (Result<Frame, FrameError>) -> Void) {
        withConnection(to: peer) { [weak self] connection, pooled in
            guard let connection else {
                completion(.failure(self?.failures[peer] ?? FrameError(.connectFailed, "cannot connect to \(peer)")))
                return
            }
            guard let self else {
                completion(.failure(FrameError(.closed, "the frame client is shut down")))
                return
            }
            let now = self.loop.nowMilliseconds
            guard now < due else {
                completion(.failure(FrameError(.deadlineExceeded, "no answer to frame type \(type) within \(deadline)")))
                return
            }
            // The peer may have closed a quiet pooled connection as idle while this went out.
            let quiet = pooled && !retried && connection.inFlight == 0 && connection.unanswered == 0
            let mark = connection.framesReceived
            connection.request(type: type, payload: payload, deadline: .milliseconds(Int64(clamping: due - now))) {
                [weak self, weak connection] result in
                if case .failure(let error) = result, error.code == .closed, quiet,
                   let self, !self.closed, let connection, connection.framesReceived == mark {
                    self.send(to: peer, type: type, payload: payload, due: due, deadline: deadline, retried: true,
                              completion: completion)
                    return
                }
                completion(result)
            }
        }
    }

    /// Runs `body` with an open connection to `peer` (and whether it was pooled), or nil.
    private func withConnection(to peer: HostPort, _ body: @escaping (FrameConnection?, Bool) -> Void) {
        if let connection = connections[peer], connection.isOpen { return body(connection, true) }
        guard !closed else { return body(nil, false) }
        if connecting[peer] != nil {
            connecting[peer]!.append(body)
            return
        }
        connecting[peer] = [body]
        let address: SocketAddress
        do { address = try SocketAddress(resolving: peer) } catch {
            failures[peer] = FrameError(.connectFailed, error.message)
            finishConnecting(peer, nil)
            return
        }
        TCPConnection.connect(on: loop, to: address, timeout: configuration.connectTimeout) { [weak self] result in
            guard let self else {
                if case .success(let tcp) = result { tcp.close() }
                return
            }
            switch result {
            case .success(let tcp):
                guard !self.closed else { tcp.close(); self.finishConnecting(peer, nil); return }
                let connection = FrameConnection(tcp: tcp, limits: self.limits, handler: self.handler)
                connection.onClose = { [weak self, unowned connection] in
                    if self?.connections[peer] === connection { self?.connections[peer] = nil }
                }
                self.connections[peer] = connection
                self.failures[peer] = nil
                self.finishConnecting(peer, connection)
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
