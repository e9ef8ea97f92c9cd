/// One alias as the cluster knows it: a last-writer-wins register. Every node keeps the
/// register of every alias, takes a record from another node only when it supersedes its own,
/// and so ends with the same alias table as every other node, however the writes raced.
public struct AliasRecord: Sendable, Hashable, Codable {
    public var name: String
    public var alias: String
    /// The version it points at; nil once removed (the removal is kept, so it wins everywhere).
    public var version: Int?
    /// Milliseconds since the epoch, and more than the stamp of the record it replaced.
    public var stamp: UInt64
    /// The node that wrote it; breaks ties between equal stamps.
    public var author: String

    public init(name: String, alias: String, version: Int?, stamp: UInt64, author: String) {
        self.name = name
        self.alias = alias
        self.version = version
        self.stamp = stamp
        self.author = author
    }

    /// `name@alias`, the register's key.
    public var key: String { "\(name)@\(alias)" }

    /// Whether this write wins over `other` (of the same key): the later stamp, then the
    /// greater author, then the greater version, so any two nodes choose alike.
    public func supersedes(_ other: AliasRecord) -> Bool {
        (stamp, author, version ?? 0) > (other.stamp, other.author, other.version ?? 0)
    }

    // On the wire as `[name, alias, version or null, stamp, author]`.
    public init(from decoder: any Decoder) throws {
        var c = try decoder.unkeyedContainer()
        name = try c.decode(String.self)
        alias = try c.decode(String.self)
        version = try c.decodeNil() ? nil : try c.decode(Int.self)
        stamp = try c.decode(UInt64.self)
        author = try c.decode(String.self)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.unkeyedContainer()
        try c.encode(name)
        try c.encode(alias)
        if let version { try c.encode(version) } else { try c.encodeNil() }
        try c.encode(stamp)
        try c.encode(author)
    }
}
