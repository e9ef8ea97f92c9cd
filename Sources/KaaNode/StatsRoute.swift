import Foundation
import KaaCluster
import KaaCore
import KaaIO

/// `GET /kaa/v1/stats[?models=N]`: this node's calls a second over the last two minutes, in
/// all and for its `N` busiest models (default 10), and the dead letters of calls it accepted
/// (by reason, and the newest ten). `GET /kaa/v1/stats/cluster[?models=N]`: the same of every
/// live node, gathered over the peer plane (`stats` frames), for the dashboard.
///
/// The series are taken on the loop as a value (a copy shares its storage); ranking the models,
/// reading the dead letters and writing the JSON happen on the thread pool.
struct StatsRoute: Sendable {
    /// Set on the loop once gossip runs; read on the loop.
    let gossip: LoopCell<GossipShell>
    let metrics: ServingMetrics
    let deadLetters: DeadLetterStore
    let frames: FrameClient
    let loop: EventLoop
    let nodeName: String

    /// The busiest models' series a report includes unless asked otherwise, and at most.
    static let defaultModels = 10
    static let maxModels = 100
    /// The newest dead letters a report lists.
    static let newestDeadLetters = 10
    /// How long the cluster view waits for a peer.
    static let peerDeadline: Duration = .seconds(3)

    /// The values of one report, taken on the loop.
    struct Taken: Sendable {
        var node: String
        var id: String
        var requests: RequestStats
        var now: UInt64
        var unixMs: Int64
        var models: Int
    }

    /// A query parameter out of its range, with the message that says so.
    struct BadParameter: Error, Equatable {
        var message: String
    }

    /// `?models=N`: 0 … ``maxModels``; names what is wrong otherwise.
    static func modelsParameter(_ text: String?) -> Result<Int, BadParameter> {
        guard let text else { return .success(defaultModels) }
        guard let n = Int(text), n >= 0, n <= maxModels else {
            return .failure(BadParameter(message: "models `\(text.prefix(40))` must be a whole number from 0 to \(maxModels): how many of the busiest models' series to include"))
        }
        return .success(n)
    }

    /// This node's values now. On the loop.
    func take(models: Int) -> Taken {
        precondition(loop.inLoop, "stats taken off the loop")
        return Taken(node: nodeName, id: gossip.value?.instance.myself.id.rawValue ?? "", requests: metrics.requests,
                     now: loop.nowNanoseconds, unixMs: Int64(Date().timeIntervalSince1970 * 1000), models: models)
    }

    /// The report's JSON: series and dead letters. Off the loop (reads SQLite).
    static func json(_ taken: Taken, deadLetters: DeadLetterStore) -> [UInt8] {
        let (total, models, withCalls) = taken.requests.report(now: taken.now, top: taken.models)
        let letters = try? deadLetters.accepted(by: taken.node, newest: newestDeadLetters)
        var w = JSONWriter(capacity: 4096 + models.count * 2048)
        w.raw("{\"bucket_seconds\":1,\"dead_letters\":{\"by_reason\":{")
        for (i, reason) in DeadLetter.Reason.allCases.enumerated() {
            if i > 0 { w.byte(UInt8(ascii: ",")) }
            w.string(reason.rawValue); w.byte(UInt8(ascii: ":")); w.integer(letters?.byReason[reason.rawValue] ?? 0)
        }
        w.raw("},\"newest\":")
        w.append(Array((try? JSONEncoder.sorted.encode((letters?.newest ?? []).map(DeadLetters.Summary.init))) ?? Data("[]".utf8)))
        if letters == nil { w.raw(",\"error\":\"the dead-letter store could not be read\"") }
        w.raw("},\"id\":"); w.string(taken.id)
        w.raw(",\"models\":[")
        for (i, model) in models.enumerated() {
            if i > 0 { w.byte(UInt8(ascii: ",")) }
            write(model, to: &w)
        }
        w.raw("],\"models_max\":"); w.integer(taken.requests.maxModels)
        w.raw(",\"models_with_calls\":"); w.integer(withCalls)
        w.raw(",\"node\":"); w.string(taken.node)
        w.raw(",\"now_unix_ms\":"); w.integer(taken.unixMs)
        w.raw(",\"total\":"); write(total, to: &w)
        w.raw(",\"window_seconds\":"); w.integer(taken.requests.window)
        w.byte(UInt8(ascii: "}"))
        return w.bytes
    }

    /// `{"calls": [...], "errors": [...], "latency_max_us": [...], "latency_mean_us": [...], "name"?}`,
    /// oldest second first; the last is the second under way.
    private static func write(_ window: RequestStats.Window, to w: inout JSONWriter) {
        func list(_ key: StaticString, _ value: (RequestStats.Bucket) -> UInt64, first: Bool = false) {
            w.raw(first ? "{\"" : ",\""); w.raw(key); w.raw("\":[")
            for (i, b) in window.buckets.enumerated() {
                if i > 0 { w.byte(UInt8(ascii: ",")) }
                w.integer(value(b))
            }
            w.byte(UInt8(ascii: "]"))
        }
        list("calls", { UInt64($0.calls) }, first: true)
        list("errors", { UInt64($0.errors) })
        list("latency_max_us", { $0.latencyMax / 1_000 })
        list("latency_mean_us", { $0.meanMicroseconds })
        if !window.name.isEmpty { w.raw(",\"name\":"); w.string(window.name) }
        w.byte(UInt8(ascii: "}"))
    }

    /// This node's report, then `done` with its JSON on the loop.
    func report(models: Int, done: @escaping @Sendable ([UInt8]) -> Void) {
        let taken = take(models: models), store = deadLetters
        loop.offload({ StatsRoute.json(taken, deadLetters: store) }, then: done)
    }

    func add(to router: inout HTTPRouter) {
        let route = self
        router.add(.get, "/kaa/v1/stats") { request, responder in
            switch StatsRoute.modelsParameter(request.query["models"]) {
            case .failure(let bad): responder.respond(.error(.badRequest, bad.message))
            case .success(let n): route.report(models: n) { responder.respond(.json(.ok, $0)) }
            }
        }
        router.add(.get, "/kaa/v1/stats/cluster") { request, responder in
            switch StatsRoute.modelsParameter(request.query["models"]) {
            case .failure(let bad): responder.respond(.error(.badRequest, bad.message))
            case .success(let n): route.cluster(models: n, responder)
            }
        }
    }

    /// A peer's `stats` frame: `{"models": N}`, answered with this node's report.
    func answer(_ frame: Frame, _ responder: FrameResponder) {
        struct Ask: Decodable { var models: Int? }
        guard let ask = try? JSONDecoder().decode(Ask.self, from: Data(frame.payload)) else {
            return responder.fail(.badRequest, "stats wants JSON {\"models\": N}")
        }
        guard case .success(let n) = StatsRoute.modelsParameter(ask.models.map(String.init)) else {
            return responder.fail(.badRequest, "stats: models must be from 0 to \(StatsRoute.maxModels)")
        }
        report(models: n) { responder.respond($0) }
    }

    /// `{"nodes": [this node's report, then each live peer's], "unreachable": [names]}`.
    private func cluster(models: Int, _ responder: HTTPResponder) {
        guard let shell = gossip.value else { return responder.respond(.error(.serviceUnavailable, "gossip is not running yet")) }
        let me = shell.instance.myself.id
        let peers = shell.instance.members.filter { $0.status.isReachable && $0.id != me }
        let payload = Array("{\"models\":\(models)}".utf8)
        let (loop, nodeName) = (self.loop, self.nodeName)
        frames.askEach(peers, type: Node.PeerFrameType.stats, payload: payload, deadline: StatsRoute.peerDeadline) { answers in
            let gathered = answers.compactMap { a -> (node: String, json: [UInt8])? in
                if case .success(let frame) = a.result { (a.peer.info.name, frame.payload) } else { nil }
            }
            let failed = PeerAnswers.unreachable(answers)
            report(models: models) { mine in
                let all = [(node: nodeName, json: mine)] + gathered
                // Checking the peers' answers and joining them is work in proportion to their size: off the loop.
                loop.offload({ StatsRoute.merge(all, failed: failed) }) { responder.respond(.json(.ok, $0)) }
            }
        }
    }

    /// The cluster view's JSON: the answers that are JSON objects, in order; the nodes that did
    /// not answer, or not with one, by name.
    static func merge(_ answers: [(node: String, json: [UInt8])], failed: [String]) -> [UInt8] {
        var w = JSONWriter(capacity: answers.reduce(64) { $0 + $1.json.count + 1 })
        var unreachable = failed
        w.raw("{\"nodes\":[")
        var first = true
        for answer in answers {
            guard (try? JSONSerialization.jsonObject(with: Data(answer.json))) is [String: Any] else {
                unreachable.append(answer.node)
                continue
            }
            if !first { w.byte(UInt8(ascii: ",")) }
            first = false
            w.append(answer.json)
        }
        w.raw("],\"unreachable\":[")
        for (i, name) in unreachable.sorted().enumerated() {
            if i > 0 { w.byte(UInt8(ascii: ",")) }
            w.string(name)
        }
        w.raw("]}")
        return w.bytes
    }
}
