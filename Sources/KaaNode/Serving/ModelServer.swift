import Foundation
import KaaCore
import KaaEngine
import KaaIO
import KaaSnapshot
import Logging

/// Serving settings (node config keys `memory_budget`, `model_concurrency`, `model_queue`,
/// `default_deadline`, `max_deadline`, `pinned_models`, `max_call_rows`, `max_call_elements`,
/// `load_retry_after`).
public struct ServingConfig: Sendable {
    /// Bytes loaded models may hold before the least recently used unpinned ones are evicted.
    public var memoryBudget = 2 << 30
    /// Calls of one model running at once on the worker pool.
    public var modelConcurrency = max(1, ProcessInfo.processInfo.activeProcessorCount)
    /// Calls of one model waiting to start; past it the answer is 429.
    public var modelQueue = 64
    /// The deadline of a call that sends no `Kaa-Deadline-Ms` header.
    public var defaultDeadline: Duration = .seconds(10)
    /// The longest deadline a call may ask for; a larger `Kaa-Deadline-Ms` is cut to it.
    public var maxDeadline: Duration = .seconds(300)
    /// Rows and elements one call may send.
    public var callLimits = CallLimits.default
    /// After a model fails to load, calls get 503 with the reason for this long before the
    /// next call tries again (a repository load request, or a new upload of it, tries at once).
    public var loadRetryAfter: Duration = .seconds(30)
    /// Models (`name` or `name@version`) loaded at start and at publish, never evicted.
    public var pinned: [String] = []
    /// Calls whose measured run time stays under this run on the loop itself (no hand-off).
    public var inlineThreshold: Duration = .microseconds(100)
    public init() {}
}

/// Why a call could not be served, with its HTTP status.
struct ServeError: Error {
    var status: HTTPStatus
    var message: String
    init(_ status: HTTPStatus, _ message: String) {
        self.status = status
        self.message = message
    }
}

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
    /// again after timed calls (see `ModelServer.note`).
    var bytes: Int
    let lease: SnapshotLease
    var lastUsed: UInt64 = 0
    var running = 0
    var queue: [PendingCall] = []
    var queueHead = 0
    /// Run time, exponentially averaged, in nanoseconds; nil until measured.
    var averageRunNanos: Double?
    /// Calls started so far; every ``ModelServer/timingInterval``-th one is timed.
    var calls: UInt64 = 0
    var pinned = false
    /// The outputs of the last call run on the loop, once encoded: handed back to the model by
    /// the next such call, so that their memory serves it (see `Model.run(_:into:)`).
    var spareOutputs: [String: Tensor] = [:]

    init(id: SnapshotID, scorer: Scorer, lease: SnapshotLease) {
        self.id = id
        self.scorer = scorer
        modelBytes = scorer.model.memoryBytes
        bytes = modelBytes
        self.lease = lease
    }

    var queued: Int { queue.count - queueHead }

    /// What the model holds now: see ``bytes``.
    var heldBytes: Int {
        modelBytes + scorer.model.workspaceBytes + spareOutputs.values.reduce(0) { $0 + $1.byteCount }
    }
}

/// A call admitted but not yet started.
struct PendingCall: Sendable {
    var request: InferRequest
    var deadline: UInt64
    var started: UInt64
    var responder: HTTPResponder
}

/// Everything one node knows and holds of its models: names, versions and aliases in memory
/// (no SQLite on the request path), loaded models under an LRU memory budget, and per-model
/// admission (a concurrency limit and a bounded queue). Loop-confined.
public final class ModelServer {
    struct Known {
        var versions: [Int] = []
        var aliases: [String: Int] = [:]
    }

    let loop: EventLoop
    let store: SnapshotStore
    let config: ServingConfig
    let logger: Logger
    let metrics: ServingMetrics
    private var models: [String: Known] = [:] {
        didSet { sortedNamesCache = nil }
    }
    /// ``sortedNames``, kept until `models` changes.
    private var sortedNamesCache: [String]?
    private var loaded: [SnapshotID: LoadedModel] = [:]
    private var loading: [SnapshotID: [(Result<LoadedModel, ServeError>) -> Void]] = [:]
    /// Versions whose last load failed: the error, and when the next call may try again.
    private var failedLoads: [SnapshotID: (error: ServeError, retryAt: UInt64)] = [:]
    /// Versions an operator unloaded through the repository API: not served until loaded again.
    private var unloaded: Set<SnapshotID> = []
    private var loadedBytes = 0
    /// Calls waiting in every model's queue. Kept as a count: summing the queues of every loaded
    /// model after each call cost time in proportion to the models loaded.
    private var queuedCalls = 0
    private var clock: UInt64 = 0

    init(loop: EventLoop, store: SnapshotStore, config: ServingConfig, metrics: ServingMetrics, logger: Logger) {
        self.loop = loop
        self.store = store
        self.config = config
        self.metrics = metrics
        self.logger = logger
    }

    /// Registers every stored snapshot without loading it (one catalog read); MUST run off the
    /// loop before serving starts.
    static func catalog(from store: SnapshotStore) throws -> [String: Known] {
        var models: [String: Known] = [:]
        for record in try store.list() where record.state == .ready {
            models[record.id.name, default: Known()].versions.append(record.id.version)
        }
        for (name, aliases) in try store.allAliases() { models[name]?.aliases = aliases }
        for name in models.keys { models[name]!.versions.sort() }
        return models
    }

    func install(_ catalog: [String: Known]) {
        loop.assertInLoop()
        models = catalog
        metrics.registered.set(Double(models.values.reduce(0) { $0 + $1.versions.count }))
    }

    var registeredCount: Int { models.values.reduce(0) { $0 + $1.versions.count } }

    // MARK: catalog events

    func stored(_ id: SnapshotID) {
        var known = models[id.name] ?? Known()
        if !known.versions.contains(id.version) {
            known.versions.append(id.version)
            known.versions.sort()
        }
        models[id.name] = known
        failedLoads[id] = nil
        metrics.registered.set(Double(registeredCount))
        if isPinned(id) { ensureLoaded(id) { _ in } }
    }

    func removed(_ id: SnapshotID) {
        failedLoads[id] = nil
        models[id.name]?.versions.removeAll { $0 == id.version }
        if models[id.name]?.versions.isEmpty == true { models[id.name] = nil }
        if let m = loaded[id], m.running == 0, m.queued == 0 { evict(m, reason: "removed") }
    }

    func aliasSet(name: String, alias: String, version: Int?) {
        models[name]?.aliases[alias] = version
    }

    // MARK: resolution

    /// `name` alone resolves through `stable`, else the latest version.
    func resolve(name: String, version: String?) throws(ServeError) -> SnapshotID {
        guard let known = models[name], !known.versions.isEmpty else {
            let names = sortedNames
            let sample = names.prefix(20).joined(separator: ", ") + (names.count > 20 ? ", ... (\(names.count) models)" : "")
            throw ServeError(.notFound, "model `\(name)` does not exist; models: \(names.isEmpty ? "none" : sample)")
        }
        let chosen: Int
        if let version {
            if let v = Int(version) {
                guard known.versions.contains(v) else {
                    throw ServeError(.notFound, "model `\(name)` has no version \(v); versions: \(known.versions.map(String.init).joined(separator: ", "))")
                }
                chosen = v
            } else if let v = known.aliases[version] {
                chosen = v
            } else {
                throw ServeError(.notFound, "model `\(name)` has no version or alias `\(version)`; versions: \(known.versions.map(String.init).joined(separator: ", ")); aliases: \(known.aliases.keys.sorted().joined(separator: ", "))")
            }
        } else {
            chosen = known.aliases["stable"] ?? known.versions.last!
        }
        return SnapshotID(validName: name, version: chosen)
    }

    func versions(of name: String) -> [Int] { models[name]?.versions ?? [] }
    var allModels: [(String, [Int])] { sortedNames.map { ($0, models[$0]!.versions) } }

    /// The registered names in order. Kept between calls: with 10,000 models, sorting them
    /// again for every request naming an unknown model would hold the loop for milliseconds.
    private var sortedNames: [String] {
        if let names = sortedNamesCache { return names }
        let names = models.keys.sorted()
        sortedNamesCache = names
        return names
    }

    func isLoaded(_ id: SnapshotID) -> Bool { loaded[id] != nil }
    func isUnloaded(_ id: SnapshotID) -> Bool { !unloaded.isEmpty && unloaded.contains(id) }

    private func isPinned(_ id: SnapshotID) -> Bool {
        config.pinned.contains(id.name) || config.pinned.contains(id.description)
    }

    // MARK: loading

    /// Calls `done` with the loaded model, loading it first if needed; concurrent calls for the
    /// same version share one load.
    func ensureLoaded(_ id: SnapshotID, _ done: @escaping (Result<LoadedModel, ServeError>) -> Void) {
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
                return done(.failure(ServeError(failed.error.status, failed.error.message + "; the next try is in \(seconds) s (or POST /v2/repository/models/\(id.name)/load)")))
            }
            failedLoads[id] = nil
        }
        loading[id] = [done]
        let store = self.store
        let started = DispatchTime.now().uptimeNanoseconds
        loop.offload({ () -> Result<(Scorer, SnapshotLease), ServeError> in
            do {
                let lease: SnapshotLease, record: SnapshotRecord
                do { (lease, record) = try store.acquireLease(id) } catch let error as SnapshotError where error.code == .notFound {
                    return .failure(ServeError(.notFound, "\(id) is no longer stored"))
                }
                do {
                    let (archive, files) = try SnapshotArchive.loadFiles(path: record.path,
                        policy: VerificationPolicy(trustedKeys: store.configuration.trustedKeys, expectedDigest: record.digest))
                    guard let bytes = files[archive.manifest.model] else {
                        store.releaseLease(lease)
                        return .failure(ServeError(.serviceUnavailable, "\(id): the archive has no model file `\(archive.manifest.model)`"))
                    }
                    let model = try Model(onnx: Data(bytes))
                    let pipeline = try archive.manifest.pipeline.map { text throws(PipelineError) in try Pipeline(yaml: text) }
                    return .success((try Scorer(model: model, pipeline: pipeline), lease))
                } catch {
                    store.releaseLease(lease)
                    throw error
                }
            } catch let error as SnapshotError {
                return .failure(ServeError(.serviceUnavailable, "cannot load \(id): \(error.message)"))
            } catch let error as EngineError {
                return .failure(ServeError(.serviceUnavailable, "cannot load \(id): \(error.message)"))
            } catch let error as PipelineError {
                return .failure(ServeError(.serviceUnavailable, "cannot load \(id): its pipeline: \(error.message)"))
            } catch {
                return .failure(ServeError(.serviceUnavailable, "cannot load \(id): \(error)"))
            }
        }) { [self] result in
            let waiting = loading.removeValue(forKey: id) ?? []
            switch result {
            case .success(let (scorer, lease)):
                let m = LoadedModel(id: id, scorer: scorer, lease: lease)
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
                if error.status != .notFound {
                    failedLoads[id] = (error, loop.nowNanoseconds &+ UInt64(max(0, config.loadRetryAfter.nanosecondsClamped)))
                }
                metrics.loadFailures.increment()
                logger.error("model load failed", metadata: ["snapshot.id": "\(id)", "error": "\(error.message)"])
                for w in waiting { w(.failure(error)) }
            }
        }
    }

    /// Marks `m` as the most recently used (LRU order for eviction).
    private func touch(_ m: LoadedModel) {
        clock += 1
        m.lastUsed = clock
    }

    private func evictOverBudget(keeping: SnapshotID) {
        guard loadedBytes > config.memoryBudget else { return }
        let candidates = loaded.values.filter { !$0.pinned && $0.id != keeping && $0.running == 0 && $0.queued == 0 }
            .sorted { $0.lastUsed < $1.lastUsed }
        for m in candidates where loadedBytes > config.memoryBudget { evict(m, reason: "memory budget") }
        if loadedBytes > config.memoryBudget {
            logger.warning("loaded models exceed the memory budget; nothing more can be evicted now",
                           metadata: ["loaded.bytes": "\(loadedBytes)", "budget.bytes": "\(config.memoryBudget)"])
        }
    }

    private func evict(_ m: LoadedModel, reason: String) {
        guard loaded.removeValue(forKey: m.id) != nil else { return }
        loadedBytes -= m.bytes
        store.releaseLease(m.lease)
        metrics.evictions.increment()
        metrics.loadedBytes.set(Double(loadedBytes))
        metrics.loadedModels.set(Double(loaded.count))
        logger.info("model evicted", metadata: ["snapshot.id": "\(m.id)", "reason": "\(reason)", "model.bytes": "\(m.bytes)"])
    }

    /// Repository API: load now (and serve again after an unload).
    func load(_ id: SnapshotID, _ done: @escaping (Result<LoadedModel, ServeError>) -> Void) {
        unloaded.remove(id)
        failedLoads[id] = nil
        ensureLoaded(id, done)
    }

    /// Repository API: evict and stop serving until loaded again.
    func unload(_ id: SnapshotID) {
        unloaded.insert(id)
        if let m = loaded[id] {
            if m.running == 0 && m.queued == 0 { evict(m, reason: "unloaded") } else { m.pinned = false }
        }
    }

    /// Loads pinned models at start.
    func loadPinned() {
        for (name, known) in models {
            for v in known.versions {
                let id = SnapshotID(validName: name, version: v)
                if isPinned(id) { ensureLoaded(id) { _ in } }
            }
        }
    }

    // MARK: inference

    /// Serves one `POST .../infer`.
    func infer(_ request: HTTPRequest, name: String, version: String?, responder: HTTPResponder) {
        let start = loop.nowNanoseconds
        var deadlineMs = config.defaultDeadline.millisecondsRoundedUp
        if let header = request.headers["kaa-deadline-ms"] {
            guard let ms = UInt64(header), ms > 0 else {
                return responder.respond(.error(.badRequest, "Kaa-Deadline-Ms `\(header.prefix(40))` must be a positive number of milliseconds"))
            }
            deadlineMs = ms
        }
        // Cut to `max_deadline`, which also keeps the sum below from overflowing.
        deadlineMs = min(deadlineMs, config.maxDeadline.millisecondsRoundedUp, UInt64.max / 2_000_000)
        let deadline = start &+ deadlineMs * 1_000_000
        let id: SnapshotID
        do { id = try resolve(name: name, version: version) } catch {
            // Names that exist nowhere share one series, so a client's typos take no per-model slots.
            metrics.record(model: models[name] == nil ? ServingMetrics.unknownModel : name, status: error.status, seconds: 0)
            return responder.respond(.error(error.status, error.message))
        }
        if isUnloaded(id) {
            return responder.respond(.error(.serviceUnavailable, "\(id) was unloaded; POST /v2/repository/models/\(name)/load to serve it again"))
        }
        if let m = loaded[id] {
            // Loaded: served at once, without the closure a load would wait in.
            touch(m)
            return serve(request, on: m, deadline: deadline, started: start, responder: responder)
        }
        ensureLoaded(id) { [self] result in
            switch result {
            case .failure(let error):
                metrics.record(model: name, status: error.status, seconds: 0)
                responder.respond(.error(error.status, error.message))
            case .success(let m):
                serve(request, on: m, deadline: deadline, started: start, responder: responder)
            }
        }
    }

    /// Parses `request` against the loaded model `m` and admits the call.
    private func serve(_ request: HTTPRequest, on m: LoadedModel, deadline: UInt64, started: UInt64, responder: HTTPResponder) {
        let parsed: InferRequest
        do {
            parsed = try InferenceCodec.parseRequest(
                body: request.body,
                headerLength: try InferenceCodec.headerLength(request.headers["inference-header-content-length"]),
                model: m.scorer, limits: config.callLimits)
        } catch {
            metrics.record(model: m.id.name, status: .badRequest, seconds: 0)
            return responder.respond(.error(.badRequest, "\(m.id): \(error)"))
        }
        admit(PendingCall(request: parsed, deadline: deadline, started: started, responder: responder), to: m)
    }

    private func admit(_ call: PendingCall, to m: LoadedModel) {
        if loop.nowNanoseconds > call.deadline {
            metrics.record(model: m.id.name, status: .gatewayTimeout, seconds: Double(loop.nowNanoseconds - call.started) / 1e9)
            call.responder.respond(.error(.gatewayTimeout, "\(m.id): the deadline passed before the call could start (loading the model took longer)"))
            return
        }
        if let average = m.averageRunNanos, average < Double(config.inlineThreshold.nanosecondsClamped), m.running == 0 {
            // A tiny model: running it here costs less than handing it to a worker.
            runInline(call, on: m)
            return
        }
        if m.running < config.modelConcurrency {
            start(call, on: m)
        } else if m.queued < config.modelQueue {
            m.queue.append(call)
            queuedCalls += 1
            metrics.queueDepth.set(Double(queuedCalls))
        } else {
            metrics.record(model: m.id.name, status: .tooManyRequests, seconds: 0)
            call.responder.respond(.error(.tooManyRequests,
                "\(m.id) is overloaded: \(m.running) calls running and \(m.queued) waiting (limit \(config.modelQueue)); retry later"))
        }
    }

    private func runInline(_ call: PendingCall, on m: LoadedModel) {
        var outputs = m.spareOutputs
        m.spareOutputs = [:]
        let (response, runNanos) = ModelServer.execute(call, on: m, timed: shouldTime(m), outputs: &outputs)
        m.spareOutputs = outputs
        note(runNanos, on: m)
        finish(call, m, response)
    }

    /// Reading a thread's CPU clock is a system call, so one call in this many is timed. The
    /// average still follows a model whose calls grow: one timed call ten times over the
    /// threshold moves it to the pool, within 16 calls.
    static let timingInterval: UInt64 = 16

    private func shouldTime(_ m: LoadedModel) -> Bool {
        m.calls &+= 1
        return m.averageRunNanos == nil || m.calls % ModelServer.timingInterval == 0
    }

    private func start(_ call: PendingCall, on m: LoadedModel) {
        if loop.nowNanoseconds > call.deadline {
            metrics.record(model: m.id.name, status: .gatewayTimeout, seconds: Double(loop.nowNanoseconds - call.started) / 1e9)
            call.responder.respond(.error(.gatewayTimeout, "\(m.id): the deadline passed before the call could start"))
            return
        }
        m.running += 1
        let timed = shouldTime(m)
        loop.offload({ () -> (HTTPResponse, UInt64?) in
            var outputs: [String: Tensor] = [:]
            return ModelServer.execute(call, on: m, timed: timed, outputs: &outputs)
        }) { [self] response, runNanos in
            m.running -= 1
            note(runNanos, on: m)
            finish(call, m, response)
            while m.running < config.modelConcurrency, m.queued > 0 {
                let next = m.queue[m.queueHead]
                m.queueHead += 1
                queuedCalls -= 1
                if m.queueHead > 64 && m.queueHead * 2 > m.queue.count {
                    m.queue.removeFirst(m.queueHead)
                    m.queueHead = 0
                }
                start(next, on: m)
            }
            metrics.queueDepth.set(Double(queuedCalls))
        }
    }

    /// Notes a call's run time (timed calls only) and, with it, measures again what the model
    /// holds: a model's workspaces grow with the batch sizes it has run, so one timed call in
    /// ``timingInterval`` keeps its share of the budget true without a lock taken per call.
    private func note(_ runNanos: UInt64?, on m: LoadedModel) {
        guard let runNanos else { return }
        let x = Double(runNanos)
        m.averageRunNanos = m.averageRunNanos.map { $0 * 0.9 + x * 0.1 } ?? x
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

    private func finish(_ call: PendingCall, _ m: LoadedModel, _ response: HTTPResponse) {
        metrics.record(model: m.id.name, status: response.status, seconds: Double(loop.nowNanoseconds - call.started) / 1e9)
        call.responder.respond(response)
    }

    /// Runs the model and encodes the answer; safe on any thread.
    /// When `timed`, it also returns the run time: the calling thread's CPU time, not wall time,
    /// since on a busy host preemption would otherwise make a tiny model look slow and push it
    /// off the loop.
    /// `outputs` hands back an earlier call's outputs (see `Scorer.run(_:into:)`) and holds this
    /// call's when it returns.
    static func execute(_ call: PendingCall, on m: LoadedModel, timed: Bool, outputs: inout [String: Tensor]) -> (HTTPResponse, UInt64?) {
        let t0 = timed ? threadCPUNanoseconds() : 0
        do { try m.scorer.run(call.request.inputs, into: &outputs) } catch {
            let status: HTTPStatus = error.code == .invalidInput ? .badRequest : .internalServerError
            return (.error(status, "\(m.id): \(error.message)"), timed ? threadCPUNanoseconds() &- t0 : nil)
        }
        let ran = timed ? threadCPUNanoseconds() &- t0 : nil
        let (body, headerLength) = InferenceCodec.encodeResponse(
            modelName: m.id.name, modelVersion: m.id.version, request: call.request, outputs: outputs, order: m.scorer.outputs)
        var response = HTTPResponse(status: .ok, body: body)
        if let headerLength {
            response.headers.add("content-type", "application/octet-stream")
            response.headers.add("inference-header-content-length", String(headerLength))
        } else {
            response.headers.add("content-type", "application/json")
        }
        return (response, ran)
    }
}

/// CPU time the calling thread has used, in nanoseconds.
func threadCPUNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}
