public import KaaCore

/// The stable identity of a node: a UUID-like string chosen once and persisted by the shell in
/// the node's data directory, so a restarted node keeps it.
public struct NodeID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: String

    public init(_ rawValue: String) { self.rawValue = rawValue }

    /// A fresh random id in the 8-4-4-4-12 hex form of a version-4 UUID.
    public static func random<R: RandomNumberGenerator>(using rng: inout R) -> NodeID {
        var bytes = (0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) }
        bytes[6] = (bytes[6] & 0x0F) | 0x40
        bytes[8] = (bytes[8] & 0x3F) | 0x80
        let hex = bytes.map { b -> String in
            let s = String(b, radix: 16)
            return s.count == 1 ? "0" + s : s
        }
        let groups = [hex[0..<4], hex[4..<6], hex[6..<8], hex[8..<10], hex[10..<16]]
        return NodeID(groups.map { $0.joined() }.joined(separator: "-"))
    }

    public static func < (a: NodeID, b: NodeID) -> Bool { a.rawValue < b.rawValue }
    public var description: String { rawValue }
}

/// What a node offers for placement: CPU, memory and accelerators.
public struct Capacity: Hashable, Sendable {
    public var cores: UInt32
    public var memoryBytes: UInt64
    public var gpuCount: UInt32
    public var gpuMemoryBytes: UInt64

    public init(cores: UInt32 = 0, memoryBytes: UInt64 = 0, gpuCount: UInt32 = 0, gpuMemoryBytes: UInt64 = 0) {
        self.cores = cores
        self.memoryBytes = memoryBytes
        self.gpuCount = gpuCount
        self.gpuMemoryBytes = gpuMemoryBytes
    }
}

/// A member's metadata as it travels with `alive` updates and push-pull state.
///
/// A node changes its own metadata with ``SWIMInstance/onUpdateMetadata(_:now:)``; the change
/// bumps its incarnation and is disseminated like any other update. A value type with
/// copy-on-write storage: views of a thousand members copy it often.
public struct NodeInfo: Hashable, Sendable {
    struct Fields: Hashable, Sendable {
        var id: NodeID
        var name: String
        var peerAddress: HostPort
        var httpAddress: HostPort
        var zone: String
        var capacity: Capacity
        var kaaVersion: String
        var protocolVersion: UInt16
        var startedAtUnixMilliseconds: UInt64
    }

    /// Immutable once shared; `fields` is only mutated through `mutate`, which copies first
    /// unless the box is uniquely referenced, so no two values ever observe each other's
    /// writes.
    final class Box: @unchecked Sendable {
        var fields: Fields
        init(_ fields: Fields) { self.fields = fields }
    }

    private var box: Box

    private mutating func mutate(_ body: (inout Fields) -> Void) {
        if !isKnownUniquelyReferenced(&box) { box = Box(box.fields) }
        body(&box.fields)
    }

    /// Persisted node id; never changes for a node's data directory.
    public var id: NodeID {
        get { box.fields.id }
        set { mutate { $0.id = newValue } }
    }
    /// Operator-facing name (host name by default).
    public var name: String {
        get { box.fields.name }
        set { mutate { $0.name = newValue } }
    }
    /// UDP gossip and TCP peer address.
    public var peerAddress: HostPort {
        get { box.fields.peerAddress }
        set { mutate { $0.peerAddress = newValue } }
    }
    /// HTTP address for the data and control planes.
    public var httpAddress: HostPort {
        get { box.fields.httpAddress }
        set { mutate { $0.httpAddress = newValue } }
    }
    /// Failure domain used by placement (rack, room, availability zone); may be empty.
    public var zone: String {
        get { box.fields.zone }
        set { mutate { $0.zone = newValue } }
    }
    public var capacity: Capacity {
        get { box.fields.capacity }
        set { mutate { $0.capacity = newValue } }
    }
    /// The Kaa release string (``KaaCore/KaaVersion``).
    public var kaaVersion: String {
        get { box.fields.kaaVersion }
        set { mutate { $0.kaaVersion = newValue } }
    }
    /// The highest gossip wire version this node speaks.
    public var protocolVersion: UInt16 {
        get { box.fields.protocolVersion }
        set { mutate { $0.protocolVersion = newValue } }
    }
    /// When the process started, in milliseconds since the Unix epoch (wall clock, read by the
    /// shell; used for display and to tell restarts apart, never for timeouts).
    public var startedAtUnixMilliseconds: UInt64 {
        get { box.fields.startedAtUnixMilliseconds }
        set { mutate { $0.startedAtUnixMilliseconds = newValue } }
    }

    public init(
        id: NodeID, name: String, peerAddress: HostPort, httpAddress: HostPort, zone: String = "",
        capacity: Capacity = Capacity(), kaaVersion: String = KaaVersion.string,
        protocolVersion: UInt16 = WireCodec.version, startedAtUnixMilliseconds: UInt64 = 0
    ) {
        box = Box(Fields(
            id: id, name: name, peerAddress: peerAddress, httpAddress: httpAddress, zone: zone,
            capacity: capacity, kaaVersion: kaaVersion, protocolVersion: protocolVersion,
            startedAtUnixMilliseconds: startedAtUnixMilliseconds))
    }

    public static func == (a: NodeInfo, b: NodeInfo) -> Bool {
        a.box === b.box || a.box.fields == b.box.fields
    }

    public func hash(into hasher: inout Hasher) { hasher.combine(box.fields) }
}
