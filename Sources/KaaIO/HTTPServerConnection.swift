internal import CHTTPParser
import KaaCore

/// One client connection of an ``HTTPServer``: parses requests with http_parser, dispatches
/// them, and writes the answers in order. Loop-confined.
final class HTTPServerConnection: TCPConnectionDelegate, CycleEndFlushable {
    private enum Phase { case idle, head, body, waiting }
    private enum Failure { case headersTooLarge, bodyTooLarge, expectation(String), version(Int, Int), parse(String) }
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
    private var deadline: UInt64 = 0
    private var failure: Failure?

    // The request being parsed.
    private var url: [UInt8] = []
    private var field: [UInt8] = []
    private var value: [UInt8] = []
    private var inValue = false
    /// The request's headers, parsed over the previous request's (see `HTTPHeaders.setField`);
    /// the first `headerCount` are this request's.
    private var headers = HTTPHeaders()
    private var headerCount = 0
    /// The previous request's target, reused when the next one asks for the same.
    private var target = ""
    private var body: [UInt8] = []
    private var headerBytes = 0
    private var expectsContinue = false
    /// Takes this request's body instead of `body`, when the streamer chose one.
    private var sink: (any HTTPBodySink)?
    private var sinkBytes = 0
    private var sinkBusy = false
    private var pausedForSink = false

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
    }

    deinit { parser.deallocate() }

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
        outstanding.removeAll()
        server.connectionClosed(self)
    }

    // MARK: parsing

    private func feed(_ bytes: UnsafeRawBufferPointer) {
        guard !closing, failure == nil else { return }
        let base = bytes.baseAddress?.assumingMemoryBound(to: CChar.self)
        let parsed = withUnsafePointer(to: &serverParserSettings) { settings in
            http_parser_execute(parser, settings, base, bytes.count)
        }
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
            if code == HPE_HEADER_OVERFLOW { fail(.headersTooLarge) } else { fail(.parse("\(text) (\(name))")) }
        } else if kaa_http_upgrade(parser) != 0 {
            fail(.parse("protocol upgrade is not supported"))
        }
    }

    private func abortSink(_ reason: String) {
        guard let sink else { return }
        self.sink = nil
        sink.abort(reason)
    }

    private func fail(_ failure: Failure) {
        let response: HTTPResponse
        switch failure {
        case .headersTooLarge:
            response = .error(.headerFieldsTooLarge,
                              "request line and headers exceed \(server.configuration.maxHeaderBytes) bytes")
        case .bodyTooLarge:
            response = .error(.contentTooLarge, "request body exceeds \(server.configuration.maxBodyBytes) bytes")
        case .expectation(let value):
            response = .error(.expectationFailed, "unsupported Expect: \(value); only 100-continue is understood")
        case .version(let major, let minor):
            response = .error(.versionNotSupported, "HTTP/\(major).\(minor) is not supported; use HTTP/1.1")
        case .parse(let what):
            response = .error(.badRequest, "malformed HTTP request: \(what)")
        }
        abortSink(response.status == .contentTooLarge ? "body exceeds \(sink?.maxBytes ?? 0) bytes" : "\(response.status)")
        closing = true
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
        expectsContinue = false
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
        if inValue { commitHeader() }
        field.append(contentsOf: bytes)
        return countHeaderBytes(bytes.count + 4)
    }

    fileprivate func headerValue(_ bytes: UnsafeRawBufferPointer) -> Int32 {
        inValue = true
        value.append(contentsOf: bytes)
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
        phase = .body
        deadline = server.loop.nowMilliseconds + server.bodyTimeoutMs
        let length = parser.pointee.content_length
        let method = HTTPServerConnection.method(kaa_http_method(parser))
        if let streamer = server.streamer, method != .get, method != .head {
            var head = HTTPRequest(method: method, target: target, headers: headers)
            head.remoteAddress = tcp.remoteAddress
            sink = streamer(head)
            sinkBytes = 0
        }
        let limit = sink?.maxBytes ?? server.configuration.maxBodyBytes
        if kaa_http_is_chunked(parser) == 0 && length != UInt64.max {
            if length > UInt64(limit) {
                failure = .bodyTooLarge
                return -1
            }
            if sink == nil { body.reserveCapacity(Int(length)) }
        }
        if let expect = headers["expect"] {
            guard expect.lowercased() == "100-continue" else {
                failure = .expectation(expect)
                return -1
            }
            // Ask for the body only when no earlier answer is still owed (ordering).
            if server.configuration.sendContinue && outstanding.isEmpty {
                out.append(contentsOf: continueLine)
                flush()
            }
        }
        return 0
    }

    fileprivate func bodyBytes(_ bytes: UnsafeRawBufferPointer) -> Int32 {
        if let sink {
            sinkBytes += bytes.count
            if sinkBytes > sink.maxBytes {
                failure = .bodyTooLarge
                return 1
            }
            deadline = server.loop.nowMilliseconds + server.bodyTimeoutMs // progress restarts it
            sinkBusy = true
            sink.receive(Array(bytes)) { [weak self] in self?.sinkReady() }
            if sinkBusy {
                pausedForSink = true
                http_parser_pause(parser, 1)
            }
            return 0
        }
        if body.count + bytes.count > server.configuration.maxBodyBytes {
            failure = .bodyTooLarge
            return 1
        }
        body.append(contentsOf: bytes)
        return 0
    }

    private func sinkReady() {
        sinkBusy = false
        guard pausedForSink else { return }
        pausedForSink = false
        http_parser_pause(parser, 0)
        resumeIfPossible()
    }

    fileprivate func messageComplete() -> Int32 {
        let method = HTTPServerConnection.method(kaa_http_method(parser))
        var request = HTTPRequest(method: method, target: target, headers: headers, body: body)
        request.remoteAddress = tcp.remoteAddress
        // Only a small body buffer stays with the connection for the next request (as with `out`).
        if body.capacity > 4 << 10 { body = [] }
        let keepAlive = http_should_keep_alive(parser) != 0 && !draining
        let sequence = firstSequence + UInt64(outstanding.count)
        outstanding.append(Outstanding(keepAlive: keepAlive, headOnly: method == .head, response: nil))
        phase = .waiting
        deadline = 0
        if !keepAlive { closing = true }
        let responder = HTTPResponder(connection: LoopBound(self, loop: server.loop), sequence: sequence)
        if let sink {
            self.sink = nil
            sink.finish(responder)
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
        guard deadline != 0, now >= deadline, tcp.isOpen, !closing else { return }
        switch phase {
        case .idle, .waiting:
            tcp.close()
        case .head:
            timeOut("no complete request line and headers within \(server.configuration.headerTimeout)")
        case .body:
            timeOut("request body not received within \(server.configuration.bodyTimeout)")
        }
    }

    private func timeOut(_ why: String) {
        abortSink(why)
        deadline = 0
        closing = true
        tcp.stopReading()
        outstanding.append(Outstanding(keepAlive: false, headOnly: false, response: .error(.requestTimeout, why)))
        writeReady()
    }

    func beginDrain() {
        draining = true
        if outstanding.isEmpty && phase == .idle { tcp.close() }
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

private func connection(_ parser: UnsafeMutablePointer<http_parser>?) -> HTTPServerConnection {
    Unmanaged<HTTPServerConnection>.fromOpaque(parser!.pointee.data).takeUnretainedValue()
}

private func buffer(_ at: UnsafePointer<CChar>?, _ length: Int) -> UnsafeRawBufferPointer {
    UnsafeRawBufferPointer(start: at, count: length)
}

/// The request parser's callbacks; they forward to the connection in `parser.data`.
nonisolated(unsafe) private var serverParserSettings: http_parser_settings = {
    var s = http_parser_settings()
    s.on_message_begin = { connection($0).messageBegin() }
    s.on_url = { connection($0).url(buffer($1, $2)) }
    s.on_header_field = { connection($0).headerField(buffer($1, $2)) }
    s.on_header_value = { connection($0).headerValue(buffer($1, $2)) }
    s.on_headers_complete = { connection($0).headersComplete() }
    s.on_body = { connection($0).bodyBytes(buffer($1, $2)) }
    s.on_message_complete = { connection($0).messageComplete() }
    return s
}()
