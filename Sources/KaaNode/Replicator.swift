import Crypto
import Foundation
import KaaCluster
import KaaCore
import KaaIO
import KaaSnapshot
import Logging

/// Keeps this node's copies where the placement table says they belong: it spreads what the
/// node holds (anti-entropy of ``HoldingsBook`` over `holdings` frames), computes the table
/// from the live members, the cluster's catalog and where the copies are (placement keeps a
/// copy where it is while its node has room), fetches what the node should hold from a
/// ready holder, deletes what it should not once `replication` holders have theirs ready, and
/// answers publishes once their write quorum is met. Loop-confined.
final class Replicator {
    /// The node's settings this uses (``NodeConfig`` documents each), and how often it acts.
    struct Settings {
        var replication, repairConcurrency, repairBandwidth, retainVersions, retainDrafts: Int
        var repairGrace, settle, publishTimeout, leaveTimeout: Duration
        var tick: Duration = .seconds(1)
        /// Whether the node has seeds to join (else it may be alone), and how long it waits for
        /// a first exchange with a peer before it answers calls with what it knows.
        var hasSeeds: Bool
        var syncTimeout: Duration = .seconds(10)

        init(_ config: NodeConfig) {
            replication = config.replication
            repairConcurrency = config.repairConcurrency
            repairBandwidth = config.repairBandwidth
            retainVersions = config.retainVersions
            retainDrafts = config.retainDrafts
            repairGrace = config.repairGrace
            settle = config.placementSettle
            hasSeeds = !config.seeds.isEmpty
            publishTimeout = config.publishTimeout
            leaveTimeout = config.leaveTimeout
        }
    }

    let loop: EventLoop
    let store: SnapshotStore
    let api: SnapshotAPI
    let frames: FrameClient
    let settings: Settings
    let logger: Logger
    let me: NodeID
    private let gossip: GossipShell

    private var book = HoldingsBook()
    private var generation: UInt64 = 0
    private var local = LocalCopies()
    /// Keys being fetched here; each change marks the key in `local` (the entry lists them).
    private var fetching: Set<String> = [] {
        didSet { local.touch(oldValue.symmetricDifference(fetching)) }
    }
    private var dropping: Set<String> = []
    /// When a fetch or a drop of a key that failed may be tried again: a broken source costs
    /// one log line every 10 s, not one a second; a copy still in use is tried each second.
    private var retryAt: [String: Instant] = [:]
    private(set) var table = Placement.Table.empty
    private var retired = Set<String>()
    /// Kept by ``recompute()``, which runs on every change of the book or of the members: the
    /// live nodes with a ready copy of each key, and each model's versions in the cluster's
    /// catalog, ascending.
    private var readyCopies: [String: Set<NodeID>] = [:]
    /// What ``readyCopies`` was taken from: the book's change count and the live nodes.
    private var readyFrom: (changes: UInt64, live: Set<NodeID>)?
    /// The book's catalog change count the table was computed from.
    private var catalogSeen: UInt64?
    /// The book's change count the copies were last read at, and the copies the table was
    /// computed from (``copies(in:on:)``): placement keeps a copy where it is.
    private var heldSeen: UInt64?
    private var heldFrom: [String: [NodeID]] = [:]
    /// The node set (``membersDigest``) the table was computed from.
    private var tableNodes: String?
    /// The book's catalog change count ``kept``, ``retired`` and ``catalogVersions`` were taken at.
    private var catalogApplied: UInt64?
    /// A table being computed off the loop, and whether the book or the members changed since it began.
    private var computing = false
    private var recomputeWhenDone = false
    /// How long the last table computed off the loop took: the next plan waits eight times as long.
    private var computeCost: Duration = .zero
    private var planner = Placement.Planner()
    private var catalogVersions: [String: [Int]] = [:]
    /// The cluster's catalog, by key.
    private var kept: [String: Holding] = [:]
    /// The digest of the node set the table was computed from, and when it last changed.
    private var membersDigest = ""
    private var membersChangedAt = Instant.now()
    /// What each peer last said its node set and table were.
    private var peerMembersDigest: [NodeID: String] = [:]
    private var peerTableDigest: [NodeID: String] = [:]
    /// What each peer last said it has of every node's entry (generations by node id).
    private var peerSummary: [NodeID: [String: UInt64]] = [:]
    private var pushPending = false
    private var lastPush: Instant?
    /// The fetches the last plan wanted, fewest ready copies first: a finished fetch starts the
    /// next from here rather than planning again.
    private var wantedFetches: [ReplicationPlan.Fetch] = []
    /// This node's recent entry changes, oldest first: a peer that has one's base gets the
    /// rest folded into one delta instead of the whole entry.
    private var ownLog: [EntryDelta] = []
    private var planPending = false
    /// How long the last table computation and plan took: the next waits eight times as long.
    private var planCost: Duration = .zero
    private var lastPlan: Instant?
    /// When this node last asked each peer for its view to hurry a drop.
    private var askedAt: [NodeID: Instant] = [:]
    /// The cluster's alias register (every node keeps all of it, persisted in the store), the
    /// digest exchanges compare, the versions it points at (retention keeps them), and the
    /// records written or taken here since the last push.
    private var aliasBook: [String: AliasRecord] = [:]
    private(set) var aliasDigest = ""
    private var aliasTargets = Set<String>()
    private var aliasesToPush: [AliasRecord] = []
    /// Publishes waiting for their copies, by key: on the table's holders (`on` nil), or on the
    /// nodes a publish streamed it to.
    private var waiters: [String: [(until: Instant, on: Set<NodeID>?, done: (QuorumOutcome) -> Void)]] = [:]
    private var stopped = false
    /// Whether this node has caught up with the cluster's holdings: a pull from a live peer
    /// brought every entry that peer had, or no peer was there (no seeds), or `syncTimeout`
    /// passed. Until then a call for a model this node does not know waits (``whenSynced(_:)``)
    /// instead of being answered 404, and the node is not ready.
    private(set) var synced = false
    private var syncWaiters: [() -> Void] = []
    private var pulledFrom = Set<NodeID>()
    private var startedAt = Instant.now()
    /// Whether ``local`` has been read from the store (the first ``reloadLocal(then:)``).
    private var loaded = false
    /// Bandwidth pacing: the instant before which the next fetched byte should not be taken.
    private var paceNext = Instant.now()

    // Metrics.
    /// Set once a graceful leave began: the node hands its copies over, then calls `leaveDone`.
    private var leavingSince: Instant?
    private var leaveDone: (() -> Void)?

    private(set) var repairBytes: UInt64 = 0
    private(set) var tableChanges = 0
    /// Bytes of holdings frames (anti-entropy) sent and received, requests and answers.
    private(set) var exchangeBytesSent = 0, exchangeBytesReceived = 0
    private(set) var fetchFailures = 0
    /// Copies of publishes streamed on to holders, those that failed, uploads this node passed
    /// on without keeping a copy, and copies other nodes streamed here.
    private(set) var pushesSent = 0, pushFailures = 0, uploadsPassedOn = 0, pushesReceived = 0
    /// Keys other nodes are streaming here from a publish (how many streams of each).
    private var receiving: [String: Int] = [:]
    private var pushesInFlight: [NodeID: Int] = [:]
    private var pushQueue: [NodeID: [(@escaping () -> Void) -> Void]] = [:]
    private(set) var copiesDropped = 0

    init(loop: EventLoop, store: SnapshotStore, api: SnapshotAPI, frames: FrameClient, gossip: GossipShell,
         settings: Settings, logger: Logger) {
        self.loop = loop
        self.store = store
        self.api = api
        self.frames = frames
        self.gossip = gossip
        self.settings = settings
        self.logger = logger
        self.me = gossip.instance.myself.id
    }

    /// Reads the store, then runs the exchange and the plan every tick.
    func start() {
        let store = self.store
        startedAt = Instant.now()
        loop.offload({ (try? store.aliasRecords()) ?? [] }) { [self] records in
            for r in records { aliasBook[r.key] = r }
            aliasBookChanged()
            reloadLocal { [self] in
                gossip.subscribe { [weak self] _ in
                    guard let self else { return }
                    self.recompute()
                    // A first peer to learn the cluster from: ask it now, not at the next tick.
                    if !self.synced { self.exchangeWithOnePeer() }
                }
                scheduleTick()
                if !settings.hasSeeds && livePeers().isEmpty { markSynced("this node has no seeds and no peers") }
                exchangeWithOnePeer()
            }
        }
    }

    /// Runs `go` once this node has caught up with the cluster's holdings (at once if it has).
    func whenSynced(_ go: @escaping () -> Void) {
        if synced { go() } else { syncWaiters.append(go) }
    }

    private func markSynced(_ why: String) {
        guard !synced, !stopped else { return }
        synced = true
        // The catalog and the table from what was just learned, before anything waits on them.
        recompute()
        logger.info("caught up with the cluster's holdings", metadata: ["how": "\(why)", "snapshots": "\(book.readyNodes.count)",
                                                                        "seconds": "\(Double((Instant.now() - startedAt).nanosecondsClamped) / 1e9)"])
        releaseSyncWaiters()
    }

    private func releaseSyncWaiters() {
        let waiting = syncWaiters
        syncWaiters = []
        for go in waiting { go() }
    }

    /// Marks the node synced when it has waited `syncTimeout` without a peer to learn from.
    private func checkSyncTimeout() {
        guard !synced, Instant.now() - startedAt >= settings.syncTimeout else { return }
        logger.warning("no peer answered an exchange within the sync timeout; this node answers calls with what it knows",
                       metadata: ["timeout": "\(settings.syncTimeout)", "peers.live": "\(livePeers().count)"])
        markSynced("timeout")
    }

    func stop() {
        stopped = true
        // Calls still waiting to learn the cluster are answered with what this node knows.
        synced = true
        releaseSyncWaiters()
    }

    private func scheduleTick() {
        loop.schedule(after: settings.tick) { [weak self] in
            guard let self, !self.stopped else { return }
            self.checkSyncTimeout()
            self.exchangeWithOnePeer()
            self.recompute()
            self.act()
            self.expireWaiters()
            self.checkLeave()
            self.scheduleTick()
        }
    }

    // MARK: local holdings

    /// The store changed (an upload, a fetch, retention): updates this node's entry. An alias
    /// change comes through ``wroteAlias(_:)`` or the exchange, which mark the copies it aliases.
    func storeChanged(_ event: SnapshotAPI.Event) {
        switch event {
        case .removed(let id):
            guard local.removeValue(forKey: id.description) != nil else { return }
            publishLocal()
        case .stored(let id):
            // A fetch or a publish through this node has put it in `local` already.
            guard local[id.description] == nil else { return }
            let store = self.store
            loop.offload({ try? store.record(id) }) { [self] record in
                guard !stopped, let record, record.state == .ready, local[id.description] == nil else { return }
                local[id.description] = holding(record)
                publishLocal()
            }
        case .aliasSet, .draining:
            break
        }
    }

    /// A ready copy of a stored snapshot, marked aliased when the alias register points at it.
    private func holding(_ record: SnapshotRecord) -> Holding {
        var h = Holding(record)
        h.aliased = aliasTargets.contains(h.key)
        return h
    }

    /// Re-reads this node's copies from the store (off the loop), then spreads them.
    func reloadLocal(then: @escaping () -> Void = {}) {
        let store = self.store
        loop.offload({ ((try? store.list()) ?? []).filter { $0.state == .ready } }) { [self] records in
            guard !stopped else { return }
            local.replaceAll(with: Dictionary(records.map { ($0.id.description, holding($0)) }, uniquingKeysWith: { a, _ in a }))
            loaded = true
            publishLocal()
            then()
        }
    }

    /// This node's copies changed: a new generation of its entry goes into the book and to the
    /// peers on the push (at most every 20 ms), as a delta of what changed since the last one.
    private func publishLocal() { schedulePush() }

    /// Writes a new generation of this node's entry if its copies (or its leaving) changed.
    /// Nothing until the store has been read: an entry without the copies on disk would tell the
    /// cluster they are gone.
    private func flushLocal() {
        let leaving = leavingSince != nil
        guard loaded, local.hasChanges || book.entries[me]?.leaving != leaving else { return }
        let changed = local.takeChanges()
        let now = UInt64(max(0, Date().timeIntervalSince1970 * 1000))
        guard let previous = book.entries[me] else {
            generation = max(generation + 1, now)
            book.merge(me, HoldingsBook.Entry(generation: generation, holdings: Set(local.keys).union(fetching).compactMap(listed), leaving: leaving))
            return bookChanged()
        }
        // What differs from the entry the book has of this node, among the keys that changed.
        var upserts: [Holding] = [], removed: [String] = []
        for key in changed {
            let listing = listed(key)
            if listing == book.holding(me, key) { continue }
            if let listing { upserts.append(listing) } else { removed.append(key) }
        }
        assert(Set(upserts.map(\.key)).union(removed) == wholeDiff(from: previous), "an unmarked change of this node's copies")
        if upserts.isEmpty, removed.isEmpty, previous.leaving == leaving { return }
        generation = max(generation + 1, now)
        let delta = EntryDelta(base: previous.generation, generation: generation,
                               upserts: upserts.sorted { ($0.name, $0.version) < ($1.name, $1.version) },
                               removed: removed.sorted(), leaving: leaving)
        book.apply(me, delta)
        ownLog.append(delta)
        if ownLog.count > 1_000 { ownLog.removeFirst(ownLog.count - 1_000) }
        bookChanged()
    }

    /// How this node's entry lists `key`: its copy, or a copy being fetched; nil when neither.
    private func listed(_ key: String) -> Holding? {
        if let h = local[key] { return h }
        guard fetching.contains(key), var f = kept[key] else { return nil }
        f.state = .fetching
        f.aliased = false
        return f
    }

    /// Every key whose listing differs from `previous` (debug builds check the marks with it).
    private func wholeDiff(from previous: HoldingsBook.Entry) -> Set<String> {
        var keys = Set(local.keys).union(fetching)
        keys.formUnion(previous.holdings.map(\.key))
        return keys.filter { listed($0) != book.holding(me, $0) }
    }

    /// What to send `peer` of this node's entry: nothing when it has the newest, a delta from
    /// the generation it last said it has, or the whole entry.
    private func entry(for peer: NodeID) -> (entry: HoldingsBook.Entry?, delta: EntryDelta?) {
        guard let mine = book.entries[me] else { return (nil, nil) }
        guard let has = peerSummary[peer]?[me.rawValue] else { return (mine, nil) }
        if has >= mine.generation { return (nil, nil) }
        if let i = ownLog.firstIndex(where: { $0.base == has }), let delta = EntryDelta.fold(ownLog[i...]) { return (nil, delta) }
        return (mine, nil)
    }

    /// Recomputes the table and acts on it on the next turn of the loop, but at most once per
    /// 20 ms, or per eight times what the last one took, so a storm of holdings changes costs a
    /// bounded share of a core.
    private func schedulePlan() {
        guard !planPending else { return }
        planPending = true
        let gap = max(.milliseconds(20), planCost * 8, computeCost * 8)
        let wait = lastPlan.map { max(.zero, $0 + gap - Instant.now()) } ?? .zero
        loop.schedule(after: wait) { [weak self] in
            guard let self, !self.stopped else { return }
            self.planPending = false
            let started = Instant.now()
            self.recompute()
            self.act()
            self.checkWaiters()
            self.checkLeave()
            self.lastPlan = Instant.now()
            self.planCost = self.lastPlan! - started
        }
    }

    /// Pushes this node's entry (a delta where the peer has a recent one), and the alias records
    /// new here, to every live peer: on the next turn of the loop, at most every 20 ms.
    private func schedulePush() {
        guard !pushPending else { return }
        pushPending = true
        let wait = lastPush.map { max(.zero, $0 + .milliseconds(20) - Instant.now()) } ?? .zero
        loop.schedule(after: wait) { [weak self] in
            guard let self, !self.stopped else { return }
            self.pushPending = false
            self.lastPush = Instant.now()
            self.flushLocal()
            let aliases = self.aliasesToPush
            self.aliasesToPush = []
            for peer in self.livePeers() { self.exchange(with: peer, aliases: aliases, push: true) }
        }
    }

    // MARK: the exchange

    struct ExchangeRequest: Codable {
        var from: String
        /// The sender's entry whole, or `delta` from a generation the receiver said it has.
        var entry: HoldingsBook.Entry?
        var delta: EntryDelta?
        /// A push of the sender's own change: the answer carries no other node's entries.
        var push: Bool?
        var summary: [String: UInt64]
        var members: String
        var table: String
        /// The digest of the sender's alias register, and the records new there (on a push).
        var aliases: String?
        var aliasRecords: [AliasRecord]?
    }

    struct ExchangeAnswer: Codable {
        var from: String
        var entries: [String: HoldingsBook.Entry]
        var members: String
        var table: String
        /// The generations the answering node has (absent from nodes of an older build).
        var summary: [String: UInt64]?
        /// The whole alias register, when the asker's digest differed.
        var aliasRecords: [AliasRecord]?
        /// The delta did not apply here: send the whole entry.
        var needEntry: Bool?
        /// Whether the answering node has caught up with the cluster's holdings itself.
        var synced: Bool?
    }

    private func livePeers() -> [Member] {
        gossip.instance.members.filter { $0.status.isReachable && $0.id != me }
    }

    private func exchangeWithOnePeer() {
        let peers = livePeers()
        guard let peer = peers.randomElement() else { return }
        exchange(with: peer)
    }

    private func exchange(with peer: Member, aliases: [AliasRecord] = [], push: Bool = false) {
        flushLocal()
        let (entry, delta) = entry(for: peer.id)
        let request = ExchangeRequest(from: me.rawValue, entry: entry, delta: delta, push: push ? true : nil, summary: book.summary,
                                      members: membersDigest, table: table.digest, aliases: aliasDigest,
                                      aliasRecords: aliases.isEmpty ? nil : aliases)
        guard let payload = try? JSONEncoder().encode(request) else { return }
        exchangeBytesSent += payload.count
        let bound = LoopBound(self, loop: loop)
        frames.request(to: peer.info.peerAddress, type: Node.PeerFrameType.holdings, payload: Array(payload),
                       deadline: .seconds(10)) { result in
            let self_ = bound.value
            self_.received(result, from: peer, push: push)
        }
    }

    private func received(_ result: Result<Frame, FrameError>, from peer: Member, push: Bool) {
        guard !stopped else { return }
        switch result {
        case .failure(let error):
            logger.debug("holdings exchange failed", metadata: ["peer": "\(peer.info.name)", "error": "\(error.message)"])
        case .success(let frame):
            exchangeBytesReceived += frame.payload.count
            guard let answer = try? JSONDecoder().decode(ExchangeAnswer.self, from: Data(frame.payload)) else {
                return logger.warning("a peer's holdings answer does not decode", metadata: ["peer": "\(peer.info.name)"])
            }
            peerMembersDigest[NodeID(answer.from)] = answer.members
            peerTableDigest[NodeID(answer.from)] = answer.table
            if let summary = answer.summary { peerSummary[NodeID(answer.from)] = summary }
            take(answer.entries)
            if answer.needEntry == true {
                // It lacks the delta's base: the whole entry, now.
                peerSummary[peer.id]?[me.rawValue] = nil
                exchange(with: peer)
            }
            // Caught up only once the alias records that came with the answer have taken effect.
            takeAliases(answer.aliasRecords ?? []) { [self] in
                if !synced && !push, let summary = answer.summary { caughtUp(summary, answer.synced, from: peer) }
            }
        }
    }

    /// After a pull's answer and its aliases were taken: marks this node synced when its book
    /// has every entry the peer has, and the peer knows the cluster (or every live peer has
    /// been pulled from: in a cold start none knows more than itself).
    private func caughtUp(_ summary: [String: UInt64], _ peerSynced: Bool?, from peer: Member) {
        let behind = summary.contains { node, generation in
            NodeID(node) != me && (book.entries[NodeID(node)]?.generation ?? 0) < generation
        }
        // An answer cut short for size brings the rest on the next pull, at once.
        if behind { return exchange(with: peer) }
        pulledFrom.insert(peer.id)
        if peerSynced != false || Set(livePeers().map(\.id)).isSubset(of: pulledFrom) {
            markSynced("pulled the holdings of \(peer.info.name)")
        }
    }

    /// Answers a peer's `holdings` frame: takes its entry, sends what it lacks.
    func answer(_ frame: Frame, _ responder: FrameResponder) {
        exchangeBytesReceived += frame.payload.count
        let request: ExchangeRequest
        do { request = try JSONDecoder().decode(ExchangeRequest.self, from: Data(frame.payload)) } catch {
            return responder.fail(.badRequest, "holdings wants JSON {from, entry, summary, members, table}: \(error)")
        }
        let from = NodeID(request.from)
        peerMembersDigest[from] = request.members
        peerTableDigest[from] = request.table
        peerSummary[from] = request.summary
        if let entry = request.entry, from != me { take([request.from: entry]) }
        var needEntry = false
        if let delta = request.delta, from != me {
            switch book.apply(from, delta) {
            case .applied: bookChanged()
            case .stale: break
            case .missingBase: needEntry = true
            }
        }
        if let records = request.aliasRecords { takeAliases(records) }
        // The register when it differs, newest records first and at most 20,000 of them, with
        // fewer holdings beside them: an answer stays under about 3.5 MB.
        let differ = request.aliases != nil && request.aliases != aliasDigest
        let aliases = differ ? Array(aliasBook.values.sorted { $0.stamp > $1.stamp }.prefix(20_000)) : nil
        let entries = request.push == true ? [:] : book.newer(than: request.summary, maxHoldings: max(5_000, 25_000 - (aliases?.count ?? 0)))
        let answer = ExchangeAnswer(from: me.rawValue, entries: entries, members: membersDigest, table: table.digest, summary: book.summary,
                                    aliasRecords: aliases, needEntry: needEntry ? true : nil, synced: synced)
        guard let payload = try? JSONEncoder().encode(answer) else { return responder.fail(.internal, "cannot encode holdings") }
        exchangeBytesSent += payload.count
        responder.respond(Array(payload))
    }

    private func take(_ entries: [String: HoldingsBook.Entry]) {
        var changed = false
        for (node, entry) in entries where NodeID(node) != me {
            if book.merge(NodeID(node), entry) { changed = true }
        }
        if changed { bookChanged() }
    }

    // MARK: aliases

    /// Records from a peer: those that supersede this node's are written to the store (off
    /// the loop), then take effect here and in serving.
    /// `then` runs once they have taken effect (at once when none is newer).
    private func takeAliases(_ records: [AliasRecord], then: @escaping () -> Void = {}) {
        let newer = records.filter { r in aliasBook[r.key].map { r.supersedes($0) } ?? true }
        guard !newer.isEmpty, !stopped else { return then() }
        let store = self.store
        loop.offload({ () -> Result<[AliasRecord], SnapshotError> in
            do throws(SnapshotError) { return .success(try store.applyAliases(newer)) } catch { return .failure(error) }
        }) { [self] result in
            switch result {
            case .failure(let error):
                logger.warning("cannot store aliases from a peer", metadata: ["error": "\(error.message)"])
            case .success(let taken):
                adopt(taken, push: false)
            }
            then()
        }
    }

    /// An alias this node's API wrote to the store: it takes effect here and goes to every peer.
    func wroteAlias(_ record: AliasRecord) { adopt([record], push: true) }

    private func adopt(_ records: [AliasRecord], push: Bool) {
        var changed: [AliasRecord] = []
        for r in records where aliasBook[r.key].map({ r.supersedes($0) }) ?? true {
            aliasBook[r.key] = r
            changed.append(r)
        }
        guard !changed.isEmpty else { return }
        // This node's own writes are logged by the store.
        for r in changed where !push {
            logger.info(r.version == nil ? "alias removed" : "alias set", metadata: [
                "model.name": "\(r.name)", "alias": "\(r.alias)", "model.version": "\(r.version.map(String.init) ?? "none")",
                "by": "\(r.author.isEmpty ? "this node" : memberNames[NodeID(r.author)] ?? r.author)",
            ])
        }
        api.notify(changed.map { .aliasSet(name: $0.name, alias: $0.alias, version: $0.version) })
        if push { aliasesToPush += changed }
        // A copy that became (or stopped being) aliased is a new entry to spread.
        if aliasBookChanged() { publishLocal() } else {
            recompute()
            if push { schedulePush() }
        }
    }

    /// Takes the register's new digest and targets, and marks this node's copies aliased or
    /// not; returns whether a mark changed.
    @discardableResult
    private func aliasBookChanged() -> Bool {
        var hash = SHA256()
        aliasTargets = []
        for key in aliasBook.keys.sorted() {
            let r = aliasBook[key]!
            hash.update(data: Array("\(key)\u{0}\(r.version.map(String.init) ?? "-")\u{0}\(r.stamp)\u{0}\(r.author)\n".utf8))
            if let v = r.version { aliasTargets.insert("\(r.name)@\(v)") }
        }
        aliasDigest = aliasBook.isEmpty ? "" : hash.finalize().map { String(format: "%02x", $0) }.joined()
        var marked = false
        for (key, h) in local.all where h.aliased != aliasTargets.contains(key) {
            local[key]!.aliased.toggle()
            marked = true
        }
        return marked
    }

    /// Why `alias` of `name` may not move to `version` now, or nil when it may: the version
    /// has `replication` ready holders (as many as it has holders, when the cluster is
    /// smaller). 404 when no node has that version, 409 naming the holders still missing.
    func aliasRefusal(name: String, alias: String, version: Int) -> HTTPResponse? {
        let key = "\(name)@\(version)"
        let live = liveIDs
        let ready = readyCopies[key] ?? []
        guard let holders = table.holders[key], !holders.isEmpty else {
            if ready.count >= min(settings.replication, live.count) { return nil }
            let versions = catalogVersions[name] ?? []
            if versions.isEmpty { return .error(.notFound, "model `\(name)` is not stored on any node of the cluster") }
            return .error(.notFound, "model `\(name)` has no version \(version) in the cluster; versions: \(versions.map(String.init).joined(separator: ", "))")
        }
        // Ready copies on live nodes, wherever they are: the table's holders, or the nodes a
        // publish streamed it to while a load cap moves a copy to the table's choice.
        let need = min(settings.replication, holders.count)
        let readyHolders = holders.filter { ready.contains($0) }
        guard ready.intersection(live).count < need else { return nil }
        let names = memberNames
        var states: [NodeID: Holding.State] = [:]
        for node in holders { states[node] = book.holding(node, key)?.state }
        let missing = holders.filter { !ready.contains($0) }.map { node in
            "\(names[node] ?? node.rawValue) (\(live.contains(node) ? states[node]?.rawValue ?? "no copy yet" : "down"))"
        }
        return .error(.conflict, "alias `\(alias)` stays: \(key) has \(readyHolders.count) of the \(need) ready holders it needs; missing: \(missing.joined(separator: ", ")). It can move once they are ready (`kaa placement --holders-of \(name)`)")
    }

    /// The names of the live nodes with a ready copy of `name@version`, sorted, for messages.
    func readyHolderNames(name: String, version: Int) -> [String] {
        let live = liveIDs, names = memberNames
        return (readyCopies["\(name)@\(version)"] ?? []).filter { live.contains($0) }.map { names[$0] ?? $0.rawValue }.sorted()
    }

    // MARK: routing calls

    /// Where a call for `name` (and `version`: a number, an alias, or nil for `stable` else
    /// the latest) goes, resolved cluster-wide without a round trip.
    enum CallRoute {
        /// The cluster does not know it: this node answers as it would alone (404 naming what exists).
        case unknown
        /// This node does not know it and has not yet learned the cluster's holdings: ask again
        /// once it has (``whenSynced(_:)``).
        case notLearnedYet
        /// This node has that version ready: serve it here.
        case local(version: Int)
        /// Send it on to one of these live nodes with a ready copy.
        case forward(key: String, holders: [Member])
        /// The version exists, but no live node has it ready.
        case unavailable(String)
    }

    func route(name: String, version: String?) -> CallRoute {
        let route = resolve(name: name, version: version)
        if case .unknown = route, !synced { return .notLearnedYet }
        return route
    }

    private func resolve(name: String, version: String?) -> CallRoute {
        guard let versions = catalogVersions[name], let latest = versions.last else { return .unknown }
        let chosen: Int
        if let version {
            if let v = Int(version) { chosen = v } else if let v = aliasBook["\(name)@\(version)"]?.version { chosen = v } else { return .unknown }
        } else {
            chosen = aliasBook["\(name)@stable"]?.version ?? latest
        }
        let key = "\(name)@\(chosen)"
        if local[key]?.state == .ready { return .local(version: chosen) }
        let holders = otherHolders(key)
        if !holders.isEmpty { return .forward(key: key, holders: holders) }
        guard versions.contains(chosen) || table.holders[key] != nil else { return .unknown }
        let names = memberNames
        let expected = (table.holders[key] ?? []).map { names[$0] ?? $0.rawValue }
        return .unavailable("no live node has \(key) ready\(expected.isEmpty ? "" : " (its holders: \(expected.joined(separator: ", ")))"); retry once `kaa placement --holders-of \(name)` shows one ready")
    }

    /// The digest of `key` (`name@version`) in the cluster's catalog.
    func digest(of key: String) -> String? { kept[key]?.digest }

    /// Whether `key` (`name@version`) carries a quality gate, as its holders say; nil when no
    /// node has it ready.
    func gated(_ key: String) -> Bool? { kept[key]?.gated }

    /// The live nodes other than this one with `key` (`name@version`) ready.
    func otherHolders(_ key: String) -> [Member] {
        let ready = readyCopies[key] ?? []
        return gossip.members.filter { ready.contains($0.id) && $0.id != me && $0.status.isReachable }
    }

    /// Every snapshot in the cluster's catalog with the names of the live nodes that have it
    /// ready, for the repository index.
    var clusterIndex: [(name: String, version: Int, holders: [String])] {
        let names = memberNames
        return kept.values.sorted { ($0.name, $0.version) < ($1.name, $1.version) }.map { h in
            (h.name, h.version, (readyCopies[h.key] ?? []).map { names[$0] ?? $0.rawValue }.sorted())
        }
    }

    // MARK: the table

    /// The nodes placement sees (``Placement/nodes(members:leaving:repairGrace:now:)``).
    private func placementNodes(now: Instant) -> [Placement.Node] {
        Placement.nodes(members: gossip.members, leaving: book.leaving, repairGrace: settings.repairGrace, now: now)
    }

    /// The book took a peer's change. A publish waiting for it is answered at once when the
    /// change completes it (the ready copies and the catalog's versions, which calls are routed
    /// by, follow first); the table and the plan follow on the plan's turn.
    private func bookChanged() {
        if !waiters.isEmpty {
            refreshReady()
            refreshVersions()
            checkWaiters()
        }
        schedulePlan()
    }

    /// Brings ``catalogVersions`` up to date with the book for the models whose catalog
    /// changed, between two computations of the table (which sets it whole).
    private func refreshVersions() {
        let count = book.catalogChangeCount
        _ = book.catalog(retainVersions: settings.retainVersions, retainDrafts: settings.retainDrafts, aliased: aliasTargets)
        guard book.catalogChangeCount != count else { return }
        for (name, versions) in book.lastCatalogVersions {
            catalogVersions[name] = versions.isEmpty ? nil : versions
        }
    }

    /// Brings ``readyCopies`` up to date with the book and the live members.
    private func refreshReady() {
        let live = liveIDs
        if readyFrom == nil || readyFrom!.changes != book.changeCount || readyFrom!.live != live {
            readyCopies = book.ready(among: live)
            readyFrom = (book.changeCount, live)
        }
    }

    /// Where the copies are, by key, as placement takes them: the copies ready or being fetched
    /// on the nodes placement sees (a copy being drained is on its way out), in node id order.
    static func copies(in book: HoldingsBook, on nodes: [Placement.Node]) -> [String: [NodeID]] {
        var out: [String: [NodeID]] = [:]
        for node in nodes.map(\.id).sorted() {
            for h in book.entries[node]?.holdings ?? [] where h.state != .draining { out[h.key, default: []].append(node) }
        }
        return out
    }

    func recompute() {
        let now = Instant.now()
        refreshReady()
        let nodes = placementNodes(now: now)
        let ids = nodes.map(\.id.rawValue).sorted().joined(separator: ",")
        if ids != membersDigest {
            membersDigest = ids
            membersChangedAt = now
        }
        let catalog = book.catalog(retainVersions: settings.retainVersions, retainDrafts: settings.retainDrafts, aliased: aliasTargets)
        if catalogApplied != book.catalogChangeCount {
            catalogApplied = book.catalogChangeCount
            kept = catalog.kept
            retired = catalog.retired
            var versions: [String: [Int]] = [:]
            for h in kept.values { versions[h.name, default: []].append(h.version) }
            catalogVersions = versions.mapValues { $0.sorted() }
        }
        // The same nodes, the same catalog and the copies where they were: the same table.
        guard tableNodes != ids || catalogSeen != book.catalogChangeCount || heldSeen != book.changeCount else { return }
        // One computation at a time; the next starts from what the book says when it ends.
        guard !computing else {
            recomputeWhenDone = true
            return
        }
        heldSeen = book.changeCount
        let current = Self.copies(in: book, on: nodes)
        guard tableNodes != ids || catalogSeen != book.catalogChangeCount || current != heldFrom else { return }
        catalogSeen = book.catalogChangeCount
        heldFrom = current
        tableNodes = ids
        let snapshots = kept.values.map {
            Placement.Snapshot(name: $0.name, version: $0.version, bytes: $0.size, accelerator: $0.accelerator)
        }
        let placement = Placement.Settings(replication: settings.replication)
        guard snapshots.count >= Self.computeAsideFrom else {
            return take(planner.compute(nodes: nodes, snapshots: snapshots, current: current, settings: placement))
        }
        // A large table is computed off the loop (tens of milliseconds with thousands of
        // snapshots), so calls keep their latency while copies move; the table and the plan
        // follow when it is done.
        computing = true
        let planner = self.planner
        loop.offload({ () -> (Placement.Table, Placement.Planner, Duration) in
            let started = ContinuousClock.now
            var planner = planner
            let table = planner.compute(nodes: nodes, snapshots: snapshots, current: current, settings: placement)
            return (table, planner, ContinuousClock.now - started)
        }) { [weak self] result in
            guard let self, !self.stopped else { return }
            self.computing = false
            self.planner = result.1
            self.computeCost = result.2
            self.take(result.0)
            self.act()
            self.checkWaiters()
            self.checkLeave()
            if self.recomputeWhenDone {
                self.recomputeWhenDone = false
                self.schedulePlan()
            }
        }
    }

    /// Catalogs of at least this many snapshots have their table computed off the loop.
    static let computeAsideFrom = 1_000

    private func take(_ next: Placement.Table) {
        if next.digest != table.digest {
            tableChanges += 1
            table = next
        }
    }

    /// Whether moves may start: every live peer computed its table from the same node set, or
    /// this node's set has not changed for the settle time.
    var settled: Bool {
        let peers = livePeers()
        if peers.allSatisfy({ peerMembersDigest[$0.id] == membersDigest }) { return true }
        return Instant.now() - membersChangedAt >= settings.settle
    }

    /// Whether every one of `peers` said it computed this node's table.
    private func tablesAgree(_ peers: [Member]) -> Bool { peers.allSatisfy { peerTableDigest[$0.id] == table.digest } }

    /// Whether `peer` said it has the newest entry of `node` this node knows (a node has its own).
    private func peer(_ peer: NodeID, has node: NodeID) -> Bool {
        peer == node || (peerSummary[peer]?[node.rawValue] ?? 0) >= (book.entries[node]?.generation ?? 0)
    }

    /// The live nodes whose present entry every live peer has said it has.
    private func seenByEveryPeer(_ peers: [Member]) -> Set<NodeID> {
        Set((peers.map(\.id) + [me]).filter { node in book.entries[node] != nil && peers.allSatisfy { peer($0.id, has: node) } })
    }

    private var liveIDs: Set<NodeID> { Set(livePeers().map(\.id) + [me]) }

    // MARK: moves

    private func act() {
        guard !stopped, loaded else { return }
        // A leaving node keeps what it has (it may come back with it) and copies nothing.
        if leavingSince != nil { return checkLeave() }
        var input = ReplicationPlan.Input(me: me, table: table, ready: readyCopies, local: local.all,
                                          fetching: fetching, retired: retired, replication: settings.replication,
                                          settled: settled)
        let peers = livePeers()
        input.tablesAgree = tablesAgree(peers)
        input.seenEverywhere = seenByEveryPeer(peers)
        let decision = ReplicationPlan.decide(input)
        let now = Instant.now()
        retryAt = retryAt.filter { $0.value > now }
        wantedFetches = decision.fetch.filter { retryAt[$0.key] == nil }
        startWantedFetches()
        for key in decision.drop where !dropping.contains(key) && retryAt[key] == nil {
            drop(key)
        }
        // A copy being drained goes on being dropped until it is gone, unless the table gave it
        // back to this node.
        for (key, holding) in local.all where holding.state == .draining && !dropping.contains(key) && retryAt[key] == nil {
            if table.holders[key]?.contains(me) == true && !retired.contains(key), let id = try? SnapshotID(name: holding.name, version: holding.version) {
                local[key]?.state = .ready
                publishLocal()
                api.notify([.stored(id)])
            } else {
                drop(key)
            }
        }
        if !input.tablesAgree || input.seenEverywhere?.count != peers.count + 1 { hurryLaggingPeers(peers) }
    }

    /// A copy this node is to drop waits for every peer to agree on the table and to have the
    /// holders' entries: ask the peers that lag for their view now (at most every 250 ms each)
    /// rather than at a later tick, so a copy a publish left here goes within a moment.
    private func hurryLaggingPeers(_ peers: [Member]) {
        guard local.keys.contains(where: { key in table.holders[key].map { !$0.contains(me) } ?? false }) else { return }
        let now = Instant.now()
        for peer in peers {
            if let asked = askedAt[peer.id], now - asked < .milliseconds(250) { continue }
            let lags = peerTableDigest[peer.id] != table.digest || !(peers.map(\.id) + [me]).allSatisfy { self.peer(peer.id, has: $0) }
            guard lags else { continue }
            askedAt[peer.id] = now
            // As a push: the answer brings its generations and table digest, not other entries.
            exchange(with: peer, push: true)
        }
    }

    private func start(_ fetch: ReplicationPlan.Fetch) {
        guard let holding = kept[fetch.key],
              let id = try? SnapshotID(name: holding.name, version: holding.version),
              let source = fetch.sources.first,
              let peer = gossip.members.first(where: { $0.id == source }) else { return }
        fetching.insert(fetch.key)
        let digest = try? SnapshotDigest(parsing: holding.digest)
        let why = table.holders[fetch.key]?.contains(me) == true ? "this node is a holder in the table" : "repair"
        logger.info("fetching a copy", metadata: ["snapshot": "\(fetch.key)", "from": "\(peer.info.name)", "reason": "\(why)",
                                                  "bytes": "\(holding.size)"])
        publishLocal()
        let started = Instant.now()
        api.fetch(id, digest: digest, from: peer.info.peerAddress, frames: frames, deadline: fetchDeadline(holding.size),
                  pace: settings.repairBandwidth > 0 ? { [weak self] bytes, go in self?.pace(bytes, go) ?? go() } : nil) { [weak self] result in
            guard let self, !self.stopped else { return }
            self.fetching.remove(fetch.key)
            switch result {
            case .success(let (outcome, record)):
                self.repairBytes += outcome == "stored" ? record.size : 0
                self.logger.info("copy ready", metadata: ["snapshot": "\(fetch.key)", "from": "\(peer.info.name)",
                                                          "seconds": "\(Double((Instant.now() - started).nanosecondsClamped) / 1e9)"])
                self.local[fetch.key] = self.holding(record)
                self.publishLocal()
                self.startWantedFetches()
            case .failure(let error):
                self.fetchFailures += 1
                self.retryAt[fetch.key] = Instant.now() + .seconds(10)
                self.logger.warning("fetching a copy failed", metadata: ["snapshot": "\(fetch.key)", "from": "\(peer.info.name)",
                                                                         "error": "\(error.message)"])
                self.publishLocal()
                self.startWantedFetches()
            }
        }
    }

    /// Starts the fetches the last plan wanted while fewer than `repair_concurrency` run.
    private func startWantedFetches() {
        guard !stopped, loaded, leavingSince == nil else { return }
        let now = Instant.now()
        var started = 0
        while fetching.count < settings.repairConcurrency, started < wantedFetches.count {
            let fetch = wantedFetches[started]
            started += 1
            if local[fetch.key] != nil || fetching.contains(fetch.key) || receiving[fetch.key] != nil
                || retryAt[fetch.key].map({ $0 > now }) == true
                || table.holders[fetch.key]?.contains(me) != true { continue }
            start(fetch)
        }
        wantedFetches.removeFirst(started)
    }

    /// A minute, plus a second per 10 MB, plus what the bandwidth limit makes it take.
    private func fetchDeadline(_ bytes: UInt64) -> Duration {
        var seconds = 60 + Int64(bytes / 10_000_000)
        if settings.repairBandwidth > 0 { seconds += Int64(bytes / UInt64(settings.repairBandwidth)) * 2 }
        return .seconds(seconds)
    }

    /// Holds a fetched chunk back until the bandwidth limit allows it.
    private func pace(_ bytes: Int, _ go: @escaping () -> Void) {
        let now = Instant.now()
        if paceNext < now { paceNext = now }
        let wait = paceNext - now
        paceNext = paceNext + .nanoseconds(Int64(Double(bytes) / Double(settings.repairBandwidth) * 1e9))
        if wait <= .zero { go() } else { loop.schedule(after: wait, go) }
    }

    private func drop(_ key: String) {
        guard var holding = local[key], let id = try? SnapshotID(name: holding.name, version: holding.version) else { return }
        dropping.insert(key)
        if holding.state == .ready {
            // No call is routed to this copy from now on, here or from a peer.
            holding.state = .draining
            local[key] = holding
            publishLocal()
        }
        api.notify([.draining(id)])
        let retiredOnly = retired.contains(key)
        let why = retiredOnly ? "retention: the cluster keeps newer versions" : "no longer a holder; the table's holders have theirs ready"
        let store = self.store
        loop.offload({ () -> SnapshotError? in
            // An aliased copy may go to the holders placement chose; retention keeps aliased ones.
            do throws(SnapshotError) { try store.remove(id, evenIfAliased: !retiredOnly); return nil } catch { return error }
        }) { [self] error in
            dropping.remove(key)
            if let error, error.code == .inUse {
                // Calls still run on the loaded model: tried again in a second.
                retryAt[key] = Instant.now() + .seconds(1)
            } else if let error, error.code != .notFound {
                retryAt[key] = Instant.now() + .seconds(10)
                logger.notice("a copy to drop stays", metadata: ["snapshot": "\(key)", "error": "\(error.message)"])
            } else {
                if error == nil {
                    copiesDropped += 1
                    logger.info("copy dropped", metadata: ["snapshot": "\(key)", "reason": "\(why)"])
                }
                local[key] = nil
                publishLocal()
                api.notify([.removed(id)])
            }
        }
    }

    // MARK: copies a publish streams on

    /// Where the node receiving a verified upload sends it (`nil`: it stores it itself, and the
    /// cluster copies it as it copies any other): the snapshot's holders as the ring names them
    /// (``Placement/Planner/preference(for:nodes:settings:)``), whether this node is one, and
    /// the others to stream it to. Nil for a node alone, not yet caught up, or leaving.
    func publishTargets(_ id: SnapshotID, bytes: UInt64, accelerator: SnapshotManifest.Requirements.Accelerator)
        -> (here: Bool, peers: [Member])? {
        guard !stopped, loaded, synced, leavingSince == nil, !livePeers().isEmpty else { return nil }
        let snapshot = Placement.Snapshot(name: id.name, version: id.version, bytes: bytes,
                                          accelerator: Holding.accelerator(accelerator))
        let holders = planner.preference(for: snapshot, nodes: placementNodes(now: Instant.now()),
                                         settings: .init(replication: settings.replication))
        guard !holders.isEmpty else { return nil }
        let members = Dictionary(gossip.members.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        let peers = holders.filter { $0 != me }.compactMap { members[$0] }
        // A holder down within the repair grace cannot take it: this node keeps a copy.
        guard peers.allSatisfy(\.status.isReachable) else { return nil }
        return (holders.contains(me), peers)
    }

    /// Runs `go` once fewer than ``pushesPerPeer`` of this node's publish streams to `peer` are
    /// in flight (at once, or in turn as they end); `go` gets the release to call when its
    /// stream ended. Bounds what one node's publishes ask of a holder's upload slots and of the
    /// streams of one peer connection.
    func withPushSlot(to peer: NodeID, _ go: @escaping (_ release: @escaping () -> Void) -> Void) {
        guard pushesInFlight[peer, default: 0] < Replicator.pushesPerPeer else {
            pushQueue[peer, default: []].append(go)
            return
        }
        pushesInFlight[peer, default: 0] += 1
        var released = false
        go { [weak self] in
            guard let self, !released else { return }
            released = true
            self.pushesInFlight[peer, default: 1] -= 1
            if var waiting = self.pushQueue[peer], !waiting.isEmpty {
                let next = waiting.removeFirst()
                self.pushQueue[peer] = waiting.isEmpty ? nil : waiting
                self.withPushSlot(to: peer, next)
            }
        }
    }

    /// Publish streams in flight from this node to one peer.
    static let pushesPerPeer = 8

    /// Counts a publish's copies streamed on to holders, and those that failed.
    func countPushes(sent: Int, failed: Int, passedOn: Bool) {
        pushesSent += sent
        pushFailures += failed
        if passedOn { uploadsPassedOn += 1 }
    }

    /// Takes a copy that the node which received its upload streams here (`push-snapshot`):
    /// no plan fetches it meanwhile, and it is listed ready once stored (file, directory and
    /// catalog synced), when the push is answered.
    func receivePush(_ frame: Frame, _ responder: FrameResponder) {
        guard !stopped, loaded, leavingSince == nil else {
            return responder.fail(.notReady, stopped ? "this node is stopping" : loaded ? "this node is leaving" : "this node has not read its store yet")
        }
        guard responder.hasBody, let request = try? JSONDecoder().decode(PushRequest.self, from: Data(frame.payload)) else {
            return responder.fail(.badRequest, "push-snapshot wants JSON {\"name\", \"version\", \"digest\", \"size\"} followed by the archive as a stream")
        }
        let key = "\(request.name)@\(request.version)"
        if let busy = api.atUploadLimit { return responder.fail(.overloaded, busy.message) }
        if let copy = local[key] {
            guard copy.digest == request.digest else {
                return responder.fail(.badRequest, "\(key) is stored on this node with digest \(copy.digest), not \(request.digest); snapshots are immutable: publish it as a new version")
            }
            return responder.respond((try? SnapshotAPI.encode(PushAnswer(outcome: "already-present", digest: copy.digest))) ?? [])
        }
        receiving[key, default: 0] += 1
        api.receivePush(request, responder) { [weak self] result in
            guard let self else { return }
            self.receiving[key] = self.receiving[key].flatMap { $0 > 1 ? $0 - 1 : nil }
            switch result {
            case .success(let (outcome, record)):
                self.pushesReceived += 1
                if !self.stopped, self.local[key] == nil {
                    self.local[key] = self.holding(record)
                    self.publishLocal()
                }
                responder.respond((try? SnapshotAPI.encode(PushAnswer(outcome: outcome, digest: record.digest.description))) ?? [])
            case .failure(let error):
                let code: PeerErrorCode = switch error.code {
                case .busy: .overloaded
                case .io: .internal
                default: .badRequest
                }
                responder.fail(code, error.message)
            }
        }
    }

    // MARK: a graceful leave

    /// Hands this node's copies over before it stops: announces that it is leaving (placement
    /// leaves it out, so the others make the copies it holds), and calls `done` once every copy
    /// it has is ready on `replication` other live nodes (all of them, when fewer), or when
    /// `leaveTimeout` passes. At once when no other node is there to take them.
    func beginLeave(done: @escaping () -> Void) {
        guard leavingSince == nil, !stopped, settings.leaveTimeout > .zero else { return done() }
        guard !livePeers().filter({ !book.leaving.contains($0.id) }).isEmpty else { return done() }
        leavingSince = Instant.now()
        leaveDone = done
        logger.notice("leaving: handing this node's copies over before it stops",
                      metadata: ["copies": "\(local.count)", "timeout": "\(settings.leaveTimeout)"])
        publishLocal()
        for peer in livePeers() { exchange(with: peer) }
    }

    /// Copies not yet ready on enough other nodes, while leaving.
    private var notHandedOver: Int {
        let eligible = Set(livePeers().map(\.id)).subtracting(book.leaving)
        let need = min(settings.replication, eligible.count)
        guard need > 0 else { return 0 }
        let ready = book.ready(among: eligible)
        return local.keys.filter { !retired.contains($0) && (ready[$0]?.count ?? 0) < need }.count
    }

    private func checkLeave() {
        guard let since = leavingSince, let done = leaveDone else { return }
        let left = notHandedOver
        let timedOut = Instant.now() - since >= settings.leaveTimeout
        guard left == 0 || timedOut else { return }
        leaveDone = nil
        if left == 0 {
            logger.notice("leaving: every copy is on other nodes", metadata: ["seconds": "\(Double((Instant.now() - since).nanosecondsClamped) / 1e9)"])
        } else {
            logger.warning("leaving before every copy is on other nodes (leave_timeout passed); they are made again after the repair grace",
                           metadata: ["copies.not_handed_over": "\(left)"])
        }
        done()
    }

    // MARK: publishes

    /// How a publish ended: the table's holders, those with a ready copy, and whether the
    /// write quorum was met.
    struct QuorumOutcome {
        var holders: [String]
        var ready: [String]
        /// The quorum was met with `replication` holders (not fewer, for want of nodes).
        var replicated: Bool
        var timedOut: Bool
    }

    /// Calls `done` once `replication` holders of `id` have it ready (or fewer, when fewer
    /// nodes are there), or when the publish timeout passes. `record`: the copy this node
    /// stored, listed at once. With `others`, the nodes a publish streamed it to as well (each
    /// answered that it stored it): then `done` runs once this node knows it ready here and on
    /// them (``awaitCopies(_:on:done:)``).
    func awaitQuorum(_ id: SnapshotID, record: SnapshotRecord, others: Set<NodeID>? = nil, done: @escaping (QuorumOutcome) -> Void) {
        let key = id.description
        if local[key] == nil {
            local[key] = holding(record)
            publishLocal()
        }
        wait(for: key, on: others.map { $0.union([me]) }, done: done)
    }

    /// Calls `done` once this node knows `id` ready on `nodes` (a publish streamed it there and
    /// each answered that it stored it): their holdings reached this node, so it routes calls
    /// for the snapshot, without waiting for the table to be computed again. Or when the publish
    /// timeout passes.
    func awaitCopies(_ id: SnapshotID, on nodes: Set<NodeID>, done: @escaping (QuorumOutcome) -> Void) {
        wait(for: id.description, on: nodes, done: done)
    }

    private func wait(for key: String, on nodes: Set<NodeID>?, done: @escaping (QuorumOutcome) -> Void) {
        if let outcome = quorum(key, on: nodes, timedOut: false) { return done(outcome) }
        waiters[key, default: []].append((Instant.now() + settings.publishTimeout, nodes, done))
        // The holders learn of it from the push; pull their answers sooner than the tick.
        if nodes == nil { act() }
    }

    /// The outcome for `key` on the table's holders, or on `nodes`; nil while it is not met
    /// (unless `timedOut`).
    private func quorum(_ key: String, on nodes: Set<NodeID>?, timedOut: Bool) -> QuorumOutcome? {
        let holders = nodes.map { Array($0).sorted() } ?? table.holders[key] ?? []
        let readyHolders = holders.filter { readyCopies[key]?.contains($0) == true }
        var met = !holders.isEmpty && readyHolders.count >= min(settings.replication, holders.count)
        if nodes != nil, let id = try? SnapshotID(parsing: key) {
            met = readyHolders.count == holders.count && catalogVersions[id.name]?.contains(id.version) == true
        }
        guard met || timedOut else { return nil }
        let names = memberNames
        return QuorumOutcome(holders: holders.map { names[$0] ?? $0.rawValue }, ready: readyHolders.map { names[$0] ?? $0.rawValue },
                             replicated: met && holders.count >= settings.replication, timedOut: !met)
    }

    private func checkWaiters() {
        for key in Array(waiters.keys) {
            var waiting = waiters[key]!
            waiting.removeAll { w in
                guard let outcome = quorum(key, on: w.on, timedOut: false) else { return false }
                w.done(outcome)
                return true
            }
            waiters[key] = waiting.isEmpty ? nil : waiting
        }
    }

    private func expireWaiters() {
        checkWaiters()
        let now = Instant.now()
        for key in Array(waiters.keys) {
            let expired = waiters[key]!.filter { $0.until <= now }
            guard !expired.isEmpty else { continue }
            waiters[key]!.removeAll { $0.until <= now }
            if waiters[key]!.isEmpty { waiters[key] = nil }
            for w in expired { w.done(quorum(key, on: w.on, timedOut: true)!) }
        }
    }

    // MARK: what operators see

    private var memberNames: [NodeID: String] {
        Dictionary(gossip.members.map { ($0.id, $0.info.name) }, uniquingKeysWith: { a, _ in a })
    }

    /// Table holders of `key` with a ready copy.
    private func readyHolders(_ key: String) -> Int {
        (table.holders[key] ?? []).filter { readyCopies[key]?.contains($0) == true }.count
    }

    /// `GET /kaa/v1/placement`, as values to write off the loop.
    func placementReport(underReplicatedOnly: Bool) -> PlacementReport {
        let live = liveIDs
        // Copies of live nodes that the table does not name (moving in, draining).
        var others: [String: [PlacementReport.Copy]] = [:]
        for (node, entry) in book.entries where live.contains(node) {
            for h in entry.holdings where table.holders[h.key]?.contains(node) != true {
                others[h.key, default: []].append(PlacementReport.Copy(node: node, state: h.state.rawValue))
            }
        }
        var rows: [PlacementReport.Row] = []
        rows.reserveCapacity(underReplicatedOnly ? 64 : table.holders.count)
        var under = 0
        for (key, holders) in table.holders {
            let ready = readyHolders(key)
            let met = ready >= settings.replication
            if !met { under += 1 }
            if underReplicatedOnly && met { continue }
            let copies = holders.map { node in
                PlacementReport.Copy(node: node, state: live.contains(node) ? (book.holding(node, key)?.state.rawValue ?? "missing") : "down")
            }
            rows.append(PlacementReport.Row(key: key, name: kept[key]?.name ?? key, version: kept[key]?.version ?? 0, holders: copies,
                                            others: (others[key] ?? []).sorted { $0.node < $1.node }, ready: ready, replicated: met))
        }
        let shown = underReplicatedOnly ? Set(rows.map(\.name)) : []
        return PlacementReport(
            digest: table.digest, replication: settings.replication, settled: settled, digestsAgree: tablesAgree(livePeers()),
            snapshotsTotal: table.holders.count, underReplicated: under, fetching: fetching.count, rows: rows, load: table.load,
            names: memberNames,
            httpAddresses: Dictionary(gossip.members.map { ($0.id, $0.info.httpAddress.description) }, uniquingKeysWith: { a, _ in a }),
            aliases: aliasBook.values.compactMap { r in
                // With only the under-replicated rows, only their models' aliases.
                guard let v = r.version, !underReplicatedOnly || shown.contains(r.name) else { return nil }
                return (r.name, r.alias, v)
            })
    }

    /// Lines for `/metrics`.
    var metricsText: String {
        let under = table.holders.keys.filter { readyHolders($0) < settings.replication }.count
        return """
        # HELP kaa_snapshots_under_replicated Snapshots with fewer ready holders than the replication factor.
        # TYPE kaa_snapshots_under_replicated gauge
        kaa_snapshots_under_replicated \(under)
        # HELP kaa_placement_snapshots Snapshots in this node's placement table.
        # TYPE kaa_placement_snapshots gauge
        kaa_placement_snapshots \(table.holders.count)
        # HELP kaa_copies_fetching Copies this node is fetching now.
        # TYPE kaa_copies_fetching gauge
        kaa_copies_fetching \(fetching.count)
        # HELP kaa_copies_draining Copies this node is deleting now.
        # TYPE kaa_copies_draining gauge
        kaa_copies_draining \(dropping.count)
        # HELP kaa_repair_bytes_total Bytes of snapshots this node fetched from peers.
        # TYPE kaa_repair_bytes_total counter
        kaa_repair_bytes_total \(repairBytes)
        # HELP kaa_copy_fetch_failures_total Fetches of a copy that failed.
        # TYPE kaa_copy_fetch_failures_total counter
        kaa_copy_fetch_failures_total \(fetchFailures)
        # HELP kaa_publish_copies_sent_total Copies of uploads this node received streamed on to their holders, by outcome.
        # TYPE kaa_publish_copies_sent_total counter
        kaa_publish_copies_sent_total{outcome="stored"} \(pushesSent - pushFailures)
        kaa_publish_copies_sent_total{outcome="failed"} \(pushFailures)
        # HELP kaa_publish_uploads_passed_on_total Uploads this node verified and streamed on to their holders without keeping a copy.
        # TYPE kaa_publish_uploads_passed_on_total counter
        kaa_publish_uploads_passed_on_total \(uploadsPassedOn)
        # HELP kaa_publish_copies_received_total Copies another node streamed here from an upload it received.
        # TYPE kaa_publish_copies_received_total counter
        kaa_publish_copies_received_total \(pushesReceived)
        # HELP kaa_copies_dropped_total Copies this node deleted (no longer a holder, or retired).
        # TYPE kaa_copies_dropped_total counter
        kaa_copies_dropped_total \(copiesDropped)
        # HELP kaa_placement_table_changes_total Times this node's placement table changed.
        # TYPE kaa_placement_table_changes_total counter
        kaa_placement_table_changes_total \(tableChanges)
        # HELP kaa_holdings_exchange_bytes_total Bytes of holdings anti-entropy (the peer plane's holdings frames) this node sent and received.
        # TYPE kaa_holdings_exchange_bytes_total counter
        kaa_holdings_exchange_bytes_total{direction="sent"} \(exchangeBytesSent)
        kaa_holdings_exchange_bytes_total{direction="received"} \(exchangeBytesReceived)
        # HELP kaa_gossip_bytes_total Bytes of SWIM gossip this node sent and received: UDP datagrams, and push-pull state over the peer plane.
        # TYPE kaa_gossip_bytes_total counter
        kaa_gossip_bytes_total{direction="sent",channel="udp"} \(gossip.bytesSent)
        kaa_gossip_bytes_total{direction="received",channel="udp"} \(gossip.bytesReceived)
        kaa_gossip_bytes_total{direction="sent",channel="push_pull"} \(gossip.pushPullBytesSent)
        kaa_gossip_bytes_total{direction="received",channel="push_pull"} \(gossip.pushPullBytesReceived)

        """
    }
}

extension Holding {
    /// A ready copy of a stored snapshot.
    init(_ record: SnapshotRecord) {
        self.init(name: record.id.name, version: record.id.version, digest: record.digest.description, size: record.size,
                  state: .ready, draft: record.isDraft, accelerator: Holding.accelerator(record.accelerator), gated: record.hasGate)
    }

    /// Placement's word for a manifest's accelerator requirement.
    static func accelerator(_ requirement: SnapshotManifest.Requirements.Accelerator) -> Placement.Accelerator {
        switch requirement {
        case .none: .none
        case .gpu: .requiresGPU
        case .gpuPreferred: .prefersGPU
        }
    }
}

/// This node's copies by key, remembering which keys changed since the entry was last
/// written, so that writing it costs the changes, not the copies.
struct LocalCopies {
    private(set) var all: [String: Holding] = [:]
    private var changed: Set<String> = []

    subscript(key: String) -> Holding? {
        get { all[key] }
        set {
            all[key] = newValue
            changed.insert(key)
        }
    }

    @discardableResult
    mutating func removeValue(forKey key: String) -> Holding? {
        changed.insert(key)
        return all.removeValue(forKey: key)
    }

    mutating func replaceAll(with copies: [String: Holding]) {
        changed.formUnion(all.keys)
        changed.formUnion(copies.keys)
        all = copies
    }

    /// Marks keys whose listing changed for another reason (a fetch began or ended).
    mutating func touch(_ keys: Set<String>) { changed.formUnion(keys) }

    var hasChanges: Bool { !changed.isEmpty }

    mutating func takeChanges() -> Set<String> {
        defer { changed = [] }
        return changed
    }

    var keys: Dictionary<String, Holding>.Keys { all.keys }
    var count: Int { all.count }
}
