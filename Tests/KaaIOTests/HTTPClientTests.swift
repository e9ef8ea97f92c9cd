import Foundation
import Glibc
import KaaCore
@testable import KaaIO
import KaaTestSupport
import Testing

@Suite struct HTTPClientTests {
    @Test func reusesOnePooledConnectionForSequentialRequests() async throws {
        let s = try TestServer()
        defer { s.stop() }
        let client = HTTPClient()
        defer { client.shutdown() }
        let address = HostPort(host: "127.0.0.1", port: s.port)
        for i in 0..<20 {
            let r = try await client.execute(HTTPRequest(method: .post, target: "/echo", body: Array("n\(i)".utf8)),
                                             to: address, deadline: .seconds(5))
            #expect(r.status == 200)
            #expect(r.text == "n\(i)")
        }
        #expect(client.idleConnections(to: address) == 1)
        #expect(s.server.openConnections == 1)
    }

    @Test func concurrentRequestsOpenSeveralConnectionsAndAllSucceed() async throws {
        let s = try TestServer()
        defer { s.stop() }
        let client = HTTPClient()
        defer { client.shutdown() }
        let address = HostPort(host: "127.0.0.1", port: s.port)
        try await withThrowingTaskGroup(of: String.self) { group in
            for i in 0..<50 {
                group.addTask {
                    try await client.execute(HTTPRequest(method: .get, target: "/items/m\(i)/versions/\(i)"),
                                             to: address, deadline: .seconds(5)).text
                }
            }
            var answers = Set<String>()
            for try await text in group { answers.insert(text) }
            #expect(answers == Set((0..<50).map { "m\($0)@\($0)" }))
        }
    }

    @Test func deadlineAgainstAServerThatNeverAnswers() async throws {
        let s = try TestServer()
        defer { s.stop() }
        let client = HTTPClient()
        defer { client.shutdown() }
        await #expect { _ = try await client.execute(HTTPRequest(method: .get, target: "/sleep/10000"),
                                                     to: HostPort(host: "127.0.0.1", port: s.port),
                                                     deadline: .milliseconds(200)) } throws: { error in
            (error as? HTTPClientError)?.code == .deadlineExceeded
        }
    }

    @Test func refusedConnectionIsAClearError() async throws {
        let probe = try SilentListener()
        let port = probe.port
        _ = consume probe // closed: nothing listens on the port now
        let client = HTTPClient()
        defer { client.shutdown() }
        do {
            _ = try await client.execute(HTTPRequest(method: .get, target: "/"), to: HostPort(host: "127.0.0.1", port: port),
                                         deadline: .seconds(2))
            Issue.record("expected a refusal")
        } catch {
            #expect(error.code == .connectionRefused)
            #expect(error.message.contains("cannot connect to 127.0.0.1:\(port)"))
        }
    }

    @Test func connectTimeoutWhenTheListenersQueueIsFull() async throws {
        // Backlog 0 holds one connection the listener never accepts; the kernel then drops
        // further SYNs, so the next connect hangs until our timeout.
        let silent = try SilentListener(backlog: 0)
        var configuration = HTTPClient.Configuration()
        configuration.connectTimeout = .milliseconds(300)
        let client = HTTPClient(configuration: configuration)
        defer { client.shutdown() }
        let address = HostPort(host: "127.0.0.1", port: silent.port)
        await #expect { _ = try await client.execute(HTTPRequest(method: .get, target: "/"), to: address,
                                                     deadline: .milliseconds(500)) } throws: {
            ($0 as? HTTPClientError)?.code == .deadlineExceeded
        }
        await #expect { _ = try await client.execute(HTTPRequest(method: .get, target: "/"), to: address,
                                                     deadline: .seconds(5)) } throws: { error in
            let e = error as? HTTPClientError
            return e?.code == .connectTimeout && e?.message.contains("no answer within") == true
        }
    }

    @Test func resetBeforeAnswerIsAClearError() async throws {
        let listener = try SilentListener(backlog: 8)
        let client = HTTPClient()
        defer { client.shutdown() }
        let accepter = Thread {
            let fd = listener.acceptOne()
            var buffer = [UInt8](repeating: 0, count: 1024)
            _ = recv(fd, &buffer, buffer.count, 0)
            var linger = Glibc.linger(l_onoff: 1, l_linger: 0) // close with RST
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
            close(fd)
        }
        accepter.start()
        do {
            _ = try await client.execute(HTTPRequest(method: .post, target: "/x", body: [1, 2, 3]),
                                         to: HostPort(host: "127.0.0.1", port: listener.port), deadline: .seconds(5))
            Issue.record("expected a reset")
        } catch {
            #expect(error.code == .connectionReset)
        }
    }

    @Test func readsChunkedAndCloseDelimitedResponses() async throws {
        let listener = try SilentListener(backlog: 8)
        let client = HTTPClient()
        defer { client.shutdown() }
        let server = Thread {
            for answer in ["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
                           "HTTP/1.1 201 Created\r\nConnection: close\r\n\r\nuntil the end"] {
                let fd = listener.acceptOne()
                var buffer = [UInt8](repeating: 0, count: 4096)
                _ = recv(fd, &buffer, buffer.count, 0)
                _ = Array(answer.utf8).withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
                close(fd)
            }
        }
        server.start()
        let address = HostPort(host: "127.0.0.1", port: listener.port)
        let chunked = try await client.execute(HTTPRequest(method: .get, target: "/a"), to: address, deadline: .seconds(5))
        #expect(chunked.status == 200)
        #expect(chunked.text == "abcde")
        let closing = try await client.execute(HTTPRequest(method: .get, target: "/b"), to: address, deadline: .seconds(5))
        #expect(closing.status == 201)
        #expect(closing.text == "until the end")
    }

    /// Interim answers (103 Early Hints here) are skipped, not taken for the answer.
    @Test func skipsInterimAnswers() async throws {
        let listener = try SilentListener(backlog: 8)
        let client = HTTPClient()
        defer { client.shutdown() }
        let server = Thread {
            let fd = listener.acceptOne()
            var buffer = [UInt8](repeating: 0, count: 4096)
            _ = recv(fd, &buffer, buffer.count, 0)
            let answer = "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            _ = Array(answer.utf8).withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
            usleep(200_000)
            close(fd)
        }
        server.start()
        let r = try await client.execute(HTTPRequest(method: .get, target: "/a"), to: HostPort(host: "127.0.0.1", port: listener.port),
                                         deadline: .seconds(5))
        #expect(r.status == 200)
        #expect(r.text == "ok")
    }

    @Test func retriesAnIdempotentRequestWhenAPooledConnectionWasClosedByTheServer() async throws {
        let s = try TestServer { $0.idleTimeout = .milliseconds(100) }
        defer { s.stop() }
        let client = HTTPClient()
        defer { client.shutdown() }
        let address = HostPort(host: "127.0.0.1", port: s.port)
        _ = try await client.execute(HTTPRequest(method: .get, target: "/v2/health/live"), to: address, deadline: .seconds(2))
        try await Task.sleep(for: .milliseconds(400)) // the server closes the idle connection
        let r = try await client.execute(HTTPRequest(method: .get, target: "/v2/health/live"), to: address, deadline: .seconds(2))
        #expect(r.status == 200)
    }
}
