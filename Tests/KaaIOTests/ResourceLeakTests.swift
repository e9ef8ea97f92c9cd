import Foundation
import Glibc
import KaaCore
@testable import KaaIO
import KaaTestSupport
import Testing

/// Opening and closing many handles returns the loop, the descriptors and the memory to where
/// they started. Descriptors and RSS are process-wide, so `tools/test.sh` runs this suite in a
/// process of its own (`KAA_LEAK_TESTS=1`); in a shared run it is skipped.
@Suite(.serialized, .enabled(if: ProcessInfo.processInfo.environment["KAA_LEAK_TESTS"] == "1"))
struct ResourceLeakTests {
    @Test func tenThousandConnectionsLeaveNoHandlesDescriptorsOrMemoryBehind() throws {
        let s = try TestServer()
        defer { s.stop() }
        func round(_ count: Int) throws {
            for _ in 0..<count {
                let c = try RawSocket(port: s.port)
                try c.send("GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                #expect(try c.readResponse().status == 200)
            }
        }
        // Warm-up: malloc's per-thread arenas and the kernel's socket caches reach their
        // working size in the first thousands of connections; a leak shows as growth after it.
        try round(5_000)
        waitUntil { s.server.openConnections == 0 }
        let handles = s.loop.runBlocking { s.loop.openHandleCount }
        let fds = openFileDescriptors()
        let rss = residentBytes()
        try round(10_000)
        waitUntil { s.server.openConnections == 0 }
        #expect(s.loop.runBlocking { s.loop.openHandleCount } == handles)
        #expect(openFileDescriptors() == fds)
        let growth = residentBytes() - rss
        #expect(growth < 8 << 20, "RSS grew by \(growth / 1024) KiB over 10,000 connections")
    }

    @Test func tenThousandTimersLeaveNoHandlesOrMemoryBehind() throws {
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
        let handles = loop.runBlocking { loop.openHandleCount }
        let rss = residentBytes()
        round(10_000)
        waitUntil { loop.runBlocking { loop.openHandleCount } == handles }
        #expect(loop.runBlocking { loop.openHandleCount } == handles)
        let growth = residentBytes() - rss
        #expect(growth < 4 << 20, "RSS grew by \(growth / 1024) KiB over 10,000 timers")
    }

    @Test func pooledClientConnectionsAreAllReturnedAndClosed() async throws {
        let s = try TestServer()
        defer { s.stop() }
        let before = openFileDescriptors()
        let client = HTTPClient()
        for _ in 0..<200 {
            _ = try await client.execute(HTTPRequest(method: .get, target: "/v2/health/live"),
                                         to: HostPort(host: "127.0.0.1", port: s.port), deadline: .seconds(5))
        }
        client.shutdown()
        waitUntil { s.server.openConnections == 0 }
        #expect(openFileDescriptors() == before)
    }
}

/// Polls `condition` for up to 5 seconds.
func waitUntil(_ condition: () -> Bool) {
    let deadline = Date().addingTimeInterval(5)
    while !condition() && Date() < deadline { usleep(5_000) }
}
