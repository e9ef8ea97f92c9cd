internal import CHTTPParser
import Dispatch
public import KaaCore
import Synchronization

/// A response as the client received it.
public struct HTTPClientResponse: Sendable {
    public var status: Int
    public var headers: HTTPHeaders
    public var body: [UInt8]

    /// The body as UTF-8 text.
    public var text: String { String(decoding: body, as: UTF8.self) }
}

/// Why a client request failed; ``code`` for programs, ``message`` for people.
public struct HTTPClientError: Error, CustomStringConvertible, Sendable {
    public struct Code: Hashable, Sendable {
        let name: String
        public static let connectionRefused = Code(name: "connection refused")
        public static let connectionReset = Code(name: "connection reset")
        public static let connectTimeout = Code(name: "connect timeout")
        public static let deadlineExceeded = Code(name: "deadline exceeded")
        public static let malformedResponse = Code(name: "malformed response")
        public static let responseTooLarge = Code(name: "response too large")
        public static let badAddress = Code(name: "bad address")
        public static let shutDown = Code(name: "client shut down")
        public static let other = Code(name: "I/O error")
    }

    public var code: Code
    public var message: String
    public var description: String { message }

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
}

/// A request body produced piece by piece (an upload read from a file), so it is never held
/// in memory whole.
public struct HTTPClientBodyStream: Sendable {
    /// Exact body length, sent as Content-Length.
    public var length: Int
    /// The next piece, `nil` at the end; called on the client's loop whenever the connection
    /// can take more. A thrown error fails the request.
    public var next: @Sendable () throws -> [UInt8]?
    /// Bytes handed to the socket so far; called on the loop after each piece.
    public var progress: (@Sendable (Int) -> Void)?

    public init(length: Int, next: @escaping @Sendable () throws -> [UInt8]?,
                progress: (@Sendable (Int) -> Void)? = nil) {
        self.length = length
        self.next = next
        self.progress = progress
    }
}

/// An HTTP/1.1 client with pooled keep-alive connections per host, a deadline per request and
/// a connect timeout. Thread-safe; its work runs on one event loop.
public final class HTTPClient: Sendable {
    public struct Configuration: Sendable {
        public var connectTimeout: Duration = .seconds(3)
        /// Idle keep-alive connections kept per host.
        public var maxIdlePerHost = 32
        /// An idle pooled connection is closed after this.
        public var idleTimeout: Duration = .seconds(30)
        public var maxResponseBytes = 1 << 30
        public init() {}
    }

    public let loop: EventLoop
    private let ownsLoop: Bool
    private let core: LoopBound<ClientCore>

    /// A client on `loop`, or on a loop of its own when `loop` is nil.
    public init(loop: EventLoop? = nil, configuration: Configuration = .init()) {
        self.ownsLoop = loop == nil
        let loop = loop ?? EventLoop.start(name: "kaa-http-client")
        self.loop = loop
        self.core = loop.runBlocking { LoopBound(ClientCore(loop: loop, configuration: configuration), loop: loop) }
    }

    /// Sends `request` to `address`; `completion` runs once, on the client's loop.
    /// With `bodyStream`, the body comes from the stream instead of `request.body`.
    public func execute(_ request: HTTPRequest, bodyStream: HTTPClientBodyStream? = nil, to address: HostPort,
                        deadline: Duration,
                        completion: @escaping @Sendable (Result<HTTPClientResponse, HTTPClientError>) -> Void) {
        let core = self.core
        loop.execute {
            core.value.start(request, bodyStream: bodyStream, to: address, deadline: deadline, completion: completion)
        }
    }

    /// Sends `request` to `address` and waits for the whole response.
    public func execute(_ request: HTTPRequest, bodyStream: HTTPClientBodyStream? = nil, to address: HostPort,
                        deadline: Duration) async throws(HTTPClientError) -> HTTPClientResponse {
        let result = await withCheckedContinuation { continuation in
            execute(request, bodyStream: bodyStream, to: address, deadline: deadline) { continuation.resume(returning: $0) }
        }
        return try result.get()
    }

    /// Closes every pooled connection; requests in flight fail with ``HTTPClientError/Code/shutDown``.
    /// Stops the client's own loop if it made one. MUST NOT be called on the loop.
    public func shutdown() {
        let core = self.core
        loop.runBlocking { core.value.shutdown() }
        if ownsLoop { loop.shutdown() }
    }

    /// Idle pooled connections to `address` (for tests and metrics). Not on the loop.
    public func idleConnections(to address: HostPort) -> Int {
        let core = self.core
        return loop.runBlocking { core.value.pools[address]?.count ?? 0 }
    }
}

/// Loop-side state of an ``HTTPClient``. Loop-confined.
final class ClientCore {
    let loop: EventLoop
    let configuration: HTTPClient.Configuration
    var pools: [HostPort: [ClientConnection]] = [:]
    private var resolved: [HostPort: SocketAddress] = [:]
    private var active: Set<ObjectIdentifier> = []
    private var activeConnections: [ObjectIdentifier: ClientConnection] = [:]
    private var isShutDown = false

    init(loop: EventLoop, configuration: HTTPClient.Configuration) {
        self.loop = loop
        self.configuration = configuration
    }

    func start(_ request: HTTPRequest, bodyStream: HTTPClientBodyStream?, to address: HostPort, deadline: Duration,
               completion: @escaping @Sendable (Result<HTTPClientResponse, HTTPClientError>) -> Void) {
        guard !isShutDown else {
            completion(.failure(HTTPClientError(.shutDown, "HTTP client is shut down")))
            return
        }
        let exchange = ClientExchange(request: request, address: address, completion: completion)
        exchange.bodyStream = bodyStream
        exchange.retried = bodyStream != nil // a stream cannot be replayed
        exchange.timer = loop.schedule(after: deadline) { [weak self, weak exchange] in
            guard let self, let exchange else { return }
            let connection = exchange.connection
            exchange.finish(.failure(HTTPClientError(.deadlineExceeded,
                "\(request.method) \(address)\(request.target): no complete response within \(deadline)")))
            if let connection { connection.abandon() ; self.forget(connection) }
        }
        exchange.deadlineAt = loop.nowMilliseconds + deadline.millisecondsRoundedUp
        send(exchange, allowPooled: true)
    }

    private func send(_ exchange: ClientExchange, allowPooled: Bool) {
        if allowPooled, var idle = pools[exchange.address], let connection = idle.popLast() {
            pools[exchange.address] = idle
            activeConnections[ObjectIdentifier(connection)] = connection
            connection.send(exchange, reused: true)
            return
        }
        let address: SocketAddress
        if let known = resolved[exchange.address] {
            address = known
        } else {
            do { address = try SocketAddress(resolving: exchange.address) } catch {
                exchange.finish(.failure(HTTPClientError(.badAddress, error.message)))
                return
            }
            resolved[exchange.address] = address
        }
        let remaining = exchange.deadlineAt > loop.nowMilliseconds ? exchange.deadlineAt - loop.nowMilliseconds : 1
        let timeout = min(configuration.connectTimeout, .milliseconds(Int64(remaining)))
        TCPConnection.connect(on: loop, to: address, timeout: timeout) { [weak self] result in
            guard let self else {
                if case .success(let tcp) = result { tcp.close() }
                exchange.finish(.failure(HTTPClientError(.shutDown, "HTTP client shut down")))
                return
            }
            switch result {
            case .success(let tcp):
                guard !exchange.isFinished, !self.isShutDown else { tcp.close(); return }
                let connection = ClientConnection(core: self, tcp: tcp, address: exchange.address)
                self.activeConnections[ObjectIdentifier(connection)] = connection
                connection.send(exchange, reused: false)
            case .failure(let error):
                let code: HTTPClientError.Code = switch error.code {
                case .connectionRefused: .connectionRefused
                case .timedOut: .connectTimeout
                case .badAddress: .badAddress
                default: .other
                }
                exchange.finish(.failure(HTTPClientError(code, "cannot connect to \(exchange.address): \(error.message)")))
            }
        }
    }

    /// The connection answered its exchange and may carry the next one.
    func release(_ connection: ClientConnection, keepAlive: Bool) {
        activeConnections[ObjectIdentifier(connection)] = nil
        guard keepAlive, !isShutDown, (pools[connection.address]?.count ?? 0) < configuration.maxIdlePerHost else {
            connection.tcp.close()
            return
        }
        pools[connection.address, default: []].append(connection)
        connection.becomeIdle(timeout: configuration.idleTimeout)
    }

    /// The connection is closed or broken; drop it from the pool and the active set.
    func forget(_ connection: ClientConnection) {
        activeConnections[ObjectIdentifier(connection)] = nil
        if var idle = pools[connection.address], let i = idle.firstIndex(where: { $0 === connection }) {
            idle.remove(at: i)
            pools[connection.address] = idle
        }
    }

    /// A reused connection died before any byte of the answer: try once more on a new one.
    func retry(_ exchange: ClientExchange) { send(exchange, allowPooled: false) }

    func shutdown() {
        isShutDown = true
        for connection in pools.values.flatMap({ $0 }) { connection.tcp.close() }
        pools = [:]
        for connection in Array(activeConnections.values) {
            connection.exchange?.finish(.failure(HTTPClientError(.shutDown, "HTTP client shut down")))
            connection.tcp.close()
        }
        activeConnections = [:]
    }
}

/// One request in flight: what to send, and whom to tell.
final class ClientExchange {
    let request: HTTPRequest
    let address: HostPort
    private var completion: (@Sendable (Result<HTTPClientResponse, HTTPClientError>) -> Void)?
    var timer: LoopTimer?
    var deadlineAt: UInt64 = 0
    weak var connection: ClientConnection?
    var retried = false
    var bodyStream: HTTPClientBodyStream?
    var streamed = 0

    init(request: HTTPRequest, address: HostPort,
         completion: @escaping @Sendable (Result<HTTPClientResponse, HTTPClientError>) -> Void) {
        self.request = request
        self.address = address
        self.completion = completion
    }

    var isFinished: Bool { completion == nil }

    func finish(_ result: Result<HTTPClientResponse, HTTPClientError>) {
        guard let completion else { return }
        self.completion = nil
        timer?.cancel()
        timer = nil
        connection = nil
        completion(result)
    }
}

/// One client connection: writes a request, parses the response with http_parser.
/// Loop-confined.
final class ClientConnection: TCPConnectionDelegate {
    /// Strong: the core's pool holds this connection only until it closes, which breaks the cycle.
    let core: ClientCore
    let tcp: TCPConnection
    let address: HostPort
    private(set) var exchange: ClientExchange?
    private let parser: UnsafeMutablePointer<http_parser>
    private var reused = false
    private var receivedAny = false
    private var idleTimer: LoopTimer?

    private var status = 0
    private var headers = HTTPHeaders()
    private var field: [UInt8] = []
    private var value: [UInt8] = []
    private var inValue = false
    private var body: [UInt8] = []
    private var tooLarge = false
    private var complete = false

    init(core: ClientCore, tcp: TCPConnection, address: HostPort) {
        self.core = core
        self.tcp = tcp
        self.address = address
        parser = .allocate(capacity: 1)
        parser.pointee.data = nil
        tcp.delegate = self
        tcp.startReading()
        LiveObjects.httpClientConnections.add(1, ordering: .relaxed)
    }

    deinit {
        parser.deallocate()
        LiveObjects.httpClientConnections.subtract(1, ordering: .relaxed)
    }

    func send(_ exchange: ClientExchange, reused: Bool) {
        idleTimer?.cancel()
        idleTimer = nil
        self.exchange = exchange
        self.reused = reused
        exchange.connection = self
        receivedAny = false
        complete = false
        http_parser_init(parser, HTTP_RESPONSE)
        parser.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        let request = exchange.request
        var out: [UInt8] = []
        out.reserveCapacity(128 + request.body.count)
        out.append(contentsOf: "\(request.method.rawValue) \(request.target) HTTP/1.1\r\n".utf8)
        if request.headers["host"] == nil { out.append(contentsOf: "host: \(address)\r\n".utf8) }
        for (name, value) in request.headers where name.lowercased() != "content-length" {
            out.append(contentsOf: "\(name): \(value)\r\n".utf8)
        }
        if let stream = exchange.bodyStream {
            out.append(contentsOf: "content-length: \(stream.length)\r\n\r\n".utf8)
            tcp.write(out)
            pump()
            return
        }
        if !request.body.isEmpty || request.method == .post || request.method == .put {
            out.append(contentsOf: "content-length: \(request.body.count)\r\n".utf8)
        }
        out.append(contentsOf: "\r\n".utf8)
        out.append(contentsOf: request.body)
        tcp.write(out)
    }

    /// Writes pieces of a streamed body while the socket takes them.
    private func pump() {
        guard let exchange, let stream = exchange.bodyStream else { return }
        while tcp.isOpen && tcp.isWritable && exchange.streamed < stream.length {
            let piece: [UInt8]?
            do { piece = try stream.next() } catch {
                fail(HTTPClientError(.other, "reading the request body failed: \(error)"))
                return
            }
            guard let piece, !piece.isEmpty else {
                fail(HTTPClientError(.other, "request body ended after \(exchange.streamed) of \(stream.length) bytes"))
                return
            }
            guard exchange.streamed + piece.count <= stream.length else {
                fail(HTTPClientError(.other, "request body is longer than its declared \(stream.length) bytes"))
                return
            }
            tcp.write(piece)
            exchange.streamed += piece.count
            stream.progress?(exchange.streamed)
        }
    }

    func connection(_ connection: TCPConnection, writabilityChanged writable: Bool) {
        if writable { pump() }
    }

    func becomeIdle(timeout: Duration) {
        exchange = nil
        idleTimer = core.loop.schedule(after: timeout) { [weak self] in
            guard let self else { return }
            self.core.forget(self)
            self.tcp.close()
        }
    }

    /// The exchange was given up (deadline); this connection's state is unknown, so close it.
    func abandon() {
        exchange = nil
        tcp.close()
    }

    func connection(_ connection: TCPConnection, received bytes: UnsafeRawBufferPointer) {
        guard exchange != nil else {
            core.forget(self) // bytes while idle: the server broke the protocol
            tcp.close()
            return
        }
        receivedAny = true
        let parsed = http_parser_execute(parser, clientParserSettings, bytes.baseAddress?.assumingMemoryBound(to: CChar.self), bytes.count)
        if complete { return }
        if tooLarge {
            fail(HTTPClientError(.responseTooLarge, "response from \(address) exceeds \(core.configuration.maxResponseBytes) bytes"))
        } else if parsed != bytes.count || kaa_http_errno(parser) != HPE_OK {
            let code = kaa_http_errno(parser)
            fail(HTTPClientError(.malformedResponse,
                "malformed response from \(address): \(String(cString: http_errno_description(code)))"))
        }
    }

    func connection(_ connection: TCPConnection, readEndedWith error: IOError?) {
        guard let exchange else {
            core.forget(self)
            tcp.close()
            return
        }
        if error == nil && receivedAny {
            // A body delimited by the close: tell the parser the stream ended.
            _ = http_parser_execute(parser, clientParserSettings, nil, 0)
            if complete { return }
        }
        if !receivedAny && reused && !exchange.retried && exchange.request.method.isIdempotent {
            exchange.retried = true
            self.exchange = nil
            core.forget(self)
            tcp.close()
            core.retry(exchange)
            return
        }
        let why = error.map { $0.message } ?? "the server closed the connection before a complete response"
        fail(HTTPClientError(.connectionReset, "\(exchange.request.method) \(address)\(exchange.request.target): \(why)"))
    }

    func connectionClosed(_ connection: TCPConnection) {
        idleTimer?.cancel()
        core.forget(self)
        exchange?.finish(.failure(HTTPClientError(.connectionReset, "connection to \(address) closed")))
        exchange = nil
    }

    private func fail(_ error: HTTPClientError) {
        let exchange = self.exchange
        self.exchange = nil
        core.forget(self)
        tcp.close()
        exchange?.finish(.failure(error))
    }

    fileprivate func messageBegin() -> Int32 {
        headers = HTTPHeaders()
        body = []
        field = []
        value = []
        inValue = false
        return 0
    }

    fileprivate func headerField(_ bytes: UnsafeRawBufferPointer) -> Int32 {
        if inValue { commitHeader() }
        field.append(contentsOf: bytes)
        return 0
    }

    fileprivate func headerValue(_ bytes: UnsafeRawBufferPointer) -> Int32 {
        inValue = true
        value.append(contentsOf: bytes)
        return 0
    }

    private func commitHeader() {
        headers.add(String(decoding: field, as: UTF8.self), String(decoding: value, as: UTF8.self))
        field = []
        value = []
        inValue = false
    }

    fileprivate func headersComplete() -> Int32 {
        if inValue || !field.isEmpty { commitHeader() }
        status = Int(kaa_http_status(parser))
        if isInterim { return 0 }
        return exchange?.request.method == .head ? 1 : 0
    }

    fileprivate func bodyBytes(_ bytes: UnsafeRawBufferPointer) -> Int32 {
        if body.count + bytes.count > core.configuration.maxResponseBytes {
            tooLarge = true
            return 1
        }
        body.append(contentsOf: bytes)
        return 0
    }

    /// A 1xx answer other than 101 (100 Continue, 103 Early Hints): the real one follows.
    private var isInterim: Bool { status >= 100 && status < 200 && status != 101 }

    fileprivate func messageComplete() -> Int32 {
        if isInterim { return 0 }
        complete = true
        let response = HTTPClientResponse(status: status, headers: headers, body: body)
        let keepAlive = http_should_keep_alive(parser) != 0
        let exchange = self.exchange
        http_parser_pause(parser, 1)
        core.release(self, keepAlive: keepAlive)
        exchange?.finish(.success(response))
        return 0
    }
}

private func clientConnection(_ parser: UnsafeMutablePointer<http_parser>?) -> ClientConnection {
    Unmanaged<ClientConnection>.fromOpaque(parser!.pointee.data).takeUnretainedValue()
}

/// Made once and never written again (see the server's `serverParserSettings`).
nonisolated(unsafe) private let clientParserSettings: UnsafePointer<http_parser_settings> = {
    let p = UnsafeMutablePointer<http_parser_settings>.allocate(capacity: 1)
    var s = http_parser_settings()
    s.on_message_begin = { clientConnection($0).messageBegin() }
    s.on_header_field = { clientConnection($0).headerField(UnsafeRawBufferPointer(start: $1, count: $2)) }
    s.on_header_value = { clientConnection($0).headerValue(UnsafeRawBufferPointer(start: $1, count: $2)) }
    s.on_headers_complete = { clientConnection($0).headersComplete() }
    s.on_body = { clientConnection($0).bodyBytes(UnsafeRawBufferPointer(start: $1, count: $2)) }
    s.on_message_complete = { clientConnection($0).messageComplete() }
    p.initialize(to: s)
    return UnsafePointer(p)
}()
