public import KaaCore

/// SWIM membership with the Lifeguard refinements, as a pure state machine.
///
/// Every `on…` method takes an event and the current ``KaaCore/Instant`` and returns the
/// ``Directive``s the shell must carry out: send a packet, start a push-pull exchange over TCP,
/// schedule a timer, or tell the rest of the node about a membership change. The instance
/// reads no clock, owns no timer and does no I/O; its randomness comes from a seed.
///
/// Shell contract:
/// - Call ``onStart(now:)`` once, then ``onJoin(seeds:now:)`` unless this is the first node.
/// - For `.schedule(timer, after:)`, call ``onTimer(_:now:)`` once the delay has passed. Timers
///   need not be cancelled: a timer that fires late, twice or after its reason went away is
///   ignored.
/// - Decode and authenticate each datagram, then call ``onPacket(_:now:)``; drop what fails.
/// - For `.pushPull(with:isJoin:)`, connect over TCP, send ``makePushPullState(isJoin:)``,
///   read the peer's reply and pass it to ``onPushPull(_:now:)``, or call
///   ``onPushPullFailed(with:now:)``. On an incoming exchange, take ``makePushPullState(isJoin:)``
///   as the reply *before* calling ``onPushPull(_:now:)`` with what the peer sent.
public struct SWIMInstance: Sendable {
    /// Timers the instance asks the shell for.
    public enum Timer: Hashable, Sendable {
        /// Start the next protocol period (probe the next member).
        case protocolPeriod
        /// The direct ping with this sequence number got no ack in time: probe indirectly.
        case probeTimeout(SequenceNumber)
        /// The protocol period of this probe ended: suspect the target unless it answered.
        case indirectProbeTimeout(SequenceNumber)
        /// A ping sent on behalf of a ping request got no ack in time: send the nack.
        case relayTimeout(SequenceNumber)
        /// A suspicion may have expired.
        case suspicion(NodeID)
        /// Time for anti-entropy with a random member.
        case pushPull
        /// Try the seeds again.
        case joinRetry
    }

    /// What the shell must do.
    public enum Directive: Hashable, Sendable {
        /// Encode, seal and send this packet over UDP.
        case send(Packet, to: HostPort)
        /// Exchange full state with this peer over TCP.
        case pushPull(with: HostPort, isJoin: Bool)
        /// Call ``SWIMInstance/onTimer(_:now:)`` with this timer after `after`.
        case schedule(Timer, after: Duration)
        /// Tell the rest of the node.
        case event(MembershipEvent)
    }

    struct Probe: Sendable {
        var target: NodeID
        var expectedNacks = 0
        var nacks = 0
    }

    struct Relay: Sendable {
        var originSequence: SequenceNumber
        var replyTo: HostPort
        var wantsNack: Bool
        var requester: NodeID
    }

    struct Record: Sendable {
        var member: Member
        var suspicion: Suspicion?
    }

    public let settings: SWIMSettings
    /// This node's metadata as it announces it.
    public private(set) var myself: NodeInfo
    /// This node's incarnation; only this node raises it.
    public private(set) var incarnation: Incarnation
    /// Lifeguard local health.
    public private(set) var awareness: Awareness
    /// Protocol periods started so far.
    public private(set) var protocolPeriod: UInt64 = 0
    /// True after ``onLeave(now:)``.
    public private(set) var isLeaving = false

    private var rng: SeededRandom
    private var records: [NodeID: Record] = [:]
    /// Every id in `records`, in insertion order (deterministic iteration; may hold ids
    /// removed since, compacted when tombstones are reaped).
    private var memberOrder: [NodeID] = []
    private var probeOrder: [NodeID] = []
    private var inProbeOrder: Set<NodeID> = []
    private var probeIndex = 0
    private var probes: [SequenceNumber: Probe] = [:]
    private var relays: [SequenceNumber: Relay] = [:]
    private var lastSequence: SequenceNumber = 0
    private var broadcasts = BroadcastQueue()
    private var tombstoneOrder: [NodeID] = []
    /// Alive or suspect members other than this node.
    public private(set) var reachableCount = 0
    private var seeds: [HostPort] = []
    private var joinPending = false
    private var joinFailures = 0
    private var joinRetryDelay: Duration

    /// A new instance for this node. `incarnation` is where it starts (0, or a persisted value);
    /// `seed` makes every random choice repeatable.
    public init(myself: NodeInfo, incarnation: Incarnation = 0, settings: SWIMSettings = SWIMSettings(), seed: UInt64) {
        self.settings = settings
        self.myself = myself
        self.incarnation = incarnation
        self.awareness = Awareness(maximum: settings.maxHealthScore)
        self.rng = SeededRandom(seed: seed)
        self.joinRetryDelay = settings.joinRetryInterval
    }

    // MARK: Views

    /// This node as a member.
    public var myselfMember: Member {
        Member(info: myself, status: isLeaving ? .left : .alive, incarnation: incarnation, statusChangedAt: Instant(nanoseconds: 0))
    }

    /// What this node believes about `id` (nil for itself and for unknown or forgotten ids).
    public func member(_ id: NodeID) -> Member? { records[id]?.member }

    /// Every known member other than this node, tombstones included, in the order first seen.
    public var members: [Member] {
        var seen = Set<NodeID>()
        return memberOrder.compactMap { id in
            guard seen.insert(id).inserted else { return nil }
            return records[id]?.member
        }
    }

    /// The current suspicion of `id`, if it is suspected.
    public func suspicion(of id: NodeID) -> Suspicion? { records[id]?.suspicion }

    /// Updates waiting to be piggybacked.
    public var pendingBroadcasts: Int { broadcasts.count }

    /// Estimated cluster size (reachable members plus this node).
    public var clusterSize: Int { reachableCount + 1 }

    /// How many times each update is sent: `λ · ceil(log2(n + 1))`.
    public var retransmitLimit: Int {
        settings.retransmitMultiplier * ceilLog2(clusterSize + 1)
    }

    /// The current protocol period length (Lifeguard-scaled).
    public var currentProbeInterval: Duration { awareness.scale(settings.probeInterval) }

    // MARK: Lifecycle

    /// Starts the periodic timers. Call once.
    public mutating func onStart(now: Instant) -> [Directive] {
        // A random first offset keeps nodes started together from probing in lockstep.
        let first = Duration.nanoseconds(Int64(rng.unit() * Double(settings.probeInterval.nanosecondsClamped)))
        let firstPushPull = Duration.nanoseconds(Int64(rng.unit() * Double(settings.pushPullInterval.nanosecondsClamped)))
        return [
            .schedule(.protocolPeriod, after: first),
            .schedule(.pushPull, after: firstPushPull),
        ]
    }

    /// Joins through `seeds` (addresses of any existing members): a push-pull with each.
    /// Retries with backoff while none answers.
    public mutating func onJoin(seeds: [HostPort], now: Instant) -> [Directive] {
        self.seeds = seeds.filter { $0 != myself.peerAddress }
        guard !self.seeds.isEmpty else { return [] }
        joinPending = true
        joinFailures = 0
        return self.seeds.map { .pushPull(with: $0, isJoin: true) }
    }

    /// Leaves gracefully: announces `left` (with a higher incarnation) directly to a few
    /// members and on every later packet. The shell SHOULD keep running for a couple of
    /// protocol periods before it stops.
    public mutating func onLeave(now: Instant) -> [Directive] {
        guard !isLeaving else { return [] }
        isLeaving = true
        incarnation += 1
        let update = Update.left(myself.id, incarnation: incarnation)
        enqueue(update)
        var d: [Directive] = []
        for target in randomReachable(count: settings.leaveFanout, excluding: nil) {
            guard let address = records[target]?.member.info.peerAddress else { continue }
            let packet = makePacket(.gossip, priority: update)
            d.append(.send(packet, to: address))
        }
        return d
    }

    /// Replaces this node's metadata (its id stays), bumps the incarnation and disseminates it.
    public mutating func onUpdateMetadata(_ info: NodeInfo, now: Instant) -> [Directive] {
        var info = info
        info.id = myself.id
        guard info != myself else { return [] }
        myself = info
        incarnation += 1
        enqueue(.alive(myself, incarnation: incarnation))
        return [.event(.updated(myselfMember))]
    }

    // MARK: Timers

    /// Dispatches a timer the instance scheduled.
    public mutating func onTimer(_ timer: Timer, now: Instant) -> [Directive] {
        switch timer {
        case .protocolPeriod: onProtocolPeriod(now: now)
        case .probeTimeout(let seq): onProbeTimeout(seq, now: now)
        case .indirectProbeTimeout(let seq): onIndirectProbeTimeout(seq, now: now)
        case .relayTimeout(let seq): onRelayTimeout(seq, now: now)
        case .suspicion(let id): onSuspicionTimeout(id, now: now)
        case .pushPull: onPushPullTimer(now: now)
        case .joinRetry: onJoinRetry(now: now)
        }
    }

    /// One protocol period: schedule the next, reap old tombstones, ping the next member.
    public mutating func onProtocolPeriod(now: Instant) -> [Directive] {
        protocolPeriod += 1
        var d: [Directive] = [.schedule(.protocolPeriod, after: currentProbeInterval)]
        reapTombstones(now: now)
        guard let target = nextProbeTarget(), let record = records[target] else { return d }
        let seq = nextSequence()
        probes[seq] = Probe(target: target)
        // Lifeguard buddy system: a suspect learns of its suspicion from the probe itself.
        let buddy: Update? = record.member.status == .suspect
            ? .suspect(target, incarnation: record.member.incarnation, from: myself.id) : nil
        let ping = Ping(sequenceNumber: seq, target: target, source: myself.id, replyTo: myself.peerAddress)
        d.append(.send(makePacket(.ping(ping), priority: buddy), to: record.member.info.peerAddress))
        d.append(.schedule(.probeTimeout(seq), after: awareness.scale(settings.probeTimeout)))
        d.append(.schedule(.indirectProbeTimeout(seq), after: currentProbeInterval))
        return d
    }

    /// The direct ping got no ack in time: ask `k` members to probe the target.
    public mutating func onProbeTimeout(_ seq: SequenceNumber, now: Instant) -> [Directive] {
        guard var probe = probes[seq], let target = records[probe.target]?.member else { return [] }
        var d: [Directive] = []
        for helper in randomReachable(count: settings.indirectProbes, excluding: probe.target, aliveOnly: true) {
            guard let address = records[helper]?.member.info.peerAddress else { continue }
            let request = PingRequest(
                sequenceNumber: seq, target: probe.target, targetAddress: target.info.peerAddress,
                source: myself.id, replyTo: myself.peerAddress, wantsNack: true)
            d.append(.send(makePacket(.pingRequest(request)), to: address))
            probe.expectedNacks += 1
        }
        probes[seq] = probe
        return d
    }

    /// The protocol period of a probe ended with no ack: adjust health, suspect the target.
    public mutating func onIndirectProbeTimeout(_ seq: SequenceNumber, now: Instant) -> [Directive] {
        guard let probe = probes.removeValue(forKey: seq) else { return [] }
        // Lifeguard: missing nacks mean our own network is the likely problem.
        if probe.expectedNacks > 0 {
            awareness.apply(max(0, probe.expectedNacks - probe.nacks))
        } else {
            awareness.apply(1)
        }
        guard let record = records[probe.target], record.member.status.isReachable else { return [] }
        return applySuspect(probe.target, incarnation: record.member.incarnation, from: myself.id, now: now)
    }

    /// A ping sent for a ping request got no ack: tell the requester with a nack.
    public mutating func onRelayTimeout(_ seq: SequenceNumber, now: Instant) -> [Directive] {
        guard let relay = relays.removeValue(forKey: seq), relay.wantsNack else { return [] }
        let nack = Nack(sequenceNumber: relay.originSequence, source: myself.id)
        return [.send(makePacket(.nack(nack)), to: relay.replyTo)]
    }

    /// A suspicion timer fired: declare the member dead if its suspicion has expired, or wait
    /// for the rest when the timer fired early (a loop's cached clock can run behind the
    /// caller's; without this the suspicion would never expire).
    public mutating func onSuspicionTimeout(_ id: NodeID, now: Instant) -> [Directive] {
        guard var record = records[id], record.member.status == .suspect, let suspicion = record.suspicion else { return [] }
        guard suspicion.deadline <= now else { return [.schedule(.suspicion(id), after: suspicion.deadline - now)] }
        record.member.status = .dead
        record.member.statusChangedAt = now
        record.suspicion = nil
        records[id] = record
        reachableCount -= 1
        tombstoneOrder.append(id)
        enqueue(.dead(id, incarnation: record.member.incarnation, from: myself.id))
        return [.event(.dead(record.member))]
    }

    /// Anti-entropy: push-pull with a random reachable member, and with a random dead one to
    /// heal partitions; back to the seeds when no member is left.
    public mutating func onPushPullTimer(now: Instant) -> [Directive] {
        var d: [Directive] = [.schedule(.pushPull, after: settings.pushPullInterval)]
        guard !isLeaving else { return d }
        if let peer = randomReachable(count: 1, excluding: nil, aliveOnly: true).first,
           let address = records[peer]?.member.info.peerAddress {
            d.append(.pushPull(with: address, isJoin: false))
        } else if !seeds.isEmpty {
            d += seeds.map { .pushPull(with: $0, isJoin: true) }
        }
        let dead = tombstoneOrder.filter { records[$0]?.member.status == .dead }
        if !dead.isEmpty, let address = records[dead[Int(rng.next() % UInt64(dead.count))]]?.member.info.peerAddress {
            d.append(.pushPull(with: address, isJoin: false))
        }
        return d
    }

    /// Retries the seeds if the join has not succeeded yet.
    public mutating func onJoinRetry(now: Instant) -> [Directive] {
        guard joinPending else { return [] }
        joinFailures = 0
        return seeds.map { .pushPull(with: $0, isJoin: true) }
    }

    // MARK: Push-pull

    /// This node's full view (itself included) for a push-pull exchange.
    public func makePushPullState(isJoin: Bool) -> PushPullState {
        var states = [MemberState(info: myself, incarnation: incarnation, status: isLeaving ? .left : .alive)]
        states.reserveCapacity(records.count + 1)
        var seen = Set<NodeID>()
        for id in memberOrder where seen.insert(id).inserted {
            if let m = records[id]?.member {
                states.append(MemberState(info: m.info, incarnation: m.incarnation, status: m.status))
            }
        }
        return PushPullState(isJoin: isJoin, members: states)
    }

    /// Merges a peer's full view. What the peer believes dead is only suspected here, so a
    /// member the peer lost sight of gets its chance to refute.
    public mutating func onPushPull(_ remote: PushPullState, now: Instant) -> [Directive] {
        var d: [Directive] = []
        for s in remote.members {
            switch s.status {
            case .alive:
                d += applyAlive(s.info, incarnation: s.incarnation, now: now)
            case .left:
                d += applyLeft(s.info.id, incarnation: s.incarnation, now: now)
            case .suspect, .dead:
                if s.info.id == myself.id {
                    d += refuteIfNeeded(incarnation: s.incarnation, now: now)
                } else {
                    // Second-hand: not an independent confirmation and not re-broadcast; the
                    // probes to the member carry it (buddy system) so it can refute.
                    d += applySuspect(s.info.id, incarnation: s.incarnation, from: myself.id, now: now, secondHand: true)
                }
            }
        }
        if joinPending && reachableCount > 0 {
            joinPending = false
            joinRetryDelay = settings.joinRetryInterval
        }
        return d
    }

    /// A push-pull exchange with `peer` failed (refused, timed out, or bad data).
    public mutating func onPushPullFailed(with peer: HostPort, now: Instant) -> [Directive] {
        guard joinPending, seeds.contains(peer) else { return [] }
        joinFailures += 1
        guard joinFailures >= seeds.count else { return [] }
        let delay = joinRetryDelay
        joinRetryDelay = min(settings.joinRetryMaxInterval, joinRetryDelay * 2)
        return [.schedule(.joinRetry, after: delay)]
    }

    // MARK: Packets

    /// Handles one decoded, authenticated packet: its updates first, then its message.
    public mutating func onPacket(_ packet: Packet, now: Instant) -> [Directive] {
        var d: [Directive] = []
        for update in packet.updates { d += apply(update, now: now) }
        switch packet.message {
        case .ping(let ping):
            guard ping.target == myself.id else { break }  // meant for a previous occupant of this address
            let ack = Ack(sequenceNumber: ping.sequenceNumber, source: myself.id)
            d.append(.send(makePacket(.ack(ack)), to: ping.replyTo))
        case .pingRequest(let request):
            guard request.target != myself.id else { break }
            let seq = nextSequence()
            relays[seq] = Relay(
                originSequence: request.sequenceNumber, replyTo: request.replyTo, wantsNack: request.wantsNack,
                requester: request.source)
            let ping = Ping(sequenceNumber: seq, target: request.target, source: myself.id, replyTo: myself.peerAddress)
            d.append(.send(makePacket(.ping(ping)), to: request.targetAddress))
            d.append(.schedule(.relayTimeout(seq), after: settings.relayTimeout))
        case .ack(let ack):
            if probes.removeValue(forKey: ack.sequenceNumber) != nil {
                awareness.apply(-1)
            } else if let relay = relays.removeValue(forKey: ack.sequenceNumber) {
                let forwarded = Ack(sequenceNumber: relay.originSequence, source: ack.source)
                d.append(.send(makePacket(.ack(forwarded)), to: relay.replyTo))
            }
        case .nack(let nack):
            probes[nack.sequenceNumber]?.nacks += 1
        case .gossip:
            break
        }
        return d
    }

    /// Applies one piggybacked update.
    public mutating func apply(_ update: Update, now: Instant) -> [Directive] {
        switch update {
        case .alive(let info, let inc): applyAlive(info, incarnation: inc, now: now)
        case .suspect(let id, let inc, let from): applySuspect(id, incarnation: inc, from: from, now: now)
        case .dead(let id, let inc, let from): applyDead(id, incarnation: inc, from: from, now: now)
        case .left(let id, let inc): applyLeft(id, incarnation: inc, now: now)
        }
    }

    // MARK: State changes

    private mutating func applyAlive(_ info: NodeInfo, incarnation inc: Incarnation, now: Instant) -> [Directive] {
        if info.id == myself.id {
            // Someone speaks of an older life of ours, or of us with other metadata: correct it.
            if inc > incarnation || (inc == incarnation && info != myself) {
                return refute(seen: inc, raiseAwareness: false)
            }
            return []
        }
        guard var record = records[info.id] else {
            let member = Member(info: info, status: .alive, incarnation: inc, statusChangedAt: now)
            records[info.id] = Record(member: member)
            memberOrder.append(info.id)
            reachableCount += 1
            addToProbeOrder(info.id)
            enqueue(.alive(info, incarnation: inc))
            return [.event(.joined(member))]
        }
        guard inc > record.member.incarnation else { return [] }
        let previous = record.member
        record.member.info = info
        record.member.incarnation = inc
        record.suspicion = nil
        record.member.status = .alive
        if previous.status != .alive { record.member.statusChangedAt = now }
        records[info.id] = record
        enqueue(.alive(info, incarnation: inc))
        switch previous.status {
        case .alive:
            return previous.info != info ? [.event(.updated(record.member))] : []
        case .suspect:
            return [.event(.alive(record.member))] + (previous.info != info ? [.event(.updated(record.member))] : [])
        case .dead, .left:
            reachableCount += 1
            addToProbeOrder(info.id)
            return [.event(.joined(record.member))]
        }
    }

    private mutating func applySuspect(_ id: NodeID, incarnation inc: Incarnation, from: NodeID, now: Instant, secondHand: Bool = false) -> [Directive] {
        if id == myself.id { return refuteIfNeeded(incarnation: inc, now: now) }
        guard var record = records[id], inc >= record.member.incarnation, record.member.status.isReachable else { return [] }
        if record.member.status == .suspect && secondHand { return [] }
        if record.member.status == .suspect, var suspicion = record.suspicion {
            record.member.incarnation = inc
            guard suspicion.confirm(from) else {
                records[id] = record
                return []
            }
            record.suspicion = suspicion
            records[id] = record
            enqueue(.suspect(id, incarnation: inc, from: from))
            let remaining = suspicion.deadline - now
            return [.schedule(.suspicion(id), after: max(.zero, remaining))]
        }
        let n = clusterSize
        let minimum = settings.probeInterval * (settings.suspicionMultiplier * max(1, _log(Double(n)) / _log(10)))
        let maximum = minimum * settings.suspicionMaxMultiplier
        let k = n - 2 < settings.suspicionConfirmations ? 0 : settings.suspicionConfirmations
        let suspicion = Suspicion(from: from, startedAt: now, minimum: minimum, maximum: maximum, expectedConfirmations: k)
        record.member.status = .suspect
        record.member.incarnation = inc
        record.member.statusChangedAt = now
        record.suspicion = suspicion
        records[id] = record
        if !secondHand { enqueue(.suspect(id, incarnation: inc, from: from)) }
        return [.event(.suspect(record.member)), .schedule(.suspicion(id), after: suspicion.timeout)]
    }

    private mutating func applyDead(_ id: NodeID, incarnation inc: Incarnation, from: NodeID, now: Instant) -> [Directive] {
        if id == myself.id { return refuteIfNeeded(incarnation: inc, now: now) }
        guard var record = records[id], inc >= record.member.incarnation, record.member.status.isReachable else { return [] }
        record.member.status = .dead
        record.member.incarnation = inc
        record.member.statusChangedAt = now
        record.suspicion = nil
        records[id] = record
        reachableCount -= 1
        tombstoneOrder.append(id)
        enqueue(.dead(id, incarnation: inc, from: from))
        return [.event(.dead(record.member))]
    }

    private mutating func applyLeft(_ id: NodeID, incarnation inc: Incarnation, now: Instant) -> [Directive] {
        if id == myself.id { return isLeaving ? [] : refuteIfNeeded(incarnation: inc, now: now) }
        guard var record = records[id], inc >= record.member.incarnation, record.member.status != .left else { return [] }
        if record.member.status == .dead && inc == record.member.incarnation { return [] }
        let wasReachable = record.member.status.isReachable
        record.member.status = .left
        record.member.incarnation = inc
        record.member.statusChangedAt = now
        record.suspicion = nil
        records[id] = record
        if wasReachable { reachableCount -= 1 }
        tombstoneOrder.append(id)
        enqueue(.left(id, incarnation: inc))
        return [.event(.left(record.member))]
    }

    /// Someone says this node is suspect or dead at `inc`: refute unless that is already stale.
    private mutating func refuteIfNeeded(incarnation inc: Incarnation, now: Instant) -> [Directive] {
        guard !isLeaving, inc >= incarnation else { return [] }
        return refute(seen: inc, raiseAwareness: true)
    }

    private mutating func refute(seen inc: Incarnation, raiseAwareness: Bool) -> [Directive] {
        guard !isLeaving else { return [] }
        incarnation = max(incarnation, inc) + 1
        // Lifeguard: being suspected hints that our own probes and acks are late.
        if raiseAwareness { awareness.apply(1) }
        enqueue(.alive(myself, incarnation: incarnation))
        return []
    }

    // MARK: Helpers

    private mutating func nextSequence() -> SequenceNumber {
        lastSequence &+= 1
        return lastSequence
    }

    private mutating func enqueue(_ update: Update) {
        broadcasts.enqueue(update, size: WireCodec.encodedSize(of: update))
    }

    /// A packet with as many queued updates as fit the safe UDP payload; `priority` first.
    private mutating func makePacket(_ message: Message, priority: Update? = nil) -> Packet {
        // Room for the envelope and for the update count varint.
        var budget = settings.maxPacketSize - Keyring.overhead - WireCodec.encodedSize(of: message) - 2
        var updates: [Update] = []
        if let priority {
            updates.append(priority)
            budget -= WireCodec.encodedSize(of: priority)
        }
        if budget > 0 {
            updates += broadcasts.take(budget: budget, limit: retransmitLimit, skip: priority?.subject)
        }
        return Packet(message: message, updates: updates)
    }

    private mutating func addToProbeOrder(_ id: NodeID) {
        guard inProbeOrder.insert(id).inserted else { return }
        // Insert at a random spot among the members not yet probed this round.
        probeOrder.append(id)
        let lo = min(probeIndex, probeOrder.count - 1)
        let j = lo + Int(rng.next() % UInt64(probeOrder.count - lo))
        probeOrder.swapAt(j, probeOrder.count - 1)
    }

    /// Round-robin over a shuffled order of reachable members, reshuffled every round.
    private mutating func nextProbeTarget() -> NodeID? {
        var checked = 0
        while checked <= probeOrder.count {
            if probeIndex >= probeOrder.count {
                probeOrder = probeOrder.filter { id in
                    let keep = records[id]?.member.status.isReachable ?? false
                    if !keep { inProbeOrder.remove(id) }
                    return keep
                }
                probeOrder.shuffle(using: &rng)
                probeIndex = 0
                if probeOrder.isEmpty { return nil }
            }
            let id = probeOrder[probeIndex]
            probeIndex += 1
            checked += 1
            if records[id]?.member.status.isReachable == true { return id }
        }
        return nil
    }

    /// Up to `count` distinct random reachable members, never `excluding`.
    private mutating func randomReachable(count: Int, excluding: NodeID?, aliveOnly: Bool = false) -> [NodeID] {
        guard count > 0, !probeOrder.isEmpty else { return [] }
        var picked: [NodeID] = []
        var tries = 0
        while picked.count < count && tries < count * 8 + 8 {
            tries += 1
            let id = probeOrder[Int(rng.next() % UInt64(probeOrder.count))]
            guard id != excluding, !picked.contains(id), let status = records[id]?.member.status else { continue }
            if aliveOnly ? status == .alive : status.isReachable { picked.append(id) }
        }
        if picked.count < count && probeOrder.count <= count * 8 {
            // Small clusters: fall back to a scan so no eligible member is missed.
            for id in probeOrder where picked.count < count && id != excluding && !picked.contains(id) {
                guard let status = records[id]?.member.status else { continue }
                if aliveOnly ? status == .alive : status.isReachable { picked.append(id) }
            }
        }
        return picked
    }

    private mutating func reapTombstones(now: Instant) {
        var reaped = false
        while let id = tombstoneOrder.first {
            guard let m = records[id]?.member, !m.status.isReachable else {
                tombstoneOrder.removeFirst()
                continue
            }
            guard m.statusChangedAt + settings.tombstoneLifetime <= now else { break }
            records[id] = nil
            tombstoneOrder.removeFirst()
            reaped = true
        }
        if reaped {
            var seen = Set<NodeID>()
            memberOrder = memberOrder.filter { records[$0] != nil && seen.insert($0).inserted }
        }
    }
}

/// `ceil(log2(x))` for x ≥ 1.
func ceilLog2(_ x: Int) -> Int {
    var n = 0
    while (1 << n) < x { n += 1 }
    return n
}
