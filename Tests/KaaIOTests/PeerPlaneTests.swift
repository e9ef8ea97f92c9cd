import Crypto
import Foundation
import Glibc
import KaaCore
@testable import KaaIO
import KaaTestSupport
import Synchronization
import Testing

/// The peer plane's version 2: the handshake authenticated by the cluster key, sealed records,
/// coded errors and streams with flow control, over real sockets.
@Suite struct PeerPlaneTests {
    static let keyA = [UInt8](repeating: 0xA1, count: 32)
    static let keyB = [UInt8](repeating: 0xB2, count: 32)

    static func request(_ client: FrameClient, _ p: PeerFixture, _ payload: [UInt8] = [1, 2]) async throws(FrameError) -> Frame {
        try await client.request(to: p.server.localAddress.hostPort, type: 1, payload: payload, deadline: .seconds(5))
    }

    @Test func peersWithTheClusterKeyTalkAndOthersAreTurnedAway() async throws {
        let p = try PeerFixture(keys: PeerKeys(keys: [PeerPlaneTests.keyA]))
        defer { p.stop() }
        let good = FrameClient(loop: p.loop, keys: PeerKeys(keys: [PeerPlaneTests.keyA]))
        defer { good.shutdown() }
        #expect(try await PeerPlaneTests.request(good, p).payload == [1, 2])
        // Another key, and no key at all: no frame is answered, the request fails naming why.
        for keys in [PeerKeys(keys: [PeerPlaneTests.keyB]), PeerKeys.none] {
            let stranger = FrameClient(loop: p.loop, keys: keys)
            await #expect { _ = try await PeerPlaneTests.request(stranger, p) } throws: {
                ($0 as? FrameError)?.code == .handshakeFailed
            }
            stranger.shutdown()
        }
        // A raw peer without the key gets no byte back after its hello.
        let raw = try RawSocket(port: p.port)
        try raw.send(PeerHandshake.hello(keys: PeerKeys(keys: [PeerPlaneTests.keyB]), nonce: PeerHandshake.nonce()))
        #expect(try raw.readToEnd().isEmpty)
    }

    @Test func aRotationKeepsPeersTalkingWhileKeysChange() async throws {
        // The server holds the old and the new key; clients on either primary get through.
        let p = try PeerFixture(keys: PeerKeys(keys: [PeerPlaneTests.keyA, PeerPlaneTests.keyB]))
        defer { p.stop() }
        for keys in [[PeerPlaneTests.keyA], [PeerPlaneTests.keyB, PeerPlaneTests.keyA]] {
            let client = FrameClient(loop: p.loop, keys: PeerKeys(keys: keys))
            #expect(try await PeerPlaneTests.request(client, p).payload == [1, 2])
            client.shutdown()
        }
    }

    @Test func recordsAreEncryptedAndAnAlteredOneClosesTheConnection() throws {
        let keys = PeerKeys(keys: [PeerPlaneTests.keyA])
        let p = try PeerFixture(keys: keys)
        defer { p.stop() }
        let c = try RawPeer(port: p.port, keys: keys)
        let secret = Array("a secret payload".utf8)
        let record = c.record(Frame(kind: .request, type: 1, id: 1, payload: secret).body())
        #expect(record.firstRange(of: secret) == nil, "the payload travels encrypted")
        try c.sendRaw(record)
        #expect(c.readFrame()?.payload == secret)
        // The next record with one bit flipped does not authenticate.
        var altered = c.record(Frame(kind: .request, type: 1, id: 2, payload: secret).body())
        altered[altered.count - 1] ^= 1
        try c.sendRaw(altered)
        #expect(c.isClosedByPeer())
        // A record replayed does not either (its sequence number is spent).
        let d = try RawPeer(port: p.port, keys: keys)
        let once = d.record(Frame(kind: .request, type: 1, id: 1, payload: [1]).body())
        try d.sendRaw(once + once)
        #expect(d.readFrame()?.payload == [1])
        #expect(d.isClosedByPeer())
    }

    @Test func withoutEncryptionRecordsAreStillAuthenticated() throws {
        let keys = PeerKeys(keys: [PeerPlaneTests.keyA], encrypt: false)
        let p = try PeerFixture(keys: keys)
        defer { p.stop() }
        let c = try RawPeer(port: p.port, keys: keys)
        let payload = Array("in the clear".utf8)
        var record = c.record(Frame(kind: .request, type: 1, id: 1, payload: payload).body())
        #expect(record.firstRange(of: payload) != nil, "readable on the wire")
        try c.sendRaw(record)
        #expect(c.readFrame()?.payload == payload)
        record = c.record(Frame(kind: .request, type: 1, id: 2, payload: payload).body())
        record[20] ^= 0x20
        try c.sendRaw(record)
        #expect(c.isClosedByPeer())
    }

    @Test func aPeerWithNoCommonVersionIsToldWhichItSpeaks() throws {
        let p = try PeerFixture()
        defer { p.stop() }
        let c = try RawSocket(port: p.port)
        var hello = PeerHandshake.hello(keys: .none, nonce: PeerHandshake.nonce())
        hello[8] = 0; hello[9] = 9; hello[10] = 0; hello[11] = 9 // versions 9...9
        try c.send(hello)
        let reply = try c.readToEnd()
        #expect(reply.count == PeerHandshake.replySize)
        #expect { _ = try PeerHandshake.finish(hello: hello, reply: reply, keys: .none) } throws: {
            "\($0)".contains("the peer speaks peer-plane versions 2...2; this node speaks 2...2")
        }
    }

    // MARK: streams

    /// Streams `total` bytes from the server (type 4 asks for it: the payload is the size).
    final class Collector: FrameStreamReceiver, @unchecked Sendable {
        // SAFETY: touched on the fixture's loop only; the test reads it after `ended` signals.
        var hash = SHA256()
        var bytes = 0
        var chunks = 0
        var error: FrameError?
        let ended = DispatchSemaphore(value: 0)
        /// Consumes each chunk this long after it arrives (a slow disk).
        let delay: Duration
        let loop: EventLoop
        init(loop: EventLoop, delay: Duration = .zero) {
            self.loop = loop
            self.delay = delay
        }
        func receive(_ chunk: [UInt8], consumed: @escaping () -> Void) {
            hash.update(data: chunk)
            bytes += chunk.count
            chunks += 1
            if delay == .zero { consumed() } else { loop.schedule(after: delay) { consumed() } }
        }
        func end(_ error: FrameError?) {
            self.error = error
            ended.signal()
        }
    }

    /// Sends `data` through `writer` in full chunks as fast as it takes them, then finishes;
    /// `progress` hears how far it got. On the loop.
    static func send(_ data: [UInt8], to writer: FrameStreamWriter, progress: @escaping (Int) -> Void = { _ in }) {
        var offset = 0
        func next() {
            guard offset < data.count else { return writer.finish() }
            let end = min(data.count, offset + FrameStreamWriter.maxChunkBytes)
            let chunk = Array(data[offset..<end])
            offset = end
            progress(offset)
            writer.write(chunk) { next() }
        }
        next()
    }

    static func pattern(_ count: Int, seed: UInt64) -> [UInt8] {
        var rng = SplitMix64(seed: seed)
        return (0..<count).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
    }

    @Test func aResponseStreamsInChunksAndArrivesWhole() throws {
        let keys = PeerKeys(keys: [PeerPlaneTests.keyA])
        let data = PeerPlaneTests.pattern(9 << 20 + 12_345, seed: 1)
        let sent = Mutex(0)
        let p = try PeerFixture(keys: keys, streaming: { responder, loop in
            guard let writer = responder.respondStream(Array("head".utf8)) else { return }
            PeerPlaneTests.send(data, to: writer) { offset in sent.withLock { $0 = offset } }
        })
        defer { p.stop() }
        let client = FrameClient(loop: p.loop, keys: keys)
        defer { client.shutdown() }
        // A slow receiver: the sender may run ahead by the window (4 MiB) and no more.
        let collector = Collector(loop: p.loop, delay: .milliseconds(20))
        let head = Mutex<Frame?>(nil)
        p.loop.execute {
            client.requestStream(to: p.server.localAddress.hostPort, type: 4, payload: [], deadline: .seconds(10),
                                 receiver: collector) { result in head.withLock { $0 = try? result.get() } }
        }
        let aheadMost = Mutex(0)
        while collector.ended.wait(timeout: .now() + .milliseconds(5)) == .timedOut {
            let ahead = sent.withLock { $0 } - p.loop.runBlocking { collector.bytes }
            aheadMost.withLock { $0 = max($0, ahead) }
        }
        #expect(collector.error == nil)
        #expect(head.withLock { $0?.payload } == Array("head".utf8))
        #expect(collector.bytes == data.count)
        #expect(Array(collector.hash.finalize()) == Array(SHA256.hash(data: data)))
        // Window (4 MiB) plus the chunk being read and the one being written.
        #expect(aheadMost.withLock { $0 } <= FrameStreamWriter.initialWindow + 2 * FrameStreamWriter.maxChunkBytes)
        #expect(p.server.bufferedBytes == 0)
    }

    @Test func aRequestBodyStreamsToTheHandler() async throws {
        let keys = PeerKeys(keys: [PeerPlaneTests.keyA])
        let p = try PeerFixture(keys: keys, streaming: { responder, loop in
            // Type 4 with a body: answered with the body's size and SHA-256 once it has all arrived.
            final class Summer: FrameStreamReceiver, @unchecked Sendable {
                // SAFETY: on the fixture's loop only.
                var hash = SHA256(); var bytes = 0
                let responder: FrameResponder
                init(_ r: FrameResponder) { responder = r }
                func receive(_ chunk: [UInt8], consumed: @escaping () -> Void) { hash.update(data: chunk); bytes += chunk.count; consumed() }
                func end(_ error: FrameError?) {
                    if let error { return responder.fail(.badRequest, error.message) }
                    responder.respond(Array("\(bytes)".utf8) + Array(hash.finalize()))
                }
            }
            responder.attachBody(Summer(responder))
        })
        defer { p.stop() }
        let client = FrameClient(loop: p.loop, keys: keys)
        defer { client.shutdown() }
        let data = PeerPlaneTests.pattern(6 << 20 + 7, seed: 2)
        let answer: Frame = try await withCheckedThrowingContinuation { continuation in
            p.loop.execute {
                client.requestStream(to: p.server.localAddress.hostPort, type: 4, payload: [], deadline: .seconds(10), receiver: nil,
                                     body: { writer in PeerPlaneTests.send(data, to: writer) }) { continuation.resume(with: $0) }
            }
        }
        let size = String(decoding: answer.payload.prefix { $0 != 0 && $0 < 128 && $0 >= 48 && $0 <= 57 }, as: UTF8.self)
        #expect(size == "\(data.count)")
        #expect(Array(answer.payload.suffix(32)) == Array(SHA256.hash(data: data)))
    }

    @Test func aStreamWhoseReceiverStopsTakingIsCancelledNotBuffered() throws {
        let cancelled = Mutex<String?>(nil)
        let p = try PeerFixture({ $0.frameTimeout = .milliseconds(300) }, streaming: { responder, loop in
            guard let writer = responder.respondStream([]) else { return }
            writer.onCancel = { error in cancelled.withLock { $0 = error.message } }
            func next() { writer.write([UInt8](repeating: 1, count: FrameStreamWriter.maxChunkBytes)) { next() } }
            next()
        })
        defer { p.stop() }
        var configuration = FrameClient.Configuration()
        configuration.frameTimeout = .seconds(60) // the receiving side does not time out first
        let client = FrameClient(loop: p.loop, configuration: configuration)
        defer { client.shutdown() }
        final class Stuck: FrameStreamReceiver, @unchecked Sendable {
            // SAFETY: on the fixture's loop only; read after `ended` signals.
            var received = 0
            var error: FrameError?
            let ended = DispatchSemaphore(value: 0)
            func receive(_ chunk: [UInt8], consumed: @escaping () -> Void) { received += chunk.count } // never consumed
            func end(_ error: FrameError?) { self.error = error; ended.signal() }
        }
        let stuck = Stuck()
        p.loop.execute {
            client.requestStream(to: p.server.localAddress.hostPort, type: 4, payload: [], deadline: .seconds(10),
                                 receiver: stuck) { _ in }
        }
        waitUntil { cancelled.withLock { $0 } != nil }
        #expect(cancelled.withLock { $0 } == "the receiver granted no room for 0.3 seconds")
        #expect(stuck.ended.wait(timeout: .now() + 5) == .success)
        #expect(stuck.error?.message == "no room granted for 0.3 seconds")
        #expect(p.loop.runBlocking { stuck.received } == FrameStreamWriter.maxChunkBytes, "one chunk delivered; the rest waited")
    }
}
