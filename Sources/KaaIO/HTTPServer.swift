internal import CHTTPParser
import Dispatch
import Glibc
import KaaCore
import Synchronization

/// An HTTP/1.1 server on one event loop: keep-alive, pipelining, Content-Length and chunked
/// bodies, `Expect: 100-continue`, limits and timeouts, a cap on open connections and a
/// graceful shutdown.
///
/// The handler runs on the loop thread for each complete request and MUST answer exactly once
/// through its ``HTTPResponder`` (from any thread, now or later). Responses go out in request
/// order even when handlers finish out of order.
public final class HTTPServer: Sendable {
    public struct Configuration: Sendable {
        /// Request line plus header bytes (the request target included); past it the answer is
        /// 431 and the connection closes.
        public var maxHeaderBytes = 16 * 1024
        /// Header fields in one request (trailers included); past it the answer is 431 and the
        /// connection closes.
        public var maxHeaderCount = 100
        /// Body bytes; past it the answer is 413 and the connection closes.
        public var maxBodyBytes = 16 * 1024 * 1024
        /// Body bytes all connections together may hold while their requests are still arriving
        /// (a streamed body's chunks are not held, so they do not count). A request whose body
        /// would take the total past it gets 503 and its connection closes.
        public var maxBufferedBodyBytes = 512 * 1024 * 1024
        /// From a request's first byte to the end of its headers; past it the connection closes.
        public var headerTimeout: Duration = .seconds(10)
        /// The body's grace period; see ``minBodyRate`` for the whole rule.
        ///
        /// A body times out (408, and the connection closes) when no byte of it arrives for
        /// `bodyTimeout`, or when it falls behind ``minBodyRate``: by any moment, `t` after the
        /// headers, at least `(t - bodyTimeout) * minBodyRate` bytes must have arrived. Sending
        /// one byte now and then does not extend it. Time the node itself holds the body up (a
        /// streamed body's sink still taking the previous chunk) does not count against the client.
        public var bodyTimeout: Duration = .seconds(60)
        /// The slowest average rate, in bytes per second since the headers, at which a body may
        /// arrive once its ``bodyTimeout`` of grace is spent. So a body of `n` bytes has at most
        /// `bodyTimeout + n / minBodyRate` (plus the time the node held it up), and a client that
        /// trickles cannot hold a connection, a buffer or an upload's temporary file for long.
        /// Values below 1 count as 1.
        public var minBodyRate = 64 * 1024
        /// A keep-alive connection with no request in progress closes after this.
        public var idleTimeout: Duration = .seconds(75)
        /// Open connections; the next one gets 503 and is closed.
        public var maxConnections = 10_000
        /// Requests parsed but not yet answered on one connection; past it, reading pauses.
        public var maxPipelinedRequests = 64
        /// Answers to the client's `Expect: 100-continue`.
        public var sendContinue = true

        public init() {}

        var sweepInterval: Duration {
            let shortest = min(headerTimeout, bodyTimeout, idleTimeout)
            return min(.seconds(1), max(.milliseconds(10), shortest / 4))
        }
    }

    public typealias Handler = @Sendable (HTTPRequest, HTTPResponder) -> Void
    /// Chooses, from a request's head (its body still empty), a sink that takes the body as it
    /// arrives instead of buffering it; `nil` buffers as usual. Runs on the loop, and only for
    /// methods that carry bodies (not GET or HEAD).
    public typealias Streamer = @Sendable (HTTPRequest) -> (any HTTPBodySink)?

    public let loop: EventLoop
    /// The bound address (with the real port when port 0 was asked for).
    public let localAddress: SocketAddress
    private let core: LoopBound<ServerCore>

    /// Binds `address` and starts serving. Safe from any thread.
    public init(on loop: EventLoop, address: SocketAddress, configuration: Configuration = .init(),
                streamer: Streamer? = nil, handler: @escaping Handler) throws {
        self.loop = loop
        let core = try loop.runBlocking { () throws -> LoopBound<ServerCore> in
            LoopBound(try ServerCore(loop: loop, address: address, configuration: configuration,
                                     streamer: streamer, handler: handler), loop: loop)
        }
        self.core = core
        self.localAddress = loop.runBlocking { core.value.listener.localAddress }
    }

    /// Stops accepting, lets in-flight requests finish for up to `grace`, then closes every
    /// connection. Returns once all are closed. Safe from any thread but the loop's.
    public func shutdown(grace: Duration = .seconds(10)) {
        let done = DispatchSemaphore(value: 0)
        let core = self.core
        loop.execute { core.value.shutdown(grace: grace) { done.signal() } }
        done.wait()
    }

    /// Starts the shutdown from the loop thread; `completion` runs on the loop when done.
    /// `graceEnded` runs on the loop when the grace is over, before the connections still open
    /// are closed: answers it gives then are written before their connections close.
    public func shutdownOnLoop(grace: Duration, graceEnded: (() -> Void)? = nil, completion: @escaping () -> Void) {
        core.value.shutdown(grace: grace, graceEnded: graceEnded, completion: completion)
    }

    deinit {
        // A server dropped without `shutdown` still closes its listener and connections.
        let core = self.core
        loop.execute { core.value.shutdown(grace: .zero) {} }
    }

    /// Output bytes queued in the kernel's stead, over all connections (back-pressure gauge).
    /// Safe from any thread but the loop's.
    public var queuedOutputBytes: Int {
        let core = self.core
        return loop.runBlocking { core.value.connections.values.reduce(0) { $0 + $1.tcp.pendingWriteBytes } }
    }

    /// Open connections right now. Safe from any thread but the loop's.
    public var openConnections: Int {
        let core = self.core
        return loop.runBlocking { core.value.connections.count }
    }

    /// Body bytes held for requests still arriving, over all connections (the figure
    /// ``Configuration/maxBufferedBodyBytes`` bounds). Safe from any thread but the loop's.
    public var bufferedBodyBytes: Int {
        let core = self.core
        return loop.runBlocking { core.value.bufferedBodyBytes }
    }

    /// Bytes the connections' own buffers hold (request, body, unread and unwritten bytes).
    /// Safe from any thread but the loop's.
    var heldBufferBytes: Int {
        let core = self.core
        return loop.runBlocking { core.value.connections.values.reduce(0) { $0 + $1.heldBufferBytes } }
    }
}

/// Takes a request body as it arrives (uploads of any size). Loop-confined: every call comes
/// on the loop thread.
///
/// The server stops reading the connection after each chunk until `ready` is called, so a sink
/// that hands chunks to a worker gets back-pressure for free; the body deadline
/// (``HTTPServer/Configuration/bodyTimeout``) is stopped meanwhile, so a slow sink never makes
/// the client's body time out. A sink MUST call `ready` for every chunk. `maxBytes` replaces
/// the server's body limit for this request.
///
/// A sink that will not take the body answers through ``refusal`` instead of reading it.
public protocol HTTPBodySink: AnyObject {
    var maxBytes: Int { get }
    /// An answer that ends the request without reading (the rest of) its body: a request refused
    /// from its head, or an upload that failed half-way. The server reads it when the headers are
    /// complete and after each `ready`. Once it is set, the server writes it at once (in request
    /// order, with `Connection: close`; no `100 Continue` is sent for a request refused from its
    /// head), reads no more of the connection, closes it after the write, and calls neither
    /// `finish` nor `abort`: the sink has ended the request itself. Set once the whole body has
    /// arrived (a Content-Length body's last chunk taken), it is the answer in place of `finish`
    /// and the connection stays open. Default: `nil`.
    var refusal: HTTPResponse? { get }
    /// The next bytes of the body; call `ready` (on the loop, now or later) for more.
    func receive(_ chunk: [UInt8], ready: @escaping () -> Void)
    /// The body is complete: answer through `responder`.
    func finish(_ responder: HTTPResponder)
    /// The body will not complete (client gone, malformed, too large, timed out).
    func abort(_ reason: String)
}

extension HTTPBodySink {
    public var refusal: HTTPResponse? { nil }
}

/// A reference to a loop-confined value, usable from other threads only to hop back.
public struct LoopBound<Value>: @unchecked Sendable {
    // SAFETY: `value` is read only after `assertInLoop()` passes, so the wrapped value is
    // only ever touched on its loop's thread.
    private let wrapped: Value
    public let loop: EventLoop

    public init(_ value: Value, loop: EventLoop) {
        self.wrapped = value
        self.loop = loop
    }

    public var value: Value {
        loop.assertInLoop()
        return wrapped
    }
}

/// Answers one request. Copyable and `Sendable`; answer once, from any thread.
public struct HTTPResponder: Sendable {
    private let connection: LoopBound<HTTPServerConnection>?
    private let sequence: UInt64
    private let deliver: Delivery?

    /// Hands the first answer to a closure; later ones are ignored.
    private final class Delivery: Sendable {
        let done = Atomic<Bool>(false)
        let body: @Sendable (HTTPResponse) -> Void
        init(_ body: @escaping @Sendable (HTTPResponse) -> Void) { self.body = body }
    }

    init(connection: LoopBound<HTTPServerConnection>, sequence: UInt64) {
        self.connection = connection
        self.sequence = sequence
        self.deliver = nil
    }

    /// A responder that hands the answer to `deliver` (on the thread that answers, once)
    /// instead of writing it to a connection: a request that arrived another way (forwarded
    /// from another node) goes through the same routes.
    public init(deliver: @escaping @Sendable (HTTPResponse) -> Void) {
        self.connection = nil
        self.sequence = 0
        self.deliver = Delivery(deliver)
    }

    /// Sends `response`. A second answer to the same request is ignored.
    public func respond(_ response: HTTPResponse) {
        if let deliver {
            guard !deliver.done.exchange(true, ordering: .acquiringAndReleasing) else { return }
            return deliver.body(response)
        }
        guard let connection else { return }
        let sequence = self.sequence
        if connection.loop.inLoop {
            connection.value.complete(sequence: sequence, response: response)
        } else {
            connection.loop.execute { connection.value.complete(sequence: sequence, response: response) }
        }
    }
}

/// The loop-side state of a server: listener, connections, sweeper. Loop-confined.
final class ServerCore {
    let loop: EventLoop
    let configuration: HTTPServer.Configuration
    let handler: HTTPServer.Handler
    let streamer: HTTPServer.Streamer?
    let listener: TCPListener
    var connections: [ObjectIdentifier: HTTPServerConnection] = [:]
    /// Body bytes the connections hold for requests still arriving
    /// (``HTTPServer/Configuration/maxBufferedBodyBytes``).
    var bufferedBodyBytes = 0
    private var sweeper: LoopTimer?
    private(set) var draining = false
    private var drainTimer: LoopTimer?
    private var drained: [() -> Void] = []
    let dateCache = DateHeaderCache()
    let headerTimeoutMs: UInt64
    let bodyTimeoutMs: UInt64
    let idleTimeoutMs: UInt64
    /// Writes the connections' answers once per loop cycle.
    let cycleEnd: CycleEndQueue

    init(loop: EventLoop, address: SocketAddress, configuration: HTTPServer.Configuration,
         streamer: HTTPServer.Streamer?, handler: @escaping HTTPServer.Handler) throws {
        self.loop = loop
        self.configuration = configuration
        self.handler = handler
        self.streamer = streamer
        headerTimeoutMs = configuration.headerTimeout.millisecondsRoundedUp
        bodyTimeoutMs = configuration.bodyTimeout.millisecondsRoundedUp
        idleTimeoutMs = configuration.idleTimeout.millisecondsRoundedUp
        var accept: ((TCPConnection) -> Void)?
        listener = try TCPListener(loop: loop, address: address) { accept?($0) }
        cycleEnd = CycleEndQueue(loop: loop)
        accept = { [weak self] tcp in
            if let self { self.accept(tcp) } else { tcp.close() }
        }
        let interval = configuration.sweepInterval
        sweeper = loop.schedule(after: interval, repeating: interval) { [weak self] in self?.sweep() }
    }

    private func accept(_ tcp: TCPConnection) {
        if draining || connections.count >= configuration.maxConnections {
            let why = draining ? "the server is shutting down" : "too many open connections (limit \(configuration.maxConnections)); retry later"
            let response = HTTPResponse.error(.serviceUnavailable, why)
            tcp.write(serialize(response, keepAlive: false, dateCache: dateCache))
            tcp.closeAfterFlush(linger: .milliseconds(500))
            return
        }
        let connection = HTTPServerConnection(server: self, tcp: tcp)
        connections[ObjectIdentifier(connection)] = connection
        connection.start()
    }

    func connectionClosed(_ connection: HTTPServerConnection) {
        connections[ObjectIdentifier(connection)] = nil
        if draining && connections.isEmpty { finishDrain() }
    }

    private func sweep() {
        let now = loop.nowMilliseconds
        for connection in Array(connections.values) { connection.checkDeadline(now: now) }
    }

    func shutdown(grace: Duration, graceEnded: (() -> Void)? = nil, completion: @escaping () -> Void) {
        drained.append(completion)
        guard !draining else { return }
        draining = true
        listener.close()
        for connection in Array(connections.values) { connection.beginDrain() }
        if connections.isEmpty {
            finishDrain()
        } else {
            drainTimer = loop.schedule(after: grace) { [weak self] in
                guard let self else { return }
                // Last answers first: a connection whose answers are all given now writes them
                // and closes by itself; the rest close at once.
                graceEnded?()
                for connection in Array(self.connections.values) where !connection.tcp.isClosingAfterFlush {
                    connection.tcp.close()
                }
            }
        }
    }

    private func finishDrain() {
        cycleEnd.close()
        drainTimer?.cancel()
        sweeper?.cancel()
        sweeper = nil
        let callbacks = drained
        drained = []
        for callback in callbacks { callback() }
    }
}

/// The `Date` header value, formatted at most once a second.
final class DateHeaderCache {
    private var second: time_t = 0
    private var value: [UInt8] = []

    /// Appends the current value to `out`.
    func append(to out: inout [UInt8]) {
        let now = time(nil)
        if now != second { refresh(now) }
        out.append(contentsOf: value)
    }

    var bytes: [UInt8] {
        let now = time(nil)
        if now != second { refresh(now) }
        return value
    }

    private func refresh(_ now: time_t) {
        second = now
        var tm = tm()
        var t = now
        gmtime_r(&t, &tm)
        var buffer = [CChar](repeating: 0, count: 64)
        let n = strftime(&buffer, buffer.count, "%a, %d %b %Y %H:%M:%S GMT", &tm)
        value = buffer[..<n].map { UInt8(bitPattern: $0) }
    }
}

/// Serializes a response head and body into one buffer.
func serialize(_ response: HTTPResponse, keepAlive: Bool, dateCache: DateHeaderCache, headOnly: Bool = false) -> [UInt8] {
    var out: [UInt8] = []
    appendResponse(response, keepAlive: keepAlive, dateCache: dateCache, headOnly: headOnly, to: &out)
    return out
}

func appendResponse(_ response: HTTPResponse, keepAlive: Bool, dateCache: DateHeaderCache,
                    headOnly: Bool = false, to out: inout [UInt8]) {
    out.reserveCapacity(out.count + 160 + response.body.count)
    if response.status == .ok {
        out.append(contentsOf: okStatusLine)
    } else {
        out.append(contentsOf: "HTTP/1.1 ".utf8)
        appendDecimal(response.status.code, to: &out)
        out.append(UInt8(ascii: " "))
        out.append(contentsOf: response.status.reason.utf8)
        out.append(contentsOf: "\r\ndate: ".utf8)
    }
    dateCache.append(to: &out)
    out.append(contentsOf: crlf)
    for (name, value) in response.headers where !isFramingHeader(name) {
        out.append(contentsOf: name.utf8)
        out.append(contentsOf: ": ".utf8)
        out.append(contentsOf: value.utf8)
        out.append(contentsOf: "\r\n".utf8)
    }
    out.append(contentsOf: contentLengthName)
    appendDecimal(response.body.count, to: &out)
    out.append(contentsOf: keepAlive ? endOfHead : closeAndEndOfHead)
    if !headOnly { out.append(contentsOf: response.body) }
}

private let okStatusLine = Array("HTTP/1.1 200 OK\r\ndate: ".utf8)
private let crlf = Array("\r\n".utf8)
private let contentLengthName = Array("content-length: ".utf8)
private let endOfHead = Array("\r\n\r\n".utf8)
private let closeAndEndOfHead = Array("\r\nconnection: close\r\n\r\n".utf8)

private func isFramingHeader(_ name: String) -> Bool {
    let n = name.utf8.count
    guard n == 14 || n == 10 || n == 17 else { return false }
    return HTTPHeaders.sameName(name, "content-length") || HTTPHeaders.sameName(name, "connection")
        || HTTPHeaders.sameName(name, "transfer-encoding")
}

func appendDecimal(_ value: Int, to out: inout [UInt8]) {
    if value < 10 { out.append(UInt8(ascii: "0") + UInt8(value)); return }
    var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                 UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
        (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    var v = value
    var count = 0
    withUnsafeMutableBytes(of: &digits) { d in
        while v > 0 {
            d[count] = UInt8(ascii: "0") + UInt8(v % 10)
            v /= 10
            count += 1
        }
        for i in stride(from: count - 1, through: 0, by: -1) { out.append(d[i]) }
    }
}
