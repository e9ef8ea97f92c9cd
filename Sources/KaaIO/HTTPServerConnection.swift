internal import CHTTPParser
import KaaCore
import Synchronization

/// One client connection of an ``HTTPServer``: parses requests with http_parser, dispatches
/// them, and writes the answers in order. Loop-confined.
final class HTTPServerConnection: TCPConnectionDelegate, CycleEndFlushable {
    private enum Phase { case idle, head, body, waiting }
    private enum Failure {
        case headersTooLarge, tooManyHeaders, bodyTooLarge, overBudget
        case expectation(String), version(Int, Int), parse(String), notImplemented(String)
        /// A body sink's own answer (``HTTPBodySink/refusal``).
        case refused(HTTPResponse)
    }
    private struct Outstanding {
        var keepAlive: Bool
        var headOnly: Bool
        var response: HTTPResponse?
    }

    /// Strong: the server drops this connection when it closes, which breaks the cycle.
    let server: ServerCore
    let tcp: TCPConnection
    private let parser: UnsafeMutablePointer<http_parser>
    private var phase = Phase.idle
    /// When the idle or head phase times out; 0 for none. The body phase has its own clocks.
    private var deadline: UInt64 = 0
    private var failure: Failure?

    // The request being parsed.
    private var url: [UInt8] = []
    private var field: [UInt8] = []
    private var value: [UInt8] = []
    private var inValue = false
    /// The bytes `http_parser_execute` is parsing now: a header value that arrives in two pieces
    /// is legitimate only when a read ended inside it, else it was folded (obs-fold).
    private var feedStart: UnsafeRawPointer?
    private var feedEnd: UnsafeRawPointer?
    private var valueEndedAtReadEnd = false
    /// Trailer fields of a chunked body: counted against the limits, otherwise ignored.
    private var trailerCount = 0
    /// The request's headers, parsed over the previous request's (see `HTTPHeaders.setField`);
    /// the first `headerCount` are this request's.
    private var headers = HTTPHeaders()
    private var headerCount = 0
    /// The previous request's target, reused when the next one asks for the same.
    private var target = ""
    private var body: [UInt8] = []
    private var headerBytes = 0
    /// `100 Continue` is owed once the answers before this request are written.
    private var continueOwed = false
    /// Takes this request's body instead of `body`, when the streamer chose one.
    private var sink: (any HTTPBodySink)?
    private var sinkBusy = false
    private var pausedForSink = false
    /// When the sink last paused the parser (loop milliseconds).
    private var pausedAt: UInt64 = 0

    // The body's clocks (`HTTPServer.Configuration.minBodyRate`), in loop milliseconds; both move
    // later by the time the node itself held the body up.
    /// When the headers completed, plus `bodyTimeout`.
    private var bodyBase: UInt64 = 0
    /// When the last body byte arrived (or the headers, before any).
    private var lastProgress: UInt64 = 0
    /// Body bytes received so far, streamed or buffered.
    private var bodyReceived = 0
    /// Bytes of `body`'s storage counted in the server's `bufferedBodyBytes`.
    private var bufferedBody = 0

    // Requests parsed and not yet written, oldest first; `firstSequence` is the oldest's number.
    private var outstanding: [Outstanding] = []
    private var firstSequence: UInt64 = 0
    private var stash: [UInt8] = []
    /// Answers made and not yet handed to the socket; written at the end of the loop's cycle
    /// (``CycleEndQueue``) or at once where order or closing needs it.
    private var out: [UInt8] = []
    private var flushQueued = false
    private var pausedForPipeline = false
    private var inReadCycle = false
    /// No more requests are read; close once the outstanding answers are written.
    private var closing = false
    private var draining = false

    init(server: ServerCore, tcp: TCPConnection) {
        self.server = server
        self.tcp = tcp
        parser = .allocate(capacity: 1)
        http_parser_init(parser, HTTP_REQUEST)
        parser.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        LiveObjects.httpServerConnections.add(1, ordering: .relaxed)
    }

    deinit {
        parser.deallocate()
        LiveObjects.httpServerConnections.subtract(1, ordering: .relaxed)
    }

    func start() {
        tcp.delegate = self
        deadline = server.loop.nowMilliseconds + server.idleTimeoutMs
        tcp.startReading()
    }

    // MARK: TCP events

    func connection(_ connection: TCPConnection, received bytes: UnsafeRawBufferPointer) {
        inReadCycle = true
        feed(bytes)
        inReadCycle = false
        flush()
        if pausedForPipeline { resumeIfPossible() }
    }

    func connection(_ connection: TCPConnection, readEndedWith error: IOError?) {
        if error != nil || outstanding.isEmpty {
            tcp.close()
        } else {
            closing = true // answer what was asked, then close
        }
    }

    func connection(_ connection: TCPConnection, writabilityChanged writable: Bool) {
        if writable { resumeIfPossible() } else { tcp.stopReading() }
    }

    func connectionClosed(_ connection: TCPConnection) {
        abortSink("the client closed the connection before the body was complete")
        releaseBody()
        outstanding.removeAll()
        stash = []
        server.connectionClosed(self)
    }

    // MARK: parsing

    private func feed(_ bytes: UnsafeRawBufferPointer) {
        guard !closing, failure == nil else { return }
        let base = bytes.baseAddress?.assumingMemoryBound(to: CChar.self)
        feedStart = bytes.baseAddress
        feedEnd = bytes.baseAddress.map { $0 + bytes.count }
        let parsed = http_parser_execute(parser, serverParserSettings, base, bytes.count)
        feedStart = nil
        feedEnd = nil
        let code = kaa_http_errno(parser)
        if code == HPE_PAUSED {
            if parsed < bytes.count { stash.append(contentsOf: bytes[parsed...]) }
            tcp.stopReading()
            return
        }
        if let failure {
            fail(failure)
        } else if code != HPE_OK {
            let name = String(cString: http_errno_name(code))
            let text = String(cString: http_errno_description(code))
            if code == HPE_HEADER_OVERFLOW {
                fail(.headersTooLarge)
            } else if code == HPE_UNEXPECTED_CONTENT_LENGTH && kaa_http_uses_transfer_encoding(parser) != 0 {
                fail(.parse("Content-Length and Transfer-Encoding together are refused (RFC 9112 §6.3); send one of them"))
            } else {
                fail(.parse("\(text) (\(name))"))
            }
        } else if kaa_http_upgrade(parser) != 0 {
            fail(.parse("protocol upgrade is not supported"))
        }
    }

    private func abortSink(_ reason: String) {
        guard let sink else { return }
        self.sink = nil
        sink.abort(reason)
    }

    /// Gives the server's body budget back what `body` held for this request.
    private func releaseBody() {
        guard bufferedBody != 0 else { return }
        server.bufferedBodyBytes -= bufferedBody
        bufferedBody = 0
    }

    /// Counts `body`'s storage in the server's budget; false when that takes it over the limit.
    private func accountBody() -> Bool {
        let held = body.capacity
        server.bufferedBodyBytes += held - bufferedBody
        bufferedBody = held
        return server.bufferedBodyBytes <= server.configuration.maxBufferedBodyBytes
    }

    private func fail(_ failure: Failure) {
        let response: HTTPResponse
        switch failure {
        case .headersTooLarge:
            response = .error(.headerFieldsTooLarge,
                              "request line and headers exceed \(server.configuration.maxHeaderBytes) bytes")
        case .tooManyHeaders:
            response = .error(.headerFieldsTooLarge,
                              "request has more than \(server.configuration.maxHeaderCount) header fields")
        case .bodyTooLarge:
            response = .error(.contentTooLarge, "request body exceeds \(sink?.maxBytes ?? server.configuration.maxBodyBytes) bytes")
        case .overBudget:
            response = .error(.serviceUnavailable, "the server already holds \(server.configuration.maxBufferedBodyBytes) "
                              + "bytes of request bodies still arriving; retry later")
        case .notImplemented(let what):
            response = .error(.notImplemented, what)
        case .refused(let answer):
            response = answer
        case .expectation(let value):
            response = .error(.expectationFailed, "unsupported Expect: \(value); only 100-continue is understood")
        case .version(let major, let minor):
            response = .error(.versionNotSupported, "HTTP/\(major).\(minor) is not supported; use HTTP/1.1")
        case .parse(let what):
            response = .error(.badRequest, "malformed HTTP request: \(what)")
        }
        abortSink(response.status == .contentTooLarge ? "body exceeds \(sink?.maxBytes ?? 0) bytes" : "\(response.status)")
        releaseBody()
        closing = true
        continueOwed = false
        stash = [] // never read: the connection closes after this answer
        tcp.stopReading()
        outstanding.append(Outstanding(keepAlive: false, headOnly: false, response: response))
        writeReady()
    }

    fileprivate func messageBegin() -> Int32 {
        phase = .head
        deadline = server.loop.nowMilliseconds + server.headerTimeoutMs
        url.removeAll(keepingCapacity: true)
        field.removeAll(keepingCapacity: true)
        value.removeAll(keepingCapacity: true)
        headerCount = 0
        // A small body buffer is reused when the previous request no longer holds it.
        body.removeAll(keepingCapacity: true)
        headerBytes = 0
        inValue = false
        valueEndedAtReadEnd = false
        trailerCount = 0
        continueOwed = false
        bodyReceived = 0
        return 0
    }

    private func countHeaderBytes(_ n: Int) -> Int32 {
        headerBytes += n
        if headerBytes > server.configuration.maxHeaderBytes {
            failure = .headersTooLarge
            return 1
        }
        return 0
    }

    fileprivate func url(_ bytes: UnsafeRawBufferPointer) -> Int32 {
        url.append(contentsOf: bytes)
        return countHeaderBytes(bytes.count)
    }

    fileprivate func headerField(_ bytes: UnsafeRawBufferPointer) -> Int32 {
        let startsField = inValue || field.isEmpty
        // http_parser takes spaces in names ("Host : x", " Host: x"); RFC 9112 §5.1 refuses them,
        // and a name read two ways is how requests are smuggled past a proxy.
        if bytes.contains(UInt8(ascii: " ")) {
            let name = (startsField ? [] : field) + Array(bytes)
            failure = .parse("whitespace in or before the header field name `\(String(decoding: name, as: UTF8.self))`")
            return 1
        }
        if phase == .body { // a trailer: counted against the limits, not kept
            if startsField {
                trailerCount += 1
                field.removeAll(keepingCapacity: true)
                if headerCount + trailerCount > server.configuration.maxHeaderCount {
                    failure = .tooManyHeaders
                    return 1
                }
            }
            inValue = false
            field.append(contentsOf: bytes)
            return countHeaderBytes(bytes.count + 4)
        }
        if inValue {
            commitHeader()
        }
        if startsField && headerCount >= server.configuration.maxHeaderCount {
            failure = .tooManyHeaders
            return 1
        }
        field.append(contentsOf: bytes)
        return countHeaderBytes(bytes.count + 4)
    }

    fileprivate func headerValue(_ bytes: UnsafeRawBufferPointer) -> Int32 {
        if inValue && !(valueEndedAtReadEnd && UnsafeRawPointer(bytes.baseAddress) == feedStart) {
            // The parser reports one value in two pieces only where a read ended inside it;
            // anything else is a continuation line (obs-fold), which RFC 9112 §5.2 lets a server
            // refuse: a value read two ways is another smuggling vector.
            failure = .parse("header `\(String(decoding: field, as: UTF8.self))` is folded over several lines; send each field on one line")
            return 1
        }
        valueEndedAtReadEnd = bytes.baseAddress.map { $0 + bytes.count } == feedEnd
        inValue = true
        if phase != .body { value.append(contentsOf: bytes) }
        return countHeaderBytes(bytes.count)
    }

    private func commitHeader() {
        headers.setField(headerCount, name: field, value: value)
        headerCount += 1
        field.removeAll(keepingCapacity: true)
        value.removeAll(keepingCapacity: true)
        inValue = false
    }

    fileprivate func headersComplete() -> Int32 {
        if inValue || !field.isEmpty { commitHeader() }
        headers.truncate(to: headerCount)
        field.removeAll(keepingCapacity: true)
        if !HTTPHeaders.holds(target, url) { target = String(decoding: url, as: UTF8.self) }
        let major = Int(parser.pointee.http_major), minor = Int(parser.pointee.http_minor)
        if major != 1 {
            failure = .version(major, minor)
            return -1
        }
        if kaa_http_upgrade(parser) != 0 {
            failure = .parse("protocol upgrade is not supported")
            return -1
        }
        if kaa_http_uses_transfer_encoding(parser) != 0, let refused = transferCodingFailure() {
            failure = refused
            return -1
        }
        phase = .body
        let now = server.loop.nowMilliseconds
        bodyBase = now.addingSaturated(server.bodyTimeoutMs)
        lastProgress = now
        let length = parser.pointee.content_length
        let method = HTTPServerConnection.method(kaa_http_method(parser))
        if let streamer = server.streamer, method != .get, method != .head {
            var head = HTTPRequest(method: method, target: target, headers: headers)
            head.remoteAddress = tcp.remoteAddress
            sink = streamer(head)
            if let refusal = sink?.refusal {
                sink = nil // it ended the request itself: no finish, no abort
                failure = .refused(refusal)
                return -1
            }
        }
        let limit = sink?.maxBytes ?? server.configuration.maxBodyBytes
        if kaa_http_is_chunked(parser) == 0 && length != UInt64.max && length > 0 {
            if length > UInt64(max(0, limit)) {
                failure = .bodyTooLarge
                return -1
            }
            if sink == nil {
                // Refused before the client sends it (with `Expect: 100-continue`) when it cannot fit.
                guard length <= UInt64(max(0, server.configuration.maxBufferedBodyBytes - server.bufferedBodyBytes)) else {
                    failure = .overBudget
                    return -1
                }
                // Storage grows as bytes arrive; a declared length alone reserves at most 1 MiB.
                body.reserveCapacity(Int(min(length, 1 << 20)))
                if !accountBody() {
                    failure = .overBudget
                    return -1
                }
            }
        }
        if let expect = headers["expect"] {
            guard expect.lowercased() == "100-continue" else {
                failure = .expectation(expect)
                return -1
            }
            if server.configuration.sendContinue {
                if outstanding.isEmpty {
                    out.append(contentsOf: continueLine)
                    flush()
                } else {
                    // Ask for the body only once the answers owed before it are written
                    // (ordering); the body's clocks wait for it too.
                    continueOwed = true
                }
            }
        }
        return 0
    }

    /// Refuses a Transfer-Encoding that is not exactly `chunked` (RFC 9112 §6.1): another coding
    /// is 501 (the server decodes none), and anything http_parser might frame differently from
    /// what the header says is 400. Every `Transfer-Encoding` field counts, as one list.
    private func transferCodingFailure() -> Failure? {
        var chunked = 0
        var all: [String] = []
        for field in headers.fields where HTTPHeaders.sameName(field.name, "transfer-encoding") {
            all.append(field.value)
            for element in field.value.split(separator: ",", omittingEmptySubsequences: false) {
                let coding = element.trimmingWhitespace()
                guard !coding.isEmpty else {
                    return .parse("Transfer-Encoding `\(field.value)` has an empty element")
                }
                let name = coding.prefix { $0 != ";" }.trimmingWhitespace().lowercased()
                guard name == "chunked" else {
                    return .notImplemented("transfer coding `\(name)` is not implemented; send the body as it is, "
                                           + "with Content-Length or `Transfer-Encoding: chunked` alone")
                }
                guard !coding.contains(";") else {
                    return .parse("Transfer-Encoding `\(field.value)`: chunked takes no parameters")
                }
                chunked += 1
            }
        }
        let text = all.joined(separator: ", ")
        if chunked != 1 {
            return .parse("Transfer-Encoding `\(text)` applies chunked \(chunked) times; it must be applied exactly once")
        }
        if kaa_http_is_chunked(parser) == 0 { // never seen; refuse rather than frame the body two ways
            return .parse("Transfer-Encoding `\(text)` is ambiguous; send `Transfer-Encoding: chunked`")
        }
        return nil
    }

    fileprivate func bodyBytes(_ bytes: UnsafeRawBufferPointer) -> Int32 {
        lastProgress = server.loop.nowMilliseconds
        bodyReceived += bytes.count
        if let sink {
            if bodyReceived > sink.maxBytes {
                failure = .bodyTooLarge
                return 1
            }
            sinkBusy = true
            sink.receive(Array(bytes)) { [weak self] in self?.sinkReady() }
            if !sinkBusy, let refusal = self.sink?.refusal, !bodyComplete {
                self.sink = nil
                failure = .refused(refusal)
                return 1
            }
            if sinkBusy {
                pausedForSink = true
                pausedAt = server.loop.nowMilliseconds
                http_parser_pause(parser, 1)
            }
            return 0
        }
        if bodyReceived > server.configuration.maxBodyBytes {
            failure = .bodyTooLarge
            return 1
        }
        body.append(contentsOf: bytes)
        if body.capacity != bufferedBody && !accountBody() {
            failure = .overBudget
            return 1
        }
        return 0
    }

    /// A chunk's size is known before its bytes: one that cannot fit is refused at once.
    fileprivate func chunkHeader() -> Int32 {
        let limit = sink?.maxBytes ?? server.configuration.maxBodyBytes
        if parser.pointee.content_length > UInt64(max(0, limit - bodyReceived)) {
            failure = .bodyTooLarge
            return 1
        }
        return 0
    }

    private func sinkReady() {
        sinkBusy = false
        guard pausedForSink else { return }
        pausedForSink = false
        // The node held the body up, not the client: its clocks stop meanwhile.
        let held = server.loop.nowMilliseconds - pausedAt
        bodyBase = bodyBase.addingSaturated(held)
        lastProgress = lastProgress.addingSaturated(held)
        if let refusal = sink?.refusal, !bodyComplete {
            sink = nil
            fail(.refused(refusal)) // the parser stays paused: the rest is never read
            return
        }
        http_parser_pause(parser, 0)
        resumeIfPossible()
    }

    /// Every byte of a Content-Length body has arrived (http_parser counts down what is left);
    /// a chunked body is complete only at its last chunk, which is not known before.
    private var bodyComplete: Bool {
        kaa_http_is_chunked(parser) == 0 && parser.pointee.content_length == 0
    }

    fileprivate func messageComplete() -> Int32 {
        let method = HTTPServerConnection.method(kaa_http_method(parser))
        var request = HTTPRequest(method: method, target: target, headers: headers, body: body)
        request.remoteAddress = tcp.remoteAddress
        // The body now belongs to the request; only a small buffer stays with the connection for
        // the next request (as with `out`).
        releaseBody()
        if body.capacity > 4 << 10 { body = [] }
        let keepAlive = http_should_keep_alive(parser) != 0 && !draining
        let sequence = firstSequence + UInt64(outstanding.count)
        outstanding.append(Outstanding(keepAlive: keepAlive, headOnly: method == .head, response: nil))
        phase = .waiting
        deadline = 0
        continueOwed = false
        if !keepAlive { closing = true }
        let responder = HTTPResponder(connection: LoopBound(self, loop: server.loop), sequence: sequence)
        if let sink {
            self.sink = nil
            if let refusal = sink.refusal { responder.respond(refusal) } else { sink.finish(responder) }
        } else {
            server.handler(request, responder)
        }
        if closing {
            http_parser_pause(parser, 1)
        } else if outstanding.count >= server.configuration.maxPipelinedRequests || !tcp.isWritable
                    || tcp.pendingWriteBytes + out.count > tcp.highWatermark {
            // Answers not yet written count too: one read of pipelined requests must not
            // produce unbounded output.
            pausedForPipeline = true
            http_parser_pause(parser, 1)
        }
        return 0
    }

    // MARK: answers

    func complete(sequence: UInt64, response: HTTPResponse) {
        guard tcp.isOpen, sequence >= firstSequence else { return }
        let index = Int(sequence - firstSequence)
        guard index < outstanding.count, outstanding[index].response == nil else { return }
        outstanding[index].response = response
        if index == 0 { writeReady() }
    }

    /// Writes every answer at the head of the queue that is ready.
    private func writeReady() {
        while let first = outstanding.first, let response = first.response {
            outstanding.removeFirst()
            firstSequence += 1
            let last = !first.keepAlive || draining || (closing && outstanding.isEmpty)
            appendResponse(response, keepAlive: !last, dateCache: server.dateCache,
                           headOnly: first.headOnly, to: &out)
            if last {
                closing = true
                outstanding.removeAll()
                break
            }
        }
        if outstanding.isEmpty && phase == .waiting {
            phase = .idle
            deadline = server.loop.nowMilliseconds + server.idleTimeoutMs
        }
        if closing && outstanding.isEmpty {
            flushNow()
            tcp.closeAfterFlush()
            return
        }
        if continueOwed && outstanding.isEmpty && phase == .body {
            continueOwed = false
            out.append(contentsOf: continueLine)
            let now = server.loop.nowMilliseconds // the body's clocks start now
            bodyBase = now.addingSaturated(server.bodyTimeoutMs)
            lastProgress = now
        }
        if !inReadCycle { flush() }
        resumeIfPossible()
    }

    /// Writes `out` at the end of this loop cycle, together with the other connections' answers.
    private func flush() {
        guard !out.isEmpty, !flushQueued else { return }
        flushQueued = true
        server.cycleEnd.enqueue(self)
    }

    func flushAtCycleEnd() {
        flushQueued = false
        flushNow()
    }

    private func flushNow() {
        guard !out.isEmpty else { return }
        tcp.write(out)
        // Keep a small buffer for the next answer; a large one is not held by an idle connection.
        if out.capacity > 4 << 10 { out = [] } else { out.removeAll(keepingCapacity: true) }
    }

    /// Resumes parsing and reading once the pipeline and the socket have room again.
    private func resumeIfPossible() {
        guard !inReadCycle, !pausedForSink else { return }
        while !closing, failure == nil, tcp.isOpen, tcp.isWritable, !pausedForSink,
              outstanding.count < server.configuration.maxPipelinedRequests {
            if pausedForPipeline {
                pausedForPipeline = false
            }
            http_parser_pause(parser, 0)
            guard !stash.isEmpty else {
                tcp.startReading()
                return
            }
            let pending = stash
            stash = []
            inReadCycle = true
            pending.withUnsafeBytes { feed($0) }
            inReadCycle = false
            flushNow() // counts toward isWritable before the next round
        }
    }

    // MARK: timeouts and shutdown

    func checkDeadline(now: UInt64) {
        guard tcp.isOpen, !closing else { return }
        switch phase {
        case .idle:
            if deadline != 0 && now >= deadline { tcp.close() }
        case .waiting:
            break
        case .head:
            if deadline != 0 && now >= deadline {
                timeOut("no complete request line and headers within \(server.configuration.headerTimeout)")
            }
        case .body:
            // The node holds the body up (its sink is busy, or earlier answers owe the client its
            // `100 Continue`): not the client's time.
            guard !pausedForSink, !continueOwed else { return }
            let configuration = server.configuration
            if now >= lastProgress.addingSaturated(server.bodyTimeoutMs) {
                timeOut("request body not received: no byte of it for \(configuration.bodyTimeout) "
                        + "(\(bodyReceived) bytes so far)")
            } else if now >= bodyBase.addingSaturated(transferMilliseconds(bodyReceived, atRate: configuration.minBodyRate)) {
                let elapsed = now - (bodyBase - min(bodyBase, server.bodyTimeoutMs))
                timeOut("request body not received in time: \(bodyReceived) bytes in \(elapsed) ms; after the first "
                        + "\(configuration.bodyTimeout) a body must arrive at \(configuration.minBodyRate) bytes/s on average")
            }
        }
    }

    private func timeOut(_ why: String) {
        abortSink(why)
        releaseBody()
        deadline = 0
        closing = true
        continueOwed = false
        stash = []
        tcp.stopReading()
        outstanding.append(Outstanding(keepAlive: false, headOnly: false, response: .error(.requestTimeout, why)))
        writeReady()
    }

    /// Bytes this connection's own buffers hold now (for the leak tests).
    var heldBufferBytes: Int {
        url.capacity + field.capacity + value.capacity + body.capacity + stash.capacity + out.capacity
            + tcp.pendingWriteBytes
    }

    func beginDrain() {
        draining = true
        guard outstanding.isEmpty && phase == .idle else { return }
        // An answer given in this turn of the loop may still wait in `out` for the cycle's end,
        // or on its way to the socket: it goes out before the connection closes.
        flushNow()
        if tcp.pendingWriteBytes > 0 { tcp.closeAfterFlush() } else { tcp.close() }
    }

    // MARK: methods

    private static let methods: [HTTPMethod] = (0..<64).map { code in
        HTTPMethod(rawValue: String(cString: http_method_str(http_method(rawValue: UInt32(code)))))
    }

    private static func method(_ code: UInt32) -> HTTPMethod {
        code < methods.count ? methods[Int(code)] : HTTPMethod(rawValue: "UNKNOWN")
    }
}

private let continueLine = Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)

extension StringProtocol {
    /// Without leading and trailing spaces and tabs (HTTP's optional whitespace).
    fileprivate func trimmingWhitespace() -> String {
        let isSpace = { (c: Character) in c == " " || c == "\t" }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else {
            return ""
        }
        return String(self[first...last])
    }
}

private func connection(_ parser: UnsafeMutablePointer<http_parser>?) -> HTTPServerConnection {
    Unmanaged<HTTPServerConnection>.fromOpaque(parser!.pointee.data).takeUnretainedValue()
}

private func buffer(_ at: UnsafePointer<CChar>?, _ length: Int) -> UnsafeRawBufferPointer {
    UnsafeRawBufferPointer(start: at, count: length)
}

/// The request parser's callbacks; they forward to the connection in `parser.data`. Made once
/// and never written again, so every loop thread may read it (a global `var` passed as `&` would
/// count as a write on each use, a race between loops).
nonisolated(unsafe) private let serverParserSettings: UnsafePointer<http_parser_settings> = {
    let p = UnsafeMutablePointer<http_parser_settings>.allocate(capacity: 1)
    var s = http_parser_settings()
    s.on_message_begin = { connection($0).messageBegin() }
    s.on_url = { connection($0).url(buffer($1, $2)) }
    s.on_header_field = { connection($0).headerField(buffer($1, $2)) }
    s.on_header_value = { connection($0).headerValue(buffer($1, $2)) }
    s.on_headers_complete = { connection($0).headersComplete() }
    s.on_body = { connection($0).bodyBytes(buffer($1, $2)) }
    s.on_chunk_header = { connection($0).chunkHeader() }
    s.on_message_complete = { connection($0).messageComplete() }
    p.initialize(to: s)
    return UnsafePointer(p)
}()
