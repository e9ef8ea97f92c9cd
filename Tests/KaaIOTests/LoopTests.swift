import Foundation
import Glibc
import KaaCore
@testable import KaaIO
import KaaTestSupport
import Synchronization
import Testing

@Suite struct LoopTests {
    @Test func executeHopsOntoTheLoopFromAnyThread() throws {
        let loop = EventLoop.start(name: "hop")
        defer { loop.shutdown() }
        let onLoop = Mutex(0)
        let group = DispatchGroup()
        for _ in 0..<8 {
            group.enter()
            Thread.detachNewThread {
                for _ in 0..<100 { loop.execute { if loop.inLoop { onLoop.withLock { $0 += 1 } } } }
                group.leave()
            }
        }
        group.wait()
        let total = loop.runBlocking { onLoop.withLock { $0 } }
        #expect(total == 800)
        #expect(!loop.inLoop)
    }

    @Test func offloadRunsOffTheLoopAndReturnsOnIt() throws {
        let loop = EventLoop.start(name: "offload")
        defer { loop.shutdown() }
        let done = DispatchSemaphore(value: 0)
        let result = Mutex<(Bool, Bool, Int)?>(nil)
        loop.execute {
            loop.offload({ () -> (Bool, Int) in (loop.inLoop, (1...1000).reduce(0, +)) }) { workOnLoop, sum in
                result.withLock { $0 = (workOnLoop, loop.inLoop, sum) }
                done.signal()
            }
        }
        done.wait()
        let (workOnLoop, thenOnLoop, sum) = try #require(result.withLock { $0 })
        #expect(!workOnLoop)
        #expect(thenOnLoop)
        #expect(sum == 500_500)
    }

    @Test func timersFireInOrderAndRepeatingTimersStopWhenCancelled() throws {
        let loop = EventLoop.start(name: "timers")
        defer { loop.shutdown() }
        let order = Mutex<[Int]>([])
        let done = DispatchSemaphore(value: 0)
        loop.execute {
            for delay in [30, 10, 20] {
                loop.schedule(after: .milliseconds(Int64(delay))) { order.withLock { $0.append(delay) } }
            }
            var ticks = 0
            var repeating: LoopTimer?
            repeating = loop.schedule(after: .milliseconds(5), repeating: .milliseconds(5)) {
                ticks += 1
                if ticks == 3 {
                    repeating?.cancel()
                    loop.schedule(after: .milliseconds(60)) {
                        order.withLock { $0.append(ticks) }
                        done.signal()
                    }
                }
            }
        }
        done.wait()
        #expect(order.withLock { $0 } == [10, 20, 30, 3])
    }

    @Test func udpDatagramsTravelBothWays() throws {
        let loop = EventLoop.start(name: "udp")
        defer { loop.shutdown() }
        let received = Mutex<[String]>([])
        let done = DispatchSemaphore(value: 0)
        let any = try SocketAddress(resolving: HostPort(host: "127.0.0.1", port: 0))
        let sockets = try loop.runBlocking { () throws -> LoopBound<(UDPSocket, UDPSocket)> in
            let a = try UDPSocket(loop: loop, address: any) { bytes, from in
                received.withLock { $0.append("a<-\(String(decoding: bytes, as: UTF8.self))") }
                done.signal()
            }
            var bRef: UDPSocket?
            let b = try UDPSocket(loop: loop, address: any) { bytes, from in
                received.withLock { $0.append("b<-\(String(decoding: bytes, as: UTF8.self))") }
                bRef?.send(Array("pong".utf8), to: from) // answer to the sender's address
            }
            bRef = b
            a.send(Array("ping".utf8), to: b.localAddress)
            return LoopBound((a, b), loop: loop)
        }
        #expect(done.wait(timeout: .now() + 5) == .success)
        #expect(received.withLock { $0 } == ["b<-ping", "a<-pong"])
        loop.runBlocking { sockets.value.0.close(); sockets.value.1.close() }
    }

    @Test func udpSocketOnATakenPortIsAClearError() throws {
        let loop = EventLoop.start(name: "udp")
        defer { loop.shutdown() }
        let any = try SocketAddress(resolving: HostPort(host: "127.0.0.1", port: 0))
        let first = try loop.runBlocking { LoopBound(try UDPSocket(loop: loop, address: any) { _, _ in }, loop: loop) }
        let taken = loop.runBlocking { first.value.localAddress }
        #expect { _ = try loop.runBlocking { _ = try UDPSocket(loop: loop, address: taken) { _, _ in } } } throws: {
            ($0 as? IOError)?.code == .addressInUse
        }
        loop.runBlocking { first.value.close() }
    }

    /// A client that sends requests for large answers and never reads them: the server stops
    /// reading that connection once its output passes the watermark, so its buffer stays bounded.
    @Test func aSlowReaderCannotGrowTheServersOutputWithoutBound() throws {
        let loop = EventLoop.start(name: "backpressure")
        defer { loop.shutdown() }
        let big = [UInt8](repeating: 0x61, count: 256 << 10)
        var router = HTTPRouter()
        router.add(.get, "/big") { _, r in r.respond(HTTPResponse(body: big)) }
        let routes = router
        let server = try HTTPServer(on: loop, address: SocketAddress(resolving: HostPort(host: "127.0.0.1", port: 0))) {
            routes.handle($0, $1)
        }
        defer { server.shutdown(grace: .zero) }
        let c = try RawSocket(port: server.localAddress.port)
        var size: Int32 = 64 << 10
        setsockopt(c.fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        // 400 requests for 100 MiB of answers, all sent at once; the client reads nothing.
        let request = Array("GET /big HTTP/1.1\r\nHost: x\r\n\r\n".utf8)
        let all = Array((0..<400).map { _ in request }.joined())
        let fd = c.fd
        let sender = Thread { _ = all.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }
        sender.start()
        var peak = 0
        for _ in 0..<40 {
            usleep(25_000)
            peak = max(peak, server.queuedOutputBytes)
        }
        // One watermark (1 MiB) plus the answers already parsed when writing stopped.
        #expect(peak > 0)
        #expect(peak < 1 << 20 + 2 * big.count, "queued \(peak) bytes for a client that reads nothing")
        // Reading drains everything, in order.
        var received = 0
        while received < 400 * big.count {
            guard let chunk = try c.readSome() else { break }
            received += chunk.count
        }
        #expect(received >= 400 * big.count)
    }

    /// A write larger than one libuv call can take (32-bit lengths) goes out in slices, whole
    /// and in order; the slice is made small here to show it without gigabytes.
    @Test func aWriteLargerThanOneSliceGoesOutWholeAndInOrder() throws {
        let loop = EventLoop.start(name: "slices")
        defer { loop.shutdown() }
        let listener = try SilentListener(backlog: 1)
        let payload = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let connected = DispatchSemaphore(value: 0)
        let holder = Mutex<LoopBound<TCPConnection>?>(nil)
        let address = try SocketAddress(resolving: HostPort(host: "127.0.0.1", port: listener.port))
        loop.execute {
            TCPConnection.connect(on: loop, to: address) { result in
                guard case .success(let tcp) = result else { connected.signal(); return }
                tcp.maxWriteSlice = 1000
                tcp.write(payload)
                holder.withLock { $0 = LoopBound(tcp, loop: loop) }
                connected.signal()
            }
        }
        let fd = listener.acceptOne()
        defer { close(fd) }
        connected.wait()
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while received.count < payload.count {
            let n = recv(fd, &buffer, buffer.count, 0)
            guard n > 0 else { break }
            received += buffer[..<n]
        }
        #expect(received == payload)
        let tcp = try #require(holder.withLock { $0 })
        loop.runBlocking { tcp.value.close() }
    }
}

extension LoopTests {
    @Test func theLoopCountsTheJobsItHandedToThePoolUntilTheirAnswerRuns() throws {
        let loop = EventLoop.start(name: "offloads")
        defer { loop.shutdown() }
        let release = DispatchSemaphore(value: 0), answered = DispatchSemaphore(value: 0)
        loop.execute {
            for _ in 0..<2 { loop.offload({ release.wait() }) { answered.signal() } }
        }
        #expect(loop.runBlocking { loop.offloadsInFlight } == 2)
        release.signal()
        answered.wait()
        #expect(loop.runBlocking { loop.offloadsInFlight } == 1)
        release.signal()
        answered.wait()
        #expect(loop.runBlocking { loop.offloadsInFlight } == 0)
    }
}
