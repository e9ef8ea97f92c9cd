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

@Suite struct StreamingBodyTests {
    static func checksum(_ bytes: [UInt8]) -> UInt64 { bytes.reduce(0) { $0 &* 31 &+ UInt64($1) } }

    final class Fixture: Sendable {
        let loop = EventLoop.start(name: "stream")
        let aborted = AbortLog()
        let server: HTTPServer
        init(maxBytes: Int = 1 << 30) throws {
            let loop = self.loop
            let aborted = self.aborted
            server = try HTTPServer(on: loop, address: SocketAddress(resolving: HostPort(host: "127.0.0.1", port: 0)),
                                    streamer: { head in
                                        head.method == .put ? ChecksumSink(loop: loop, maxBytes: maxBytes, aborted: aborted) : nil
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
}
