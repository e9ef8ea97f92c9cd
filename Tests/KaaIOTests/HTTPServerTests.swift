import Foundation
import Glibc
import KaaCore
@testable import KaaIO
import KaaTestSupport
import Testing

/// A server on 127.0.0.1:0 with a few routes that tests use; stopped by `stop()`.
final class TestServer: Sendable {
    let loop: EventLoop
    let server: HTTPServer
    var port: UInt16 { server.localAddress.port }

    init(_ configure: (inout HTTPServer.Configuration) -> Void = { _ in }) throws {
        var configuration = HTTPServer.Configuration()
        configure(&configuration)
        loop = EventLoop.start(name: "test-loop")
        var router = HTTPRouter()
        router.add(.get, "/v2/health/live") { _, r in r.respond(HTTPResponse()) }
        router.add(.post, "/echo") { request, r in
            r.respond(HTTPResponse(headers: ["content-type": "application/octet-stream"], body: request.body))
        }
        router.add(.get, "/items/{name}/versions/{version}") { request, r in
            let text = "\(request.pathParameters["name"]!)@\(request.pathParameters["version"]!)"
            r.respond(HTTPResponse(body: Array(text.utf8)))
        }
        let loop = self.loop
        // Answers after `ms` milliseconds, from the loop's timer.
        router.add(.get, "/sleep/{ms}") { request, r in
            let ms = Int64(request.pathParameters["ms"]!)!
            loop.schedule(after: .milliseconds(ms)) { r.respond(HTTPResponse(body: Array("slept \(ms)".utf8))) }
        }
        // Echoes the target, headers and body, at once or after `ms` milliseconds (the request
        // outlives the parsing of the next one on its connection).
        router.add(.post, "/describe/{ms}") { request, r in
            let text = "\(request.target)\n" + request.headers.map { "\($0.name)=\($0.value)\n" }.joined()
                + String(decoding: request.body, as: UTF8.self)
            let ms = Int64(request.pathParameters["ms"]!)!
            if ms == 0 { return r.respond(HTTPResponse(body: Array(text.utf8))) }
            loop.schedule(after: .milliseconds(ms)) { r.respond(HTTPResponse(body: Array(text.utf8))) }
        }
        // Answers from another thread.
        router.add(.get, "/thread") { _, r in
            Thread.detachNewThread { r.respond(HTTPResponse(body: Array("from a thread".utf8))) }
        }
        let routes = router
        server = try HTTPServer(on: loop, address: SocketAddress(resolving: HostPort(host: "127.0.0.1", port: 0)),
                                configuration: configuration) { routes.handle($0, $1) }
    }

    func stop() {
        server.shutdown(grace: .seconds(1))
        loop.shutdown()
    }
}

@Suite struct HTTPServerTests {
    @Test func keepAliveServesManyRequestsOnOneConnection() throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try RawSocket(port: s.port)
        for _ in 0..<5 {
            try c.send("GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            let r = try c.readResponse()
            #expect(r.status == 200)
            #expect(r.headers["connection"] == nil)
        }
        #expect(s.server.openConnections == 1)
    }

    /// A connection parses each request over the previous one's header strings and body
    /// buffer; each request must still see exactly its own, also one still held by a handler.
    @Test func eachRequestSeesOnlyItsOwnHeadersAndBody() throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try RawSocket(port: s.port)
        func request(_ target: String, _ headers: [String], _ body: String) -> String {
            "POST \(target) HTTP/1.1\r\n" + headers.map { $0 + "\r\n" }.joined() + "Content-Length: \(body.utf8.count)\r\n\r\n" + body
        }
        // The first is answered after the second and third were parsed over its buffers.
        try c.send(request("/describe/30", ["Host: a", "X-One: 1", "X-Two: 2"], "first body")
            + request("/describe/0", ["Host: a", "X-One: changed"], "2nd")
            + request("/describe/0?q=1", ["Host: b"], ""))
        let first = try c.readResponse(), second = try c.readResponse(), third = try c.readResponse()
        #expect(first.text == "/describe/30\nHost=a\nX-One=1\nX-Two=2\nContent-Length=10\nfirst body")
        #expect(second.text == "/describe/0\nHost=a\nX-One=changed\nContent-Length=3\n2nd")
        #expect(third.text == "/describe/0?q=1\nHost=b\nContent-Length=0\n")
        // The same request twice in a row reads the same.
        for _ in 0..<2 {
            try c.send(request("/describe/0", ["Host: a", "X-One: 1"], "again"))
            #expect(try c.readResponse().text == "/describe/0\nHost=a\nX-One=1\nContent-Length=5\nagain")
        }
    }

    @Test func pipelinedRequestsAreAnsweredInOrderEvenWhenHandlersFinishOutOfOrder() throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try RawSocket(port: s.port)
        try c.send("GET /sleep/150 HTTP/1.1\r\nHost: x\r\n\r\nGET /items/a/versions/1 HTTP/1.1\r\nHost: x\r\n\r\n"
                   + "GET /thread HTTP/1.1\r\nHost: x\r\n\r\nGET /sleep/10 HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(try c.readResponse().text == "slept 150")
        #expect(try c.readResponse().text == "a@1")
        #expect(try c.readResponse().text == "from a thread")
        #expect(try c.readResponse().text == "slept 10")
    }

    @Test func manyPipelinedRequestsPastTheCapStillAllGetAnswers() throws {
        let s = try TestServer { $0.maxPipelinedRequests = 4 }
        defer { s.stop() }
        let c = try RawSocket(port: s.port)
        let count = 200
        try c.send(String(repeating: "GET /items/x/versions/7 HTTP/1.1\r\nHost: x\r\n\r\n", count: count))
        for _ in 0..<count { #expect(try c.readResponse().text == "x@7") }
    }

    @Test func contentLengthAndChunkedBodies() throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try RawSocket(port: s.port)
        try c.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world")
        #expect(try c.readResponse().text == "hello world")
        try c.send("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\n\r\n")
        #expect(try c.readResponse().text == "hello world")
        // A body that arrives in pieces.
        try c.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nab")
        usleep(50_000)
        try c.send("cdef")
        #expect(try c.readResponse().text == "abcdef")
    }

    @Test func expectContinueGetsAnInterimAnswerBeforeTheBody() throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try RawSocket(port: s.port)
        try c.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        let interim = try #require(try c.readSome())
        #expect(String(decoding: interim, as: UTF8.self) == "HTTP/1.1 100 Continue\r\n\r\n")
        try c.send("data")
        #expect(try c.readResponse().text == "data")
    }

    @Test func expectContinueWithATooLargeBodyIsRefusedBeforeItIsSent() throws {
        let s = try TestServer { $0.maxBodyBytes = 100 }
        defer { s.stop() }
        let c = try RawSocket(port: s.port)
        try c.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n")
        let r = try c.readResponse()
        #expect(r.status == 413)
        #expect(r.text.contains("exceeds 100 bytes"))
    }

    /// A `100 Continue` owed behind an earlier, slower answer is sent once that answer is
    /// written (it used to be dropped, and the client waited for it in vain).
    @Test func expectContinueBehindAnEarlierAnswerIsSentOnceThatAnswerIsWritten() throws {
        let s = try TestServer { $0.bodyTimeout = .milliseconds(300) }
        defer { s.stop() }
        let c = try RawSocket(port: s.port)
        try c.send("GET /sleep/900 HTTP/1.1\r\nHost: x\r\n\r\n"
                   + "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        #expect(try c.readResponse().text == "slept 900") // past the body timeout, which waits too
        #expect(try c.readResponse().status == 100)
        try c.send("data")
        #expect(try c.readResponse().text == "data")
    }

    /// Bodies still arriving share one budget: a request that cannot fit is refused (503)
    /// before its body is sent, and the budget comes back when bodies complete.
    @Test func bodiesStillArrivingShareOneBudget() throws {
        let s = try TestServer { $0.maxBufferedBodyBytes = 100_000 }
        defer { s.stop() }
        let a = try RawSocket(port: s.port)
        try a.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 80000\r\n\r\n")
        try a.send([UInt8](repeating: 1, count: 60_000))
        waitUntil { s.server.bufferedBodyBytes >= 80_000 }
        let b = try RawSocket(port: s.port)
        try b.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\nExpect: 100-continue\r\n\r\n")
        let refused = try b.readResponse()
        #expect(refused.status == 503)
        #expect(refused.text == #"{"error":"the server already holds 100000 bytes of request bodies still arriving; retry later"}"#)
        #expect(b.isClosedByPeer())
        try a.send([UInt8](repeating: 1, count: 20_000))
        #expect(try a.readResponse().body.count == 80_000)
        #expect(s.server.bufferedBodyBytes == 0)
        let c = try RawSocket(port: s.port)
        try c.send(Array("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n".utf8) + [UInt8](repeating: 2, count: 50_000))
        #expect(try c.readResponse().body.count == 50_000)
        // A chunked body is counted as it grows.
        let d = try RawSocket(port: s.port)
        try d.send("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in 0..<20 { try? d.send("2710\r\n" + String(repeating: "d", count: 10_000) + "\r\n") }
        #expect(try d.readResponse().status == 503)
        waitUntil { s.server.bufferedBodyBytes == 0 }
        #expect(s.server.bufferedBodyBytes == 0)
    }

    /// A declared length reserves at most 1 MiB before the bytes come: ten connections that
    /// declare 16 MiB each and send nothing hold little.
    @Test func aDeclaredLengthAloneReservesLittle() throws {
        let s = try TestServer()
        defer { s.stop() }
        let sockets = try (0..<10).map { _ in try RawSocket(port: s.port) }
        for c in sockets { try c.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 16000000\r\n\r\n") }
        waitUntil { s.server.bufferedBodyBytes >= 10 << 20 }
        #expect(s.server.bufferedBodyBytes <= 10 * (1 << 20) + 10 * 4096)
        #expect(s.server.heldBufferBytes <= 10 * (1 << 20) + 10 * 64 << 10)
    }

    /// A chunk that cannot fit the body limit is refused from its size line.
    @Test func aChunkLargerThanTheLimitIsRefusedFromItsSize() throws {
        let s = try TestServer { $0.maxBodyBytes = 1000 }
        defer { s.stop() }
        let c = try RawSocket(port: s.port)
        try c.send("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n")
        let r = try c.readResponse()
        #expect(r.status == 413)
        #expect(r.text == #"{"error":"request body exceeds 1000 bytes"}"#)
    }

    @Test func unknownExpectationIs417() throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try RawSocket(port: s.port)
        try c.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nExpect: teapot\r\n\r\nx")
        #expect(try c.readResponse().status == 417)
        #expect(c.isClosedByPeer())
    }

    @Test func oversizeHeadersAre431AndClose() throws {
        let s = try TestServer { $0.maxHeaderBytes = 1024 }
        defer { s.stop() }
        let c = try RawSocket(port: s.port)
        try c.send("GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: \(String(repeating: "a", count: 2000))\r\n\r\n")
        let r = try c.readResponse()
        #expect(r.status == 431)
        #expect(r.text == #"{"error":"request line and headers exceed 1024 bytes"}"#)
        #expect(r.headers["connection"] == "close")
        #expect(c.isClosedByPeer())
    }

    @Test func oversizeBodiesAre413AndClose() throws {
        let s = try TestServer { $0.maxBodyBytes = 1000 }
        defer { s.stop() }
        let declared = try RawSocket(port: s.port)
        try declared.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n")
        #expect(try declared.readResponse().status == 413)
        #expect(declared.isClosedByPeer())

        let chunked = try RawSocket(port: s.port)
        try chunked.send("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        try chunked.send("3e8\r\n" + String(repeating: "b", count: 1000) + "\r\n")
        try chunked.send("1\r\nc\r\n0\r\n\r\n")
        #expect(try chunked.readResponse().status == 413)
        #expect(chunked.isClosedByPeer())
    }

    @Test func headerTimeoutClosesASlowlorisClientEvenWhileItKeepsSending() throws {
        let s = try TestServer { $0.headerTimeout = .milliseconds(300) }
        defer { s.stop() }
        let c = try RawSocket(port: s.port, timeout: 3)
        try c.send("GET /v2/health/live HTTP/1.1\r\nX-Slow: ")
        // One header byte every 50 ms for up to 3 s: activity must not extend the deadline.
        var answer: [UInt8] = []
        var closedAfter: Int?
        for i in 0..<60 {
            if (try? c.send("y")) == nil { closedAfter = i; break }
            usleep(50_000)
            var buffer = [UInt8](repeating: 0, count: 512)
            let n = recv(c.fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
            if n > 0 { answer += buffer[..<n] }
            if n == 0 { closedAfter = i; break }
        }
        #expect(closedAfter != nil, "the server kept a trickling connection open for 3 s")
        #expect(String(decoding: answer, as: UTF8.self).hasPrefix("HTTP/1.1 408 Request Timeout"))
        waitUntil { s.server.openConnections == 0 } // after the bounded linger
        #expect(s.server.openConnections == 0)
    }

    @Test func idleKeepAliveConnectionsAreClosed() throws {
        let s = try TestServer { $0.idleTimeout = .milliseconds(200) }
        defer { s.stop() }
        let c = try RawSocket(port: s.port, timeout: 3)
        try c.send("GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(try c.readResponse().status == 200)
        #expect(c.isClosedByPeer())
        let silent = try RawSocket(port: s.port, timeout: 3)
        #expect(silent.isClosedByPeer()) // never sent a byte
    }

    @Test func bodyTimeoutAnswers408() throws {
        let s = try TestServer { $0.bodyTimeout = .milliseconds(200) }
        defer { s.stop() }
        let c = try RawSocket(port: s.port, timeout: 3)
        try c.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        let r = try c.readResponse()
        #expect(r.status == 408)
        #expect(r.text.contains("request body not received"))
        #expect(c.isClosedByPeer())
    }

    @Test func connectionCapAnswers503() throws {
        let s = try TestServer { $0.maxConnections = 2 }
        defer { s.stop() }
        let a = try RawSocket(port: s.port)
        let b = try RawSocket(port: s.port)
        try a.send("GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        try b.send("GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(try a.readResponse().status == 200)
        #expect(try b.readResponse().status == 200)
        let third = try RawSocket(port: s.port)
        let r = try third.readResponse()
        #expect(r.status == 503)
        #expect(r.text.contains("too many open connections (limit 2)"))
    }

    @Test func http10ClosesAfterTheResponseAndHeadHasNoBody() throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try RawSocket(port: s.port)
        try c.send("GET /items/a/versions/2 HTTP/1.0\r\n\r\n")
        let all = String(decoding: try c.readToEnd(), as: UTF8.self)
        #expect(all.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(all.contains("connection: close"))
        #expect(all.hasSuffix("\r\n\r\na@2"))

        let h = try RawSocket(port: s.port)
        try h.send("HEAD /items/a/versions/2 HTTP/1.1\r\nHost: x\r\n\r\nGET /items/b/versions/3 HTTP/1.1\r\nHost: x\r\n\r\n")
        let head = try h.readSome().map { String(decoding: $0, as: UTF8.self) } ?? ""
        // The HEAD answer says 3 bytes but carries none; the next answer follows at once.
        #expect(head.contains("content-length: 3\r\n\r\nHTTP/1.1 200 OK") || head.hasSuffix("content-length: 3\r\n\r\n"))
    }

    @Test func routerMatchesParametersAndAnswers404And405() throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try RawSocket(port: s.port)
        try c.send("GET /items/caf%C3%A9/versions/9 HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(try c.readResponse().text == "café@9")
        try c.send("GET /nothing/here HTTP/1.1\r\nHost: x\r\n\r\n")
        let missing = try c.readResponse()
        #expect(missing.status == 404)
        #expect(missing.text == #"{"error":"no route for GET /nothing/here"}"#)
        try c.send("DELETE /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        let wrong = try c.readResponse()
        #expect(wrong.status == 405)
        #expect(wrong.headers["allow"] == "GET")
        try c.send("GET /items/%zz/versions/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        let malformed = try c.readResponse()
        #expect(malformed.status == 400)
        #expect(malformed.text.contains("malformed %-escape"))
        // The query is not part of the path; repeated slashes separate nothing.
        try c.send("GET //items/a%2Fb//versions/2?x=/y HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(try c.readResponse().text == "a/b@2")
        // Same number of segments, another literal.
        try c.send("GET /items/a/revisions/2 HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(try c.readResponse().status == 404)
        try c.send("POST /items/a/versions/2 HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\n\r\n")
        let post = try c.readResponse()
        #expect(post.status == 405)
        #expect(post.headers["allow"] == "GET")
    }

    @Test func gracefulShutdownFinishesInFlightRequests() throws {
        let s = try TestServer()
        let c = try RawSocket(port: s.port)
        try c.send("GET /sleep/300 HTTP/1.1\r\nHost: x\r\n\r\n")
        usleep(50_000)
        let stopper = Thread { s.server.shutdown(grace: .seconds(5)) }
        stopper.start()
        let r = try c.readResponse()
        #expect(r.text == "slept 300")
        #expect(r.headers["connection"] == "close")
        #expect(c.isClosedByPeer())
        while stopper.isExecuting { usleep(10_000) }
        #expect(throws: (any Error).self) { _ = try RawSocket(port: s.port) }
        s.loop.shutdown()
    }

    @Test func gracefulShutdownGivesUpAfterTheGracePeriod() throws {
        let s = try TestServer()
        let c = try RawSocket(port: s.port, timeout: 5)
        try c.send("GET /sleep/5000 HTTP/1.1\r\nHost: x\r\n\r\n")
        usleep(50_000)
        s.server.shutdown(grace: .milliseconds(200)) // returns long before the 5 s handler
        #expect(try c.readToEnd().isEmpty) // closed without an answer
        s.loop.shutdown()
    }
}
