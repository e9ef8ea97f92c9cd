import Crypto
import Foundation

/// An Ed25519 public key that verifies snapshot signatures.
///
/// Key file format (one line, UTF-8): `kaa-ed25519-public <base64 of the 32 raw key bytes>
/// [comment]`. The ``keyID`` (`ed25519:` and the first 16 hex digits of the key's SHA-256) names
/// the key in manifests, logs and `kaa snapshot inspect`.
public struct PublisherPublicKey: Hashable, Sendable, CustomStringConvertible {
    public static let fileTag = "kaa-ed25519-public"
    public let rawBytes: [UInt8]

    public init(rawBytes: [UInt8]) throws(SnapshotError) {
        guard rawBytes.count == 32, (try? Curve25519.Signing.PublicKey(rawRepresentation: rawBytes)) != nil else {
            throw SnapshotError(.invalidKey, "an Ed25519 public key has 32 bytes, got \(rawBytes.count)")
        }
        self.rawBytes = rawBytes
    }

    /// Parses a public key file's text.
    public init(fileText: String) throws(SnapshotError) {
        let parts = fileText.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" || $0 == "\r" })
        guard parts.count >= 2, parts[0] == Self.fileTag else {
            throw SnapshotError(.invalidKey, "not a Kaa public key: it must start with `\(Self.fileTag) ` (write one with `kaa keys generate`)")
        }
        guard let raw = Data(base64Encoded: String(parts[1])) else {
            throw SnapshotError(.invalidKey, "public key is not valid base64")
        }
        try self.init(rawBytes: Array(raw))
    }

    /// Reads a public key file.
    public init(contentsOf path: String) throws(SnapshotError) {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw SnapshotError(.invalidKey, "cannot read public key file `\(path)`")
        }
        do { try self.init(fileText: text) } catch {
            throw SnapshotError(.invalidKey, "`\(path)`: \(error.message)")
        }
    }

    /// `ed25519:` and the first 16 hex digits of SHA-256 of the raw key.
    public var keyID: String { "ed25519:" + Hex.encode(SHA256.hash(data: rawBytes).prefix(8)) }

    /// The key file's text, with a trailing newline.
    public func fileText(comment: String? = nil) -> String {
        "\(Self.fileTag) \(Data(rawBytes).base64EncodedString())" + (comment.map { " \($0)" } ?? "") + "\n"
    }

    public var description: String { keyID }

    /// Whether `signature` is this key's signature of `digest`.
    public func isValidSignature(_ signature: [UInt8], of digest: SnapshotDigest) -> Bool {
        guard let key = try? Curve25519.Signing.PublicKey(rawRepresentation: rawBytes) else { return false }
        return key.isValidSignature(signature, for: SnapshotSigning.message(for: digest))
    }
}

/// An Ed25519 private key that signs snapshots.
///
/// Key file format (one line, UTF-8, file mode 0600): `kaa-ed25519-private <base64 of the 32
/// raw seed bytes>`.
public struct PublisherPrivateKey: Sendable {
    public static let fileTag = "kaa-ed25519-private"
    /// The 32 seed bytes (Crypto's key type is not `Sendable`, so the seed is what is kept).
    private let seed: [UInt8]

    private var key: Curve25519.Signing.PrivateKey {
        // `seed` was checked in `init`.
        try! Curve25519.Signing.PrivateKey(rawRepresentation: seed)
    }

    /// A new random key.
    public init() { seed = Array(Curve25519.Signing.PrivateKey().rawRepresentation) }

    public init(rawBytes: [UInt8]) throws(SnapshotError) {
        guard rawBytes.count == 32, (try? Curve25519.Signing.PrivateKey(rawRepresentation: rawBytes)) != nil else {
            throw SnapshotError(.invalidKey, "an Ed25519 private key has 32 bytes, got \(rawBytes.count)")
        }
        seed = rawBytes
    }

    public init(fileText: String) throws(SnapshotError) {
        let parts = fileText.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" || $0 == "\r" })
        guard parts.count >= 2, parts[0] == Self.fileTag else {
            if parts.first.map(String.init) == PublisherPublicKey.fileTag {
                throw SnapshotError(.invalidKey, "this is a public key; signing needs the private key (the `.key` file)")
            }
            throw SnapshotError(.invalidKey, "not a Kaa private key: it must start with `\(Self.fileTag) ` (write one with `kaa keys generate`)")
        }
        guard let raw = Data(base64Encoded: String(parts[1])) else {
            throw SnapshotError(.invalidKey, "private key is not valid base64")
        }
        try self.init(rawBytes: Array(raw))
    }

    public init(contentsOf path: String) throws(SnapshotError) {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw SnapshotError(.invalidKey, "cannot read private key file `\(path)`")
        }
        do { try self.init(fileText: text) } catch {
            throw SnapshotError(.invalidKey, "`\(path)`: \(error.message)")
        }
    }

    public var publicKey: PublisherPublicKey {
        // A key from Crypto always has 32 valid bytes.
        try! PublisherPublicKey(rawBytes: Array(key.publicKey.rawRepresentation))
    }

    /// The key file's text, with a trailing newline.
    public var fileText: String { "\(Self.fileTag) \(key.rawRepresentation.base64EncodedString())\n" }

    /// Signs a snapshot digest (see ``SnapshotSigning/message(for:)``).
    public func sign(_ digest: SnapshotDigest) throws(SnapshotError) -> [UInt8] {
        do {
            return Array(try key.signature(for: SnapshotSigning.message(for: digest)))
        } catch {
            throw SnapshotError(.invalidKey, "signing failed: \(error)")
        }
    }
}

/// The signed message and the signature stored in an archive.
public enum SnapshotSigning {
    /// The domain-separation prefix of every signed message.
    public static let domain: [UInt8] = Array("kaa snapshot signature v1\n".utf8)

    /// The bytes an Ed25519 signature covers: ``domain`` followed by the 32 digest bytes.
    public static func message(for digest: SnapshotDigest) -> [UInt8] { domain + digest.bytes }
}

/// A signature entry: who signed and the 64-byte Ed25519 signature.
public struct ArchiveSignature: Sendable, Equatable {
    public var publicKey: PublisherPublicKey
    public var signature: [UInt8]

    public init(publicKey: PublisherPublicKey, signature: [UInt8]) {
        self.publicKey = publicKey
        self.signature = signature
    }
}
