import Foundation
import Glibc
import KaaCore
@testable import KaaIO
import KaaTestSupport
import Synchronization
import Testing

@Suite struct FrameChannelTests {
    @Test func decoderSplitsFramesAcrossArbitraryReadBoundaries() throws {
        var bytes: [UInt8] = []
        let frames = (0..<20).map { Frame(kind: .request, type: UInt16($0), id: UInt64($0) * 1000, payload: Array(repeating: UInt8($0), count: $0 * 7)) }
        for f in frames { f.encode(into: &bytes) }
        var rng = SplitMix64(seed: 42)
        var decoder = FrameDecoder(maxFrameBytes: 1 << 20)
        var decoded: [Frame] = []
        var offset = 0
        while offset < bytes.count {
            let n = min(bytes.count - offset, 1 + Int(rng.next() % 40))
            bytes[offset..<(offset + n)].withUnsafeBytes { decoder.append($0) }
            offset += n
            while let f = try decoder.next() { decoded.append(f) }
        }
        #expect(decoded == frames)
    }

    @Test func decoderRefusesOversizeAndMalformedFrames() {
        var big = FrameDecoder(maxFrameBytes: 100)
        let header: [UInt8] = [0, 0, 1, 0, 0, 0, 1] + [UInt8](repeating: 0, count: 8)
        header.withUnsafeBytes { big.append($0) }
        #expect { _ = try big.next() } throws: { ($0 as? FrameError)?.message == "frame of 260 bytes exceeds the limit of 100 bytes" }

        var short = FrameDecoder(maxFrameBytes: 100)
        let tiny: [UInt8] = [0, 0, 0, 2] + [UInt8](repeating: 0, count: 11)
        tiny.withUnsafeBytes { short.append($0) }
        #expect(throws: FrameError.self) { _ = try short.next() }

        var kind = FrameDecoder(maxFrameBytes: 100)
        let badKind: [UInt8] = [0, 0, 0, 12, 9] + [UInt8](repeating: 0, count: 11)
        badKind.withUnsafeBytes { kind.append($0) }
        #expect { _ = try kind.next() } throws: { ($0 as? FrameError)?.message == "unknown frame kind 9" }
    }

    /// Many requests in flight on one connection, answered out of order, each matched by id.
    @Test func interleavedRequestsOnOneConnection() async throws {
        let loop = EventLoop.start(name: "frames")
        defer { loop.shutdown() }
        let server = try FrameServer(on: loop, address: SocketAddress(resolving: HostPort(host: "127.0.0.1", port: 0))) { frame, responder in
            let delay = Int64(frame.payload.first ?? 0) % 7
            loop.schedule(after: .milliseconds(delay * 5)) {
                responder.respond(frame.payload.reversed())
            }
        }
        let client = FrameClient(loop: loop)
        let peer = server.localAddress.hostPort
        try await withThrowingTaskGroup(of: Bool.self) { group in
            for i in 0..<300 {
                group.addTask {
                    let payload: [UInt8] = [UInt8(i % 251), UInt8(i / 251), 7, 9]
                    let answer = try await client.request(to: peer, type: 5, payload: payload, deadline: .seconds(10))
                    return answer.payload == payload.reversed() && answer.kind == .response
                }
            }
            var ok = 0
            for try await good in group where good { ok += 1 }
            #expect(ok == 300)
        }
        #expect(client.openConnections == 1)
        client.shutdown()
        server.shutdown()
    }

    @Test func remoteErrorsDeadlinesAndOversizeFrames() async throws {
        let loop = EventLoop.start(name: "frames")
        defer { loop.shutdown() }
        var configuration = FrameServer.Configuration()
        configuration.maxFrameBytes = 1024
        let server = try FrameServer(on: loop, address: SocketAddress(resolving: HostPort(host: "127.0.0.1", port: 0)),
                                     configuration: configuration) { frame, responder in
            switch frame.type {
            case 1: responder.fail(.notFound, "model `iris` has no version 7")
            case 2: break // never answers
            default: responder.respond([])
            }
        }
        let client = FrameClient(loop: loop)
        let peer = server.localAddress.hostPort
        await #expect { _ = try await client.request(to: peer, type: 1, payload: [], deadline: .seconds(5)) } throws: {
            ($0 as? FrameError)?.code == .remoteError && ($0 as? FrameError)?.message == "model `iris` has no version 7"
                && ($0 as? FrameError)?.remote == .notFound
        }
        await #expect { _ = try await client.request(to: peer, type: 2, payload: [], deadline: .milliseconds(100)) } throws: {
            ($0 as? FrameError)?.code == .deadlineExceeded
        }
        // A frame over the server's limit closes that connection; the request fails at once,
        // with the server's reason.
        await #expect { _ = try await client.request(to: peer, type: 3, payload: [UInt8](repeating: 1, count: 4096),
                                                     deadline: .seconds(5)) } throws: {
            ($0 as? FrameError)?.code == .closed
                && ($0 as? FrameError)?.message == "peer closed the connection: frame of 4112 bytes exceeds the limit of 1024 bytes"
        }
        // The next request reconnects.
        let ok = try await client.request(to: peer, type: 3, payload: [1], deadline: .seconds(5))
        #expect(ok.kind == Frame.Kind.response)
        client.shutdown()
        server.shutdown()
    }

    @Test func connectFailureIsClear() async throws {
        let loop = EventLoop.start(name: "frames")
        defer { loop.shutdown() }
        let probe = try SilentListener()
        let port = probe.port
        _ = consume probe
        let client = FrameClient(loop: loop)
        await #expect { _ = try await client.request(to: HostPort(host: "127.0.0.1", port: port), type: 1, payload: [],
                                                     deadline: .seconds(2)) } throws: {
            ($0 as? FrameError)?.code == .connectFailed
        }
        client.shutdown()
    }

    // MARK: limits on what a peer can make a node hold

    @Test func decoderRefusesAnOversizeLengthFromItsFourBytesAndReservesNothing() throws {
        var decoder = FrameDecoder(maxFrameBytes: 4 << 20)
        let huge: [UInt8] = [0x80, 0, 0, 0] // 2 GiB declared, nothing else sent
        huge.withUnsafeBytes { decoder.append($0) }
        #expect { _ = try decoder.next() } throws: {
            ($0 as? FrameError)?.message == "frame of 2147483652 bytes exceeds the limit of 4194304 bytes"
        }
        var largest = FrameDecoder(maxFrameBytes: 4 << 20)
        let header: [UInt8] = [0, 0x3f, 0xff, 0xfc, 0, 0, 1] + [UInt8](repeating: 0, count: 8) // exactly the limit
        header.withUnsafeBytes { largest.append($0) }
        #expect(try largest.next() == nil)
        #expect(largest.pendingFrameLength == 4 << 20)
        #expect(largest.storageCapacity < 1024)
        // A large frame's storage is not kept once it is consumed.
        var decoder2 = FrameDecoder(maxFrameBytes: 4 << 20)
        var bytes: [UInt8] = []
        Frame(kind: .request, type: 1, id: 1, payload: [UInt8](repeating: 5, count: 1 << 20)).encode(into: &bytes)
        bytes.withUnsafeBytes { decoder2.append($0) }
        #expect(try decoder2.next()?.payload.count == 1 << 20)
        #expect(try decoder2.next() == nil)
        #expect(decoder2.storageCapacity == 0)
    }

    /// The four connections each sending 60 MiB of one frame: with the 4 MiB default,
    /// each is refused from its length, told why, and closed before it sends the rest.
    @Test func aFrameDeclaringMoreThanTheLimitIsRefusedFromItsLength() throws {
        let p = try PeerFixture()
        defer { p.stop() }
        for _ in 0..<4 {
            let c = try RawPeer(port: p.port)
            try c.sendRaw([0x03, 0xbf, 0xff, 0xfc, 0, 0, 1]) // 60 MiB in all
            let reason = try #require(c.readFrame())
            #expect(reason.kind == .error && reason.id == 0)
            #expect(reason.errorMessage == "frame of 62914560 bytes exceeds the limit of 4194304 bytes")
            #expect(c.isClosedByPeer())
        }
        #expect(p.server.bufferedBytes == 0)
    }

    @Test func theConnectionCapRefusesTheNextConnectionWithTheReason() throws {
        let p = try PeerFixture { $0.maxConnections = 2 }
        defer { p.stop() }
        let a = try RawPeer(port: p.port), b = try RawPeer(port: p.port)
        for c in [a, b] {
            try c.send([Frame(kind: .request, type: 1, id: 1, payload: [9])])
            #expect(c.readFrame()?.payload == [9])
        }
        // Before a handshake nothing can be said to an unknown peer: the third is closed at once.
        #expect(throws: RawSocketError.self) { _ = try RawPeer(port: p.port) }
        _ = consume a
        waitUntil { p.server.openConnections == 1 }
        let fourth = try RawPeer(port: p.port)
        try fourth.send([Frame(kind: .request, type: 1, id: 1, payload: [8])])
        #expect(fourth.readFrame()?.payload == [8])
    }

    @Test func idleConnectionsCloseButNotWhileARequestIsBeingAnswered() throws {
        let p = try PeerFixture { $0.idleTimeout = .milliseconds(200) }
        defer { p.stop() }
        let silent = try RawPeer(port: p.port, timeout: 5)
        #expect(silent.isClosedByPeer()) // opened, then never sent a frame
        let mute = try RawSocket(port: p.port, timeout: 5)
        #expect(!mute.isClosedByPeer(), "a handshake has the frame timeout, not the idle timeout") // 5 s < 10 s
        let busy = try RawPeer(port: p.port, timeout: 5)
        try busy.send([Frame(kind: .request, type: 2, id: 7, payload: Array("600".utf8))]) // answered after 600 ms
        let answer = try #require(busy.readFrame())
        #expect(answer.id == 7 && answer.kind == .response)
        #expect(busy.isClosedByPeer()) // idle once answered
        waitUntil { p.server.openConnections == 0 }
        #expect(p.server.openConnections == 0)
    }

    @Test func aFrameTricklingInIsCutOff() throws {
        let p = try PeerFixture { $0.frameTimeout = .milliseconds(200); $0.minFrameRate = 1000 }
        defer { p.stop() }
        let c = try RawPeer(port: p.port, timeout: 5)
        try c.sendRaw([0, 1, 0x86, 0x9b, 0]) // a request of 99,999 bytes
        // One byte every 50 ms: each arrives in time, the frame never would.
        let (answer, closed) = c.socket.trickle([1], every: 0.05, upTo: 6)
        #expect(closed, "a frame trickling in at 20 bytes/s held its connection for 6 s")
        let reason = try #require(decodeFrames(answer).first)
        #expect(reason.errorMessage.hasPrefix("a frame of 99999 bytes did not arrive in time"))
        // Half a length field is cut off too.
        let d = try RawPeer(port: p.port, timeout: 5)
        try d.sendRaw([0, 0])
        let cut = try #require(d.readFrame())
        #expect(cut.errorMessage == "a frame's length did not arrive within 0.2 seconds")
        #expect(d.isClosedByPeer())
        // And a handshake that does not complete.
        let e = try RawSocket(port: p.port, timeout: 5)
        try e.send(Array(PeerHandshake.magic))
        #expect(e.isClosedByPeer())
        waitUntil { p.server.bufferedBytes == 0 }
        #expect(p.server.bufferedBytes == 0)
    }

    /// Incomplete frames share one budget: past it, the connection holding the largest closes,
    /// and the others carry on.
    @Test func incompleteFramesOverTheBudgetCloseTheLargestHolder() throws {
        let p = try PeerFixture { $0.maxFrameBytes = 64 << 10; $0.maxBufferedBytes = 100_000 }
        defer { p.stop() }
        let a = try RawPeer(port: p.port), b = try RawPeer(port: p.port)
        let big = encode(Frame(kind: .request, type: 1, id: 1, payload: [UInt8](repeating: 1, count: 65_000)))
        let small = encode(Frame(kind: .request, type: 1, id: 2, payload: [UInt8](repeating: 2, count: 60_000)))
        try a.sendRaw(Array(big[..<60_000]))
        waitUntil { p.server.bufferedBytes >= 60_000 }
        try b.sendRaw(Array(small[..<50_000]))
        let reason = try #require(a.readFrame())
        #expect(reason.errorMessage.hasPrefix(
            "the node holds more than 100000 bytes of incoming peer frames, and this connection's incomplete frame (60000 bytes) is the largest"))
        #expect(a.isClosedByPeer())
        try b.sendRaw(Array(small[50_000...]))
        #expect(b.readFrame()?.payload.count == 60_000)
        #expect(p.server.bufferedBytes == 0)
    }

    @Test func requestsOverTheInFlightCapAreAnsweredOverloaded() async throws {
        let p = try PeerFixture { $0.maxUnansweredRequests = 2 }
        defer { p.stop() }
        let client = FrameClient(loop: p.loop)
        defer { client.shutdown() }
        let peer = p.server.localAddress.hostPort
        // Type 5 is held unanswered until released, so the cap is reached whatever the machine's pace.
        async let first = client.request(to: peer, type: 5, payload: [1], deadline: .seconds(900))
        async let second = client.request(to: peer, type: 5, payload: [2], deadline: .seconds(900))
        // Polled with Task.sleep: a blocking wait would hold one of the few threads the two
        // requests need to start. The limit only turns a hang into a failure: under
        // ThreadSanitizer, with every suite running at once on two cores, the two requests took
        // over a minute to arrive.
        let until = ContinuousClock.now + .seconds(600)
        while p.held.withLock({ $0.count }) < 2 && ContinuousClock.now < until { try await Task.sleep(for: .milliseconds(5)) }
        #expect(p.held.withLock { $0.count } == 2)
        defer { p.release() }
        await #expect { _ = try await client.request(to: peer, type: 1, payload: [], deadline: .seconds(600)) } throws: {
            ($0 as? FrameError)?.code == .remoteError && ($0 as? FrameError)?.remote == .overloaded && ($0 as? FrameError)?.message
                == "overloaded: 2 requests on this connection are still being answered (limit 2); retry later"
        }
        p.release()
        #expect(try await first.payload == [1])
        #expect(try await second.payload == [2])
    }

    @Test func framesTooLargeForTheLimitFailClearlyBothWays() async throws {
        let p = try PeerFixture { $0.maxFrameBytes = 1024 }
        defer { p.stop() }
        var configuration = FrameClient.Configuration()
        configuration.maxFrameBytes = 1024
        let client = FrameClient(loop: p.loop, configuration: configuration)
        defer { client.shutdown() }
        let peer = p.server.localAddress.hostPort
        await #expect { _ = try await client.request(to: peer, type: 1, payload: [UInt8](repeating: 0, count: 1010),
                                                     deadline: .seconds(5)) } throws: {
            ($0 as? FrameError)?.code == .frameTooLarge
                && ($0 as? FrameError)?.message == "a request of 1010 bytes does not fit in a frame (limit 1024 bytes)"
        }
        await #expect { _ = try await client.request(to: peer, type: 3, payload: [], deadline: .seconds(5)) } throws: {
            ($0 as? FrameError)?.message == "the answer of 2000 bytes does not fit in a frame (limit 1024 bytes)"
        }
        #expect(try await client.request(to: peer, type: 1, payload: [1], deadline: .seconds(5)).payload == [1])
    }

    /// Hostile frames (any kind byte, type, id, length; answers to nothing; a request id twice
    /// or 0) close their own connection at worst; the server keeps serving.
    @Test func seededHostileFramesNeverCrashTheServer() throws {
        let p = try PeerFixture { $0.frameTimeout = .milliseconds(100) }
        defer { p.stop() }
        var rng = SplitMix64(seed: 0x6672616d65)
        for _ in 0..<300 {
            var bytes: [UInt8] = []
            for _ in 0..<(1 + rng.next() % 4) {
                let kind = UInt8(truncatingIfNeeded: rng.next() % 9)
                let id = [0, 1, 2, UInt64.max, rng.next()][Int(rng.next() % 5)]
                var frame: [UInt8] = []
                Frame(kind: .request, type: UInt16(truncatingIfNeeded: rng.next() % 4), id: id,
                      payload: (0..<Int(rng.next() % 40)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }).encode(into: &frame)
                frame[4] = kind
                if rng.next() % 5 == 0 { // a length field of anything
                    frame.replaceSubrange(0..<4, with: withUnsafeBytes(of: UInt32(truncatingIfNeeded: rng.next()).bigEndian, Array.init))
                }
                bytes += frame
            }
            let c = try RawPeer(port: p.port, timeout: 2)
            try? c.sendRaw(bytes)
        }
        let ok = try RawPeer(port: p.port)
        try ok.send([Frame(kind: .request, type: 1, id: 1, payload: [4, 2])])
        #expect(ok.readFrame()?.payload == [4, 2])
        // A request id already in flight, and id 0, break the protocol.
        for second in [Frame(kind: .request, type: 1, id: 5, payload: []), Frame(kind: .request, type: 1, id: 0, payload: [])] {
            let c = try RawPeer(port: p.port)
            try c.send([Frame(kind: .request, type: 2, id: 5, payload: Array("300".utf8)), second])
            let reason = try #require(c.readFrame())
            #expect(reason.kind == .error && reason.id == 0)
            #expect(["request id 5 is already in flight on this connection",
                     "a request with id 0; request ids are non-zero"].contains(reason.errorMessage))
            #expect(c.isClosedByPeer())
        }
        waitUntil { p.server.bufferedBytes == 0 }
        #expect(p.server.bufferedBytes == 0)
    }

    /// A peer that sends many requests and closes at once: the node's second answer meets a
    /// reset connection. It used to die of SIGPIPE (libuv writes with write(2)).
    @Test func aPeerThatClosesWhileItsAnswersAreWrittenDoesNotKillTheNode() throws {
        let p = try PeerFixture()
        defer { p.stop() }
        let requests = (1...50).map { Frame(kind: .request, type: 1, id: UInt64($0), payload: [1]) }
        for _ in 0..<100 {
            let c = try RawPeer(port: p.port)
            try c.send(requests)
        } // each closes here, its answers unread
        let ok = try RawPeer(port: p.port)
        try ok.send([Frame(kind: .request, type: 1, id: 1, payload: [6])])
        #expect(ok.readFrame()?.payload == [6])
    }

    /// A client-only connection answers a peer's request with an error and ignores answers to
    /// requests it never sent.
    @Test func aClientOnlyConnectionRefusesRequestsAndIgnoresStrayAnswers() async throws {
        let loop = EventLoop.start(name: "frames")
        defer { loop.shutdown() }
        let fake = try SilentListener(backlog: 4)
        let client = FrameClient(loop: loop)
        defer { client.shutdown() }
        let replies = Mutex<[Frame]>([])
        let peer = Thread {
            let fd = fake.acceptOne()
            defer { close(fd) }
            guard serverHandshake(fd), let request = readFrame(fd) else { return }
            writeAll(fd, encode(Frame(kind: .request, type: 9, id: 77, payload: [1]))
                     + encode(Frame(kind: .response, type: 9, id: 12345, payload: [2]))
                     + encode(Frame(kind: .error, type: 9, id: 999, payload: Array("stray".utf8)))
                     + encode(Frame(kind: .response, type: request.type, id: request.id, payload: [3])))
            if let reply = readFrame(fd) { replies.withLock { $0.append(reply) } }
        }
        peer.start()
        let answer = try await client.request(to: HostPort(host: "127.0.0.1", port: fake.port), type: 9, payload: [],
                                              deadline: .seconds(5))
        #expect(answer.payload == [3])
        waitUntil { !replies.withLock { $0.isEmpty } }
        let reply = try #require(replies.withLock { $0.first })
        #expect(reply.kind == .error && reply.id == 77)
        #expect(reply.errorMessage == "this endpoint serves no requests")
    }

    // MARK: the client and the server's idle timeout

    @Test func theClientReconnectsAfterTheServerClosedAnIdleConnection() async throws {
        let p = try PeerFixture { $0.idleTimeout = .milliseconds(200) }
        defer { p.stop() }
        let client = FrameClient(loop: p.loop) // its own idle timeout is 30 s
        defer { client.shutdown() }
        let peer = p.server.localAddress.hostPort
        #expect(try await client.request(to: peer, type: 1, payload: [1], deadline: .seconds(5)).payload == [1])
        waitUntil { client.openConnections == 0 } // the server closed it
        #expect(client.openConnections == 0)
        #expect(try await client.request(to: peer, type: 1, payload: [2], deadline: .seconds(5)).payload == [2])
    }

    /// The peer closes the pooled connection as idle just as the next request goes out: the
    /// request is sent again on a new connection instead of failing.
    @Test func aRequestRacingThePeersIdleCloseIsSentAgainOnANewConnection() async throws {
        let loop = EventLoop.start(name: "frames")
        defer { loop.shutdown() }
        let fake = try SilentListener(backlog: 4)
        // The client never closes the connection as idle itself: on a loaded machine its own idle
        // timeout could pass between the two requests, which is not the race this test is about.
        var configuration = FrameClient.Configuration()
        configuration.idleTimeout = .zero
        let client = FrameClient(loop: loop, configuration: configuration)
        defer { client.shutdown() }
        let seen = Mutex<[UInt8]>([])
        let events = Mutex<[String]>([]) // what the fake peer saw, for the failure message
        let peer = Thread {
            let first = fake.acceptOne()
            let shook = serverHandshake(first)
            if shook, let request = readFrame(first) { // answered
                events.withLock { $0.append("first: request \(request.payload)") }
                writeAll(first, encode(Frame(kind: .response, type: request.type, id: request.id, payload: request.payload)))
            } else {
                events.withLock { $0.append("first: handshake \(shook), no request (errno \(errno))") }
            }
            if let request = readFrame(first) { seen.withLock { $0 += request.payload } } // read, then closed as idle
            else { events.withLock { $0.append("first: no second request (errno \(errno))") } }
            close(first)
            let second = fake.acceptOne()
            if serverHandshake(second), let request = readFrame(second) {
                events.withLock { $0.append("second: request \(request.payload)") }
                writeAll(second, encode(Frame(kind: .response, type: request.type, id: request.id, payload: request.payload)))
            }
            _ = readFrame(second) // until the client closes
            close(second)
        }
        peer.start()
        let address = HostPort(host: "127.0.0.1", port: fake.port)
        #expect(try await client.request(to: address, type: 1, payload: [1], deadline: .seconds(5)).payload == [1])
        #expect(try await client.request(to: address, type: 1, payload: [2], deadline: .seconds(5)).payload == [2])
        #expect(seen.withLock { $0 } == [2], "the fake peer saw: \(events.withLock { $0 })")
    }
}

/// A frame server on 127.0.0.1:0 whose handler echoes type 1, answers type 2 after the number
/// of milliseconds in its payload, answers type 3 with 2,000 bytes, and holds type 5 until `release()`.
final class PeerFixture: Sendable {
    let loop = EventLoop.start(name: "peer")
    let server: FrameServer
    var port: UInt16 { server.localAddress.port }
    /// Type 5 requests, held unanswered until `release()`.
    let held: Locked<[(FrameResponder, [UInt8])]>

    /// `streaming` answers type 4 (a stream test's own handler).
    init(keys: PeerKeys = .none, _ configure: (inout FrameServer.Configuration) -> Void = { _ in },
         streaming: (@Sendable (FrameResponder, EventLoop) -> Void)? = nil) throws {
        var configuration = FrameServer.Configuration()
        configure(&configuration)
        let loop = self.loop, held = Locked<[(FrameResponder, [UInt8])]>([])
        self.held = held
        server = try FrameServer(on: loop, address: SocketAddress(resolving: HostPort(host: "127.0.0.1", port: 0)),
                                 configuration: configuration, keys: keys) { frame, responder in
            switch frame.type {
            case 4 where streaming != nil: streaming?(responder, loop)
            case 2:
                let ms = Int64(String(decoding: frame.payload, as: UTF8.self)) ?? 0
                loop.schedule(after: .milliseconds(ms)) { responder.respond(frame.payload) }
            case 3: responder.respond([UInt8](repeating: 3, count: 2000))
            case 5: held.withLock { $0.append((responder, frame.payload)) }
            default: responder.respond(frame.payload)
            }
        }
    }

    /// Answers every held type 5 request with its own payload, on the loop.
    func release() {
        let answers = held.withLock { held in defer { held = [] }; return held }
        loop.execute { for (responder, payload) in answers { responder.respond(payload) } }
    }

    func stop() {
        server.shutdown()
        loop.shutdown()
    }
}

func encode(_ frame: Frame) -> [UInt8] {
    var bytes: [UInt8] = []
    frame.encode(into: &bytes)
    return bytes
}

/// Every whole frame in `bytes`.
func decodeFrames(_ bytes: [UInt8]) -> [Frame] {
    var decoder = FrameDecoder(maxFrameBytes: 1 << 30)
    bytes.withUnsafeBytes { decoder.append($0) }
    var frames: [Frame] = []
    while let frame = try? decoder.next() { frames.append(frame) }
    return frames
}

/// Reads one frame from `socket` (blocking up to its timeout); nil on EOF.
func readFrame(_ socket: RawSocket) -> Frame? { readFrame(socket.fd) }

/// Reads one frame from a blocking descriptor; nil on EOF, error or a malformed frame.
func readFrame(_ fd: Int32) -> Frame? {
    func read(_ count: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = out[got...].withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue } // other tests' child processes signal this one
            guard n > 0 else { return nil }
            got += n
        }
        return out
    }
    guard let prefix = read(4) else { return nil }
    let length = Int(prefix.withUnsafeBytes { UInt32(bigEndian: $0.loadUnaligned(as: UInt32.self)) })
    guard length >= 12, length < 1 << 30, let rest = read(length) else { return nil }
    return decodeFrames(prefix + rest).first
}

func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
    var offset = 0
    while offset < bytes.count {
        let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard n > 0 else { return }
        offset += n
    }
}

/// The server's side of an unauthenticated handshake on a blocking descriptor (a fake peer).
func serverHandshake(_ fd: Int32) -> Bool {
    var hello: [UInt8] = []
    while hello.count < PeerHandshake.helloSize {
        var buffer = [UInt8](repeating: 0, count: PeerHandshake.helloSize - hello.count)
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { return false }
        hello += buffer[..<n]
    }
    guard let (reply, _) = try? PeerHandshake.answer(hello, keys: .none, nonce: PeerHandshake.nonce()) else { return false }
    writeAll(fd, reply)
    var finish = [UInt8](repeating: 0, count: PeerHandshake.finishSize)
    var got = 0
    while got < finish.count {
        let n = finish[got...].withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { return false }
        got += n
    }
    return true
}
