import Dispatch
import Foundation
import Glibc
public import KaaCluster
import KaaCore
public import KaaIO
public import KaaSnapshot
public import Logging
import Synchronization

/// One `kaa node` process: the event loop, the HTTP API, the peer plane, and their lifecycle.
///
/// `start()` binds everything or throws; SIGTERM/SIGINT begin a graceful shutdown: readiness
/// turns false, the node's snapshot copies are handed over to other nodes (within
/// `leave_timeout`), listeners close, in-flight requests get `shutdownGrace` to finish, then
/// every connection closes and `waitUntilStopped()` returns.
public final class Node: Sendable {
    public let config: NodeConfig
    public let logger: Logger
    public let loop: EventLoop
    private let dataLock: DataDirectoryLock
    /// The node's snapshot store and catalog, in its data directory.
    public let store: SnapshotStore
    /// The calls it accepted and could not answer, in `<data_dir>/deadletters.sqlite`.
    let deadLetterStore: DeadLetterStore
    private let state = Locked<State>(State())
    private let stopped = DispatchSemaphore(value: 0)

    /// This node's persisted id.
    public let nodeID: NodeID
    private let keyring: Keyring
    private let firstIncarnation: Incarnation
    /// Who may call what; nil when no tokens file is configured (everything open).
    private let access: AccessPolicy?

    /// Set on the loop once gossip runs.
    private let replicator: LoopCell<Replicator>

    private struct State {
        var http: HTTPServer?
        var peer: FrameServer?
        var gossip: LoopBound<GossipShell>?
        var frames: FrameClient?
        var serving: LoopBound<ModelServer>?
        var signals: [LoopBound<SignalWatcher>] = []
        var stopping = false
        /// What a shutdown under way is doing now, for the watchdog's report.
        var stage = ""
        var finished = false
    }

    /// Creates the node, its data directory and its loop; binds nothing yet.
    public init(config: NodeConfig, logger: Logger) throws {
        self.config = config
        self.logger = logger
        self.dataLock = try DataDirectoryLock(directory: config.dataDir)
        var trusted = Set<PublisherPublicKey>()
        for file in config.trustedKeys {
            let text: String
            do { text = try String(contentsOfFile: file, encoding: .utf8) } catch {
                throw ConfigError("trusted_keys: cannot read \(file): \(error.localizedDescription)")
            }
            do { trusted.insert(try PublisherPublicKey(fileText: text)) } catch {
                throw ConfigError("trusted_keys: \(file): \(error.message)")
            }
        }
        if let file = config.tokensFile {
            let text: String
            do { text = try String(contentsOfFile: file, encoding: .utf8) } catch {
                throw ConfigError("tokens_file: cannot read \(file): \(error.localizedDescription)")
            }
            let table = try TokenTable(fileText: text, source: file)
            guard table.count > 0 else { throw ConfigError("tokens_file \(file) lists no token; make one with `kaa tokens create`") }
            access = AccessPolicy(tokens: table, requireInferToken: config.requireInferToken)
        } else {
            guard !config.requireInferToken else { throw ConfigError("require_infer_token needs tokens_file") }
            access = nil
        }
        self.store = try SnapshotStore(configuration: .init(directory: config.dataDir, trustedKeys: trusted,
                                                            retainVersions: config.retainVersions, retainDrafts: config.retainDrafts,
                                                            maxModelBytes: UInt64(config.maxModelBytes),
                                                            maxContentBytes: UInt64(config.maxContentBytes),
                                                            maxConcurrentIngests: config.maxConcurrentUploads),
                                       logger: logger)
        do throws(DeadLetterStore.Failure) { self.deadLetterStore = try DeadLetterStore(path: config.dataDir + "/deadletters.sqlite") } catch {
            throw ConfigError(error.description)
        }
        self.nodeID = try NodeIdentity.loadID(directory: config.dataDir)
        self.firstIncarnation = NodeIdentity.nextIncarnation(directory: config.dataDir)
        if config.gossipPlaintext {
            self.keyring = .plaintext
        } else {
            let file = config.clusterKeyFile ?? config.dataDir + "/cluster.key"
            if config.clusterKeyFile == nil && !FileManager.default.fileExists(atPath: file) {
                try ClusterKeyFile.create(file)
                logger.notice("created a cluster key; give this file to every node that joins (--cluster-key-file)",
                              metadata: ["file": "\(file)"])
            }
            self.keyring = try ClusterKeyFile.load(file)
        }
        self.loop = EventLoop.start(name: "kaa-node")
        self.replicator = LoopCell<Replicator>(loop: loop)
    }

    /// The bound HTTP address (the real port when 0 was asked for).
    public var httpAddress: SocketAddress? { state.withLock { $0.http?.localAddress } }
    /// The bound peer address.
    public var peerAddress: SocketAddress? { state.withLock { $0.peer?.localAddress } }

    /// The keys the peer plane authenticates with: the gossip keyring's.
    private var peerKeys: PeerKeys {
        PeerKeys(keys: keyring.rawKeys, encrypt: config.peerEncryption && !keyring.isPlaintext)
    }

    /// The peer client's limits: as the listener's, with an idle timeout under the peers' so
    /// this side is normally the one to close a quiet pooled connection.
    private var peerClientConfiguration: FrameClient.Configuration {
        var c = FrameClient.Configuration()
        c.frameTimeout = config.peer.frameTimeout
        c.maxFrameBytes = config.peer.maxFrameBytes
        c.idleTimeout = config.peer.idleTimeout == .zero ? .zero : min(.seconds(30), config.peer.idleTimeout / 2)
        return c
    }

    /// Binds the HTTP and peer listeners and installs the signal handlers.
    public func start(handleSignals: Bool = true) throws {
        let readiness = LoopBound(Readiness(), loop: loop)
        let readyFlag = ReadyFlag(node: self, readiness: readiness)
        var router = HTTPRouter()
        Node.addHealthRoutes(to: &router, ready: readyFlag)
        let metrics = ServingMetrics()
        let catalog = try ModelRegistry.load(from: store)
        let serving = loop.runBlocking { [loop, store, config, logger] in
            let server = ModelServer(loop: loop, store: store, registry: catalog, config: config.serving, metrics: metrics, logger: logger)
            server.loadPinned()
            readiness.value.mark(.store)
            return LoopBound(server, loop: loop)
        }
        let lag = loop.runBlocking { [loop, logger] in
            let lag = LoopLag(loop: loop, logger: logger)
            lag.start()
            return LoopBound(lag, loop: loop)
        }
        let replicatorCell = replicator
        let forwarderCell = LoopCell<Forwarder>(loop: loop)
        let routesCell = LoopCell<HTTPRouter>(loop: loop)
        let deadLetters = DeadLetters(store: deadLetterStore, loop: loop, nodeName: config.nodeName, retain: config.deadLetterRetention,
                                      retainBytes: Int64(config.deadLetterMaxBytes), logger: logger)
        deadLetters.addRoutes(to: &router)
        var inference = InferenceAPI(server: serving, metrics: metrics, store: store, config: config.serving,
                                     moreMetrics: { lag.value.metricsText + (replicatorCell.value?.metricsText ?? "") + (forwarderCell.value?.metricsText ?? "") })
        inference.moreMetricsOffLoop = { deadLetters.metricsText }
        inference.deadLetters = deadLetters
        // Any node answers for any model: a call for a version held elsewhere goes to a holder.
        inference.route = { request, name, version, deadlineMs, everyHolder, responder in
            // A call another node sent here is served here, never sent further.
            guard request.headers["kaa-forwarded"] == nil, let replicator = replicatorCell.value,
                  let forwarder = forwarderCell.value else { return .serveHere(version: version) }
            switch replicator.route(name: name, version: version) {
            case .notLearnedYet:
                // Just started or joined: the call waits until this node has learned the cluster's
                // holdings, rather than hearing that a model held elsewhere does not exist.
                replicator.whenSynced {
                    guard let routes = routesCell.value else { return responder.respond(.error(.serviceUnavailable, "node is starting")) }
                    routes.handle(request, responder)
                }
                return .handled
            case .unknown: return .serveHere(version: version)
            case .local(let v):
                let others = everyHolder ? replicator.otherHolders("\(name)@\(v)") : []
                guard !others.isEmpty else {
                    return .serveHere(version: String(v))
                }
                forwarder.broadcast(request, key: "\(name)@\(v)", holders: others, alsoHere: true, deadlineMs: deadlineMs, responder)
                return .handled
            case .forward(let key, let holders):
                if everyHolder {
                    forwarder.broadcast(request, key: key, holders: holders, alsoHere: false, deadlineMs: deadlineMs, responder)
                } else {
                    let call = request.method == .post && request.path.hasSuffix("/infer")
                        ? DeadLetters.Call(model: name, asked: version, version: key.split(separator: "@").last.flatMap { Int($0) },
                                           digest: replicator.digest(of: key)) : nil
                    forwarder.forward(request, key: key, holders: holders, deadlineMs: deadlineMs, call: call, responder)
                }
                return .handled
            case .unavailable(let why):
                if request.method == .post && request.path.hasSuffix("/infer") {
                    deadLetters.fail(request, DeadLetters.Call(model: name, asked: version), reason: .noHolder, status: .serviceUnavailable,
                                     message: why, attempts: [], responder)
                } else {
                    responder.respond(.error(.serviceUnavailable, why))
                }
                return .handled
            }
        }
        inference.moreIndex = { local in
            (replicatorCell.value?.clusterIndex ?? []).filter { !local.contains("\($0.name)@\($0.version)") }
        }
        inference.addRoutes(to: &router)
        var snapshots = SnapshotAPI(store: store, loop: loop, logger: logger) { event in
            switch event {
            case .stored(let id): serving.value.stored(id)
            case .removed(let id), .draining(let id): serving.value.removed(id)
            case .aliasSet(let name, let alias, let version): serving.value.aliasSet(name: name, alias: alias, version: version)
            }
            // What this node holds is cluster state.
            replicatorCell.value?.storeChanged(event)
        }
        snapshots.replicator = replicatorCell
        snapshots.access = access
        let snapshotAPI = snapshots
        snapshotAPI.addRoutes(to: &router)
        let frames = FrameClient(loop: loop, configuration: peerClientConfiguration, keys: peerKeys)
        snapshotAPI.addFetchRoute(to: &router, frames: frames)
        let gossipCell = LoopCell<GossipShell>(loop: loop)
        MembersRoute(gossip: gossipCell).add(to: &router)
        PlacementRoute(replicator: replicatorCell).add(to: &router)
        let stats = StatsRoute(gossip: gossipCell, metrics: metrics, deadLetters: deadLetterStore, frames: frames, loop: loop,
                               nodeName: config.nodeName)
        stats.add(to: &router)
        DashboardRoute().add(to: &router)
        let routes = router
        loop.execute { routesCell.value = routes }
        let http: HTTPServer
        if let access {
            http = try HTTPServer(on: loop, address: try SocketAddress(resolving: config.httpAddr), configuration: config.http,
                                  streamer: { head in
                                      // Only uploads stream; other requests are checked whole, below.
                                      guard let sink = snapshotAPI.streamer(head) else { return nil }
                                      if let refusal = access.check(head) { return RefusingSink(refusal) }
                                      return sink
                                  }) { request, responder in
                if let refusal = access.check(request) { return responder.respond(refusal) }
                routes.handle(request, responder)
            }
        } else {
            http = try HTTPServer(on: loop, address: try SocketAddress(resolving: config.httpAddr),
                                  configuration: config.http, streamer: snapshotAPI.streamer) { request, responder in
                routes.handle(request, responder)
            }
        }
        loop.execute { readiness.value.mark(.http) }
        let peer: FrameServer
        var gossipShell: LoopBound<GossipShell>?
        let service = loop.runBlocking { [loop, store, logger] in
            let service = PeerService()
            service.register(PeerFrameType.ping) { frame, responder in responder.respond(frame.payload) }
            service.register(PeerFrameType.pushPull) { frame, responder in
                guard let gossip = gossipCell.value else { return responder.fail(.notReady, "gossip is not running yet") }
                gossip.answerPushPull(frame, responder)
            }
            service.register(PeerFrameType.fetchSnapshot) { frame, responder in
                ArchiveSender.serve(frame, responder, loop: loop, store: store, logger: logger)
            }
            service.register(PeerFrameType.call) { [name = self.config.nodeName] frame, responder in
                Forwarder.serve(frame, responder, routes: routes, myName: name)
            }
            service.register(PeerFrameType.deadLetters) { frame, responder in deadLetters.answer(frame, responder) }
            service.register(PeerFrameType.stats) { frame, responder in stats.answer(frame, responder) }
            service.register(PeerFrameType.pushSnapshot) { frame, responder in
                guard let replicator = replicatorCell.value else { return responder.fail(.notReady, "replication is not running yet") }
                replicator.receivePush(frame, responder)
            }
            service.register(PeerFrameType.holdings) { frame, responder in
                guard let replicator = replicatorCell.value else { return responder.fail(.notReady, "replication is not running yet") }
                replicator.answer(frame, responder)
            }
            return LoopBound(service, loop: loop)
        }
        do {
            let refusals = Atomic<Int>(0)
            peer = try FrameServer(on: loop, address: try SocketAddress(resolving: config.peerAddr), configuration: config.peer,
                                   keys: peerKeys, onRefused: { [logger] why, address in
                // The 1st, 2nd, 4th, 8th, ...: a peer retrying with the wrong key is no log flood.
                let n = refusals.add(1, ordering: .relaxed).newValue
                guard n.nonzeroBitCount == 1 else { return }
                logger.warning("refused a peer connection", metadata: [
                    "peer.addr": "\(address.map(\.description) ?? "?")", "reason": "\(why)", "refused.total": "\(n)",
                ])
            }) { frame, responder in
                service.value.handle(frame, responder)
            }
            let info = NodeInfo(
                id: nodeID, name: config.nodeName,
                peerAddress: advertised(config.peerAddr, port: peer.localAddress.port),
                httpAddress: advertised(config.httpAddr, port: http.localAddress.port),
                zone: config.zone, capacity: Node.capacity(gpus: config.gpus),
                startedAtUnixMilliseconds: UInt64(Date().timeIntervalSince1970 * 1000))
            var rng = SystemRandomNumberGenerator()
            let instance = SWIMInstance(myself: info, incarnation: firstIncarnation, seed: rng.next())
            let keyring = self.keyring, logger = self.logger, dataDir = config.dataDir
            let seeds = config.seeds.filter { $0 != info.peerAddress }
            let udpAddress = peer.localAddress
            let replication = Replicator.Settings(config)
            let gossip = try loop.runBlocking { [loop, store] () throws -> LoopBound<GossipShell> in
                readiness.value.mark(.peer)
                let shell = GossipShell(loop: loop, instance: instance, keyring: keyring, frames: frames,
                                        incarnationFile: dataDir + "/incarnation", logger: logger)
                try shell.start(address: udpAddress, seeds: seeds)
                readiness.value.mark(.gossip)
                // Set on the loop, where push-pull frames and the members route read it.
                gossipCell.value = shell
                let replicator = Replicator(loop: loop, store: store, api: snapshotAPI, frames: frames, gossip: shell,
                                            settings: replication, logger: logger)
                replicatorCell.value = replicator
                forwarderCell.value = Forwarder(loop: loop, frames: frames, myName: info.name, myZone: info.zone, routes: routes,
                                                deadLetters: deadLetters, logger: logger)
                deadLetters.frames.withLock { $0 = frames }
                deadLetters.routes.withLock { $0 = routes }
                let members = LoopBound(shell, loop: loop)
                deadLetters.peers.withLock { $0 = { members.value.instance.members.filter { $0.status.isReachable && $0.id != members.value.instance.myself.id } } }
                deadLetters.scheduleRetention()
                replicator.start()
                // Ready once the node knows the cluster's holdings, not only its members.
                replicator.whenSynced { readiness.value.mark(.members) }
                return LoopBound(shell, loop: loop)
            }
            gossipShell = gossip
        } catch {
            http.shutdown(grace: .zero)
            throw error
        }
        state.withLock {
            $0.http = http
            $0.peer = peer
            $0.frames = frames
            $0.gossip = gossipShell
            $0.serving = serving
        }
        if handleSignals {
            let watchers = try loop.runBlocking { [self] () throws -> [LoopBound<SignalWatcher>] in
                try [SIGTERM, SIGINT].map { signal in
                    LoopBound(try SignalWatcher(loop: loop, signal: signal) { [self] in
                        logger.info("signal received; shutting down", metadata: ["signal": "\(signal)"])
                        beginShutdown()
                    }, loop: loop)
                }
            }
            state.withLock { $0.signals = watchers }
        }
        logger.info("node started", metadata: [
            "http.addr": "\(http.localAddress)", "peer.addr": "\(peer.localAddress)",
            "data.dir": "\(config.dataDir)", "kaa.version": "\(KaaVersion.string)",
            "snapshots": "\(catalog.versionCount)",
        ])
    }

    /// True until shutdown begins; `/v2/health/ready` answers 503 after that.
    public var isAcceptingWork: Bool { state.withLock { !$0.stopping } }

    /// Starts the graceful shutdown; safe from any thread, idempotent.
    public func beginShutdown() {
        let servers: (HTTPServer?, FrameServer?, [LoopBound<SignalWatcher>], LoopBound<GossipShell>?, LoopBound<ModelServer>?)? = state.withLock {
            if $0.stopping { return nil }
            $0.stopping = true
            return ($0.http, $0.peer, $0.signals, $0.gossip, $0.serving)
        }
        guard let (http, peer, signals, gossip, serving) = servers else { return }
        startShutdownWatchdog()
        let replicator = self.replicator
        loop.execute { [self] in
            for watcher in signals { watcher.value.close() }
            // First the copies this node holds are made elsewhere (bounded by leave_timeout).
            guard let handover = replicator.value else { return stopServing(http: http, peer: peer, gossip: gossip, serving: serving) }
            shutdownStage("handing this node's copies over to other nodes (leave_timeout \(config.leaveTimeout))")
            handover.beginLeave { [self] in
                handover.stop()
                stopServing(http: http, peer: peer, gossip: gossip, serving: serving)
            }
        }
    }

    /// The rest of a graceful shutdown, on the loop: leave gossip, let calls finish within the
    /// grace, close everything.
    private func stopServing(http: HTTPServer?, peer: FrameServer?, gossip: LoopBound<GossipShell>?, serving: LoopBound<ModelServer>?) {
        let grace = config.shutdownGrace
        let logger = self.logger
        gossip?.value.leave() // tell the others before going quiet
        let finish = { [self] in
            shutdownStage("closing gossip and the peer plane")
            gossip?.value.stop()
            peer?.shutdownOnLoop()
            logger.info("node stopped")
            stopped.signal()
        }
        guard let http else { return finish() }
        shutdownStage("letting calls in flight finish (shutdown_grace \(grace))")
        // Calls still running when the grace ends are answered (503), not dropped.
        http.shutdownOnLoop(grace: grace, graceEnded: { serving?.value.endGrace() }) {
            // Give the leave announcement a couple of protocol periods to travel.
            self.loop.schedule(after: (gossip?.value.instance.settings.probeInterval ?? .zero) * 2) { finish() }
        }
    }

    /// Blocks until a shutdown has finished, then stops the loop.
    public func waitUntilStopped() {
        stopped.wait()
        shutdownStage("ending the event loop once its background jobs are done")
        loop.shutdown()
        dataLock.release()
        state.withLock { $0.finished = true }
    }

    private func shutdownStage(_ stage: String) {
        state.withLock { $0.stage = stage }
        logger.info("shutdown: \(stage)")
    }

    /// How long a graceful shutdown may take before the watchdog ends the process.
    var shutdownLimit: Duration { config.leaveTimeout + config.shutdownGrace + .seconds(30) }

    /// A graceful shutdown has a bound: the handover, the grace for calls in flight, and 30 s
    /// more. Past it the node says where it was stuck and exits with status 1 rather than
    /// leave a supervisor waiting; the store is crash-safe, as after any kill.
    private func startShutdownWatchdog() {
        let limit = shutdownLimit
        let seconds = Double(limit.nanosecondsClamped) / 1e9
        DispatchQueue.global().asyncAfter(deadline: .now() + seconds) { [self] in
            let (finished, stage) = state.withLock { ($0.finished, $0.stage) }
            guard !finished else { return }
            logger.critical("shutdown did not finish within \(limit); exiting now", metadata: [
                "stuck_at": "\(stage.isEmpty ? "starting the shutdown" : stage)",
                "background_jobs": "\(loop.offloadsInFlight)",
            ])
            _exit(1)
        }
    }

    /// The address other nodes use for a bound `address`: the advertised host when set, else
    /// its host unless that is a wildcard, else this machine's host name.
    private func advertised(_ address: HostPort, port: UInt16) -> HostPort {
        if let host = config.advertiseHost { return HostPort(host: host, port: port) }
        if address.host == "0.0.0.0" || address.host == "::" {
            return HostPort(host: ProcessInfo.processInfo.hostName, port: port)
        }
        return HostPort(host: address.host, port: port)
    }

    /// Cores and memory of this machine, and the GPUs it offers placement.
    static func capacity(gpus: Int) -> Capacity {
        Capacity(cores: UInt32(ProcessInfo.processInfo.activeProcessorCount),
                 memoryBytes: ProcessInfo.processInfo.physicalMemory, gpuCount: UInt32(max(0, gpus)))
    }

    static func addHealthRoutes(to router: inout HTTPRouter, ready: ReadyFlag) {
        router.add(.get, "/v2/health/live") { _, responder in
            responder.respond(HTTPResponse(status: .ok))
        }
        router.add(.get, "/v2/health/ready") { _, responder in
            if let reason = ready.notReadyReason {
                responder.respond(.error(.serviceUnavailable, reason))
            } else {
                responder.respond(HTTPResponse(status: .ok))
            }
        }
        router.add(.get, "/v2") { _, responder in
            let body = "{\"name\":\"kaa\",\"version\":\(jsonQuoted(KaaVersion.string)),\"extensions\":[\"binary_tensor_data\",\"model_repository\"]}"
            responder.respond(.json(.ok, Array(body.utf8)))
        }
    }
}

/// Readiness as the health route sees it: every plane up, and not shutting down.
struct ReadyFlag: Sendable {
    let node: Node
    let readiness: LoopBound<Readiness>

    /// Why the node is not ready, nil when it is. On the loop.
    var notReadyReason: String? {
        guard node.isAcceptingWork else { return "node is shutting down" }
        let missing = readiness.value.missing
        guard missing.isEmpty else { return "node is starting: not up yet: \(missing.map(\.rawValue).joined(separator: ", "))" }
        return nil
    }
}

/// The planes a node needs before it takes work. Loop-confined.
final class Readiness {
    enum Plane: String, CaseIterable {
        case store = "store (reconciled and registered)"
        case http = "HTTP listener"
        case peer = "peer plane listener"
        case gossip = "gossip"
        case members = "members view and the cluster's holdings (a first exchange with a peer)"
    }

    private var up: Set<Plane> = []

    func mark(_ plane: Plane) { up.insert(plane) }
    var missing: [Plane] { Plane.allCases.filter { !up.contains($0) } }
}

/// A value set on its loop after start and read there; every access checks the thread, so
/// the cell is safe to hand to handlers that run on other threads only to hop back.
final class LoopCell<Value>: @unchecked Sendable {
    // SAFETY: `stored` is read and written only after `precondition(loop.inLoop)`: only the
    // loop's thread ever touches it.
    private var stored: Value?
    let loop: EventLoop

    init(loop: EventLoop) { self.loop = loop }

    var value: Value? {
        get {
            precondition(loop.inLoop, "LoopCell read off its loop")
            return stored
        }
        set {
            precondition(loop.inLoop, "LoopCell written off its loop")
            stored = newValue
        }
    }
}

/// An exclusive lock on a data directory, so two nodes never share one store.
final class DataDirectoryLock: Sendable {
    private let fd: Int32

    init(directory: String) throws {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw ConfigError("cannot create data directory \(directory): \(error.localizedDescription)")
        }
        let path = directory + "/node.lock"
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw ConfigError("cannot open \(path): \(String(cString: strerror(errno)))")
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            var buffer = [UInt8](repeating: 0, count: 32)
            let n = pread(fd, &buffer, buffer.count, 0)
            let holder = n > 0 ? String(decoding: buffer[..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) : "?"
            close(fd)
            throw ConfigError("data directory \(directory) is in use by another kaa node (pid \(holder)); give each node its own --data-dir")
        }
        let pid = Array("\(getpid())\n".utf8)
        ftruncate(fd, 0)
        _ = pwrite(fd, pid, pid.count, 0)
    }

    func release() {
        flock(fd, LOCK_UN)
        close(fd)
    }
}
