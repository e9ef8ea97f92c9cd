import Dispatch
public import KaaCore

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
public struct FrameDecoder: Sendable {
    public let maxFrameBytes: Int
    private var buffer: [UInt8] = []
    private var start = 0

    public init(maxFrameBytes: Int) { self.maxFrameBytes = maxFrameBytes }

    public mutating func append(_ bytes: UnsafeRawBufferPointer) { buffer.append(contentsOf: bytes) }

    /// The next complete frame, `nil` when more bytes are needed.
    public mutating func next() throws(FrameError) -> Frame? {
        let available = buffer.count - start
        guard available >= Frame.headerSize else { compact(); return nil }
        let length = buffer.withUnsafeBytes { raw in
            Int(UInt32(bigEndian: raw.loadUnaligned(fromByteOffset: start, as: UInt32.self)))
        }
        guard length >= Frame.headerSize - 4 else {
            throw FrameError(.protocolViolation, "frame length \(length) is shorter than a frame header")
        }
        guard length + 4 <= maxFrameBytes else {
            throw FrameError(.protocolViolation, "frame of \(length + 4) bytes exceeds the limit of \(maxFrameBytes) bytes")
        }
        guard available >= length + 4 else { compact(); return nil }
        let kindByte = buffer[start + 4]
        guard let kind = Frame.Kind(rawValue: kindByte) else {
            throw FrameError(.protocolViolation, "unknown frame kind \(kindByte)")
        }
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
        if start > 0 && (start == buffer.count || start > 64 << 10) {
            buffer.removeSubrange(0..<start)
            start = 0
        }
    }
}

/// Answers one request frame, once, from any thread.
public struct FrameResponder: Sendable {
    let connection: LoopBound<FrameConnection>
    let request: Frame

    public func respond(_ payload: [UInt8]) { send(.response, payload) }
    public func fail(_ message: String) { send(.error, Array(message.utf8)) }

    private func send(_ kind: Frame.Kind, _ payload: [UInt8]) {
        guard request.kind == .request else { return }
        let frame = Frame(kind: kind, type: request.type, id: request.id, payload: payload)
        let connection = self.connection
        if connection.loop.inLoop { connection.value.send(frame) } else { connection.loop.execute { connection.value.send(frame) } }
    }
}

/// A multiplexed frame connection: many requests in flight both ways. Loop-confined.
public final class FrameConnection: TCPConnectionDelegate {
    public typealias Handler = @Sendable (Frame, FrameResponder) -> Void

    let tcp: TCPConnection
    private var decoder: FrameDecoder
    private let handler: Handler?
    private var nextID: UInt64 = 1
    private var pending: [UInt64: (completion: (Result<Frame, FrameError>) -> Void, timer: LoopTimer?)] = [:]
    /// Past this many queued output bytes, new requests fail with ``FrameError/Code/overloaded``.
    let maxQueuedBytes: Int
    var onClose: (() -> Void)?
    private var closeReason: FrameError?

    init(tcp: TCPConnection, maxFrameBytes: Int, handler: Handler?) {
        self.tcp = tcp
        self.decoder = FrameDecoder(maxFrameBytes: maxFrameBytes)
        self.handler = handler
        self.maxQueuedBytes = max(maxFrameBytes * 2, 4 << 20)
        tcp.delegate = self
        tcp.startReading()
    }

    public var isOpen: Bool { tcp.isOpen }
    public var inFlight: Int { pending.count }

    /// Sends a request; `completion` runs once on the loop with the response or an error.
    public func request(type: UInt16, payload: [UInt8], deadline: Duration,
                        completion: @escaping (Result<Frame, FrameError>) -> Void) {
        guard tcp.isOpen else {
            completion(.failure(closeReason ?? FrameError(.closed, "peer connection is closed")))
            return
        }
        guard tcp.pendingWriteBytes + payload.count <= maxQueuedBytes else {
            completion(.failure(FrameError(.overloaded,
                "peer connection to \(tcp.remoteAddress.map(\.description) ?? "?") has \(tcp.pendingWriteBytes) bytes queued")))
            return
        }
        let id = nextID
        nextID &+= 1
        let timer = tcp.loop.schedule(after: deadline) { [weak self] in
            guard let self, let entry = self.pending.removeValue(forKey: id) else { return }
            entry.completion(.failure(FrameError(.deadlineExceeded, "no answer to frame type \(type) within \(deadline)")))
        }
        pending[id] = (completion, timer)
        send(Frame(kind: .request, type: type, id: id, payload: payload))
    }

    /// Sends a message that expects no answer.
    public func sendOneWay(type: UInt16, payload: [UInt8]) {
        send(Frame(kind: .oneWay, type: type, id: 0, payload: payload))
    }

    func send(_ frame: Frame) {
        guard tcp.isOpen else { return }
        var out: [UInt8] = []
        frame.encode(into: &out)
        tcp.write(out)
    }

    public func close() { tcp.close() }

    public func connection(_ connection: TCPConnection, received bytes: UnsafeRawBufferPointer) {
        decoder.append(bytes)
        do {
            while let frame = try decoder.next() { dispatch(frame) }
        } catch {
            closeReason = error
            tcp.close()
        }
    }

    private func dispatch(_ frame: Frame) {
        switch frame.kind {
        case .request, .oneWay:
            guard let handler else {
                if frame.kind == .request { send(Frame(kind: .error, type: frame.type, id: frame.id,
                                                       payload: Array("this endpoint serves no requests".utf8))) }
                return
            }
            handler(frame, FrameResponder(connection: LoopBound(self, loop: tcp.loop), request: frame))
        case .response, .error:
            guard let entry = pending.removeValue(forKey: frame.id) else { return } // late answer
            entry.timer?.cancel()
            if frame.kind == .error {
                entry.completion(.failure(FrameError(.remoteError, String(decoding: frame.payload, as: UTF8.self))))
            } else {
                entry.completion(.success(frame))
            }
        }
    }

    public func connection(_ connection: TCPConnection, readEndedWith error: IOError?) {
        closeReason = FrameError(.closed, error.map { "peer connection failed: \($0.message)" } ?? "peer closed the connection")
        tcp.close()
    }

    public func connection(_ connection: TCPConnection, writabilityChanged writable: Bool) {
        // Stop taking requests while our answers cannot be written.
        if writable { tcp.startReading() } else { tcp.stopReading() }
    }

    public func connectionClosed(_ connection: TCPConnection) {
        let reason = closeReason ?? FrameError(.closed, "peer connection closed")
        let failed = pending
        pending = [:]
        for entry in failed.values {
            entry.timer?.cancel()
            entry.completion(.failure(reason))
        }
        onClose?()
        onClose = nil
    }
}

/// Accepts frame connections on the peer address. Thread-safe handle.
public final class FrameServer: Sendable {
    public let loop: EventLoop
    public let localAddress: SocketAddress
    private let state: LoopBound<FrameServerState>

    public init(on loop: EventLoop, address: SocketAddress, maxFrameBytes: Int = 64 << 20,
                handler: @escaping FrameConnection.Handler) throws {
        self.loop = loop
        let state = try loop.runBlocking { () throws -> LoopBound<FrameServerState> in
            LoopBound(try FrameServerState(loop: loop, address: address, maxFrameBytes: maxFrameBytes, handler: handler), loop: loop)
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

    deinit {
        let state = self.state
        loop.execute { state.value.close() }
    }
}

final class FrameServerState {
    let listener: TCPListener
    var connections: [ObjectIdentifier: FrameConnection] = [:]

    init(loop: EventLoop, address: SocketAddress, maxFrameBytes: Int, handler: @escaping FrameConnection.Handler) throws {
        var accept: ((TCPConnection) -> Void)?
        listener = try TCPListener(loop: loop, address: address) { accept?($0) }
        accept = { [weak self] tcp in
            guard let self else { tcp.close(); return }
            let connection = FrameConnection(tcp: tcp, maxFrameBytes: maxFrameBytes, handler: handler)
            let key = ObjectIdentifier(connection)
            self.connections[key] = connection
            connection.onClose = { [weak self] in self?.connections[key] = nil }
        }
    }

    func close() {
        listener.close()
        for connection in Array(connections.values) { connection.close() }
    }
}

/// Sends requests to peers over one multiplexed connection per peer, connecting on demand.
/// Thread-safe handle.
public final class FrameClient: Sendable {
    public let loop: EventLoop
    private let state: LoopBound<FrameClientState>

    public init(loop: EventLoop, maxFrameBytes: Int = 64 << 20, connectTimeout: Duration = .seconds(2),
                handler: FrameConnection.Handler? = nil) {
        self.loop = loop
        self.state = loop.runBlocking {
            LoopBound(FrameClientState(loop: loop, maxFrameBytes: maxFrameBytes, connectTimeout: connectTimeout,
                                       handler: handler), loop: loop)
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
        return loop.runBlocking { state.value.connections.count }
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
    let maxFrameBytes: Int
    let connectTimeout: Duration
    let handler: FrameConnection.Handler?
    var connections: [HostPort: FrameConnection] = [:]
    private var connecting: [HostPort: [(FrameConnection?) -> Void]] = [:]
    private var failures: [HostPort: FrameError] = [:]
    private var closed = false

    init(loop: EventLoop, maxFrameBytes: Int, connectTimeout: Duration, handler: FrameConnection.Handler?) {
        self.loop = loop
        self.maxFrameBytes = maxFrameBytes
        self.connectTimeout = connectTimeout
        self.handler = handler
    }

    func request(to peer: HostPort, type: UInt16, payload: [UInt8], deadline: Duration,
                 completion: @escaping (Result<Frame, FrameError>) -> Void) {
        withConnection(to: peer) { [weak self] connection in
            guard let connection else {
                completion(.failure(self?.failures[peer] ?? FrameError(.connectFailed, "cannot connect to \(peer)")))
                return
            }
            connection.request(type: type, payload: payload, deadline: deadline, completion: completion)
        }
    }

    private func withConnection(to peer: HostPort, _ body: @escaping (FrameConnection?) -> Void) {
        if let connection = connections[peer], connection.isOpen { return body(connection) }
        guard !closed else { return body(nil) }
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
        TCPConnection.connect(on: loop, to: address, timeout: connectTimeout) { [weak self] result in
            guard let self else {
                if case .success(let tcp) = result { tcp.close() }
                return
            }
            switch result {
            case .success(let tcp):
                guard !self.closed else { tcp.close(); self.finishConnecting(peer, nil); return }
                let connection = FrameConnection(tcp: tcp, maxFrameBytes: self.maxFrameBytes, handler: self.handler)
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
        for body in waiting { body(connection) }
    }

    func close() {
        closed = true
        for connection in Array(connections.values) { connection.close() }
    }
}
