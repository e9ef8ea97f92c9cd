/// Tunables of ``SWIMInstance``. The defaults suit a LAN: a crashed member of a five-node
/// cluster is declared dead within about 3 s.
public struct SWIMSettings: Hashable, Sendable {
    /// Time between probes (one protocol period), before Lifeguard scaling.
    public var probeInterval: Duration = .milliseconds(300)
    /// How long a direct ping waits for its ack before indirect probes start. MUST be shorter
    /// than `probeInterval`.
    public var probeTimeout: Duration = .milliseconds(120)
    /// How long a member asked for an indirect probe waits before it answers with a nack.
    /// MUST leave the nack time to arrive before the requester's period ends
    /// (`probeTimeout + relayTimeout + round trip < probeInterval`).
    public var relayTimeout: Duration = .milliseconds(100)
    /// How many members are asked to probe indirectly (`k` in SWIM).
    public var indirectProbes: Int = 3
    /// Minimum suspicion timeout = `suspicionMultiplier × max(1, log10(n)) × probeInterval`.
    public var suspicionMultiplier: Double = 3
    /// Maximum suspicion timeout = `suspicionMaxMultiplier × minimum` (Lifeguard).
    public var suspicionMaxMultiplier: Double = 6
    /// Independent confirmations that shorten a suspicion to its minimum (Lifeguard `K`).
    public var suspicionConfirmations: Int = 2
    /// Retransmissions of each update = `retransmitMultiplier × ceil(log2(n + 1))` (SWIM `λ`).
    public var retransmitMultiplier: Int = 3
    /// Lifeguard local health: the score saturates at `maxHealthScore`; probe interval and
    /// timeouts are multiplied by `score + 1`.
    public var maxHealthScore: Int = 7
    /// Largest UDP datagram this node sends, encryption overhead included.
    public var maxPacketSize: Int = 1400
    /// Anti-entropy: a full-state exchange with one random member this often. Unlike
    /// memberlist it is not stretched in large clusters: it is what brings the last few
    /// members up to date after a mass join, and a member's state is only ~110 bytes.
    public var pushPullInterval: Duration = .seconds(30)
    /// How long dead and left members are kept (and occasionally contacted, to heal
    /// partitions) before they are forgotten.
    public var tombstoneLifetime: Duration = .seconds(300)
    /// First retry delay when no seed answers a join; doubles up to `joinRetryMaxInterval`.
    public var joinRetryInterval: Duration = .seconds(1)
    public var joinRetryMaxInterval: Duration = .seconds(30)
    /// Members a graceful leave pushes its `left` update to directly.
    public var leaveFanout: Int = 4

    public init() {}
}
