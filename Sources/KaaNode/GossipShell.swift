import Foundation
import Glibc
import KaaCluster
import KaaCore
import KaaIO
import Logging

/// Runs the SWIM state machine on the node's loop: UDP datagrams sealed with the cluster
/// keyring, push-pull state over peer frames, and the machine's timers as loop timers.
/// Loop-confined; the rest of the node reads ``members`` and subscribes to events.
public final class GossipShell {
    let loop: EventLoop
    private(set) var instance: SWIMInstance
    private let keyring: Keyring
    private let frames: FrameClient
    private let logger: Logger
    private var udp: UDPSocket?
    /// Peer host names resolved off the loop, cached.
    private let resolver: HostResolver
    private var listeners: [(MembershipEvent) -> Void] = []
    private let incarnationFile: String
    /// The highest incarnation written to `incarnationFile`, or being written.
    private var persistedIncarnation: Incarnation
    /// Whether a write of the incarnation file runs on the thread pool now.
    private var writingIncarnation = false
    private var stopped = false
    /// Datagrams that failed authentication or decoding, dropped.
    public private(set) var droppedPackets = 0
    /// Gossip bytes sent and received over UDP.
    public private(set) var bytesSent = 0
    public private(set) var bytesReceived = 0
    /// Push-pull (full membership state over the peer plane) bytes sent and received.
    public private(set) var pushPullBytesSent = 0
    public private(set) var pushPullBytesReceived = 0

    init(loop: EventLoop, instance: SWIMInstance, keyring: Keyring, frames: FrameClient,
         incarnationFile: String, logger: Logger) {
        self.loop = loop
        self.instance = instance
        self.keyring = keyring
        self.frames = frames
        self.incarnationFile = incarnationFile
        self.persistedIncarnation = instance.incarnation
        self.logger = logger
        self.resolver = HostResolver(loop: loop)
    }

    /// Binds the UDP socket on `address`, starts the protocol and joins through `seeds`.
    func start(address: SocketAddress, seeds: [HostPort]) throws {
        loop.assertInLoop()
        udp = try UDPSocket(loop: loop, address: address) { [weak self] bytes, from in
            self?.receive(bytes, from: from)
        }
        run(instance.onStart(now: .now()))
        if !seeds.isEmpty { run(instance.onJoin(seeds: seeds, now: .now())) }
    }

    /// Announces a graceful leave, then stops answering.
    func leave() {
        guard !stopped else { return }
        run(instance.onLeave(now: .now()))
    }

    func stop() {
        stopped = true
        udp?.close()
    }

    /// Calls `listener` on the loop for every membership change.
    func subscribe(_ listener: @escaping (MembershipEvent) -> Void) { listeners.append(listener) }

    /// This node and every member it knows, tombstones included.
    var members: [Member] { [instance.myselfMember] + instance.members }

    // MARK: directives

    private func run(_ directives: [SWIMInstance.Directive]) {
        for directive in directives {
            switch directive {
            case .send(let packet, let to):
                send(packet, to: to)
            case .pushPull(let peer, let isJoin):
                pushPull(with: peer, isJoin: isJoin)
            case .schedule(let timer, let after):
                loop.schedule(after: after) { [weak self] in
                    guard let self, !self.stopped else { return }
                    self.run(self.instance.onTimer(timer, now: .now()))
                }
            case .event(let event):
                log(event)
                for listener in listeners { listener(event) }
            }
        }
        persistIncarnationIfRaised()
    }

    private func send(_ packet: Packet, to peer: HostPort) {
        guard !stopped, udp != nil else { return }
        // Numeric and cached addresses are sent at once; a name is looked up off the loop first.
        resolver.resolve(peer) { [weak self] result in
            guard let self, !self.stopped, let udp = self.udp else { return }
            switch result {
            case .success(let address):
                do {
                    let sealed = try self.keyring.seal(WireCodec.encode(packet))
                    udp.send(sealed, to: address)
                    self.bytesSent += sealed.count
                } catch {
                    self.logger.error("cannot seal gossip packet", metadata: ["error": "\(error)"])
                }
            case .failure(let error):
                self.logger.warning("cannot resolve peer address", metadata: ["peer.addr": "\(peer)", "error": "\(error.message)"])
            }
        }
    }

    private func receive(_ bytes: UnsafeRawBufferPointer, from: SocketAddress) {
        guard !stopped else { return }
        bytesReceived += bytes.count
        let packet: Packet
        do { packet = try WireCodec.decodePacket(keyring.open(Array(bytes))) } catch {
            droppedPackets += 1
            if droppedPackets.nonzeroBitCount == 1 { // 1st, 2nd, 4th, 8th, ...: not a log flood
                logger.warning("dropped gossip packet", metadata: [
                    "peer.addr": "\(from)", "error": "\(error)", "dropped.total": "\(droppedPackets)",
                ])
            }
            return
        }
        run(instance.onPacket(packet, now: .now()))
    }

    // MARK: push-pull

    private func pushPull(with peer: HostPort, isJoin: Bool) {
        let payload: [UInt8]
        do { payload = try keyring.seal(WireCodec.encode(instance.makePushPullState(isJoin: isJoin))) } catch {
            run(instance.onPushPullFailed(with: peer, now: .now()))
            return
        }
        let bound = LoopBound(self, loop: loop)
        pushPullBytesSent += payload.count
        frames.request(to: peer, type: Node.PeerFrameType.pushPull, payload: payload, deadline: .seconds(3)) { result in
            let shell = bound.value
            guard !shell.stopped else { return }
            switch result {
            case .success(let frame):
                shell.pushPullBytesReceived += frame.payload.count
                do {
                    let state = try WireCodec.decodePushPull(shell.keyring.open(frame.payload))
                    shell.run(shell.instance.onPushPull(state, now: .now()))
                } catch {
                    shell.logger.warning("bad push-pull answer", metadata: ["peer.addr": "\(peer)", "error": "\(error)"])
                    shell.run(shell.instance.onPushPullFailed(with: peer, now: .now()))
                }
            case .failure(let error):
                shell.logger.debug("push-pull failed", metadata: ["peer.addr": "\(peer)", "error": "\(error)"])
                shell.run(shell.instance.onPushPullFailed(with: peer, now: .now()))
            }
        }
    }

    /// Answers a peer's push-pull frame with this node's state, then merges the peer's.
    func answerPushPull(_ frame: Frame, _ responder: FrameResponder) {
        guard !stopped else { return responder.fail(.notReady, "node is stopping") }
        pushPullBytesReceived += frame.payload.count
        let remote: PushPullState
        do { remote = try WireCodec.decodePushPull(keyring.open(frame.payload)) } catch {
            droppedPackets += 1
            if droppedPackets.nonzeroBitCount == 1 {
                logger.warning("refused push-pull", metadata: ["error": "\(error)", "dropped.total": "\(droppedPackets)"])
            }
            responder.fail(.badRequest, "push-pull refused: \(error)")
            return
        }
        do {
            let answer = try keyring.seal(WireCodec.encode(instance.makePushPullState(isJoin: remote.isJoin)))
            pushPullBytesSent += answer.count
            responder.respond(answer)
        } catch {
            responder.fail(.internal, "cannot seal state: \(error)")
        }
        run(instance.onPushPull(remote, now: .now()))
    }

    // MARK: events and incarnation

    private func log(_ event: MembershipEvent) {
        let m = event.member
        let metadata: Logger.Metadata = [
            "peer.id": "\(m.id)", "peer.name": "\(m.info.name)", "peer.addr": "\(m.info.peerAddress)",
            "peer.incarnation": "\(m.incarnation)",
        ]
        switch event {
        case .joined: logger.info("member joined", metadata: metadata)
        case .alive: logger.info("member alive again", metadata: metadata)
        case .suspect: logger.notice("member suspected", metadata: metadata)
        case .dead: logger.warning("member dead", metadata: metadata)
        case .left: logger.info("member left", metadata: metadata)
        case .updated: logger.debug("member updated", metadata: metadata)
        }
    }

    /// A restarted node must come back with a higher incarnation than any it used before. The
    /// file is written on the thread pool, one write at a time, the latest value last; a
    /// failed write is logged.
    private func persistIncarnationIfRaised() {
        guard instance.incarnation > persistedIncarnation, !writingIncarnation else { return }
        let value = instance.incarnation
        persistedIncarnation = value
        writingIncarnation = true
        let file = incarnationFile
        loop.offload({ () -> String? in
            do { try NodeIdentity.atomicWrite("\(value)\n", to: file); return nil } catch { return "\(error)" }
        }) { [weak self] failure in
            guard let self else { return }
            self.writingIncarnation = false
            if let failure {
                self.logger.error("cannot persist the incarnation; after a restart this node may come back with one it used before",
                                  metadata: ["file": "\(file)", "incarnation": "\(value)", "error": "\(failure)"])
            }
            self.persistIncarnationIfRaised() // raised again while this write ran
        }
    }
}

/// The node's durable identity in its data directory: its id and last incarnation.
enum NodeIdentity {
    /// Reads `<dir>/node-id`, creating it with a fresh id on first start.
    static func loadID(directory: String) throws -> NodeID {
        let path = directory + "/node-id"
        if let text = try? String(contentsOfFile: path, encoding: .utf8) {
            let id = text.trimmingCharacters(in: .whitespacesAndNewlines)
            guard !id.isEmpty, id.count <= 64 else {
                throw ConfigError("\(path) does not hold a node id; remove it to get a new one")
            }
            return NodeID(id)
        }
        var rng = SystemRandomNumberGenerator()
        let id = NodeID.random(using: &rng)
        try atomicWrite(id.rawValue + "\n", to: path)
        return id
    }

    /// The incarnation to start with: one past the last one this data directory used.
    static func nextIncarnation(directory: String) -> Incarnation {
        let path = directory + "/incarnation"
        let last = (try? String(contentsOfFile: path, encoding: .utf8))
            .flatMap { Incarnation($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        // Saturating: a file holding the largest value must not trap the start.
        let next = last.map { $0 == .max ? $0 : $0 + 1 } ?? 0
        writeIncarnation(next, to: path)
        return next
    }

    static func writeIncarnation(_ value: Incarnation, to path: String) {
        try? atomicWrite("\(value)\n", to: path)
    }

    /// Writes `text` to a temp file, fsyncs it and renames it over `path`.
    static func atomicWrite(_ text: String, to path: String) throws {
        let temp = path + ".tmp"
        let fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw ConfigError("cannot write \(temp): \(String(cString: strerror(errno)))") }
        let bytes = Array(text.utf8)
        let ok = write(fd, bytes, bytes.count) == bytes.count && fsync(fd) == 0
        close(fd)
        guard ok, rename(temp, path) == 0 else { throw ConfigError("cannot write \(path): \(String(cString: strerror(errno)))") }
    }
}
