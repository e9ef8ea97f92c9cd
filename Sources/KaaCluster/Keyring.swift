import Crypto

/// The cluster keys that encrypt and authenticate gossip (AES-GCM).
///
/// Packets are sealed with the primary key and opened with any installed key, so operators
/// rotate keys with no downtime: install the new key everywhere, make it primary everywhere,
/// then remove the old one. A keyring in ``plaintext`` mode sends and accepts only unencrypted
/// packets; a node is in that mode only when explicitly configured so.
///
/// Envelope: `u8 0xA1`, 12-byte nonce, ciphertext, 16-byte tag (the envelope byte is
/// authenticated data). Plaintext: `u8 0x50`, payload.
public struct Keyring: Sendable {
    static let encryptedMarker: UInt8 = 0xA1
    static let plaintextMarker: UInt8 = 0x50

    /// Bytes an encrypted envelope adds to a payload.
    public static let overhead = 1 + 12 + 16

    /// Raw key bytes, primary first (kept as bytes: `SymmetricKey` is not `Sendable`).
    private var keys: [[UInt8]]

    /// A keyring that sends and accepts plain gossip only.
    public static let plaintext = Keyring(uncheckedKeys: [])

    private init(uncheckedKeys: [[UInt8]]) { self.keys = uncheckedKeys }

    /// A keyring with `primary` (used to encrypt) and further keys accepted for decryption.
    /// Keys are 16, 24 or 32 bytes (AES-128/192/256).
    public init(primary: [UInt8], others: [[UInt8]] = []) throws(WireError) {
        keys = []
        for k in [primary] + others { try install(k) }
    }

    /// True when no key is installed: plain gossip.
    public var isPlaintext: Bool { keys.isEmpty }

    /// Number of installed keys.
    public var keyCount: Int { keys.count }

    /// The installed keys' bytes, primary first (the peer plane derives its own keys from them).
    public var rawKeys: [[UInt8]] { keys }

    /// Adds a key accepted for decryption (it becomes primary only with ``usePrimary(_:)``, or
    /// when it is the first key).
    public mutating func install(_ key: [UInt8]) throws(WireError) {
        guard [16, 24, 32].contains(key.count) else {
            throw WireError(.invalidKey, "a gossip key must be 16, 24 or 32 bytes (AES-128/192/256); this one is \(key.count) bytes")
        }
        if !keys.contains(key) { keys.append(key) }
    }

    /// Makes an installed key the one that encrypts.
    public mutating func usePrimary(_ key: [UInt8]) throws(WireError) {
        guard let i = keys.firstIndex(of: key) else {
            throw WireError(.invalidKey, "cannot make a key primary before it is installed; install it first")
        }
        keys.swapAt(0, i)
    }

    /// Removes a key; the primary key cannot be removed (make another primary first).
    public mutating func remove(_ key: [UInt8]) throws(WireError) {
        guard let i = keys.firstIndex(of: key) else { return }
        guard i != 0 else {
            throw WireError(.invalidKey, "cannot remove the primary key; make another key primary first")
        }
        keys.remove(at: i)
    }

    /// Wraps an encoded packet or push-pull state for the wire.
    public func seal(_ payload: [UInt8]) throws(WireError) -> [UInt8] {
        guard let raw = keys.first else { return [Self.plaintextMarker] + payload }
        let key = SymmetricKey(data: raw)
        do {
            let box = try AES.GCM.seal(payload, using: key, nonce: AES.GCM.Nonce(), authenticating: [Self.encryptedMarker])
            var out: [UInt8] = [Self.encryptedMarker]
            out.reserveCapacity(Self.overhead + payload.count)
            out.append(contentsOf: box.nonce)
            out.append(contentsOf: box.ciphertext)
            out.append(contentsOf: box.tag)
            return out
        } catch {
            throw WireError(.authenticationFailed, "AES-GCM could not seal the packet: \(error)")
        }
    }

    /// Unwraps bytes from the wire; refuses anything that does not authenticate with an
    /// installed key, and encrypted/plain packets that do not match this keyring's mode.
    public func open(_ bytes: [UInt8]) throws(WireError) -> [UInt8] {
        guard let marker = bytes.first else { throw WireError(.truncated, "empty packet") }
        if keys.isEmpty {
            guard marker == Self.plaintextMarker else {
                throw WireError(.encryptionMismatch, marker == Self.encryptedMarker
                    ? "refused an encrypted packet: this node runs plain gossip; configure the cluster key"
                    : "refused a packet with unknown envelope byte \(marker)")
            }
            return Array(bytes.dropFirst())
        }
        guard marker == Self.encryptedMarker else {
            throw WireError(.encryptionMismatch, marker == Self.plaintextMarker
                ? "refused a plain packet: this node requires encrypted gossip; the sender lacks the cluster key or runs in plaintext mode"
                : "refused a packet with unknown envelope byte \(marker)")
        }
        guard bytes.count >= Self.overhead else {
            throw WireError(.truncated, "encrypted packet is \(bytes.count) bytes, shorter than the \(Self.overhead)-byte envelope")
        }
        let nonceBytes = bytes[1..<13]
        let ciphertext = bytes[13..<(bytes.count - 16)]
        let tag = bytes[(bytes.count - 16)...]
        guard let nonce = try? AES.GCM.Nonce(data: nonceBytes),
              let box = try? AES.GCM.SealedBox(nonce: nonce, ciphertext: ciphertext, tag: tag)
        else { throw WireError(.malformed, "encrypted packet has a malformed envelope") }
        for raw in keys {
            if let plain = try? AES.GCM.open(box, using: SymmetricKey(data: raw), authenticating: [Self.encryptedMarker]) {
                return Array(plain)
            }
        }
        throw WireError(.authenticationFailed, "packet failed authentication with all \(keys.count) installed key(s); the sender uses a different cluster key, or the packet was tampered with")
    }
}
