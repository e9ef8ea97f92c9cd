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
/// bumps its incarnation and is disseminated like any other update.
public struct NodeInfo: Hashable, Sendable {
    /// Persisted node id; never changes for a node's data directory.
    public var id: NodeID
    /// Operator-facing name (host name by default).
    public var name: String
    /// UDP gossip and TCP peer address.
    public var peerAddress: HostPort
    /// HTTP address for the data and control planes.
    public var httpAddress: HostPort
    /// Failure domain used by placement (rack, room, availability zone); may be empty.
    public var zone: String
    public var capacity: Capacity
    /// The Kaa release string (``KaaCore/KaaVersion``).
    public var kaaVersion: String
    /// The highest gossip wire version this node speaks.
    public var protocolVersion: UInt16
    /// When the process started, in milliseconds since the Unix epoch (wall clock, read by the
    /// shell; used for display and to tell restarts apart, never for timeouts).
    public var startedAtUnixMilliseconds: UInt64

    public init(
        id: NodeID, name: String, peerAddress: HostPort, httpAddress: HostPort, zone: String = "",
        capacity: Capacity = Capacity(), kaaVersion: String = KaaVersion.string,
        protocolVersion: UInt16 = WireCodec.version, startedAtUnixMilliseconds: UInt64 = 0
    ) {
        self.id = id
        self.name = name
        self.peerAddress = peerAddress
        self.httpAddress = httpAddress
        self.zone = zone
        self.capacity = capacity
        self.kaaVersion = kaaVersion
        self.protocolVersion = protocolVersion
        self.startedAtUnixMilliseconds = startedAtUnixMilliseconds
    }
}
