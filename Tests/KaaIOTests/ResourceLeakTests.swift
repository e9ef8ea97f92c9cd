import Foundation
import Glibc
import KaaCore
@testable import KaaIO
import KaaTestSupport
import Synchronization
import Testing

/// Opening and closing many connections and timers gives back every handle, descriptor and
/// object they took. What could leak is counted directly (libuv's handles, the loop's
/// registry, live connection and handle objects, descriptors, bytes the server's buffers
/// hold), never the resident size, which depends on the machine's malloc. Descriptors and the
/// object counts are process-wide, so `tools/test.sh` runs this suite in a process of its own
/// (`KAA_LEAK_TESTS=1`); in a shared run it is skipped.
@Suite(.serialized, .enabled(if: ProcessInfo.processInfo.environment["KAA_LEAK_TESTS"] == "1"))
struct ResourceLeakTests {
    /// Everything one connection or timer takes that must come back when it is gone.
    struct Census: Equatable, CustomStringConvertible {
        var openHandles: Int
        var registeredHandles: Int
        var handleObjects: Int
        var serverConnections: Int
        var clientConnections: Int
        var frameConnections: Int
        var descriptors: Int

        init(_ loop: EventLoop) {
            openHandles = loop.runBlocking { loop.openHandleCount }
            registeredHandles = loop.runBlocking { loop.registeredHandleCount }
            handleObjects = LiveObjects.loopHandles.load(ordering: .relaxed)
            serverConnections = LiveObjects.httpServerConnections.load(ordering: .relaxed)
            clientConnections = LiveObjects.httpClientConnections.load(ordering: .relaxed)
            frameConnections = LiveObjects.frameConnections.load(ordering: .relaxed)
            descriptors = openFileDescriptors()
        }

        var description: String {
            "\(openHandles) libuv handles, \(registeredHandles) registered, \(handleObjects) handle objects, "
                + "\(serverConnections) server / \(clientConnections) client / \(frameConnections) frame connections, "
                + "\(descriptors) descriptors"
        }
    }

    /// The census once every connection object of earlier rounds is gone and the counts have
    /// settled: the server's count of open connections reaches 0 before the closes it started
    /// have run their callbacks, so a census taken right then still counts those connections.
    static func atRest(_ loop: EventLoop) -> Census {
        waitUntil {
            let c = Census(loop)
            return c.serverConnections == 0 && c.clientConnections == 0 && c.frameConnections == 0
        }
        var last = Census(loop)
        waitUntil {
            usleep(20_000)
            let now = Census(loop)
            defer { last = now }
            return now == last
        }
        return last
    }

    /// Waits for closes still in flight (close callbacks, lingers), then compares.
    static func expectBack(to before: Census, _ loop: EventLoop, after what: String) {
        waitUntil { Census(loop) == before }
        let after = Census(loop)
        #expect(after == before, "after \(what): \(after); before: \(before)")
    }

    @Test func tenThousandConnectionsLeaveNoHandlesDescriptorsOrObjectsBehind() throws {
        let s = try TestServer()
        defer { s.stop() }
        func round(_ count: Int) throws {
            for i in 0..<count {
                let c = try RawSocket(port: s.port)
                if i % 2 == 0 {
                    try c.send("GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                } else { // a body too, and the client closes first
                    try c.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + String(repeating: "b", count: 5000))
                }
                #expect(try c.readResponse().status == 200)
            }
            waitUntil { s.server.openConnections == 0 }
        }
        try round(1_000) // first use: the loop's and the kernel's lazily made state
        let before = ResourceLeakTests.atRest(s.loop)
        #expect(before.serverConnections == 0)
        try round(10_000)
        ResourceLeakTests.expectBack(to: before, s.loop, after: "10,000 connections")
        #expect(s.server.bufferedBodyBytes == 0)
        #expect(s.server.heldBufferBytes == 0)
    }

    @Test func connectionsCutOffInEveryPhaseLeaveNothingBehind() throws {
        let s = try TestServer { $0.headerTimeout = .milliseconds(50); $0.bodyTimeout = .milliseconds(50); $0.idleTimeout = .milliseconds(50) }
        defer { s.stop() }
        let partials = ["G", "GET / HTTP/1.1\r\nHost:", "POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc",
                        "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", "GET /sleep/20 HTTP/1.1\r\n\r\n",
                        "GET / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"]
        func round(_ count: Int, timedOut: Bool) throws {
            for i in 0..<count {
                let c = try RawSocket(port: s.port)
                try c.send(partials[i % partials.count])
                if timedOut { _ = c.isClosedByPeer() } // the server's timeout or refusal closes it
            } // else the client closes it
            waitUntil { s.server.openConnections == 0 }
        }
        try round(120, timedOut: false)
        let before = ResourceLeakTests.atRest(s.loop)
        try round(1_200, timedOut: false)
        ResourceLeakTests.expectBack(to: before, s.loop, after: "1,200 connections closed by the client")
        try round(240, timedOut: true)
        ResourceLeakTests.expectBack(to: before, s.loop, after: "240 connections closed by the server")
        #expect(s.server.bufferedBodyBytes == 0)
    }

    @Test func tenThousandTimersLeaveNoHandlesOrObjectsBehind() throws {
        let loop = EventLoop.start(name: "timers")
        defer { loop.shutdown() }
        func round(_ count: Int) {
            let done = DispatchSemaphore(value: 0)
            loop.execute {
                var fired = 0
                var timers: [LoopTimer] = []
                for i in 0..<count {
                    if i % 2 == 0 {
                        loop.schedule(after: .milliseconds(Int64(i % 5))) {
                            fired += 1
                            if fired == count / 2 { done.signal() }
                        }
                    } else {
                        timers.append(loop.schedule(after: .seconds(60)) {})
                    }
                }
                for t in timers { t.cancel() } // cancelled before firing
            }
            done.wait()
        }
        round(1000)
        let before = Census(loop)
        round(10_000)
        ResourceLeakTests.expectBack(to: before, loop, after: "10,000 timers")
    }

    @Test func pooledClientConnectionsAreAllReturnedAndClosed() async throws {
        let s = try TestServer()
        defer { s.stop() }
        let before = Census(s.loop)
        let client = HTTPClient()
        for _ in 0..<200 {
            _ = try await client.execute(HTTPRequest(method: .get, target: "/v2/health/live"),
                                         to: HostPort(host: "127.0.0.1", port: s.port), deadline: .seconds(5))
        }
        client.shutdown()
        waitUntil { s.server.openConnections == 0 }
        ResourceLeakTests.expectBack(to: before, s.loop, after: "200 pooled client requests")
    }

    @Test func twoThousandFrameConnectionsLeaveNothingBehind() throws {
        let loop = EventLoop.start(name: "frames")
        defer { loop.shutdown() }
        // Authenticated and encrypted, as nodes run: the handshake's and the records' state is freed too.
        let keys = PeerKeys(keys: [[UInt8](repeating: 7, count: 32)])
        let server = try FrameServer(on: loop, address: SocketAddress(resolving: HostPort(host: "127.0.0.1", port: 0)),
                                     keys: keys) { frame, r in
            r.respond(frame.payload)
        }
        defer { server.shutdown() }
        func round(_ count: Int) throws {
            for i in 0..<count {
                let c = try RawPeer(port: server.localAddress.port, keys: keys)
                var bytes = c.record(Frame(kind: .request, type: 1, id: UInt64(i + 1), payload: [1, 2, 3]).body())
                if i % 3 == 2 { bytes.removeLast(2) } // a frame cut off by the close
                try c.sendRaw(bytes)
                if i % 3 != 2 { #expect(c.readFrame()?.payload == [1, 2, 3]) }
            }
        }
        try round(200)
        waitUntil { server.openConnections == 0 }
        let before = ResourceLeakTests.atRest(loop)
        try round(2_000)
        waitUntil { server.openConnections == 0 }
        ResourceLeakTests.expectBack(to: before, loop, after: "2,000 frame connections")
    }
}

/// Polls `condition` for up to 5 seconds.
func waitUntil(_ condition: () -> Bool) {
    let deadline = Date().addingTimeInterval(5)
    while !condition() && Date() < deadline { usleep(5_000) }
}
