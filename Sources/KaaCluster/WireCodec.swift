import KaaCore

/// Kaa's compact, versioned binary encoding of gossip packets and push-pull state.
///
/// Layout (all integers are unsigned LEB128 varints unless noted):
/// - packet: `u8 wireVersion`, `u8 kind` (1 ping, 2 ping-req, 3 ack, 4 nack, 5 gossip),
///   `len body`, `count`, then per update `u8 tag` (1 alive, 2 suspect, 3 dead, 4 left),
///   `len body`.
/// - push-pull: `u8 wireVersion`, `u8 0x20`, `u8 flags` (bit 0: join), `count`, then per member
///   `len body` = `len nodeInfo`, `incarnation`, `u8 status`.
/// - strings are `len utf8` (at most ``maxStringLength`` bytes); a `HostPort` is a string host
///   and a varint port.
///
/// Evolution rule: every message, update, member and node-info body is length-prefixed, so a
/// later wire version MAY append fields to a body or add update tags (older decoders skip
/// both); anything else needs a new wire version, which a newer node sends only to peers whose
/// `protocolVersion` speaks it. Decoding never traps on hostile input: every read is
/// bounds-checked and fails with a ``WireError``.
public enum WireCodec {
    /// The wire version this build writes and the highest it reads natively.
    public static let version: UInt16 = 1
    /// Longest string accepted in any field.
    public static let maxStringLength = 1024

    static let pushPullKind: UInt8 = 0x20

    // MARK: Packets

    /// Encodes a packet (before encryption).
    public static func encode(_ packet: Packet) -> [UInt8] {
        var w = Writer()
        w.byte(UInt8(version))
        w.byte(kind(of: packet.message))
        w.lengthPrefixed { writeMessageBody(packet.message, &$0) }
        w.varint(UInt64(packet.updates.count))
        for u in packet.updates { writeUpdate(u, &w) }
        return w.bytes
    }

    /// Decodes a packet; throws a ``WireError`` for anything truncated, malformed or unknown.
    public static func decodePacket(_ bytes: [UInt8]) throws(WireError) -> Packet {
        var r = Reader(bytes)
        try readVersion(&r)
        let kind = try r.byte("message kind")
        var body = try r.lengthPrefixed("message body")
        let message: Message
        switch kind {
        case 1:
            message = .ping(Ping(
                sequenceNumber: try body.uint32("ping sequence number"),
                target: try body.nodeID("ping target"),
                source: try body.nodeID("ping source"),
                replyTo: try body.hostPort("ping reply address")))
        case 2:
            let seq = try body.uint32("ping-req sequence number")
            let target = try body.nodeID("ping-req target")
            let targetAddress = try body.hostPort("ping-req target address")
            let source = try body.nodeID("ping-req source")
            let replyTo = try body.hostPort("ping-req reply address")
            let flags = try body.byte("ping-req flags")
            message = .pingRequest(PingRequest(
                sequenceNumber: seq, target: target, targetAddress: targetAddress, source: source,
                replyTo: replyTo, wantsNack: flags & 1 != 0))
        case 3:
            message = .ack(Ack(sequenceNumber: try body.uint32("ack sequence number"), source: try body.nodeID("ack source")))
        case 4:
            message = .nack(Nack(sequenceNumber: try body.uint32("nack sequence number"), source: try body.nodeID("nack source")))
        case 5:
            message = .gossip
        default:
            throw WireError(.unknownKind, "packet has unknown message kind \(kind); the sender may run a newer Kaa, or the packet is corrupt")
        }
        let count = try r.count("update count", minimumElementSize: 2)
        var updates: [Update] = []
        updates.reserveCapacity(count)
        for _ in 0..<count {
            if let u = try readUpdate(&r) { updates.append(u) }
        }
        try r.expectEnd("packet")
        return Packet(message: message, updates: updates)
    }

    /// Bytes the update takes inside a packet (computed without encoding).
    public static func encodedSize(of update: Update) -> Int {
        func v(_ x: UInt64) -> Int { x < 0x80 ? 1 : (64 - x.leadingZeroBitCount + 6) / 7 }
        func s(_ x: String) -> Int { let n = min(x.utf8.count, maxStringLength); return v(UInt64(n)) + n }
        func prefixed(_ n: Int) -> Int { v(UInt64(n)) + n }
        let body: Int
        switch update {
        case .alive(let i, let inc):
            let info = s(i.id.rawValue) + s(i.name) + s(i.peerAddress.host) + v(UInt64(i.peerAddress.port))
                + s(i.httpAddress.host) + v(UInt64(i.httpAddress.port)) + s(i.zone)
                + v(UInt64(i.capacity.cores)) + v(i.capacity.memoryBytes) + v(UInt64(i.capacity.gpuCount))
                + v(i.capacity.gpuMemoryBytes) + s(i.kaaVersion) + v(UInt64(i.protocolVersion))
                + v(i.startedAtUnixMilliseconds)
            body = prefixed(info) + v(inc)
        case .suspect(let id, let inc, let from), .dead(let id, let inc, let from):
            body = s(id.rawValue) + v(inc) + s(from.rawValue)
        case .left(let id, let inc):
            body = s(id.rawValue) + v(inc)
        }
        return 1 + prefixed(body)
    }

    /// Bytes a packet with this message and no updates takes.
    public static func encodedSize(of message: Message) -> Int {
        encode(Packet(message: message)).count
    }

    // MARK: Push-pull

    /// Encodes a full-state exchange (before encryption; the shell frames it on TCP).
    public static func encode(_ state: PushPullState) -> [UInt8] {
        var w = Writer()
        w.byte(UInt8(version))
        w.byte(pushPullKind)
        w.byte(state.isJoin ? 1 : 0)
        w.varint(UInt64(state.members.count))
        for m in state.members {
            w.lengthPrefixed { w in
                w.lengthPrefixed { writeNodeInfo(m.info, &$0) }
                w.varint(m.incarnation)
                w.byte(m.status.rawValue)
            }
        }
        return w.bytes
    }

    /// Decodes a full-state exchange.
    public static func decodePushPull(_ bytes: [UInt8]) throws(WireError) -> PushPullState {
        var r = Reader(bytes)
        try readVersion(&r)
        let kind = try r.byte("push-pull kind")
        guard kind == pushPullKind else {
            throw WireError(.unknownKind, "expected push-pull state (kind 0x20) but got kind \(kind)")
        }
        let flags = try r.byte("push-pull flags")
        let count = try r.count("push-pull member count", minimumElementSize: 1)
        var members: [MemberState] = []
        members.reserveCapacity(count)
        for _ in 0..<count {
            var body = try r.lengthPrefixed("push-pull member")
            var infoBody = try body.lengthPrefixed("member info")
            let info = try readNodeInfo(&infoBody)
            let incarnation = try body.varint("member incarnation")
            let raw = try body.byte("member status")
            guard let status = MemberStatus(rawValue: raw) else {
                throw WireError(.malformed, "push-pull member \(info.id) has unknown status \(raw)")
            }
            members.append(MemberState(info: info, incarnation: incarnation, status: status))
        }
        try r.expectEnd("push-pull state")
        return PushPullState(isJoin: flags & 1 != 0, members: members)
    }

    // MARK: Parts

    private static func readVersion(_ r: inout Reader) throws(WireError) {
        let v = try r.byte("wire version")
        guard v >= 1 else {
            throw WireError(.unsupportedVersion, "packet has wire version \(v); Kaa speaks versions 1 to \(version)")
        }
        // Versions above ours are read with our layout: the evolution rule only lets them
        // append to length-prefixed bodies, which the readers skip.
    }

    private static func kind(of message: Message) -> UInt8 {
        switch message {
        case .ping: 1
        case .pingRequest: 2
        case .ack: 3
        case .nack: 4
        case .gossip: 5
        }
    }

    private static func writeMessageBody(_ message: Message, _ w: inout Writer) {
        switch message {
        case .ping(let p):
            w.varint(UInt64(p.sequenceNumber)); w.string(p.target.rawValue); w.string(p.source.rawValue)
            w.hostPort(p.replyTo)
        case .pingRequest(let p):
            w.varint(UInt64(p.sequenceNumber)); w.string(p.target.rawValue); w.hostPort(p.targetAddress)
            w.string(p.source.rawValue); w.hostPort(p.replyTo); w.byte(p.wantsNack ? 1 : 0)
        case .ack(let a):
            w.varint(UInt64(a.sequenceNumber)); w.string(a.source.rawValue)
        case .nack(let n):
            w.varint(UInt64(n.sequenceNumber)); w.string(n.source.rawValue)
        case .gossip:
            break
        }
    }

    private static func writeUpdate(_ u: Update, _ w: inout Writer) {
        switch u {
        case .alive(let info, let inc):
            w.byte(1)
            w.lengthPrefixed { w in
                w.lengthPrefixed { writeNodeInfo(info, &$0) }
                w.varint(inc)
            }
        case .suspect(let id, let inc, let from):
            w.byte(2)
            w.lengthPrefixed { w in w.string(id.rawValue); w.varint(inc); w.string(from.rawValue) }
        case .dead(let id, let inc, let from):
            w.byte(3)
            w.lengthPrefixed { w in w.string(id.rawValue); w.varint(inc); w.string(from.rawValue) }
        case .left(let id, let inc):
            w.byte(4)
            w.lengthPrefixed { w in w.string(id.rawValue); w.varint(inc) }
        }
    }

    /// Reads one update; nil for a tag this version does not know (skipped).
    private static func readUpdate(_ r: inout Reader) throws(WireError) -> Update? {
        let tag = try r.byte("update tag")
        var b = try r.lengthPrefixed("update body")
        switch tag {
        case 1:
            var infoBody = try b.lengthPrefixed("alive node info")
            let info = try readNodeInfo(&infoBody)
            return .alive(info, incarnation: try b.varint("alive incarnation"))
        case 2:
            return .suspect(try b.nodeID("suspect member"), incarnation: try b.varint("suspect incarnation"), from: try b.nodeID("suspect origin"))
        case 3:
            return .dead(try b.nodeID("dead member"), incarnation: try b.varint("dead incarnation"), from: try b.nodeID("dead origin"))
        case 4:
            return .left(try b.nodeID("left member"), incarnation: try b.varint("left incarnation"))
        default:
            return nil
        }
    }

    private static func writeNodeInfo(_ i: NodeInfo, _ w: inout Writer) {
        w.string(i.id.rawValue)
        w.string(i.name)
        w.hostPort(i.peerAddress)
        w.hostPort(i.httpAddress)
        w.string(i.zone)
        w.varint(UInt64(i.capacity.cores))
        w.varint(i.capacity.memoryBytes)
        w.varint(UInt64(i.capacity.gpuCount))
        w.varint(i.capacity.gpuMemoryBytes)
        w.string(i.kaaVersion)
        w.varint(UInt64(i.protocolVersion))
        w.varint(i.startedAtUnixMilliseconds)
    }

    private static func readNodeInfo(_ r: inout Reader) throws(WireError) -> NodeInfo {
        let id = try r.nodeID("node id")
        let name = try r.string("node name")
        let peer = try r.hostPort("peer address")
        let http = try r.hostPort("http address")
        let zone = try r.string("zone")
        let cores = try r.uint32("cores")
        let memory = try r.varint("memory bytes")
        let gpus = try r.uint32("gpu count")
        let gpuMemory = try r.varint("gpu memory bytes")
        let kaaVersion = try r.string("kaa version")
        let proto = try r.varint("protocol version")
        guard proto <= UInt64(UInt16.max) else {
            throw WireError(.malformed, "node \(id) announces protocol version \(proto), above 65535")
        }
        let started = try r.varint("start time")
        return NodeInfo(
            id: id, name: name, peerAddress: peer, httpAddress: http, zone: zone,
            capacity: Capacity(cores: cores, memoryBytes: memory, gpuCount: gpus, gpuMemoryBytes: gpuMemory),
            kaaVersion: kaaVersion, protocolVersion: UInt16(proto), startedAtUnixMilliseconds: started)
    }
}

/// Appends wire primitives.
struct Writer {
    var bytes: [UInt8] = []

    mutating func byte(_ b: UInt8) { bytes.append(b) }

    mutating func varint(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    mutating func string(_ s: String) {
        let utf8 = Array(s.utf8.prefix(WireCodec.maxStringLength))
        varint(UInt64(utf8.count))
        bytes.append(contentsOf: utf8)
    }

    mutating func hostPort(_ a: HostPort) {
        string(a.host)
        varint(UInt64(a.port))
    }

    /// Writes `body` preceded by its length.
    mutating func lengthPrefixed(_ body: (inout Writer) -> Void) {
        var inner = Writer()
        body(&inner)
        varint(UInt64(inner.bytes.count))
        bytes.append(contentsOf: inner.bytes)
    }
}

/// Bounds-checked reads over untrusted bytes; every failure is a ``WireError``.
struct Reader {
    let bytes: [UInt8]
    var position: Int
    let end: Int

    init(_ bytes: [UInt8]) {
        self.bytes = bytes
        self.position = 0
        self.end = bytes.count
    }

    private init(bytes: [UInt8], position: Int, end: Int) {
        self.bytes = bytes
        self.position = position
        self.end = end
    }

    var remaining: Int { end - position }

    mutating func byte(_ what: String) throws(WireError) -> UInt8 {
        guard position < end else { throw WireError(.truncated, "packet ends before its \(what)") }
        defer { position += 1 }
        return bytes[position]
    }

    mutating func varint(_ what: String) throws(WireError) -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard position < end else { throw WireError(.truncated, "packet ends inside its \(what)") }
            let b = bytes[position]
            position += 1
            if shift == 63 && b > 1 {
                throw WireError(.malformed, "\(what) does not fit in 64 bits")
            }
            result |= UInt64(b & 0x7F) << shift
            if b & 0x80 == 0 { return result }
            shift += 7
            if shift > 63 { throw WireError(.malformed, "\(what) does not fit in 64 bits") }
        }
    }

    mutating func uint32(_ what: String) throws(WireError) -> UInt32 {
        let v = try varint(what)
        guard v <= UInt64(UInt32.max) else { throw WireError(.malformed, "\(what) \(v) does not fit in 32 bits") }
        return UInt32(v)
    }

    /// A length or count that must fit in what is left of the packet.
    mutating func length(_ what: String) throws(WireError) -> Int {
        let v = try varint(what)
        guard v <= UInt64(remaining) else {
            throw WireError(.truncated, "\(what) says \(v) bytes but only \(remaining) remain")
        }
        return Int(v)
    }

    /// An element count; each element takes at least `minimumElementSize` bytes.
    mutating func count(_ what: String, minimumElementSize: Int) throws(WireError) -> Int {
        let v = try varint(what)
        guard v <= UInt64(remaining / max(1, minimumElementSize)) else {
            throw WireError(.truncated, "\(what) \(v) is more than the \(remaining) remaining bytes can hold")
        }
        return Int(v)
    }

    mutating func lengthPrefixed(_ what: String) throws(WireError) -> Reader {
        let n = try length("length of \(what)")
        let sub = Reader(bytes: bytes, position: position, end: position + n)
        position += n
        return sub
    }

    mutating func string(_ what: String) throws(WireError) -> String {
        let n = try length("length of \(what)")
        guard n <= WireCodec.maxStringLength else {
            throw WireError(.malformed, "\(what) is \(n) bytes; at most \(WireCodec.maxStringLength) are allowed")
        }
        let slice = bytes[position..<(position + n)]
        position += n
        guard let s = String(validating: slice, as: UTF8.self) else {
            throw WireError(.malformed, "\(what) is not valid UTF-8")
        }
        return s
    }

    mutating func nodeID(_ what: String) throws(WireError) -> NodeID {
        let s = try string(what)
        guard !s.isEmpty else { throw WireError(.malformed, "\(what) is empty") }
        return NodeID(s)
    }

    mutating func hostPort(_ what: String) throws(WireError) -> HostPort {
        let host = try string("host of \(what)")
        let port = try varint("port of \(what)")
        guard port <= UInt64(UInt16.max) else { throw WireError(.malformed, "port of \(what) is \(port), above 65535") }
        return HostPort(host: host, port: UInt16(port))
    }

    func expectEnd(_ what: String) throws(WireError) {
        guard position == end else {
            throw WireError(.malformed, "\(what) has \(end - position) unexpected trailing bytes")
        }
    }
}
