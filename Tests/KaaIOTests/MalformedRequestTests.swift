import Foundation
import Glibc
@testable import KaaIO
import KaaTestSupport
import Testing

/// Bad input gets 400 (or the limit's code) and a close; the server keeps serving.
@Suite struct MalformedRequestTests {
    static let corpus: [(name: String, bytes: String, status: Int)] = [
        ("HTTP/0.9 request without a version", "GET /\r\n\r\n", 505),
        ("bad method", "G@T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("space in target", "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("bad version", "GET / HTTP/x.1\r\nHost: x\r\n\r\n", 400),
        ("HTTP/2 in a 1.1 request line", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        ("header without colon", "GET / HTTP/1.1\r\nHost x\r\n\r\n", 400),
        ("control byte in header name", "GET / HTTP/1.1\r\nHo\u{01}st: x\r\n\r\n", 400),
        ("bad content length", "POST /echo HTTP/1.1\r\nContent-Length: 12a\r\n\r\n", 400),
        ("two content lengths", "POST /echo HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
        ("bad chunk size", "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n", 400),
        ("chunk without CRLF", "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n0\r\n\r\n", 400),
        ("huge chunk size", "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n", 400),
        ("oversize header line", "GET / HTTP/1.1\r\nX: " + String(repeating: "z", count: 20_000) + "\r\n\r\n", 431),
        ("binary garbage", String(decoding: (0..<64).map { UInt8(($0 * 37 + 11) % 256) }, as: UTF8.self), 400),
        ("upgrade", "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 400),
    ]

    @Test(arguments: corpus.indices)
    func refusesAndCloses(_ index: Int) throws {
        let case_ = MalformedRequestTests.corpus[index]
        let s = try TestServer()
        defer { s.stop() }
        let c = try RawSocket(port: s.port)
        try c.send(case_.bytes)
        let r = try c.readResponse()
        #expect(r.status == case_.status, "\(case_.name)")
        #expect(r.text.hasPrefix(#"{"error":"#), "\(case_.name)")
        #expect(r.headers["connection"] == "close", "\(case_.name)")
        #expect(c.isClosedByPeer(), "\(case_.name)")
        // The server is unharmed.
        let ok = try RawSocket(port: s.port)
        try ok.send("GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(try ok.readResponse().status == 200)
    }

    @Test func badRequestMessageNamesTheProblem() throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try RawSocket(port: s.port)
        try c.send("POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        let r = try c.readResponse()
        #expect(r.text == #"{"error":"malformed HTTP request: invalid character in chunk size header (HPE_INVALID_CHUNK_SIZE)"}"#)
    }

    @Test func earlyCloseInEveryPhaseLeavesTheServerServing() throws {
        let s = try TestServer()
        defer { s.stop() }
        let partials = ["G", "GET /v2/health", "GET / HTTP/1.1\r\nHost:", "POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc",
                        "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", "GET /sleep/100 HTTP/1.1\r\n\r\n"]
        for partial in partials {
            let c = try RawSocket(port: s.port)
            try c.send(partial)
        } // each socket closes here
        usleep(200_000)
        let ok = try RawSocket(port: s.port)
        try ok.send("GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(try ok.readResponse().status == 200)
        #expect(s.server.openConnections == 1)
    }

    @Test func seededRandomGarbageNeverCrashesTheServer() throws {
        let s = try TestServer()
        defer { s.stop() }
        var rng = SplitMix64(seed: 0x6b6161)
        let valid = Array("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n".utf8)
        for round in 0..<300 {
            var bytes: [UInt8]
            if round % 2 == 0 {
                bytes = (0..<Int(rng.next() % 512)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            } else {
                bytes = valid // mutate a few bytes of a valid request
                for _ in 0..<(1 + rng.next() % 4) {
                    bytes[Int(rng.next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: rng.next())
                }
            }
            let c = try RawSocket(port: s.port, timeout: 2)
            try? c.send(bytes)
            if let r = try? c.readResponse() { #expect([200, 400, 404, 405, 408, 413, 431, 505].contains(r.status)) }
        }
        let ok = try RawSocket(port: s.port)
        try ok.send("GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(try ok.readResponse().status == 200)
    }
}
