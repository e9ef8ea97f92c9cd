/// One copy of a snapshot on one node, as the cluster learns of it.
public struct Holding: Hashable, Sendable, Codable {
    /// A copy's life: fetching → ready → draining → gone (a gone copy is no longer listed).
    /// Verification happens while the bytes arrive (the store's ingest), so a copy is `ready`
    /// the moment the store has it.
    public enum State: String, Sendable, Codable {
        case fetching, ready, draining
    }

    public var name: String
    public var version: Int
    /// `sha256:<hex>`.
    public var digest: String
    public var size: UInt64
    public var state: State
    /// An unsigned upload that the node numbered itself; retention counts drafts apart.
    public var draft: Bool
    /// An alias on the holder points at it: retention keeps it.
    public var aliased: Bool
    /// What its manifest asks of a holder's accelerators.
    public var accelerator: Placement.Accelerator
    /// Its manifest carries a quality gate: a node without a copy refuses to move `stable` to it
    /// unforced, as it cannot run the gate (docs/quality-gate.md).
    public var gated: Bool

    public init(name: String, version: Int, digest: String, size: UInt64, state: State, draft: Bool = false, aliased: Bool = false,
                accelerator: Placement.Accelerator = .none, gated: Bool = false) {
        self.name = name
        self.version = version
        self.digest = digest
        self.size = size
        self.state = state
        self.draft = draft
        self.aliased = aliased
        self.accelerator = accelerator
        self.gated = gated
    }

    /// `name@version`, the key placement uses.
    public var key: String { "\(name)@\(version)" }

    // On the wire as `[name, version, digest, size, state, flags]`: ten thousand holdings in
    // about a megabyte.
    public init(from decoder: any Decoder) throws {
        var c = try decoder.unkeyedContainer()
        name = try c.decode(String.self)
        version = try c.decode(Int.self)
        digest = try c.decode(String.self)
        size = try c.decode(UInt64.self)
        let code = try c.decode(Int.self)
        let flags = try c.decode(Int.self)
        switch code {
        case 0: state = .fetching
        case 1: state = .ready
        case 2: state = .draining
        default: throw DecodingError.dataCorruptedError(in: c, debugDescription: "holding state \(code) is not 0, 1 or 2")
        }
        draft = flags & 1 != 0
        aliased = flags & 2 != 0
        accelerator = flags & 4 != 0 ? .requiresGPU : flags & 8 != 0 ? .prefersGPU : .none
        gated = flags & 16 != 0
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.unkeyedContainer()
        try c.encode(name)
        try c.encode(version)
        try c.encode(digest)
        try c.encode(size)
        try c.encode(state == .fetching ? 0 : state == .ready ? 1 : 2)
        try c.encode((draft ? 1 : 0) | (aliased ? 2 : 0) | (accelerator == .requiresGPU ? 4 : accelerator == .prefersGPU ? 8 : 0)
                     | (gated ? 16 : 0))
    }
}

/// The change of one node's entry from generation `base` to `generation`: what a push carries
/// instead of the whole entry when the peer is known to have `base`. It names every key
/// touched in between with its final state, so it applies to any generation from `base` on.
public struct EntryDelta: Sendable, Codable, Equatable {
    public var base: UInt64
    public var generation: UInt64
    /// Holdings new or changed since `base`, as they are at `generation`.
    public var upserts: [Holding]
    /// Keys gone since `base`.
    public var removed: [String]
    public var leaving: Bool

    public init(base: UInt64, generation: UInt64, upserts: [Holding], removed: [String], leaving: Bool) {
        self.base = base
        self.generation = generation
        self.upserts = upserts
        self.removed = removed
        self.leaving = leaving
    }

    /// What changed from `old` to `new`.
    public init(from old: HoldingsBook.Entry, to new: HoldingsBook.Entry) {
        let before = old.byKey
        var seen = Set<String>()
        upserts = []
        for h in new.holdings {
            seen.insert(h.key)
            if before[h.key] != h { upserts.append(h) }
        }
        removed = before.keys.filter { !seen.contains($0) }.sorted()
        base = old.generation
        generation = new.generation
        leaving = new.leaving
    }

    /// Consecutive deltas (each one's base the previous one's generation) as one.
    public static func fold(_ deltas: some Collection<EntryDelta>) -> EntryDelta? {
        guard let first = deltas.first, let last = deltas.reversed().first else { return nil }
        var final: [String: Holding?] = [:]
        for d in deltas {
            for key in d.removed { final[key] = .some(nil) }
            for h in d.upserts { final[h.key] = .some(h) }
        }
        var upserts: [Holding] = [], removed: [String] = []
        for (key, h) in final {
            if let h { upserts.append(h) } else { removed.append(key) }
        }
        return EntryDelta(base: first.base, generation: last.generation,
                          upserts: upserts.sorted { ($0.name, $0.version) < ($1.name, $1.version) }, removed: removed.sorted(),
                          leaving: last.leaving)
    }
}

/// Every node's holdings as this node knows them: cluster state, spread by anti-entropy.
///
/// Each node is the only author of its own entry and stamps it with a generation that only
/// grows (the shell uses the wall clock in milliseconds, at least one more than the last, so
/// a restarted node's entry still supersedes the one it wrote before). An exchange sends the
/// generations first (``summary``) and then only the entries the other side lacks
/// (``newer(than:)``): the digest first, the differences only when they differ.
///
/// The book keeps its indexes (which nodes have each key ready, each model's ready keys, the
/// catalog) up to date with every merge and delta, so that a change costs what it touches,
/// not what the cluster holds: with ten thousand snapshots a table is planned many times a
/// second.
public struct HoldingsBook: Sendable {
    public struct Entry: Sendable, Codable, Equatable {
        public var generation: UInt64
        /// One holding per key, in no particular order.
        public var holdings: [Holding]
        /// The node is stopping and hands its copies over: placement leaves it out, and its
        /// ready copies still count as sources until it is gone.
        public var leaving: Bool
        public init(generation: UInt64, holdings: [Holding], leaving: Bool = false) {
            self.generation = generation
            self.holdings = holdings
            self.leaving = leaving
        }

        /// The holdings by `name@version` (a repeated key keeps its last).
        public var byKey: [String: Holding] { Dictionary(holdings.map { ($0.key, $0) }, uniquingKeysWith: { _, b in b }) }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            generation = try c.decode(UInt64.self, forKey: .generation)
            holdings = try c.decode([Holding].self, forKey: .holdings)
            leaving = try c.decodeIfPresent(Bool.self, forKey: .leaving) ?? false
        }
    }

    /// Nodes whose newest entry says they are leaving.
    public var leaving: Set<NodeID> { Set(entries.filter(\.value.leaving).map(\.key)) }

    public private(set) var entries: [NodeID: Entry] = [:]
    /// Where each key sits in each node's `holdings`.
    private var positions: [NodeID: [String: Int]] = [:]
    /// Every node with a ready copy, by key (nodes that died too, until forgotten).
    public private(set) var readyNodes: [String: Set<NodeID>] = [:]
    /// The keys with a ready copy somewhere, by model name.
    private var readyKeysByName: [String: Set<String>] = [:]
    /// Models whose ready copies changed since the catalog was last brought up to date.
    private var touchedNames = Set<String>()
    /// Counts the changes to the book: equal counts, the same book.
    public private(set) var changeCount: UInt64 = 0

    /// The catalog as of the last ``catalog(retainVersions:retainDrafts:aliased:)``, the
    /// settings it was cut with, and each model's keys in it (kept or retired).
    private var catalogSettings: CatalogSettings?
    private var kept: [String: Holding] = [:]
    private var retired = Set<String>()
    private var catalogKeys: [String: [String]] = [:]
    /// Counts the changes to the catalog's outcome: equal counts, the same catalog.
    public private(set) var catalogChangeCount: UInt64 = 0
    /// The models the last ``catalog(retainVersions:retainDrafts:aliased:)`` cut again, with the
    /// versions it keeps of each, ascending (empty: none left).
    public var lastCatalogVersions: [String: [Int]] { lastVersions }
    private var lastVersions: [String: [Int]] = [:]

    private struct CatalogSettings: Equatable, Sendable {
        var retainVersions, retainDrafts: Int
        var aliased: Set<String>
    }

    public init() {}

    /// Takes `entry` for `node` if it is newer than what is known; returns whether it did.
    @discardableResult
    public mutating func merge(_ node: NodeID, _ entry: Entry) -> Bool {
        if let known = entries[node], known.generation >= entry.generation { return false }
        let before = entries.removeValue(forKey: node)
        let oldPositions = positions.removeValue(forKey: node) ?? [:]
        var holdings: [Holding] = []
        var at: [String: Int] = [:]
        holdings.reserveCapacity(entry.holdings.count)
        at.reserveCapacity(entry.holdings.count)
        for h in entry.holdings {
            if let i = at[h.key] { holdings[i] = h } else {
                at[h.key] = holdings.count
                holdings.append(h)
            }
        }
        // Only what differs from the entry it replaces touches the indexes.
        for h in holdings {
            let old = oldPositions[h.key].map { before!.holdings[$0] }
            if old == h { continue }
            if let old { unindex(node, old) }
            index(node, h)
        }
        if let before {
            for h in before.holdings where at[h.key] == nil { unindex(node, h) }
        }
        entries[node] = Entry(generation: entry.generation, holdings: holdings, leaving: entry.leaving)
        positions[node] = at
        changeCount += 1
        return true
    }

    /// What applying a delta did.
    public enum DeltaOutcome: Sendable, Equatable {
        case applied
        /// This book has that generation or a newer one already.
        case stale
        /// This book has no entry of the node at or after the delta's base: the whole entry is needed.
        case missingBase
    }

    /// Applies `delta` to `node`'s entry, when this book has a generation from the delta's base
    /// up to (not including) its own. Costs what the delta names, not the entry's size.
    @discardableResult
    public mutating func apply(_ node: NodeID, _ delta: EntryDelta) -> DeltaOutcome {
        guard let known = entries[node], known.generation >= delta.base else { return .missingBase }
        guard known.generation < delta.generation else { return .stale }
        // Taken out of the dictionaries so that changing them copies nothing.
        var entry = entries.removeValue(forKey: node)!
        var at = positions.removeValue(forKey: node) ?? [:]
        for key in delta.removed {
            guard let i = at.removeValue(forKey: key) else { continue }
            unindex(node, entry.holdings[i])
            let last = entry.holdings.count - 1
            if i != last {
                entry.holdings[i] = entry.holdings[last]
                at[entry.holdings[i].key] = i
            }
            entry.holdings.removeLast()
        }
        for h in delta.upserts {
            if let i = at[h.key] {
                let old = entry.holdings[i]
                guard old != h else { continue }
                unindex(node, old)
                entry.holdings[i] = h
            } else {
                at[h.key] = entry.holdings.count
                entry.holdings.append(h)
            }
            index(node, h)
        }
        entry.generation = delta.generation
        entry.leaving = delta.leaving
        entries[node] = entry
        positions[node] = at
        changeCount += 1
        return .applied
    }

    private mutating func index(_ node: NodeID, _ h: Holding) {
        guard h.state == .ready else { return }
        readyNodes[h.key, default: []].insert(node)
        readyKeysByName[h.name, default: []].insert(h.key)
        touchedNames.insert(h.name)
    }

    private mutating func unindex(_ node: NodeID, _ h: Holding) {
        guard h.state == .ready else { return }
        let key = h.key
        touchedNames.insert(h.name)
        guard readyNodes[key]?.remove(node) != nil, readyNodes[key]!.isEmpty else { return }
        readyNodes[key] = nil
        readyKeysByName[h.name]?.remove(key)
        if readyKeysByName[h.name]?.isEmpty == true { readyKeysByName[h.name] = nil }
    }

    /// Forgets a node (one that left the membership view for good).
    public mutating func forget(_ node: NodeID) {
        guard let entry = entries.removeValue(forKey: node) else { return }
        for h in entry.holdings { unindex(node, h) }
        positions[node] = nil
        changeCount += 1
    }

    /// `node`'s holding of `key`, if its entry lists one.
    public func holding(_ node: NodeID, _ key: String) -> Holding? {
        guard let i = positions[node]?[key] else { return nil }
        return entries[node]?.holdings[i]
    }

    /// The generation of every entry: what an exchange sends first.
    public var summary: [String: UInt64] {
        var out: [String: UInt64] = [:]
        for (node, entry) in entries { out[node.rawValue] = entry.generation }
        return out
    }

    /// The entries newer than `summary` says the other side has, oldest generations first,
    /// while their holdings number at most `maxHoldings` (at least one entry is always given):
    /// the rest go on a later exchange, so an answer fits in a frame.
    public func newer(than summary: [String: UInt64], maxHoldings: Int = .max) -> [String: Entry] {
        var out: [String: Entry] = [:]
        var count = 0
        let candidates = entries.filter { $0.value.generation > (summary[$0.key.rawValue] ?? 0) }
            .sorted { ($0.value.generation, $0.key) < ($1.value.generation, $1.key) }
        for (node, entry) in candidates {
            if !out.isEmpty && count + entry.holdings.count > maxHoldings { break }
            out[node.rawValue] = entry
            count += entry.holdings.count
        }
        return out
    }

    /// For each snapshot key, the nodes among `nodes` whose copy is ready. Costs the holdings of
    /// the nodes left out (none, usually), not the book's.
    public func ready(among nodes: Set<NodeID>) -> [String: Set<NodeID>] {
        var out = readyNodes
        for (node, entry) in entries where !nodes.contains(node) {
            for h in entry.holdings where h.state == .ready {
                guard out[h.key]?.remove(node) != nil, out[h.key]!.isEmpty else { continue }
                out[h.key] = nil
            }
        }
        return out
    }

    /// Every snapshot a node has ready (the cluster's catalog), one record per key, aliased
    /// where any holder has an alias on it, then cut by cluster-wide retention: per model, the
    /// newest `retainVersions` published versions and `retainDrafts` drafts, plus every
    /// aliased version: one a holder marks aliased, or one whose key is in `aliased` (the
    /// cluster's alias register). What retention cuts is in ``retired``.
    ///
    /// Only the models whose ready copies changed since the last call are cut again (all of
    /// them when the settings differ); ``catalogChangeCount`` grows when the outcome changed.
    public mutating func catalog(retainVersions: Int, retainDrafts: Int, aliased: Set<String> = []) -> (kept: [String: Holding], retired: Set<String>) {
        let settings = CatalogSettings(retainVersions: retainVersions, retainDrafts: retainDrafts, aliased: aliased)
        if settings != catalogSettings {
            catalogSettings = settings
            touchedNames.formUnion(readyKeysByName.keys)
            touchedNames.formUnion(catalogKeys.keys)
        }
        var changed = false
        lastVersions = [:]
        for name in touchedNames {
            var before: [String: Holding] = [:]
            var retiredBefore = Set<String>()
            for key in catalogKeys.removeValue(forKey: name) ?? [] {
                if let h = kept.removeValue(forKey: key) { before[key] = h }
                if retired.remove(key) != nil { retiredBefore.insert(key) }
            }
            // One record per key: the copy of the lowest node id, aliased where any is, the largest size.
            var versions: [Holding] = []
            for key in readyKeysByName[name] ?? [] {
                var record: Holding?
                for node in (readyNodes[key] ?? []).sorted() {
                    guard let h = holding(node, key) else { continue }
                    if var r = record {
                        r.aliased = r.aliased || h.aliased
                        r.size = max(r.size, h.size)
                        record = r
                    } else {
                        record = h
                    }
                }
                if var r = record {
                    if aliased.contains(key) { r.aliased = true }
                    versions.append(r)
                }
            }
            versions.sort { $0.version > $1.version }
            let published = versions.filter { !$0.draft }, drafts = versions.filter(\.draft)
            let keep = Set(published.prefix(max(1, retainVersions)).map(\.key) + drafts.prefix(max(1, retainDrafts)).map(\.key))
            var keptNow: [String: Holding] = [:]
            var retiredNow = Set<String>()
            for h in versions {
                if keep.contains(h.key) || h.aliased { keptNow[h.key] = h } else { retiredNow.insert(h.key) }
            }
            if keptNow != before || retiredNow != retiredBefore { changed = true }
            lastVersions[name] = keptNow.values.map(\.version).sorted()
            kept.merge(keptNow) { _, b in b }
            retired.formUnion(retiredNow)
            if !versions.isEmpty { catalogKeys[name] = versions.map(\.key) }
        }
        touchedNames = []
        if changed { catalogChangeCount += 1 }
        return (kept, retired)
    }
}

/// What a node does about its copies, given the table and what the cluster holds: a pure
/// function, so every rule is testable by hand.
public enum ReplicationPlan {
    public struct Input: Sendable {
        public var me: NodeID
        public var table: Placement.Table
        /// Holders by key whose copy is ready, live nodes only (this node included).
        public var ready: [String: Set<NodeID>]
        /// This node's own copies, by key.
        public var local: [String: Holding]
        /// Keys this node is fetching now.
        public var fetching: Set<String>
        /// Keys cluster-wide retention cut (``HoldingsBook/catalog(retainVersions:retainDrafts:)``).
        public var retired: Set<String> = []
        public var replication: Int
        /// Whether moves may start: the live members computed their tables from the same nodes,
        /// or this node's view has not changed for the settle time.
        public var settled: Bool
        /// Whether every live peer has said it computed this same table. A copy is dropped only
        /// then: a node with another table may be dropping the very holders this one counts on.
        public var tablesAgree: Bool = true
        /// The nodes whose present holdings every live peer has taken. Only their ready copies let
        /// a copy go, so no node's view shows fewer copies than the factor because of a drop it
        /// heard of before the copy that made it safe. nil: every node counts.
        public var seenEverywhere: Set<NodeID>? = nil

        public init(me: NodeID, table: Placement.Table, ready: [String: Set<NodeID>], local: [String: Holding],
                    fetching: Set<String>, retired: Set<String> = [], replication: Int, settled: Bool) {
            self.me = me
            self.retired = retired
            self.table = table
            self.ready = ready
            self.local = local
            self.fetching = fetching
            self.replication = replication
            self.settled = settled
        }
    }

    public struct Fetch: Sendable, Equatable {
        public var key: String
        /// Live nodes with a ready copy, table holders first.
        public var sources: [NodeID]
        public init(key: String, sources: [NodeID]) {
            self.key = key
            self.sources = sources
        }
    }

    public struct Decision: Sendable, Equatable {
        /// Copies to make here, fewest ready copies first.
        public var fetch: [Fetch] = []
        /// Copies to delete here: this node is not a holder and `replication` holders have theirs ready.
        public var drop: [String] = []
        public init(fetch: [Fetch] = [], drop: [String] = []) {
            self.fetch = fetch
            self.drop = drop
        }
    }

    public static func decide(_ input: Input) -> Decision {
        var decision = Decision()
        guard input.settled else { return decision }
        var wanted: [(key: String, copies: Int, sources: [NodeID])] = []
        for (key, holders) in input.table.holders where holders.contains(input.me) {
            if input.local[key]?.state == .ready || input.fetching.contains(key) { continue }
            let ready = input.ready[key] ?? []
            let preferred = holders.filter { $0 != input.me && ready.contains($0) }
            let others = ready.subtracting(holders).subtracting([input.me]).sorted()
            let sources = preferred + others
            if sources.isEmpty { continue }
            wanted.append((key, ready.count, sources))
        }
        wanted.sort { ($0.copies, $0.key) < ($1.copies, $1.key) }
        decision.fetch = wanted.map { Fetch(key: $0.key, sources: $0.sources) }
        // Make before break: a copy goes only once the table's holders have theirs ready, every
        // peer has heard so, and every peer computed the same table.
        for (key, holding) in input.local where holding.state == .ready && input.tablesAgree {
            guard let holders = input.table.holders[key], !holders.isEmpty, !holders.contains(input.me) else { continue }
            let ready = input.ready[key] ?? []
            let confirmed = holders.filter { ready.contains($0) && input.seenEverywhere?.contains($0) != false }.count
            if confirmed >= min(input.replication, holders.count) && confirmed >= 1 { decision.drop.append(key) }
        }
        // Retention, cluster-wide: a version the cluster no longer keeps goes, unless aliased here.
        for (key, holding) in input.local where holding.state == .ready && input.retired.contains(key) && !holding.aliased {
            decision.drop.append(key)
        }
        decision.drop.sort()
        return decision
    }
}
