import Foundation
import KaaCore
import KaaEngine
import KaaIO
import KaaSnapshot
import Logging

/// One loaded model version.
// SAFETY: `id`, `scorer`, `modelBytes` and `lease` are immutable (`Scorer` is thread-safe);
// every `var` is read and written only on the node's loop. Workers touch only the immutable part.
final class LoadedModel: @unchecked Sendable {
    let id: SnapshotID
    /// The model with its pipeline: what requests are checked against and run through.
    let scorer: Scorer
    /// What the loaded model holds before any call: its weights and plan.
    let modelBytes: Int
    /// What it holds now, as counted against the memory budget: ``modelBytes``, the memory
    /// its calls keep for reuse (workspaces) and the outputs kept for the next call. Measured
    /// again after timed calls (see `ModelCache.remeasure`).
    var bytes: Int
    let lease: SnapshotLease
    var lastUsed: UInt64 = 0
    var admission: Admission<PendingCall>
    /// Calls started so far; every ``ModelCache/timingInterval``-th one is timed.
    var calls: UInt64 = 0
    var pinned = false
    /// The outputs of the last call run on the loop, once encoded: handed back to the model by
    /// the next such call, so that their memory serves it (see `Model.run(_:into:)`).
    var spareOutputs: [String: Tensor] = [:]

    init(id: SnapshotID, scorer: Scorer, lease: SnapshotLease, admission: Admission<PendingCall>.Settings) {
        self.id = id
        self.scorer = scorer
        modelBytes = scorer.model.memoryBytes
        bytes = modelBytes
        self.lease = lease
        self.admission = Admission(admission)
    }

    /// What the model holds now: see ``bytes``.
    var heldBytes: Int {
        modelBytes + scorer.model.workspaceBytes + spareOutputs.values.reduce(0) { $0 + $1.byteCount }
    }
}

/// A call parsed against its model and admitted, not yet answered.
struct PendingCall: Sendable {
    var request: InferRequest
    var deadline: UInt64
    var received: UInt64
    var completion: CallCompletion
}

/// The models a node holds in memory: loads (concurrent first calls share one), the snapshot
/// leases that keep their archives from deletion, least-recently-used eviction under the memory
/// budget, pinned models, unloads, and failed loads remembered for `load_retry_after`.
/// Loop-confined.
final class ModelCache {
    let loop: EventLoop
    let store: SnapshotStore
    let config: ServingConfig
    let metrics: ServingMetrics
    let logger: Logger

    private(set) var loaded: [SnapshotID: LoadedModel] = [:]
    private var loading: [SnapshotID: [(Result<LoadedModel, CallError>) -> Void]] = [:]
    /// Versions whose last load failed: the error, and when the next call may try again.
    private var failedLoads: [SnapshotID: (error: CallError, retryAt: UInt64)] = [:]
    /// Versions an operator unloaded through the repository API: not served until loaded again.
    private var unloaded: Set<SnapshotID> = []
    private var loadedBytes = 0
    private var clock: UInt64 = 0

    init(loop: EventLoop, store: SnapshotStore, config: ServingConfig, metrics: ServingMetrics, logger: Logger) {
        self.loop = loop
        self.store = store
        self.config = config
        self.metrics = metrics
        self.logger = logger
    }

    func isLoaded(_ id: SnapshotID) -> Bool { loaded[id] != nil }
    func isUnloaded(_ id: SnapshotID) -> Bool { !unloaded.isEmpty && unloaded.contains(id) }

    func isPinned(_ id: SnapshotID) -> Bool {
        config.pinned.contains(id.name) || config.pinned.contains(id.description)
    }

    /// A new upload of `id` (or its removal): a remembered failure no longer applies.
    func forgetFailure(_ id: SnapshotID) { failedLoads[id] = nil }

    /// The model `id`, when loaded and servable now; marks it the most recently used.
    func ready(_ id: SnapshotID) -> LoadedModel? {
        guard let m = loaded[id] else { return nil }
        touch(m)
        return m
    }

    /// Calls `done` with the loaded model, loading it first if needed; concurrent calls for the
    /// same version share one load.
    func ensureLoaded(_ id: SnapshotID, _ done: @escaping (Result<LoadedModel, CallError>) -> Void) {
        if let m = loaded[id] {
            touch(m)
            return done(.success(m))
        }
        if loading[id] != nil {
            loading[id]!.append(done)
            return
        }
        if let failed = failedLoads[id] {
            let now = loop.nowNanoseconds
            if now < failed.retryAt {
                let seconds = (failed.retryAt - now + 999_999_999) / 1_000_000_000
                return done(.failure(CallError(failed.error.code, failed.error.message
                    + "; the next try is in \(seconds) s (or POST /v2/repository/models/\(id.name)/load)")))
            }
            failedLoads[id] = nil
        }
        loading[id] = [done]
        let store = self.store
        let started = DispatchTime.now().uptimeNanoseconds
        loop.offload({ () -> Result<(Scorer, SnapshotLease), CallError> in
            ModelCache.load(id, from: store)
        }) { [self] result in
            let waiting = loading.removeValue(forKey: id) ?? []
            switch result {
            case .success(let (scorer, lease)):
                let m = LoadedModel(id: id, scorer: scorer, lease: lease, admission: .init(
                    concurrency: config.modelConcurrency, queueLimit: config.modelQueue,
                    inlineThresholdNanos: Double(config.inlineThreshold.nanosecondsClamped)))
                m.pinned = isPinned(id)
                touch(m)
                loaded[id] = m
                loadedBytes += m.bytes
                metrics.loads.increment()
                metrics.loadedBytes.set(Double(loadedBytes))
                metrics.loadedModels.set(Double(loaded.count))
                logger.info("model loaded", metadata: [
                    "snapshot.id": "\(id)", "model.bytes": "\(m.bytes)",
                    "load.ms": "\((DispatchTime.now().uptimeNanoseconds - started) / 1_000_000)",
                ])
                evictOverBudget(keeping: id)
                for w in waiting { w(.success(m)) }
            case .failure(let error):
                if error.code != .notFound {
                    failedLoads[id] = (error, loop.nowNanoseconds &+ UInt64(max(0, config.loadRetryAfter.nanosecondsClamped)))
                }
                metrics.loadFailures.increment()
                logger.error("model load failed", metadata: ["snapshot.id": "\(id)", "error": "\(error.message)"])
                for w in waiting { w(.failure(error)) }
            }
        }
    }

    /// Reads, verifies and loads `id`: the model with its pipeline and a lease on its archive.
    /// Blocks on disk; on the thread pool.
    private static func load(_ id: SnapshotID, from store: SnapshotStore) -> Result<(Scorer, SnapshotLease), CallError> {
        let lease: SnapshotLease, record: SnapshotRecord
        do { (lease, record) = try store.acquireLease(id) } catch {
            if error.code == .notFound { return .failure(CallError(.notFound, "\(id) is no longer stored")) }
            return .failure(CallError(.unavailable, "cannot load \(id): \(error.message)"))
        }
        do {
            // Every file is verified; only the model's bytes are kept in memory.
            let (archive, files) = try SnapshotArchive.loadFiles(path: record.path,
                policy: VerificationPolicy(trustedKeys: store.configuration.trustedKeys, expectedDigest: record.digest),
                keeping: { $0.role == .model })
            guard let bytes = files[archive.manifest.model] else {
                throw CallError(.unavailable, "\(id): the archive has no model file `\(archive.manifest.model)`")
            }
            let model = try Model(onnx: Data(bytes))
            let pipeline = try archive.manifest.pipeline.map { text throws(PipelineError) in try Pipeline(yaml: text) }
            return .success((try Scorer(model: model, pipeline: pipeline), lease))
        } catch {
            store.releaseLease(lease)
            let why = switch error {
            case let e as CallError: e.message
            case let e as SnapshotError: "cannot load \(id): \(e.message)"
            case let e as EngineError: "cannot load \(id): \(e.message)"
            case let e as PipelineError: "cannot load \(id): its pipeline: \(e.message)"
            default: "cannot load \(id): \(error)"
            }
            return .failure(CallError(.unavailable, why))
        }
    }

    /// Marks `m` as the most recently used (LRU order for eviction).
    private func touch(_ m: LoadedModel) {
        clock += 1
        m.lastUsed = clock
    }

    private func evictOverBudget(keeping: SnapshotID) {
        guard loadedBytes > config.memoryBudget else { return }
        let candidates = loaded.values.filter { !$0.pinned && $0.id != keeping && $0.admission.running == 0 && $0.admission.waiting == 0 }
            .sorted { $0.lastUsed < $1.lastUsed }
        for m in candidates where loadedBytes > config.memoryBudget { evict(m, reason: "memory budget") }
        if loadedBytes > config.memoryBudget {
            logger.warning("loaded models exceed the memory budget; nothing more can be evicted now",
                           metadata: ["loaded.bytes": "\(loadedBytes)", "budget.bytes": "\(config.memoryBudget)"])
        }
    }

    func evict(_ m: LoadedModel, reason: String) {
        guard loaded.removeValue(forKey: m.id) != nil else { return }
        loadedBytes -= m.bytes
        store.releaseLease(m.lease)
        metrics.evictions.increment()
        metrics.loadedBytes.set(Double(loadedBytes))
        metrics.loadedModels.set(Double(loaded.count))
        logger.info("model evicted", metadata: ["snapshot.id": "\(m.id)", "reason": "\(reason)", "model.bytes": "\(m.bytes)"])
    }

    /// `id` was removed from the store: drop it unless calls still use it.
    func removed(_ id: SnapshotID) {
        failedLoads[id] = nil
        if let m = loaded[id], m.admission.running == 0, m.admission.waiting == 0 { evict(m, reason: "removed") }
    }

    /// Repository API: load now (and serve again after an unload), trying again at once after a failure.
    func load(_ id: SnapshotID, _ done: @escaping (Result<LoadedModel, CallError>) -> Void) {
        unloaded.remove(id)
        failedLoads[id] = nil
        ensureLoaded(id, done)
    }

    /// Repository API: evict and stop serving until loaded again.
    func unload(_ id: SnapshotID) {
        unloaded.insert(id)
        if let m = loaded[id] {
            if m.admission.running == 0 && m.admission.waiting == 0 { evict(m, reason: "unloaded") } else { m.pinned = false }
        }
    }

    /// Reading a thread's CPU clock is a system call, so one call in this many is timed. The
    /// average still follows a model whose calls grow: one timed call ten times over the
    /// threshold moves it to the pool, within 16 calls.
    static let timingInterval: UInt64 = 16

    /// Whether the next call of `m` is timed.
    func shouldTime(_ m: LoadedModel) -> Bool {
        m.calls &+= 1
        return m.admission.averageRunNanos == nil || m.calls % ModelCache.timingInterval == 0
    }

    /// Notes a call's run time (timed calls only) and, with it, measures again what the model
    /// holds: a model's workspaces grow with the batch sizes it has run, so one timed call in
    /// ``timingInterval`` keeps its share of the budget true without a lock taken per call.
    func note(_ runNanos: UInt64?, on m: LoadedModel) {
        guard let runNanos else { return }
        m.admission.measured(runNanos)
        remeasure(m)
    }

    /// Counts what `m` holds now against the budget, evicting others when it went over.
    private func remeasure(_ m: LoadedModel) {
        guard loaded[m.id] === m else { return }
        let held = m.heldBytes
        guard held != m.bytes else { return }
        loadedBytes += held - m.bytes
        m.bytes = held
        metrics.loadedBytes.set(Double(loadedBytes))
        evictOverBudget(keeping: m.id)
    }

    /// Answers every call waiting for a load with `error` (the node is stopping).
    func failLoadWaiters(_ error: CallError) {
        let waiting = loading
        loading = [:]
        for (_, waiters) in waiting { for w in waiters { w(.failure(error)) } }
    }

    /// Loads pinned models at start.
    func loadPinned(_ registry: inout ModelRegistry) {
        for (name, versions) in registry.all {
            for v in versions {
                let id = SnapshotID(validName: name, version: v)
                if isPinned(id) { ensureLoaded(id) { _ in } }
            }
        }
    }
}
