import Foundation
import Glibc
import KaaCore
@testable import KaaIO
import KaaTestSupport
import Synchronization
import Testing

final class AbortLog: Sendable {
    private let reasons = Mutex<[String]>([])
    func append(_ reason: String) { reasons.withLock { $0.append(reason) } }
    var all: [String] { reasons.withLock { $0 } }
}

/// Counts and checksums an upload on libuv's thread pool, one chunk at a time.
final class ChecksumSink: HTTPBodySink {
    let loop: EventLoop
    let maxBytes: Int
    let aborted: AbortLog
    private var count = 0
    private var sum: UInt64 = 0
    private var working = false

    init(loop: EventLoop, maxBytes: Int, aborted: AbortLog) {
        self.loop = loop
        self.maxBytes = maxBytes
        self.aborted = aborted
    }

    func receive(_ chunk: [UInt8], ready: @escaping () -> Void) {
        precondition(!working, "a chunk arrived before the previous one was done")
        working = true
        let base = sum
        loop.offload({ () -> UInt64 in
            var s = base
            for b in chunk { s = s &* 31 &+ UInt64(b) }
            return s
        }) { [self] s in
            sum = s
            count += chunk.count
            working = false
            ready()
        }
    }

    func finish(_ responder: HTTPResponder) {
        responder.respond(HTTPResponse(body: Array("\(count) \(sum)".utf8)))
    }

    func abort(_ reason: String) { aborted.append(reason) }
}

/// A count shared between a sink on the loop and the test thread.
final class SharedCount: Sendable {
    private let value = Mutex(0)
    func add(_ n: Int) { value.withLock { $0 += n } }
    var current: Int { value.withLock { $0 } }
}

/// Takes each chunk `delay` after it arrives, and answers `delay` after the body is complete:
/// a node busy writing and verifying an upload.
final class SlowSink: HTTPBodySink {
    let loop: EventLoop
    let delay: Duration
    let aborted: AbortLog
    private var count = 0
    init(loop: EventLoop, delay: Duration, aborted: AbortLog) {
        self.loop = loop
        self.delay = delay
        self.aborted = aborted
    }
    var maxBytes: Int { 1 << 30 }
    func receive(_ chunk: [UInt8], ready: @escaping () -> Void) {
        count += chunk.count
        loop.schedule(after: delay) { ready() }
    }
    func finish(_ responder: HTTPResponder) {
        let count = self.count
        loop.schedule(after: delay) { responder.respond(HTTPResponse(body: Array("slow \(count)".utf8))) }
    }
    func abort(_ reason: String) { aborted.append(reason) }
}

/// Refuses every request from its head, as a node refuses an upload for its URL or headers;
/// with no limit of its own, it would take any body it were given.
final class HeadRefusingSink: HTTPBodySink {
    let received: SharedCount
    let aborted: AbortLog
    init(received: SharedCount, aborted: AbortLog) {
        self.received = received
        self.aborted = aborted
    }
    var maxBytes: Int { Int.max }
    var refusal: HTTPResponse? { .error(HTTPStatus(code: 403), "uploads of this name are refused") }
    func receive(_ chunk: [UInt8], ready: @escaping () -> Void) {
        received.add(chunk.count)
        ready()
    }
    func finish(_ responder: HTTPResponder) { responder.respond(HTTPResponse(body: Array("read it all".utf8))) }
    func abort(_ reason: String) { aborted.append(reason) }
}

/// Takes `failAfter` bytes on the loop's next turn each, then fails as an upload whose disk
/// filled: from then on its answer is the error.
final class FailingSink: HTTPBodySink {
    let loop: EventLoop
    let failAfter: Int
    let received: SharedCount
    let aborted: AbortLog
    private var failed: HTTPResponse?
    init(loop: EventLoop, failAfter: Int, received: SharedCount, aborted: AbortLog) {
        self.loop = loop
        self.failAfter = failAfter
        self.received = received
        self.aborted = aborted
    }
    var maxBytes: Int { Int.max }
    var refusal: HTTPResponse? { failed }
    func receive(_ chunk: [UInt8], ready: @escaping () -> Void) {
        received.add(chunk.count)
        if received.current >= failAfter {
            failed = .error(HTTPStatus(507, "Insufficient Storage"), "no space left for the upload")
        }
        loop.schedule(after: .zero) { ready() }
    }
    func finish(_ responder: HTTPResponder) { responder.respond(HTTPResponse(body: Array("stored".utf8))) }
    func abort(_ reason: String) { aborted.append(reason) }
}

@Suite struct StreamingBodyTests {
    static func checksum(_ bytes: [UInt8]) -> UInt64 { bytes.reduce(0) { $0 &* 31 &+ UInt64($1) } }

    /// PUT /up checksums, /slow is a `SlowSink` (300 ms), /refuse a `HeadRefusingSink`, /fail a
    /// `FailingSink` (after 100,000 bytes); other methods are buffered.
    final class Fixture: Sendable {
        let loop = EventLoop.start(name: "stream")
        let aborted = AbortLog()
        let received = SharedCount()
        let server: HTTPServer
        init(maxBytes: Int = 1 << 30, _ configure: (inout HTTPServer.Configuration) -> Void = { _ in }) throws {
            let loop = self.loop
            let aborted = self.aborted
            let received = self.received
            var configuration = HTTPServer.Configuration()
            configure(&configuration)
            server = try HTTPServer(on: loop, address: SocketAddress(resolving: HostPort(host: "127.0.0.1", port: 0)),
                                    configuration: configuration,
                                    streamer: { head -> (any HTTPBodySink)? in
                                        guard head.method == .put else { return nil }
                                        switch head.path {
                                        case "/slow": return SlowSink(loop: loop, delay: .milliseconds(300), aborted: aborted)
                                        case "/refuse": return HeadRefusingSink(received: received, aborted: aborted)
                                        case "/fail": return FailingSink(loop: loop, failAfter: 100_000, received: received,
                                                                         aborted: aborted)
                                        default: return ChecksumSink(loop: loop, maxBytes: maxBytes, aborted: aborted)
                                        }
                                    }) { request, r in r.respond(HTTPResponse(body: Array("buffered \(request.body.count)".utf8))) }
        }
        func stop() {
            server.shutdown(grace: .seconds(1))
            loop.shutdown()
        }
    }

    @Test func largeUploadsStreamThroughTheSinkInOrder() throws {
        let f = try Fixture()
        defer { f.stop() }
        var rng = SplitMix64(seed: 7)
        let payload = (0..<(24 << 20)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        let c = try RawSocket(port: f.server.localAddress.port, timeout: 30)
        try c.send("PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: \(payload.count)\r\n\r\n")
        try c.send(payload)
        #expect(try c.readResponse().text == "\(payload.count) \(StreamingBodyTests.checksum(payload))")
        // Chunked, on the same connection, then an ordinary buffered request.
        let small = Array(payload[0..<100_000])
        var chunked = Array("PUT /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".utf8)
        for start in stride(from: 0, to: small.count, by: 30_000) {
            let piece = small[start..<min(start + 30_000, small.count)]
            chunked += Array("\(String(piece.count, radix: 16))\r\n".utf8) + piece + Array("\r\n".utf8)
        }
        chunked += Array("0\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc".utf8)
        try c.send(chunked)
        #expect(try c.readResponse().text == "\(small.count) \(StreamingBodyTests.checksum(small))")
        #expect(try c.readResponse().text == "buffered 3")
        #expect(f.aborted.all.isEmpty)
    }

    @Test func theSinksLimitReplacesTheServers() throws {
        let f = try Fixture(maxBytes: 1000)
        defer { f.stop() }
        let c = try RawSocket(port: f.server.localAddress.port)
        try c.send("PUT /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        try c.send("3e8\r\n" + String(repeating: "z", count: 1000) + "\r\n1\r\nz\r\n0\r\n\r\n")
        let r = try c.readResponse()
        #expect(r.status == 413)
        waitUntil { !f.aborted.all.isEmpty }
        #expect(f.aborted.all == ["body exceeds 1000 bytes"])
    }

    @Test func anUploadCutOffHalfWayAbortsTheSink() throws {
        let f = try Fixture()
        defer { f.stop() }
        do {
            let c = try RawSocket(port: f.server.localAddress.port)
            try c.send("PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
            try c.send([UInt8](repeating: 1, count: 40_000))
            usleep(100_000)
        } // closed here, 60,000 bytes short
        waitUntil { !f.aborted.all.isEmpty }
        #expect(f.aborted.all == ["the client closed the connection before the body was complete"])
    }

    @Test func theClientStreamsAnUploadPieceByPieceWithProgress() async throws {
        let f = try Fixture()
        defer { f.stop() }
        var rng = SplitMix64(seed: 99)
        let payload = (0..<(20 << 20)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        let offset = Mutex(0)
        let lastProgress = Mutex(0)
        let stream = HTTPClientBodyStream(length: payload.count, next: {
            offset.withLock { o -> [UInt8]? in
                guard o < payload.count else { return nil }
                let piece = Array(payload[o..<min(o + (1 << 20), payload.count)])
                o += piece.count
                return piece
            }
        }, progress: { sent in lastProgress.withLock { $0 = sent } })
        let client = HTTPClient()
        defer { client.shutdown() }
        let r = try await client.execute(HTTPRequest(method: .put, target: "/up"), bodyStream: stream,
                                         to: f.server.localAddress.hostPort, deadline: .seconds(60))
        #expect(r.text == "\(payload.count) \(StreamingBodyTests.checksum(payload))")
        #expect(lastProgress.withLock { $0 } == payload.count)
    }

    @Test func aStreamShorterThanDeclaredFailsClearly() async throws {
        let f = try Fixture()
        defer { f.stop() }
        let client = HTTPClient()
        defer { client.shutdown() }
        let once = Mutex(true)
        let stream = HTTPClientBodyStream(length: 10, next: { once.withLock { first in
            defer { first = false }
            return first ? [1, 2, 3] : nil
        } })
        await #expect { _ = try await client.execute(HTTPRequest(method: .put, target: "/up"), bodyStream: stream,
                                                     to: f.server.localAddress.hostPort, deadline: .seconds(5)) } throws: {
            ($0 as? HTTPClientError)?.message == "request body ended after 3 of 10 bytes"
        }
    }

    // MARK: body deadlines

    /// One byte every 100 ms restarted the old deadline on every byte, so the upload (and its
    /// temporary file) stayed open as long as the client liked.
    @Test func aTricklingUploadTimesOutThoughEveryByteArrivesWithinTheBodyTimeout() throws {
        let f = try Fixture { $0.bodyTimeout = .milliseconds(300); $0.minBodyRate = 1000 }
        defer { f.stop() }
        let c = try RawSocket(port: f.server.localAddress.port, timeout: 3)
        try c.send("PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        let (answer, closed) = c.trickle([UInt8(ascii: "z")], every: 0.1, upTo: 6)
        #expect(closed, "a client sending one byte per 100 ms held its upload for 6 s")
        let text = String(decoding: answer, as: UTF8.self)
        #expect(text.hasPrefix("HTTP/1.1 408 Request Timeout"))
        #expect(text.contains("request body not received"))
        waitUntil { !f.aborted.all.isEmpty }
        #expect(f.aborted.all.count == 1)
        #expect(f.aborted.all.first?.hasPrefix("request body not received") == true)
    }

    /// A body that keeps to the minimum rate may take longer than `bodyTimeout`.
    @Test func aBodyKeepingToTheMinimumRateMayTakeLongerThanTheBodyTimeout() throws {
        let f = try Fixture { $0.bodyTimeout = .seconds(1); $0.minBodyRate = 2000 }
        defer { f.stop() }
        let c = try RawSocket(port: f.server.localAddress.port, timeout: 10)
        let piece = [UInt8](repeating: 7, count: 1000)
        try c.send("PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 30000\r\n\r\n")
        // 30 pieces, 100 ms apart: about 3 s in all, 10 KB/s.
        for _ in 0..<30 {
            try c.send(piece)
            usleep(100_000)
        }
        let r = try c.readResponse()
        #expect(r.status == 200)
        #expect(r.text == "30000 \(StreamingBodyTests.checksum([UInt8](repeating: 7, count: 30000)))")
    }

    /// The node's own sink takes 300 ms per chunk under a 100 ms body timeout: the client sent
    /// everything at once, so the answer is the sink's, not 408.
    @Test func aSinkSlowerThanTheBodyTimeoutDoesNotTimeTheClientOut() throws {
        let f = try Fixture { $0.bodyTimeout = .milliseconds(100); $0.minBodyRate = 10 << 20 }
        defer { f.stop() }
        let c = try RawSocket(port: f.server.localAddress.port, timeout: 20)
        let body = [UInt8](repeating: 1, count: 200_000)
        try c.send(Array("PUT /slow HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.count)\r\n\r\n".utf8) + body)
        let r = try c.readResponse()
        #expect(r.status == 200, "\(r.text)")
        #expect(r.text == "slow 200000")
        #expect(f.aborted.all.isEmpty)
    }

    // MARK: refusals

    /// A sink that refuses from the head is answered at once: no `100 Continue`, no body read,
    /// and the connection closes, though the body declared is a terabyte.
    @Test func aRefusalFromTheHeadIsAnsweredWithoutReadingTheBody() throws {
        let f = try Fixture()
        defer { f.stop() }
        let c = try RawSocket(port: f.server.localAddress.port)
        try c.send("PUT /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\nExpect: 100-continue\r\n\r\n")
        let r = try c.readResponse() // the first answer: a 100 Continue here would fail this
        #expect(r.status == 403)
        #expect(r.text == #"{"error":"uploads of this name are refused"}"#)
        #expect(r.headers["connection"] == "close")
        #expect(c.isClosedByPeer())

        // Without Expect, a client already sending its body gets the answer and the close too.
        let d = try RawSocket(port: f.server.localAddress.port, timeout: 5)
        try d.send("PUT /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n")
        let (answer, _) = d.trickle([UInt8](repeating: 2, count: 16 << 10), every: 0.01, upTo: 5, stopOnAnswer: true)
        #expect(String(decoding: answer, as: UTF8.self).hasPrefix("HTTP/1.1 403 "))
        #expect(d.isClosedByPeer())
        #expect(f.received.current == 0)
        #expect(f.aborted.all.isEmpty)
    }

    /// An upload that fails half-way is answered with the sink's error and closed; the rest of
    /// its (gigabyte) body is never read.
    @Test func anUploadThatFailsHalfWayIsAnsweredAndClosedWithoutReadingTheRest() throws {
        let f = try Fixture()
        defer { f.stop() }
        let c = try RawSocket(port: f.server.localAddress.port, timeout: 5)
        try c.send("PUT /fail HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        let (answer, _) = c.trickle([UInt8](repeating: 3, count: 64 << 10), every: 0.002, upTo: 10, stopOnAnswer: true)
        let text = String(decoding: answer, as: UTF8.self)
        #expect(text.hasPrefix("HTTP/1.1 507 Insufficient Storage"))
        #expect(text.contains("connection: close"))
        #expect(text.hasSuffix(#"{"error":"no space left for the upload"}"#))
        #expect(c.isClosedByPeer())
        // The sink saw what it took before failing (at most one read of 64 KiB past it), no more.
        #expect(f.received.current >= 100_000 && f.received.current < 100_000 + 64 << 10)
        #expect(f.aborted.all.isEmpty)
    }

    /// A sink that fails on the last chunk answers instead of `finish`, and the connection
    /// stays open: its body was read whole.
    @Test func aRefusalAfterTheWholeBodyKeepsTheConnection() throws {
        let f = try Fixture()
        defer { f.stop() }
        let c = try RawSocket(port: f.server.localAddress.port)
        let body = [UInt8](repeating: 4, count: 100_000)
        try c.send(Array("PUT /fail HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.count)\r\n\r\n".utf8) + body)
        let r = try c.readResponse()
        #expect(r.status == 507)
        #expect(r.headers["connection"] == nil)
        try c.send("POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
        #expect(try c.readResponse().text == "buffered 2")
    }
}
