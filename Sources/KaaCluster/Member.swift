public import KaaCore

/// The order of what is said about a member: only the member itself raises it, to refute a
/// suspicion or to announce new metadata.
public typealias Incarnation = UInt64

/// What this node believes about a member.
public enum MemberStatus: UInt8, Hashable, Sendable, CustomStringConvertible {
    case alive = 0
    case suspect = 1
    case dead = 2
    /// Left gracefully; kept as a tombstone like `dead`.
    case left = 3

    public var description: String {
        switch self {
        case .alive: "alive"
        case .suspect: "suspect"
        case .dead: "dead"
        case .left: "left"
        }
    }

    /// Alive or suspect: still probed, still in the ring.
    public var isReachable: Bool { self == .alive || self == .suspect }
}

/// One entry of a node's membership view.
public struct Member: Hashable, Sendable {
    public var info: NodeInfo
    public var status: MemberStatus
    public var incarnation: Incarnation
    /// When this node last changed its belief about the member's status (local clock).
    public var statusChangedAt: Instant

    public init(info: NodeInfo, status: MemberStatus, incarnation: Incarnation, statusChangedAt: Instant) {
        self.info = info
        self.status = status
        self.incarnation = incarnation
        self.statusChangedAt = statusChangedAt
    }

    public var id: NodeID { info.id }
}

/// A change in this node's view that the rest of the node (ring, placement, APIs) must learn of.
public enum MembershipEvent: Hashable, Sendable, CustomStringConvertible {
    /// A member was seen for the first time, or came back after being dead or gone.
    case joined(Member)
    /// A member stopped answering probes and is suspected.
    case suspect(Member)
    /// A suspected member refuted the suspicion.
    case alive(Member)
    /// A member's suspicion expired, or another node declared it dead.
    case dead(Member)
    /// A member announced a graceful leave.
    case left(Member)
    /// A member's metadata changed (it bumped its incarnation).
    case updated(Member)

    public var member: Member {
        switch self {
        case .joined(let m), .suspect(let m), .alive(let m), .dead(let m), .left(let m), .updated(let m): m
        }
    }

    public var description: String {
        switch self {
        case .joined(let m): "joined \(m.id)@\(m.incarnation)"
        case .suspect(let m): "suspect \(m.id)@\(m.incarnation)"
        case .alive(let m): "alive \(m.id)@\(m.incarnation)"
        case .dead(let m): "dead \(m.id)@\(m.incarnation)"
        case .left(let m): "left \(m.id)@\(m.incarnation)"
        case .updated(let m): "updated \(m.id)@\(m.incarnation)"
        }
    }
}
