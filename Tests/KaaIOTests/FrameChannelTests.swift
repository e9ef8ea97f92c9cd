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
        let badKind: [UInt8] = [0, 0, 0, 11, 9] + [UInt8](repeating: 0, count: 10)
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
        let server = try FrameServer(on: loop, address: SocketAddress(resolving: HostPort(host: "127.0.0.1", port: 0)),
                                     maxFrameBytes: 1024) { frame, responder in
            switch frame.type {
            case 1: responder.fail("model `iris` has no version 7")
            case 2: break // never answers
            default: responder.respond([])
            }
        }
        let client = FrameClient(loop: loop)
        let peer = server.localAddress.hostPort
        await #expect { _ = try await client.request(to: peer, type: 1, payload: [], deadline: .seconds(5)) } throws: {
            ($0 as? FrameError)?.code == .remoteError && ($0 as? FrameError)?.message == "model `iris` has no version 7"
        }
        await #expect { _ = try await client.request(to: peer, type: 2, payload: [], deadline: .milliseconds(100)) } throws: {
            ($0 as? FrameError)?.code == .deadlineExceeded
        }
        // A frame over the server's limit closes that connection; the request fails at once.
        await #expect { _ = try await client.request(to: peer, type: 3, payload: [UInt8](repeating: 1, count: 4096),
                                                     deadline: .seconds(5)) } throws: { ($0 as? FrameError)?.code == .closed }
        // The next request reconnects.
        let ok = try await client.request(to: peer, type: 3, payload: [1], deadline: .seconds(5))
        #expect(ok.kind == .response)
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
}
