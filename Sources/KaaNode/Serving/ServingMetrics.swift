import Foundation
public import KaaIO
public import Prometheus

/// The node's Prometheus metrics, exposed at `GET /metrics`.
///
/// Per-model series are made on first use and cached, so the request path does one dictionary
/// lookup and atomic adds. Loop-confined caches; the registry itself is thread-safe.
public final class ServingMetrics: @unchecked Sendable {
    // SAFETY: `perModel` is touched on the node's loop only; the registry and its metrics are
    // thread-safe (atomics and locks inside swift-prometheus).
    public let registry = PrometheusCollectorRegistry()
    let loads: Counter
    let loadFailures: Counter
    let evictions: Counter
    let loadedBytes: Gauge
    let loadedModels: Gauge
    let registered: Gauge
    let queueDepth: Gauge

    private struct ModelSeries {
        var latency: DurationHistogram
        var byStatus: [Int: Counter]
    }
    private var perModel: [String: ModelSeries] = [:]
    /// Past this many models, per-model series are not made (cardinality guard); the rest are
    /// counted under `model="_other"`.
    private let maxModelSeries = 2_000

    static let latencyBuckets: [Duration] = [
        .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2),
        .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
        .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(5),
    ]

    public init() {
        loads = registry.makeCounter(name: "kaa_model_loads_total", help: "Model versions loaded into memory.")
        loadFailures = registry.makeCounter(name: "kaa_model_load_failures_total", help: "Model loads that failed.")
        evictions = registry.makeCounter(name: "kaa_model_evictions_total", help: "Model versions evicted from memory.")
        loadedBytes = registry.makeGauge(name: "kaa_model_loaded_bytes", help: "Bytes held by loaded models.")
        loadedModels = registry.makeGauge(name: "kaa_models_loaded", help: "Model versions in memory.")
        registered = registry.makeGauge(name: "kaa_models_registered", help: "Model versions stored on this node.")
        queueDepth = registry.makeGauge(name: "kaa_inference_queue_depth", help: "Calls waiting to start, all models.")
    }

    /// Counts one finished call of `model` with its status and latency.
    func record(model: String, status: HTTPStatus, seconds: Double) {
        var key = model
        if perModel[key] == nil && perModel.count >= maxModelSeries { key = "_other" }
        if perModel[key] == nil {
            perModel[key] = ModelSeries(
                latency: registry.makeDurationHistogram(name: "kaa_inference_duration_seconds", labels: [("model", key)],
                                                        buckets: ServingMetrics.latencyBuckets,
                                                        help: "Inference call latency, from parsed request to answer."),
                byStatus: [:])
        }
        if perModel[key]!.byStatus[status.code] == nil {
            perModel[key]!.byStatus[status.code] = registry.makeCounter(
                name: "kaa_inference_requests_total", labels: [("model", key), ("code", String(status.code))],
                help: "Inference calls by model and HTTP status.")
        }
        perModel[key]!.byStatus[status.code]!.increment()
        if status == .ok { perModel[key]!.latency.recordNanoseconds(Int64(seconds * 1e9)) }
    }

    /// The Prometheus text exposition.
    public func exposition() -> [UInt8] {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return buffer
    }
}
