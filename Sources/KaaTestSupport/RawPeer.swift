public import KaaIO

/// A peer-plane client that speaks the protocol byte by byte over a blocking socket: the
/// handshake, then records sealed as a node seals them. Tests use it to send exactly the frames
/// (or broken records) they mean, where ``FrameClient`` would refuse to.
public final class RawPeer {
    public let socket: RawSocket
    private var inbound: RecordProtection
    private var outbound: RecordProtection
    private var pending: [UInt8] = []

    /// Connects and completes the handshake with `keys` (none: an unauthenticated peer).
    public init(port: UInt16, keys: PeerKeys = .none, timeout: Double = 5) throws {
        socket = try RawSocket(port: port, timeout: timeout)
        let hello = PeerHandshake.hello(keys: keys, nonce: PeerHandshake.nonce())
        try socket.send(hello)
        var reply: [UInt8] = []
        while reply.count < PeerHandshake.replySize {
            guard let more = try socket.readSome() else { throw RawSocketError("the node closed the connection during the handshake") }
            reply += more
        }
        pending = Array(reply[PeerHandshake.replySize...])
        reply = Array(reply[..<PeerHandshake.replySize])
        let finished: (finish: [UInt8], session: PeerHandshake.SessionKeys)
        do { finished = try PeerHandshake.finish(hello: hello, reply: reply, keys: keys) } catch {
            throw RawSocketError("handshake: \(error.description)")
        }
        try socket.send(finished.finish)
        (inbound, outbound) = keys.isAuthenticated ? finished.session.protections(client: true) : (.none, .none)
    }

    /// Sends frames as records.
    public func send(_ frames: [Frame]) throws {
        var out: [UInt8] = []
        for frame in frames { out += record(frame.body()) }
        try socket.send(out)
    }

    /// A frame body as a sealed record (length and bytes), to send as is or break first.
    public func record(_ body: [UInt8]) -> [UInt8] {
        let sealed = outbound.seal(body)
        return withUnsafeBytes(of: UInt32(sealed.count).bigEndian, Array.init) + sealed
    }

    /// Sends raw bytes (after the handshake).
    public func sendRaw(_ bytes: [UInt8]) throws { try socket.send(bytes) }

    /// The next frame, nil on EOF or a record that does not open.
    public func readFrame() -> Frame? {
        while true {
            if pending.count >= 4 {
                let length = Int(pending[0..<4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
                if pending.count >= 4 + length {
                    let record = pending[4..<(4 + length)]
                    pending.removeFirst(4 + length)
                    guard let body = inbound.open(record) else { return nil }
                    return try? Frame.parse(body[...])
                }
            }
            guard let more = try? socket.readSome() else { return nil }
            pending += more
        }
    }

    /// True when the node has closed the connection (EOF or reset) within the read timeout.
    public func isClosedByPeer() -> Bool { socket.isClosedByPeer() }
}

extension Frame {
    /// The message of an error or cancel frame (its payload after the 2-byte code).
    public var errorMessage: String { PeerErrorCode.read(payload).1 }
}
