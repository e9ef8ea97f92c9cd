public import KaaCluster
public import KaaCore

/// A deterministic, in-process network running many real ``SWIMInstance``s.
///
/// Time advances event by event (no sleeping): packets arrive after a random delay or are
/// lost, partitions drop packets between groups, paused nodes hold their events until they
/// resume, crashed nodes drop everything. TCP push-pull exchanges are simulated as reliable
/// round trips that fail across partitions and to crashed nodes. Everything random comes
/// from the seed, so a run replays exactly.
///
/// Confined to the thread that created it.
public final class ClusterSimulation {
    /// Network behaviour.
    public struct Network: Sendable {
        /// One-way UDP delay, uniform in this range.
        public var minimumDelay: Duration = .microseconds(200)
        public var maximumDelay: Duration = .milliseconds(2)
        /// Probability that a UDP packet is lost.
        public var loss: Double = 0
        /// Time until a push-pull to an unreachable peer is reported as failed.
        public var tcpFailureDelay: Duration = .seconds(1)
        /// Encode and decode every packet through ``WireCodec`` (slower; proves the codec
        /// carries everything the protocol needs).
        public var roundTripCodec = false
        /// Count encoded bytes of every packet (for bandwidth figures).
        public var measureBytes = false

        public init() {}
    }

    public enum NodeState: Sendable, Equatable {
        case notStarted, up, paused, crashed
    }

    public struct Node {
        public var instance: SWIMInstance
        public var state: NodeState
        /// Partition group; packets flow only within a group.
        public var group: Int = 0
        public var packetsSent = 0
        public var bytesSent = 0
        /// Encoded push-pull bytes this node sent over TCP (requests and replies; only
        /// counted with ``Network/measureBytes``).
        public var pushPullBytesSent = 0
        var held: [Event] = []
    }

    enum Event {
        case packet(to: Int, Packet)
        case timer(node: Int, SWIMInstance.Timer)
        case pushPullRequest(to: Int, from: Int, PushPullState)
        case pushPullReply(to: Int, PushPullState)
        case pushPullFailed(node: Int, peer: HostPort)
        case call(() -> Void)
    }

    public private(set) var nodes: [Node] = []
    public private(set) var now = Instant(nanoseconds: 1_000_000_000)
    public var network: Network
    /// Called for every membership event a node emits: (node index, event, time).
    public var onEvent: ((Int, MembershipEvent, Instant) -> Void)?
    public private(set) var eventsProcessed = 0
    public private(set) var packetsLost = 0

    private var queue = EventHeap<Event>()
    private var rng: SeededRandom
    private var addressIndex: [HostPort: Int] = [:]

    public init(seed: UInt64, network: Network = Network()) {
        self.rng = SeededRandom(seed: seed)
        self.network = network
    }

    // MARK: Building

    /// The metadata the simulation gives node `index`.
    public static func info(index: Int, rng: inout SeededRandom) -> NodeInfo {
        let host = "10.\(index / 65536 % 256).\(index / 256 % 256).\(index % 256)"
        return NodeInfo(
            id: NodeID.random(using: &rng), name: "node-\(index)",
            peerAddress: HostPort(host: host, port: 7946), httpAddress: HostPort(host: host, port: 8080),
            zone: "zone-\(index % 3)",
            capacity: Capacity(cores: 16, memoryBytes: 64 << 30, gpuCount: index % 4 == 0 ? 1 : 0, gpuMemoryBytes: index % 4 == 0 ? 24 << 30 : 0),
            startedAtUnixMilliseconds: 1_763_900_000_000 + UInt64(index))
    }

    /// Adds a node that is not started yet; returns its index.
    @discardableResult
    public func addNode(settings: SWIMSettings = SWIMSettings()) -> Int {
        let index = nodes.count
        let info = Self.info(index: index, rng: &rng)
        let instance = SWIMInstance(myself: info, settings: settings, seed: rng.next())
        nodes.append(Node(instance: instance, state: .notStarted))
        addressIndex[info.peerAddress] = index
        return index
    }

    public func address(of node: Int) -> HostPort { nodes[node].instance.myself.peerAddress }
    public func id(of node: Int) -> NodeID { nodes[node].instance.myself.id }

    // MARK: Driving

    /// Starts node `node` now and joins it through `seeds` (node indexes).
    public func start(_ node: Int, seeds: [Int]) {
        nodes[node].state = .up
        var d = nodes[node].instance.onStart(now: now)
        d += nodes[node].instance.onJoin(seeds: seeds.map { address(of: $0) }, now: now)
        perform(d, for: node)
    }

    /// Starts node `node` at `time` (absolute).
    public func start(_ node: Int, seeds: [Int], at time: Instant) {
        schedule(at: time) { [unowned self] in self.start(node, seeds: seeds) }
    }

    /// Kills the process: it sends and receives nothing from now on.
    public func crash(_ node: Int) {
        nodes[node].state = .crashed
        nodes[node].held = []
    }

    /// Freezes the process (a long GC or VM pause): its events wait until ``resume(_:)``.
    public func pause(_ node: Int) { if nodes[node].state == .up { nodes[node].state = .paused } }

    /// Resumes a paused node; everything it missed is handled now, in order.
    public func resume(_ node: Int) {
        guard nodes[node].state == .paused else { return }
        nodes[node].state = .up
        let held = nodes[node].held
        nodes[node].held = []
        for e in held { queue.push(e, at: now.nanoseconds) }
    }

    /// Graceful leave.
    public func leave(_ node: Int) {
        let d = nodes[node].instance.onLeave(now: now)
        perform(d, for: node)
    }

    /// Changes a node's metadata at run time.
    public func updateMetadata(_ node: Int, _ change: (inout NodeInfo) -> Void) {
        var info = nodes[node].instance.myself
        change(&info)
        perform(nodes[node].instance.onUpdateMetadata(info, now: now), for: node)
    }

    /// Splits the network: node `i` can reach node `j` only when `group(i) == group(j)`.
    public func partition(_ group: (Int) -> Int) {
        for i in nodes.indices { nodes[i].group = group(i) }
    }

    /// Heals every partition.
    public func heal() { for i in nodes.indices { nodes[i].group = 0 } }

    /// Runs `action` at `time`.
    public func schedule(at time: Instant, _ action: @escaping () -> Void) {
        queue.push(.call(action), at: max(time, now).nanoseconds)
    }

    /// Processes events up to and including `time`, then sets the clock to `time`.
    public func run(until time: Instant) {
        while let next = queue.nextTime, next <= time.nanoseconds {
            let (t, event) = queue.pop()!
            now = Instant(nanoseconds: t)
            handle(event)
        }
        now = max(now, time)
    }

    public func run(for duration: Duration) { run(until: now + duration) }

    /// Runs in steps of `step` until `condition` holds or `limit` passes; returns whether it held.
    @discardableResult
    public func run(step: Duration, limit: Duration, until condition: () -> Bool) -> Bool {
        let end = now + limit
        while now < end {
            if condition() { return true }
            run(until: min(end, now + step))
        }
        return condition()
    }

    /// Adds `n` nodes to an empty simulation, starts them `spacing` apart, each joining through
    /// node 0, and runs until every one sees every other alive, for at most `limit`. Returns
    /// the time from the first start, nil when they did not converge. `progress` runs after
    /// each simulated second of the wait.
    public func formCluster(_ n: Int, settings: SWIMSettings = SWIMSettings(), spacing: Duration, limit: Duration = .seconds(600),
                            progress: () -> Void = {}) -> Duration? {
        precondition(nodes.isEmpty, "formCluster starts an empty simulation")
        for _ in 0..<n { addNode(settings: settings) }
        let t0 = now
        start(0, seeds: [])
        for i in 1..<n { start(i, seeds: [0], at: t0 + spacing * i) }
        run(until: t0 + spacing * n)
        let all = Array(0..<n)
        guard run(step: .seconds(1), limit: limit, until: {
            progress()
            return converged(all)
        }) else { return nil }
        return now - t0
    }

    // MARK: Views

    /// Indexes of nodes that are up or paused.
    public var liveNodes: [Int] { nodes.indices.filter { nodes[$0].state == .up || nodes[$0].state == .paused } }

    /// True when every node in `group` sees every other one alive and nobody else reachable.
    public func converged(_ group: [Int]) -> Bool {
        for i in group where nodes[i].instance.reachableCount != group.count - 1 { return false }
        for i in group {
            let inst = nodes[i].instance
            for j in group where j != i {
                guard inst.member(id(of: j))?.status == .alive else { return false }
            }
        }
        return true
    }

    // MARK: Machinery

    private func handle(_ event: Event) {
        eventsProcessed += 1
        let target: Int?
        switch event {
        case .packet(let to, _), .pushPullRequest(let to, _, _), .pushPullReply(let to, _): target = to
        case .timer(let node, _), .pushPullFailed(let node, _): target = node
        case .call: target = nil
        }
        if let target {
            switch nodes[target].state {
            case .crashed, .notStarted: return
            case .paused:
                nodes[target].held.append(event)
                return
            case .up: break
            }
        }
        switch event {
        case .packet(let to, let packet):
            perform(nodes[to].instance.onPacket(packet, now: now), for: to)
        case .timer(let node, let timer):
            perform(nodes[node].instance.onTimer(timer, now: now), for: node)
        case .pushPullRequest(let to, let from, let state):
            let reply = nodes[to].instance.makePushPullState(isJoin: false)
            if network.measureBytes { nodes[to].pushPullBytesSent += WireCodec.encode(reply).count + Keyring.overhead }
            perform(nodes[to].instance.onPushPull(state, now: now), for: to)
            if reachable(from, to) {
                queue.push(.pushPullReply(to: from, reply), at: (now + delay()).nanoseconds)
            } else {
                queue.push(.pushPullFailed(node: from, peer: address(of: to)), at: (now + network.tcpFailureDelay).nanoseconds)
            }
        case .pushPullReply(let to, let state):
            perform(nodes[to].instance.onPushPull(state, now: now), for: to)
        case .pushPullFailed(let node, let peer):
            perform(nodes[node].instance.onPushPullFailed(with: peer, now: now), for: node)
        case .call(let action):
            action()
        }
    }

    private func reachable(_ a: Int, _ b: Int) -> Bool {
        nodes[a].group == nodes[b].group && nodes[b].state != .crashed && nodes[b].state != .notStarted
    }

    private func delay() -> Duration {
        let lo = network.minimumDelay.nanosecondsClamped, hi = network.maximumDelay.nanosecondsClamped
        return .nanoseconds(lo + Int64(rng.unit() * Double(max(0, hi - lo))))
    }

    private func perform(_ directives: [SWIMInstance.Directive], for node: Int) {
        for d in directives {
            switch d {
            case .send(var packet, let address):
                nodes[node].packetsSent += 1
                if network.measureBytes || network.roundTripCodec {
                    let bytes = WireCodec.encode(packet)
                    nodes[node].bytesSent += bytes.count + Keyring.overhead
                    if network.roundTripCodec {
                        do { packet = try WireCodec.decodePacket(bytes) } catch {
                            preconditionFailure("codec failed to round-trip its own packet: \(error)")
                        }
                    }
                }
                guard let to = addressIndex[address] else { continue }
                if network.loss > 0 && rng.unit() < network.loss { packetsLost += 1; continue }
                guard nodes[node].group == nodes[to].group else { packetsLost += 1; continue }
                queue.push(.packet(to: to, packet), at: (now + delay()).nanoseconds)
            case .pushPull(let address, let isJoin):
                guard let to = addressIndex[address] else { continue }
                let state = nodes[node].instance.makePushPullState(isJoin: isJoin)
                if network.measureBytes { nodes[node].pushPullBytesSent += WireCodec.encode(state).count + Keyring.overhead }
                if reachable(node, to) {
                    queue.push(.pushPullRequest(to: to, from: node, state), at: (now + delay()).nanoseconds)
                } else {
                    queue.push(.pushPullFailed(node: node, peer: address), at: (now + network.tcpFailureDelay).nanoseconds)
                }
            case .schedule(let timer, let after):
                queue.push(.timer(node: node, timer), at: (now + after).nanoseconds)
            case .event(let e):
                onEvent?(node, e, now)
            }
        }
    }
}
