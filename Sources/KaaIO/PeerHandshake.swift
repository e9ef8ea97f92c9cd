import Crypto
import Foundation

/// The keys that authenticate the peer plane: the cluster's keys (the gossip keyring's, primary
/// first), from which each connection derives its own with HKDF. Empty: no authentication (a
/// cluster run with `gossip_plaintext`, for trusted networks and tests only).
public struct PeerKeys: Sendable {
    /// Raw key bytes, primary first.
    let keys: [[UInt8]]
    /// Encrypt frames (else only authenticate them); either side asking turns it on.
    public var encrypt: Bool

    public init(keys: [[UInt8]], encrypt: Bool = true) {
        self.keys = keys
        self.encrypt = encrypt
    }

    /// No keys: connections open without authentication, frames go as they are.
    public static let none = PeerKeys(keys: [], encrypt: false)

    public var isAuthenticated: Bool { !keys.isEmpty }

    /// A key's public name on the wire: the first 8 bytes of SHA-256("kaa peer key id" || key).
    static func keyID(_ key: [UInt8]) -> [UInt8] {
        Array(SHA256.hash(data: Array("kaa peer key id".utf8) + key).prefix(8))
    }

    func key(withID id: ArraySlice<UInt8>) -> [UInt8]? {
        keys.first { PeerKeys.keyID($0)[...] == id }
    }
}

/// The opening of a peer connection, before any frame (see `docs/peer-frames.md`). Public for
/// tools and tests that speak the protocol byte by byte; the node uses it through
/// ``FrameConnection``.
///
/// ```
/// client → server  hello   56 bytes: "KAAPEER\0", u16 min version, u16 max version, u8 flags,
///                          3 reserved, 8-byte key id, 32-byte client nonce
/// server → client  reply   88 bytes: "KAAPEER\0", u16 chosen version (0: none in common),
///                          u16 min, u16 max, u8 flags, 1 reserved, 8-byte key id,
///                          32-byte server nonce, 32-byte MAC
/// client → server  finish  32 bytes: MAC
/// ```
///
/// The MACs are HMAC-SHA256 under a key derived (HKDF-SHA256, salt = both nonces) from the
/// cluster key the hello names: the server's over "server" and both messages, the client's over
/// "client" and both messages. So each side proves it holds the key, over fresh nonces, before
/// the other answers a frame; a server that has no key with the hello's id answers nothing.
/// Flags bit 0: encrypt frames.
public enum PeerHandshake {
    public static let magic = Array("KAAPEER\0".utf8)
    public static let helloSize = 56
    public static let replySize = 88
    public static let finishSize = 32
    /// The peer-plane versions this build speaks.
    public static let versions: ClosedRange<UInt16> = 2...2

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
        init(_ d: String) { description = d }
    }

    /// The keys both sides derive once the hello and reply are known.
    public struct SessionKeys {
        var version: UInt16
        var encrypt: Bool
        var clientToServer: SymmetricKey
        var serverToClient: SymmetricKey
        var handshake: SymmetricKey

        /// The record protection of each direction, for the client's side or the server's.
        public func protections(client: Bool) -> (inbound: RecordProtection, outbound: RecordProtection) {
            let c2s = RecordProtection(key: clientToServer, encrypt: encrypt)
            let s2c = RecordProtection(key: serverToClient, encrypt: encrypt)
            return client ? (s2c, c2s) : (c2s, s2c)
        }
    }

    public static func nonce() -> [UInt8] {
        var rng = SystemRandomNumberGenerator()
        return (0..<32).map { _ in UInt8.random(in: .min ... .max, using: &rng) }
    }

    public static func hello(keys: PeerKeys, nonce: [UInt8]) -> [UInt8] {
        var out = magic
        appendU16(versions.lowerBound, &out)
        appendU16(versions.upperBound, &out)
        out.append(keys.encrypt ? 1 : 0)
        out += [0, 0, 0]
        out += keys.keys.first.map(PeerKeys.keyID) ?? [UInt8](repeating: 0, count: 8)
        out += nonce
        return out
    }

    /// The server's answer to `hello`: the reply to send and the session, or why the
    /// connection must close without a word.
    public static func answer(_ hello: [UInt8], keys: PeerKeys, nonce: [UInt8]) throws(Failure) -> (reply: [UInt8], session: SessionKeys?) {
        guard hello.count == helloSize, Array(hello[0..<8]) == magic else {
            throw Failure("the peer did not open with a Kaa peer-plane hello (an older Kaa node, or not a Kaa node)")
        }
        let minVersion = u16(hello, 8), maxVersion = u16(hello, 10)
        let clientWantsEncryption = hello[12] & 1 != 0
        let keyID = hello[16..<24]
        let clientNonce = Array(hello[24..<56])
        // The highest version both speak; 0 when their ranges do not meet.
        let lowest = max(minVersion, versions.lowerBound), highest = min(maxVersion, versions.upperBound)
        let version: UInt16 = highest >= lowest ? highest : 0
        let key: [UInt8]?
        if keys.isAuthenticated {
            guard let found = keys.key(withID: keyID) else {
                throw Failure("the peer's hello names a cluster key this node does not hold")
            }
            key = found
        } else {
            guard keyID.allSatisfy({ $0 == 0 }) else {
                throw Failure("the peer authenticates with a cluster key; this node runs without one (gossip_plaintext)")
            }
            key = nil
        }
        let encrypt = key != nil && (clientWantsEncryption || keys.encrypt)
        var reply = magic
        appendU16(version, &reply)
        appendU16(versions.lowerBound, &reply)
        appendU16(versions.upperBound, &reply)
        reply.append(encrypt ? 1 : 0)
        reply.append(0)
        reply += keyID
        reply += nonce
        guard version != 0 else {
            reply += [UInt8](repeating: 0, count: 32)
            return (reply, nil)
        }
        let session = derive(key: key, clientNonce: clientNonce, serverNonce: nonce, version: version, encrypt: encrypt)
        reply += mac(session.handshake, "server", hello, reply)
        return (reply, session)
    }

    /// The client's check of the server's reply: the session and the finish message to send.
    public static func finish(hello: [UInt8], reply: [UInt8], keys: PeerKeys) throws(Failure) -> (finish: [UInt8], session: SessionKeys) {
        guard reply.count == replySize, Array(reply[0..<8]) == magic else {
            throw Failure("the peer did not answer with a Kaa peer-plane reply (an older Kaa node, or not a Kaa node)")
        }
        let version = u16(reply, 8)
        guard version != 0 else {
            throw Failure("the peer speaks peer-plane versions \(u16(reply, 10))...\(u16(reply, 12)); this node speaks \(versions.lowerBound)...\(versions.upperBound)")
        }
        guard versions.contains(version) else { throw Failure("the peer chose peer-plane version \(version), which this node does not speak") }
        let encrypt = reply[14] & 1 != 0
        let key = keys.keys.first
        let session = derive(key: key, clientNonce: Array(hello[24..<56]), serverNonce: Array(reply[24..<56]), version: version, encrypt: encrypt)
        if key != nil {
            guard mac(session.handshake, "server", hello, Array(reply[0..<56])) == Array(reply[56..<88]) else {
                throw Failure("the peer does not hold this cluster's key (its handshake does not authenticate)")
            }
        } else if encrypt {
            throw Failure("the peer asks for encryption, but this node runs without a cluster key")
        }
        return (mac(session.handshake, "client", hello, reply), session)
    }

    /// The server's check of the client's finish.
    public static func verify(finish: [UInt8], hello: [UInt8], reply: [UInt8], session: SessionKeys, authenticated: Bool) -> Bool {
        guard authenticated else { return true }
        return mac(session.handshake, "client", hello, reply) == finish
    }

    static func derive(key: [UInt8]?, clientNonce: [UInt8], serverNonce: [UInt8], version: UInt16, encrypt: Bool) -> SessionKeys {
        let ikm = SymmetricKey(data: key ?? [UInt8](repeating: 0, count: 32))
        let salt = clientNonce + serverNonce
        func k(_ info: String) -> SymmetricKey {
            HKDF<SHA256>.deriveKey(inputKeyMaterial: ikm, salt: salt, info: Array(info.utf8), outputByteCount: 32)
        }
        return SessionKeys(version: version, encrypt: encrypt,
                           clientToServer: k("kaa peer v2 client to server"),
                           serverToClient: k("kaa peer v2 server to client"),
                           handshake: k("kaa peer v2 handshake"))
    }

    static func mac(_ key: SymmetricKey, _ label: String, _ a: [UInt8], _ b: [UInt8]) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: Array(label.utf8) + a + b, using: key))
    }

    static func u16(_ b: [UInt8], _ at: Int) -> UInt16 { UInt16(b[at]) << 8 | UInt16(b[at + 1]) }
    static func appendU16(_ v: UInt16, _ out: inout [UInt8]) { out += [UInt8(v >> 8), UInt8(v & 0xFF)] }
}

/// Seals and opens the records of one direction of a connection: AES-256-GCM with the record's
/// sequence number as nonce when encrypting, else the plaintext and a 16-byte truncated
/// HMAC-SHA256 over sequence number and plaintext. The sequence number is implicit (one per
/// record, from 0), so a record replayed, dropped or reordered fails to open.
public struct RecordProtection {
    private let key: SymmetricKey?
    private let encrypt: Bool
    private var sequence: UInt64 = 0

    /// Bytes a record adds to its plaintext.
    public var overhead: Int { key == nil ? 0 : 16 }

    init(key: SymmetricKey?, encrypt: Bool) {
        self.key = key
        self.encrypt = encrypt
    }

    /// No protection (a connection without a cluster key).
    public static var none: RecordProtection { RecordProtection(key: nil, encrypt: false) }

    public mutating func seal(_ plaintext: [UInt8]) -> [UInt8] {
        guard let key else { return plaintext }
        defer { sequence &+= 1 }
        if encrypt {
            // The nonce never repeats under this key (the key is new for each connection and the
            // sequence only grows); sealing fails only for a key of the wrong size, and these
            // keys are derived at 32 bytes.
            let box = try! AES.GCM.seal(plaintext, using: key, nonce: nonce())
            return Array(box.ciphertext) + Array(box.tag)
        }
        return plaintext + Array(mac(plaintext, key).prefix(16))
    }

    public mutating func open(_ record: ArraySlice<UInt8>) -> [UInt8]? {
        guard let key else { return Array(record) }
        guard record.count >= 16 else { return nil }
        defer { sequence &+= 1 }
        let body = record.prefix(record.count - 16), tag = record.suffix(16)
        if encrypt {
            guard let box = try? AES.GCM.SealedBox(nonce: nonce(), ciphertext: body, tag: tag),
                  let plain = try? AES.GCM.open(box, using: key) else { return nil }
            return Array(plain)
        }
        let expected = mac(Array(body), key).prefix(16)
        guard expected.elementsEqual(tag) else { return nil }
        return Array(body)
    }

    private func nonce() -> AES.GCM.Nonce {
        var bytes = [UInt8](repeating: 0, count: 12)
        for i in 0..<8 { bytes[4 + i] = UInt8(truncatingIfNeeded: sequence >> (56 - 8 * UInt64(i))) }
        return try! AES.GCM.Nonce(data: bytes)
    }

    private func mac(_ plaintext: [UInt8], _ key: SymmetricKey) -> [UInt8] {
        var data: [UInt8] = []
        data.reserveCapacity(8 + plaintext.count)
        for i in 0..<8 { data.append(UInt8(truncatingIfNeeded: sequence >> (56 - 8 * UInt64(i)))) }
        data += plaintext
        return Array(HMAC<SHA256>.authenticationCode(for: data, using: key))
    }
}
