import KaaCluster
import KaaCore
import Testing

@Suite struct WireCodecTests {
    static let info = NodeInfo(
        id: NodeID("3f2a9c1e-6b7d-4e21-9a0b-1c2d3e4f5a6b"), name: "gpu-7", peerAddress: HostPort(host: "fe80::1", port: 7946),
        httpAddress: HostPort(host: "10.1.2.3", port: 8080), zone: "rack-é",
        capacity: Capacity(cores: 64, memoryBytes: 512 << 30, gpuCount: 8, gpuMemoryBytes: 80 << 30),
        kaaVersion: "0.1.0", protocolVersion: 1, startedAtUnixMilliseconds: 1_763_900_000_123)

    static var samplePackets: [Packet] {
        let a = NodeID("a"), b = NodeID("b")
        let updates: [Update] = [
            .alive(info, incarnation: .max), .suspect(a, incarnation: 3, from: b),
            .dead(b, incarnation: 0, from: a), .left(a, incarnation: 1 << 40),
        ]
        return [
            Packet(message: .ping(Ping(sequenceNumber: .max, target: a, source: b, replyTo: HostPort(host: "h", port: 1))), updates: updates),
            Packet(message: .pingRequest(PingRequest(sequenceNumber: 9, target: a, targetAddress: HostPort(host: "t", port: 2), source: b, replyTo: HostPort(host: "r", port: 65535), wantsNack: true))),
            Packet(message: .ack(Ack(sequenceNumber: 0, source: a)), updates: [updates[0]]),
            Packet(message: .nack(Nack(sequenceNumber: 12, source: b))),
            Packet(message: .gossip, updates: updates),
        ]
    }

    @Test func packetsRoundTrip() throws {
        for p in Self.samplePackets {
            #expect(try WireCodec.decodePacket(WireCodec.encode(p)) == p)
        }
    }

    @Test func pushPullRoundTrips() throws {
        let state = PushPullState(isJoin: true, members: [
            MemberState(info: Self.info, incarnation: 7, status: .suspect),
            MemberState(info: Harness.info(2), incarnation: 0, status: .left),
        ])
        #expect(try WireCodec.decodePushPull(WireCodec.encode(state)) == state)
    }

    @Test func computedSizesMatchEncoding() {
        var rng = SeededRandom(seed: 5)
        var updates = Self.samplePackets.flatMap(\.updates)
        for _ in 0..<200 {
            var info = Self.info
            info.capacity.memoryBytes = rng.next() >> (rng.next() % 64)
            info.startedAtUnixMilliseconds = rng.next() >> (rng.next() % 64)
            info.name = String(repeating: "x", count: Int(rng.next() % 300))
            updates.append(.alive(info, incarnation: rng.next() >> (rng.next() % 64)))
        }
        for u in updates {
            #expect(WireCodec.encodedSize(of: u) == WireCodec.encode(Packet(message: .gossip, updates: [u])).count - 4)
        }
    }

    @Test func isCompact() {
        let ack = Packet(message: .ack(Ack(sequenceNumber: 1000, source: Self.info.id)))
        #expect(WireCodec.encode(ack).count < 48)
        #expect(WireCodec.encodedSize(of: Update.alive(Self.info, incarnation: 3)) < 120)
    }

    @Test func newerVersionsAppendedFieldsAndUnknownUpdatesAreSkipped() throws {
        // A future node: wire version 2, an extra field appended to the ack body, and an
        // update with an unknown tag before a known one.
        var bytes: [UInt8] = [2, 3]
        let body: [UInt8] = [5, 1, 0x62, 0xEE, 0xEE]  // seq 5, source "b", two new bytes
        bytes += [UInt8(body.count)] + body
        bytes += [2]  // two updates
        bytes += [99, 3, 1, 2, 3]  // unknown tag 99
        bytes += [4, 3, 1, 0x61, 7]  // left(a, 7)
        let p = try WireCodec.decodePacket(bytes)
        #expect(p == Packet(message: .ack(Ack(sequenceNumber: 5, source: NodeID("b"))), updates: [.left(NodeID("a"), incarnation: 7)]))
    }

    @Test func clearErrors() {
        #expect(throws: WireError.self) { try WireCodec.decodePacket([]) }
        do {
            _ = try WireCodec.decodePacket([1, 42, 0, 0])
            Issue.record("unknown kind accepted")
        } catch {
            #expect(error.code == .unknownKind)
            #expect(error.message.contains("unknown message kind 42"))
        }
        do {
            _ = try WireCodec.decodePacket([1, 3, 200])
            Issue.record("truncated accepted")
        } catch {
            #expect(error.code == .truncated)
        }
        do {
            _ = try WireCodec.decodePacket([0, 3, 0, 0])
            Issue.record("version 0 accepted")
        } catch {
            #expect(error.code == .unsupportedVersion)
        }
        // A count that claims more elements than bytes left is refused before allocating.
        do {
            _ = try WireCodec.decodePushPull([1, 0x20, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F])
            Issue.record("huge count accepted")
        } catch {
            #expect(error.code == .truncated)
        }
    }

    /// Random and mutated packets must only ever decode or throw.
    @Test func fuzzNeverCrashes() {
        var rng = SeededRandom(seed: 0xF022)
        let valid = Self.samplePackets.map { WireCodec.encode($0) } + [
            WireCodec.encode(PushPullState(isJoin: false, members: [MemberState(info: Self.info, incarnation: 1, status: .alive)]))
        ]
        var decoded = 0, refused = 0
        for round in 0..<20_000 {
            var bytes: [UInt8]
            if round % 4 == 0 {
                bytes = (0..<Int(rng.next() % 64)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            } else {
                bytes = valid[Int(rng.next() % UInt64(valid.count))]
                for _ in 0...(rng.next() % 4) {
                    guard !bytes.isEmpty else { break }
                    let i = Int(rng.next() % UInt64(bytes.count))
                    switch rng.next() % 4 {
                    case 0: bytes[i] = UInt8(truncatingIfNeeded: rng.next())
                    case 1: bytes.removeSubrange(i...)
                    case 2: bytes.insert(UInt8(truncatingIfNeeded: rng.next()), at: i)
                    default: bytes[i] ^= 1 << (rng.next() % 8)
                    }
                }
            }
            for decode in [{ _ = try WireCodec.decodePacket(bytes) }, { _ = try WireCodec.decodePushPull(bytes) }] as [() throws -> Void] {
                do { try decode(); decoded += 1 } catch { refused += 1 }
            }
        }
        #expect(refused > 20_000)
        #expect(decoded > 0)
    }
}

@Suite struct KeyringTests {
    let k1 = [UInt8](repeating: 1, count: 32)
    let k2 = [UInt8](repeating: 2, count: 16)

    @Test func sealsAndOpensWithAnyInstalledKey() throws {
        let sender = try Keyring(primary: k2)
        let receiver = try Keyring(primary: k1, others: [k2])
        let payload = WireCodec.encode(WireCodecTests.samplePackets[0])
        let sealed = try sender.seal(payload)
        #expect(sealed.count == payload.count + Keyring.overhead)
        #expect(try receiver.open(sealed) == payload)
    }

    @Test func refusesWrongKeyAndTampering() throws {
        let sealed = try Keyring(primary: k1).seal([1, 2, 3])
        do {
            _ = try Keyring(primary: k2).open(sealed)
            Issue.record("opened with the wrong key")
        } catch {
            #expect(error.code == .authenticationFailed)
            #expect(error.message.contains("failed authentication"))
        }
        var tampered = sealed
        tampered[14] ^= 0x40
        #expect(throws: WireError.self) { try Keyring(primary: k1).open(tampered) }
    }

    @Test func plaintextModeIsExplicitAndSeparate() throws {
        let plain = Keyring.plaintext
        let sealed = try plain.seal([9, 9])
        #expect(try plain.open(sealed) == [9, 9])
        do {
            _ = try Keyring(primary: k1).open(sealed)
            Issue.record("encrypted node accepted a plain packet")
        } catch {
            #expect(error.code == .encryptionMismatch)
        }
        #expect(throws: WireError.self) { try plain.open(try Keyring(primary: k1).seal([1])) }
    }

    @Test func fuzzedEnvelopesAreRefusedNeverCrash() throws {
        var rng = SeededRandom(seed: 77)
        let ring = try Keyring(primary: k1)
        let valid = try ring.seal(WireCodec.encode(WireCodecTests.samplePackets[0]))
        var refused = 0, plainOpened = 0
        for round in 0..<5_000 {
            var bytes = round % 2 == 0 ? valid : (0..<Int(rng.next() % 80)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            if !bytes.isEmpty {
                let i = Int(rng.next() % UInt64(bytes.count))
                bytes[i] ^= UInt8(truncatingIfNeeded: rng.next() | 1)
            }
            do { _ = try ring.open(bytes) } catch { refused += 1 }
            // Plaintext mode has nothing to authenticate: it opens whatever carries its marker.
            if (try? Keyring.plaintext.open(bytes)) != nil { plainOpened += 1 }
        }
        #expect(refused == 5_000)  // a flipped byte never authenticates
        #expect(plainOpened < 100)
    }

    @Test func nodeIDsLookLikeUUIDs() {
        var rng = SeededRandom(seed: 1)
        let id = NodeID.random(using: &rng).rawValue
        #expect(id.count == 36)
        #expect(id.split(separator: "-").map(\.count) == [8, 4, 4, 4, 12])
        #expect(NodeID.random(using: &rng).rawValue != id)
    }

    @Test func rotation() throws {
        var ring = try Keyring(primary: k1)
        try ring.install(k2)
        try ring.usePrimary(k2)
        let sealed = try ring.seal([7])
        #expect(try Keyring(primary: k2).open(sealed) == [7])
        try ring.remove(k1)
        #expect(ring.keyCount == 1)
        #expect(throws: WireError.self) { try ring.remove(k2) }
        #expect(throws: WireError.self) { try Keyring(primary: [1, 2, 3]) }
    }
}
