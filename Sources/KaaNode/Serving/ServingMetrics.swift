import Foundation
import KaaIO
public import Prometheus

/// The node's Prometheus metrics, exposed at `GET /metrics`.
///
/// Per-model series are made on first use and cached, so the request path does one dictionary
/// lookup and atomic adds. Loop-confined caches; the registry itself is thread-safe.
public final class ServingMetrics: @unchecked Sendable {
    // SAFETY: `perModel` and `requests` are touched on the node's loop only (the model server's
    // calls end there, and the stats route reads `requests` there); the registry and its
    // metrics are thread-safe (atomics and locks inside swift-prometheus).
    public let registry = PrometheusCollectorRegistry()
    let loads: Counter
    let loadFailures: Counter
    let evictions: Counter
    let loadedBytes: Gauge
    let loadedModels: Gauge
    let registered: Gauge
    let queueDepth: Gauge

    private final class ModelSeries {
        /// The `model` label: the model's name, or `_other` past the cardinality guard.
        let label: String
        let latency: DurationHistogram
        /// The `code="200"` counter, made with the series: most calls touch only it.
        let ok: Counter
        var byStatus: [Int: Counter] = [:]
        init(label: String, latency: DurationHistogram, ok: Counter) {
            self.label = label
            self.latency = latency
            self.ok = ok
        }
    }
    private var perModel: [String: ModelSeries] = [:]
    /// The last two minutes of calls, a second at a time, for `GET /kaa/v1/stats` and the
    /// dashboard. On the loop.
    var requests = RequestStats()
    /// Past this many models, per-model series are not made (cardinality guard); the rest are
    /// counted under `model="_other"`.
    private let maxModelSeries = 2_000
    /// The `model` label of calls naming a model this node does not have.
    static let unknownModel = "_unknown"

    static let latencyBuckets: [Duration] = [
        .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2),
        .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
        .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(5),
    ]

    public init() {
        loads = registry.makeCounter(descriptor: Self.name("model_loads", unit: "total", help: "Model versions loaded into memory."))
        loadFailures = registry.makeCounter(descriptor: Self.name("model_load_failures", unit: "total", help: "Model loads that failed."))
        evictions = registry.makeCounter(descriptor: Self.name("model_evictions", unit: "total", help: "Model versions evicted from memory."))
        loadedBytes = registry.makeGauge(descriptor: Self.name("model_loaded", unit: "bytes", help: "Bytes held by loaded models."))
        loadedModels = registry.makeGauge(descriptor: Self.name("models_loaded", unit: "", help: "Model versions in memory."))
        registered = registry.makeGauge(descriptor: Self.name("models_registered", unit: "", help: "Model versions stored on this node."))
        queueDepth = registry.makeGauge(descriptor: Self.name("inference_queue_depth", unit: "", help: "Calls waiting to start, all models."))
    }

    /// `kaa_<metric>_<unit>` (no unit: `kaa_<metric>`).
    private static func name(_ metric: String, unit: String, help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "kaa", metricName: metric, unitName: unit, helpText: help)
    }

    /// Counts one finished call of `model` with its status and latency (nanoseconds), ended at
    /// `now` (the loop's monotonic nanoseconds). On the loop.
    func record(model: String, status: HTTPStatus, latency: UInt64, now: UInt64) {
        requests.record(model: model, failed: status != .ok, latency: latency, now: now)
        let series = self.series(model)
        if status == .ok {
            series.ok.increment()
            series.latency.recordNanoseconds(Int64(clamping: latency))
            return
        }
        if let counter = series.byStatus[status.code] { return counter.increment() }
        let counter = makeRequestCounter(series.label, code: status.code)
        series.byStatus[status.code] = counter
        counter.increment()
    }

    private func series(_ model: String) -> ModelSeries {
        if let series = perModel[model] { return series }
        let key = perModel.count >= maxModelSeries ? "_other" : model
        if let series = perModel[key] { return series }
        let series = ModelSeries(
            label: key,
            latency: registry.makeDurationHistogram(
                descriptor: Self.name("inference_duration", unit: "seconds", help: "Inference call latency, from parsed request to answer."),
                labels: [("model", key)], buckets: ServingMetrics.latencyBuckets),
            ok: makeRequestCounter(key, code: 200))
        perModel[key] = series
        return series
    }

    private func makeRequestCounter(_ model: String, code: Int) -> Counter {
        registry.makeCounter(descriptor: Self.name("inference_requests", unit: "total", help: "Inference calls by model and HTTP status."),
                             labels: [("model", model), ("code", String(code))])
    }

    /// The Prometheus text exposition.
    public func exposition() -> [UInt8] {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return buffer
    }
}
