import Foundation
import KaaCore
public import KaaEngine
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
    /// Memory one call's run may hold (its intermediates and outputs); past it the call is 400.
    public var runLimits = RunLimits.default
    /// After a model fails to load, calls get 503 with the reason for this long before the
    /// next call tries again (a repository load request, or a new upload of it, tries at once).
    public var loadRetryAfter: Duration = .seconds(30)
    /// Models (`name` or `name@version`) loaded at start and at publish, never evicted.
    public var pinned: [String] = []
    /// Calls whose measured run time stays under this run on the loop itself (no hand-off).
    public var inlineThreshold: Duration = .microseconds(100)
    public init() {}
}

/// The node's one entry point for inference calls, whatever transport brought them:
/// ``call(_:_:)`` resolves the model through the ``ModelRegistry``, gets it from the
/// ``ModelCache``, parses the request against it, admits it (``Admission``), runs it inline or
/// on the worker pool, and completes the call's ``CallCompletion`` exactly once.
/// Loop-confined.
public final class ModelServer {
    let loop: EventLoop
    let config: ServingConfig
    let logger: Logger
    let metrics: ServingMetrics
    private(set) var registry: ModelRegistry
    let cache: ModelCache
    /// Calls running on the worker pool, by ticket: answered by ``endGrace()`` if the node
    /// stops before they finish.
    private var onPool: [UInt64: CallCompletion] = [:]
    private var nextTicket: UInt64 = 0
    /// Calls waiting in every model's queue (a count: summing the queues after each call cost
    /// time in proportion to the models loaded).
    private var queuedCalls = 0

    init(loop: EventLoop, store: SnapshotStore, registry: ModelRegistry, config: ServingConfig,
         metrics: ServingMetrics, logger: Logger) {
        self.loop = loop
        self.config = config
        self.metrics = metrics
        self.logger = logger
        self.registry = registry
        self.cache = ModelCache(loop: loop, store: store, config: config, metrics: metrics, logger: logger)
        metrics.registered.set(Double(registry.versionCount))
    }

    /// Loads the pinned models (at start).
    func loadPinned() { cache.loadPinned(&registry) }

    // MARK: catalog events

    func stored(_ id: SnapshotID) {
        registry.stored(id)
        cache.forgetFailure(id)
        metrics.registered.set(Double(registry.versionCount))
        if cache.isPinned(id) { cache.ensureLoaded(id) { _ in } }
    }

    func removed(_ id: SnapshotID) {
        registry.removed(id)
        cache.removed(id)
        metrics.registered.set(Double(registry.versionCount))
    }

    func aliasSet(name: String, alias: String, version: Int?) {
        registry.aliasSet(name: name, alias: alias, version: version)
    }

    func resolve(name: String, version: String?) throws(CallError) -> SnapshotID {
        try registry.resolve(name: name, version: version)
    }

    var allModels: [(name: String, versions: [Int])] { registry.all }
    func versions(of name: String) -> [Int] { registry.versions(of: name) }

    // MARK: calls

    /// Serves one call; `completion` is completed exactly once, on the loop or (for a call
    /// on the pool) when it finishes.
    func call(_ call: InferenceCall, _ completion: CallCompletion) {
        let id: SnapshotID
        do { id = try registry.resolve(name: call.model, version: call.version) } catch {
            // Names that exist nowhere share one series, so a client's typos take no per-model slots.
            return finish(completion, model: registry.contains(call.model) ? call.model : ServingMetrics.unknownModel,
                          received: call.received, .failure(error))
        }
        if cache.isUnloaded(id) {
            return finish(completion, model: id.name, received: call.received, .failure(CallError(.unavailable,
                "\(id) was unloaded; POST /v2/repository/models/\(id.name)/load to serve it again")))
        }
        if let m = cache.ready(id) {
            // Loaded: served at once, without the closure a load would wait in.
            return serve(call, on: m, completion)
        }
        cache.ensureLoaded(id) { [self] result in
            switch result {
            case .failure(let error): finish(completion, model: id.name, received: call.received, .failure(error))
            case .success(let m): serve(call, on: m, completion)
            }
        }
    }

    /// Parses `call` against the loaded model `m` and admits it.
    private func serve(_ call: InferenceCall, on m: LoadedModel, _ completion: CallCompletion) {
        let request: InferRequest
        do {
            request = try InferenceCodec.parseRequest(body: call.body, headerLength: call.headerLength,
                                                      model: m.scorer, limits: config.callLimits)
        } catch {
            return finish(completion, model: m.id.name, received: call.received,
                          .failure(CallError(.badRequest, "\(m.id): \(error)")))
        }
        let pending = PendingCall(request: request, deadline: call.deadline, received: call.received, completion: completion)
        carryOut(m.admission.arrive(pending, deadline: call.deadline, now: loop.nowNanoseconds), on: m)
    }

    private func carryOut(_ decision: Admission<PendingCall>.Decision, on m: LoadedModel) {
        switch decision {
        case .runInline(let call):
            var outputs = m.spareOutputs
            m.spareOutputs = [:]
            let (result, runNanos) = ModelServer.execute(call, on: m, timed: cache.shouldTime(m), limits: config.runLimits, outputs: &outputs)
            m.spareOutputs = outputs
            cache.note(runNanos, on: m)
            finish(call.completion, model: m.id.name, received: call.received, result)
        case .start(let call):
            start(call, on: m)
        case .queued:
            queuedCalls += 1
            metrics.queueDepth.set(Double(queuedCalls))
        case .overloaded(let call):
            finish(call.completion, model: m.id.name, received: call.received, .failure(CallError(.overloaded,
                "\(m.id) is overloaded: \(m.admission.running) calls running and \(m.admission.waiting) waiting (limit \(config.modelQueue)); retry later")))
        case .expired(let call):
            finish(call.completion, model: m.id.name, received: call.received, .failure(CallError(.deadlineExceeded,
                "\(m.id): the deadline passed before the call could start")))
        }
    }

    private func start(_ call: PendingCall, on m: LoadedModel) {
        let ticket = nextTicket
        nextTicket &+= 1
        onPool[ticket] = call.completion
        let timed = cache.shouldTime(m), limits = config.runLimits
        loop.offload({ () -> (CallResult, UInt64?) in
            var outputs: [String: Tensor] = [:]
            return ModelServer.execute(call, on: m, timed: timed, limits: limits, outputs: &outputs)
        }) { [self] result, runNanos in
            onPool[ticket] = nil
            cache.note(runNanos, on: m)
            finish(call.completion, model: m.id.name, received: call.received, result)
            let before = m.admission.waiting
            for next in m.admission.finished(now: loop.nowNanoseconds) { carryOut(next, on: m) }
            if m.admission.waiting != before {
                queuedCalls -= before - m.admission.waiting
                metrics.queueDepth.set(Double(queuedCalls))
            }
        }
    }

    private func finish(_ completion: CallCompletion, model: String, received: UInt64, _ result: CallResult) {
        let status: HTTPStatus
        switch result {
        case .success: status = .ok
        case .failure(let error): status = InferenceAPI.status(for: error.code)
        }
        if completion.complete(result) {
            let now = loop.nowNanoseconds
            metrics.record(model: model, status: status, latency: now &- received, now: now)
        }
    }

    /// The shutdown grace ended: every call still waiting for a load, queued or running is
    /// answered now (503) rather than dropped with its connection.
    func endGrace() {
        let stopping = CallError(.shuttingDown,
            "the node is shutting down and did not finish this call within its shutdown grace (shutdown_grace); retry it on another node")
        cache.failLoadWaiters(stopping)
        for m in cache.loaded.values {
            for call in m.admission.removeAllWaiting() {
                queuedCalls -= 1
                finish(call.completion, model: m.id.name, received: call.received, .failure(stopping))
            }
        }
        metrics.queueDepth.set(Double(queuedCalls))
        for (_, completion) in onPool { completion.complete(.failure(stopping)) }
        onPool = [:]
    }

    /// Runs the model and encodes the answer; safe on any thread.
    /// When `timed`, it also returns the run time: the calling thread's CPU time, not wall time,
    /// since on a busy host preemption would otherwise make a tiny model look slow and push it
    /// off the loop.
    /// `outputs` hands back an earlier call's outputs (see `Scorer.run(_:into:)`) and holds this
    /// call's when it returns.
    static func execute(_ call: PendingCall, on m: LoadedModel, timed: Bool, limits: RunLimits,
                        outputs: inout [String: Tensor]) -> (CallResult, UInt64?) {
        let t0 = timed ? threadCPUNanoseconds() : 0
        do { try m.scorer.run(call.request.inputs, into: &outputs, limits: limits) } catch {
            // The caller's values (and a call over the memory limit) are the caller's to fix;
            // anything else is the engine's or the model's fault.
            let code: CallError.Code = error.code == .invalidInput || error.code == .limitExceeded ? .badRequest : .internal
            return (.failure(CallError(code, "\(m.id): \(error.message)")), timed ? threadCPUNanoseconds() &- t0 : nil)
        }
        let ran = timed ? threadCPUNanoseconds() &- t0 : nil
        let (body, headerLength) = InferenceCodec.encodeResponse(
            modelName: m.id.name, modelVersion: m.id.version, request: call.request, outputs: outputs, order: m.scorer.outputs)
        return (.success(CallAnswer(body: body, headerLength: headerLength)), ran)
    }
}

/// CPU time the calling thread has used, in nanoseconds.
func threadCPUNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}
