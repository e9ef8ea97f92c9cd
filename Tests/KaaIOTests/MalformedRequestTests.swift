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
        // Transfer codings (RFC 9112 §6.1): only chunked, once, last.
        ("gzip before chunked", "POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\na\r\n0\r\n\r\n", 501),
        ("gzip and chunked in two fields", "POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n", 501),
        ("identity", "POST /echo HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\nabc", 501),
        ("chunked twice", "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n1\r\na\r\n0\r\n\r\n", 400),
        ("chunked in two fields", "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n", 400),
        ("chunked with a parameter", "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked;q=1\r\n\r\n1\r\na\r\n0\r\n\r\n", 400),
        ("empty transfer coding", "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked,\r\n\r\n1\r\na\r\n0\r\n\r\n", 400),
        ("chunked then Content-Length", "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n1\r\na\r\n0\r\n\r\n", 400),
        ("Content-Length then chunked", "POST /echo HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n", 400),
        ("Content-Length with gzip", "POST /echo HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: gzip\r\n\r\nabc", 400),
        // Fields read two ways by two parsers.
        ("folded transfer coding", "POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\n chunked\r\n\r\n1\r\na\r\n0\r\n\r\n", 400),
        ("folded header", "POST /echo HTTP/1.1\r\nX-A: one\r\n two\r\nContent-Length: 1\r\n\r\na", 400),
        ("space before the colon", "POST /echo HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n1\r\na\r\n0\r\n\r\n", 400),
        ("space inside a name", "GET / HTTP/1.1\r\nHo st: x\r\n\r\n", 400),
        ("whitespace before the first field", "GET / HTTP/1.1\r\n Host: x\r\n\r\n", 400),
        // Counts and sizes.
        ("101 header fields", "GET / HTTP/1.1\r\n" + (0...100).map { "X-\($0): v\r\n" }.joined() + "\r\n", 431),
        ("101 trailer fields", "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"
            + (0...100).map { "X-\($0): v\r\n" }.joined() + "\r\n", 431),
        ("request target over the header limit", "GET /" + String(repeating: "t", count: 17_000) + " HTTP/1.1\r\nHost: x\r\n\r\n", 431),
        ("Content-Length over 64 bits", "POST /echo HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n", 400),
        ("Content-Length of 2^63", "POST /echo HTTP/1.1\r\nContent-Length: 9223372036854775808\r\n\r\n", 413),
        ("chunk size of 2^60", "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1000000000000000\r\nabc", 413),
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

    @Test func transferCodingsAndSmugglingVectorsSayWhatIsWrong() throws {
        let s = try TestServer()
        defer { s.stop() }
        func answer(_ request: String) throws -> String {
            let c = try RawSocket(port: s.port)
            try c.send(request)
            return try c.readResponse().text
        }
        #expect(try answer("POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
                == #"{"error":"transfer coding `gzip` is not implemented; send the body as it is, with Content-Length or `Transfer-Encoding: chunked` alone"}"#)
        #expect(try answer("POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n")
                == #"{"error":"malformed HTTP request: Transfer-Encoding `chunked, chunked` applies chunked 2 times; it must be applied exactly once"}"#)
        #expect(try answer("POST /echo HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
                == #"{"error":"malformed HTTP request: Content-Length and Transfer-Encoding together are refused (RFC 9112 §6.3); send one of them"}"#)
        #expect(try answer("POST /echo HTTP/1.1\r\nX-A: one\r\n two\r\n\r\n")
                == #"{"error":"malformed HTTP request: header `X-A` is folded over several lines; send each field on one line"}"#)
        #expect(try answer("POST /echo HTTP/1.1\r\nHost : x\r\n\r\n")
                == #"{"error":"malformed HTTP request: whitespace in or before the header field name `Host `"}"#)
        #expect(try answer("GET / HTTP/1.1\r\n" + (0...100).map { "X-\($0): v\r\n" }.joined() + "\r\n")
                == #"{"error":"request has more than 100 header fields"}"#)
    }

    /// What is allowed stays allowed: `chunked` in any case, 100 header fields, a value that
    /// arrives over several reads, trailers (ignored).
    @Test func chunkedInAnyCaseAHundredFieldsSplitValuesAndTrailersAreServed() throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try RawSocket(port: s.port)
        try c.send("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        #expect(try c.readResponse().text == "abc")
        try c.send("GET /v2/health/live HTTP/1.1\r\n" + (1...100).map { "X-\($0): v\r\n" }.joined() + "\r\n")
        #expect(try c.readResponse().status == 200)
        // A value split over reads at every offset, including right after its CR.
        let request = "POST /describe/0 HTTP/1.1\r\nX-Long: abcdefgh\r\nContent-Length: 2\r\n\r\nok"
        for cut in 30..<46 {
            let bytes = Array(request.utf8)
            try c.send(Array(bytes[..<cut]))
            usleep(20_000)
            try c.send(Array(bytes[cut...]))
            #expect(try c.readResponse().text == "/describe/0\nX-Long=abcdefgh\nContent-Length=2\nok", "cut at \(cut)")
        }
        // Trailers are read and dropped: the handler sees the header fields only.
        try c.send("POST /describe/0 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n"
                   + "X-T1: 1\r\nX-T2: 2\r\nX-T3: 3\r\n\r\n")
        #expect(try c.readResponse().text == "/describe/0\nHost=a\nTransfer-Encoding=chunked\nhi")
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
            if let r = try? c.readResponse() { #expect([200, 400, 404, 405, 408, 413, 431, 501, 505].contains(r.status)) }
        }
        let ok = try RawSocket(port: s.port)
        try ok.send("GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(try ok.readResponse().status == 200)
    }
}
