public import KaaCore

/// A probe sequence number, unique per sender for the life of its process.
public typealias SequenceNumber = UInt32

/// A direct probe: the target answers with an ``Ack`` to `replyTo`.
public struct Ping: Hashable, Sendable {
    public var sequenceNumber: SequenceNumber
    /// The node the sender means to probe; any other node at that address ignores the ping.
    public var target: NodeID
    public var source: NodeID
    public var replyTo: HostPort

    public init(sequenceNumber: SequenceNumber, target: NodeID, source: NodeID, replyTo: HostPort) {
        self.sequenceNumber = sequenceNumber
        self.target = target
        self.source = source
        self.replyTo = replyTo
    }
}

/// An indirect probe: please ping `target` for me and relay its ack (or a nack) to `replyTo`.
public struct PingRequest: Hashable, Sendable {
    public var sequenceNumber: SequenceNumber
    public var target: NodeID
    public var targetAddress: HostPort
    public var source: NodeID
    public var replyTo: HostPort
    /// Lifeguard: answer with a ``Nack`` when the target does not answer in time.
    public var wantsNack: Bool

    public init(
        sequenceNumber: SequenceNumber, target: NodeID, targetAddress: HostPort, source: NodeID,
        replyTo: HostPort, wantsNack: Bool
    ) {
        self.sequenceNumber = sequenceNumber
        self.target = target
        self.targetAddress = targetAddress
        self.source = source
        self.replyTo = replyTo
        self.wantsNack = wantsNack
    }
}

/// The answer to a ping, or a relayed answer to a ping request.
public struct Ack: Hashable, Sendable {
    public var sequenceNumber: SequenceNumber
    public var source: NodeID
    public init(sequenceNumber: SequenceNumber, source: NodeID) {
        self.sequenceNumber = sequenceNumber
        self.source = source
    }
}

/// Lifeguard: an intermediary could not reach the target of a ping request either; tells the
/// requester its own network is fine.
public struct Nack: Hashable, Sendable {
    public var sequenceNumber: SequenceNumber
    public var source: NodeID
    public init(sequenceNumber: SequenceNumber, source: NodeID) {
        self.sequenceNumber = sequenceNumber
        self.source = source
    }
}

/// The protocol message of one UDP packet.
public enum Message: Hashable, Sendable {
    case ping(Ping)
    case pingRequest(PingRequest)
    case ack(Ack)
    case nack(Nack)
    /// Updates only (a graceful leave pushes its `left` this way).
    case gossip
}

/// What one node says about a member; piggybacked on every packet.
public enum Update: Hashable, Sendable {
    case alive(NodeInfo, incarnation: Incarnation)
    case suspect(NodeID, incarnation: Incarnation, from: NodeID)
    case dead(NodeID, incarnation: Incarnation, from: NodeID)
    case left(NodeID, incarnation: Incarnation)

    /// The member the update is about.
    public var subject: NodeID {
        switch self {
        case .alive(let info, _): info.id
        case .suspect(let id, _, _), .dead(let id, _, _), .left(let id, _): id
        }
    }

    public var incarnation: Incarnation {
        switch self {
        case .alive(_, let i), .suspect(_, let i, _), .dead(_, let i, _), .left(_, let i): i
        }
    }
}

/// One UDP datagram before encoding and encryption: a message plus piggybacked updates.
public struct Packet: Hashable, Sendable {
    public var message: Message
    public var updates: [Update]

    public init(message: Message, updates: [Update] = []) {
        self.message = message
        self.updates = updates
    }
}

/// One member in a push-pull full-state exchange.
public struct MemberState: Hashable, Sendable {
    public var info: NodeInfo
    public var incarnation: Incarnation
    public var status: MemberStatus

    public init(info: NodeInfo, incarnation: Incarnation, status: MemberStatus) {
        self.info = info
        self.incarnation = incarnation
        self.status = status
    }
}

/// A full membership view exchanged over TCP (anti-entropy, and the first step of a join).
public struct PushPullState: Hashable, Sendable {
    /// The sender is joining: it sends this to a seed and merges the seed's reply.
    public var isJoin: Bool
    public var members: [MemberState]

    public init(isJoin: Bool, members: [MemberState]) {
        self.isJoin = isJoin
        self.members = members
    }
}
