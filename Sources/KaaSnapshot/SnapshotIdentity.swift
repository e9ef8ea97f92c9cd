import Crypto

/// Rules for the names that identify snapshots: model names, aliases, versions.
public enum SnapshotNaming {
    /// The longest model name (`[a-z0-9][a-z0-9._-]{0,127}`).
    public static let maxNameLength = 128

    /// The highest version: 2^53 − 1, the largest integer every JSON reader (JavaScript's
    /// doubles included) reads exactly, so a version means the same to every client. Versions
    /// are `1 ... maxVersion` wherever they come from: URLs, manifests, alias bodies, the
    /// catalog read back.
    public static let maxVersion = (1 << 53) - 1

    /// Throws unless `version` is in `1 ... maxVersion`; the message names the model when given.
    public static func validateVersion(_ version: Int, of name: String? = nil) throws(SnapshotError) {
        guard version >= 1 && version <= maxVersion else {
            let whose = name.map { " of `\($0)`" } ?? ""
            throw SnapshotError(.invalidName, "version \(version)\(whose) is out of range; versions are integers from 1 to \(maxVersion)")
        }
    }

    /// Reads a version written as decimal digits without sign or leading zeros (`7`, not `+7`
    /// or `007`) and in `1 ... maxVersion`; `nil` for anything else. One spelling per version,
    /// so a version read from a URL or a file name names exactly one archive.
    public static func parseVersion(_ text: some StringProtocol) -> Int? {
        let digits = text.utf8
        guard let first = digits.first, first >= 0x31, first <= 0x39, digits.count <= 16 else { return nil }
        var v = 0
        for d in digits {
            guard d >= 0x30 && d <= 0x39 else { return nil }
            v = v * 10 + Int(d - 0x30) // at most 16 digits: no overflow
        }
        return v <= maxVersion ? v : nil
    }

    /// Why `text` is not a version, for a message (assumes ``parseVersion(_:)`` refused it).
    public static func describeBadVersion(_ text: some StringProtocol) -> String {
        let shown = text.count > 40 ? "\(text.prefix(40))..." : String(text)
        return "version `\(shown)` is not an integer from 1 to \(maxVersion) written in plain digits"
    }

    /// Throws unless `name` matches `[a-z0-9][a-z0-9._-]{0,127}`.
    public static func validateModelName(_ name: String) throws(SnapshotError) {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty else {
            throw SnapshotError(.invalidName, "model name is empty; use lowercase letters, digits, `.`, `_` or `-`, e.g. `iris`")
        }
        guard bytes.count <= maxNameLength else {
            throw SnapshotError(.invalidName, "model name `\(name.prefix(40))...` is \(bytes.count) characters long; the limit is \(maxNameLength)")
        }
        func lowerOrDigit(_ b: UInt8) -> Bool { (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) }
        guard lowerOrDigit(bytes[0]) else {
            throw SnapshotError(.invalidName, "model name `\(name)` must start with a lowercase letter or a digit")
        }
        for b in bytes where !(lowerOrDigit(b) || b == 0x2E || b == 0x5F || b == 0x2D) {
            throw SnapshotError(.invalidName, "model name `\(name)` contains `\(String(decoding: [b], as: UTF8.self))`; allowed are a-z, 0-9, `.`, `_` and `-`")
        }
    }

    /// Throws unless `alias` matches `[a-z][a-z0-9-]*` (at most 64 characters). `latest` is
    /// implicit (the highest version) and cannot be set.
    public static func validateAlias(_ alias: String, allowLatest: Bool = false) throws(SnapshotError) {
        let bytes = Array(alias.utf8)
        guard let first = bytes.first, first >= 0x61, first <= 0x7A else {
            throw SnapshotError(.invalidName, "alias `\(alias)` must start with a lowercase letter, e.g. `stable`")
        }
        guard bytes.count <= 64 else {
            throw SnapshotError(.invalidName, "alias `\(alias.prefix(40))...` is longer than 64 characters")
        }
        for b in bytes where !((b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) || b == 0x2D) {
            throw SnapshotError(.invalidName, "alias `\(alias)` contains `\(String(decoding: [b], as: UTF8.self))`; allowed are a-z, 0-9 and `-`")
        }
        if !allowLatest && alias == "latest" {
            throw SnapshotError(.invalidName, "alias `latest` is implicit (always the highest version) and cannot be set")
        }
    }
}

/// `name@version`: the identity of one snapshot. Versions are `1 ... SnapshotNaming.maxVersion`.
public struct SnapshotID: Hashable, Sendable, Comparable, CustomStringConvertible, Codable {
    public var name: String
    public var version: Int

    /// Creates an identity, checking the name and that the version is in range.
    public init(name: String, version: Int) throws(SnapshotError) {
        try SnapshotNaming.validateModelName(name)
        try SnapshotNaming.validateVersion(version, of: name)
        self.name = name
        self.version = version
    }

    /// An identity whose name and version were checked before (read back from the catalog),
    /// without checking them again.
    public init(validName name: String, version: Int) {
        self.name = name
        self.version = version
    }

    /// Parses `name@version`.
    public init(parsing text: String) throws(SnapshotError) {
        guard let at = text.lastIndex(of: "@"), let v = SnapshotNaming.parseVersion(text[text.index(after: at)...]) else {
            throw SnapshotError(.invalidName, "`\(text)` is not `name@version` with a version from 1 to \(SnapshotNaming.maxVersion) (e.g. `iris@3`)")
        }
        try self.init(name: String(text[..<at]), version: v)
    }

    public var description: String { "\(name)@\(version)" }

    public static func < (a: SnapshotID, b: SnapshotID) -> Bool {
        (a.name, a.version) < (b.name, b.version)
    }
}

/// What a client asks for: `name`, `name@7`, `name@stable` or `name@latest`.
public struct SnapshotReference: Hashable, Sendable, CustomStringConvertible {
    public enum Selector: Hashable, Sendable {
        case latest
        case version(Int)
        case alias(String)
    }

    public var name: String
    public var selector: Selector

    public init(name: String, selector: Selector) {
        self.name = name
        self.selector = selector
    }

    /// Parses `name[@version|@alias]`.
    public init(parsing text: String) throws(SnapshotError) {
        guard let at = text.firstIndex(of: "@") else {
            try SnapshotNaming.validateModelName(text)
            self.init(name: text, selector: .latest)
            return
        }
        let name = String(text[..<at])
        let rest = String(text[text.index(after: at)...])
        try SnapshotNaming.validateModelName(name)
        if let first = rest.utf8.first, first >= 0x30, first <= 0x39 {
            guard let v = SnapshotNaming.parseVersion(rest) else {
                throw SnapshotError(.invalidName, "`\(text)`: \(SnapshotNaming.describeBadVersion(rest))")
            }
            self.init(name: name, selector: .version(v))
        } else if rest == "latest" {
            self.init(name: name, selector: .latest)
        } else {
            try SnapshotNaming.validateAlias(rest)
            self.init(name: name, selector: .alias(rest))
        }
    }

    public var description: String {
        switch selector {
        case .latest: return name
        case .version(let v): return "\(name)@\(v)"
        case .alias(let a): return "\(name)@\(a)"
        }
    }
}

/// A SHA-256 digest, written `sha256:<64 hex digits>`: a snapshot's identity.
public struct SnapshotDigest: Hashable, Sendable, CustomStringConvertible {
    /// The 32 digest bytes.
    public let bytes: [UInt8]

    public init(bytes: [UInt8]) {
        precondition(bytes.count == 32, "a SHA-256 digest has 32 bytes")
        self.bytes = bytes
    }

    init(_ digest: SHA256.Digest) { self.bytes = Array(digest) }

    /// Parses `sha256:<hex>` or bare hex.
    public init(parsing text: String) throws(SnapshotError) {
        let hex = text.hasPrefix("sha256:") ? String(text.dropFirst(7)) : text
        guard hex.utf8.count == 64, let b = Hex.decode(hex), b.count == 32 else {
            let shown = text.utf8.count > 80 ? "\(text.prefix(80))... (\(text.utf8.count) bytes)" : text
            throw SnapshotError(.invalidName, "`\(shown)` is not a SHA-256 digest (`sha256:` and 64 hex digits)")
        }
        self.bytes = b
    }

    /// The 64 lowercase hex digits.
    public var hex: String { Hex.encode(bytes) }

    public var description: String { "sha256:\(hex)" }
}

enum Hex {
    static func encode(_ bytes: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func decode(_ text: String) -> [UInt8]? {
        let u = Array(text.utf8)
        guard u.count % 2 == 0 else { return nil }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case 0x30...0x39: return c - 0x30
            case 0x61...0x66: return c - 0x61 + 10
            case 0x41...0x46: return c - 0x41 + 10
            default: return nil
            }
        }
        var out = [UInt8]()
        out.reserveCapacity(u.count / 2)
        var i = 0
        while i < u.count {
            guard let h = nibble(u[i]), let l = nibble(u[i + 1]) else { return nil }
            out.append(h << 4 | l)
            i += 2
        }
        return out
    }
}
