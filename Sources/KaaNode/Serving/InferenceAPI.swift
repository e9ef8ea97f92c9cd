import Foundation
import KaaCore
import KaaEngine
import KaaIO
import KaaSnapshot

/// The Open Inference Protocol (KServe v2) REST routes, the repository extension and `/metrics`:
/// the HTTP edge of the call path. An infer request becomes an ``InferenceCall``; its result
/// becomes the HTTP answer.
struct InferenceAPI: Sendable {
    let server: LoopBound<ModelServer>
    let metrics: ServingMetrics
    let store: SnapshotStore
    let config: ServingConfig
    /// More `/metrics` lines, read on the loop (the node's replication figures).
    var moreMetrics: (@Sendable () -> String)? = nil
    /// More `/metrics` lines that need the disk, read on the thread pool (dead letters kept).
    var moreMetricsOffLoop: (@Sendable () -> String)? = nil
    /// In a cluster: where a call goes (on the loop). It sends a call for a version this node
    /// does not hold to a holder and answers it there, or says which version to serve here.
    /// `everyHolder`: a load or an unload, which every holder of the version carries out.
    var route: (@Sendable (_ request: HTTPRequest, _ name: String, _ version: String?, _ deadlineMs: UInt64, _ everyHolder: Bool,
                           _ responder: HTTPResponder) -> Routed)? = nil
    /// Where calls this node cannot answer are kept.
    var deadLetters: DeadLetters? = nil
    /// More entries for the repository index (on the loop): the cluster's other snapshots.
    var moreIndex: (@Sendable (_ local: Set<String>) -> [(name: String, version: Int, holders: [String])])? = nil

    enum Routed {
        /// Sent on, or refused: answered already.
        case handled
        /// Serve it here, as this version (a number, or what the request named).
        case serveHere(version: String?)
    }

    /// Asks ``route`` where the call goes; nil when it was answered already.
    private func routed(_ request: HTTPRequest, name: String, version: String?, deadlineMs: UInt64, everyHolder: Bool = false,
                        _ responder: HTTPResponder) -> String?? {
        guard let route else { return .some(version) }
        switch route(request, name, version, deadlineMs, everyHolder, responder) {
        case .handled: return nil
        case .serveHere(let v): return .some(v)
        }
    }

    func addRoutes(to router: inout HTTPRouter) {
        let api = self
        router.add(.post, "/v2/models/{name}/infer") { request, responder in
            api.infer(request, name: request.pathParameters["name"]!, version: nil, responder)
        }
        router.add(.post, "/v2/models/{name}/versions/{version}/infer") { request, responder in
            api.infer(request, name: request.pathParameters["name"]!, version: request.pathParameters["version"]!, responder)
        }
        router.add(.get, "/v2/models/{name}") { request, responder in
            let name = request.pathParameters["name"]!
            guard let version = api.routed(request, name: name, version: nil, deadlineMs: api.defaultDeadlineMs, responder) else { return }
            api.metadata(name: name, version: version, responder)
        }
        router.add(.get, "/v2/models/{name}/versions/{version}") { request, responder in
            let name = request.pathParameters["name"]!
            guard let version = api.routed(request, name: name, version: request.pathParameters["version"]!, deadlineMs: api.defaultDeadlineMs,
                                           responder) else { return }
            api.metadata(name: name, version: version, responder)
        }
        router.add(.get, "/v2/models/{name}/ready") { request, responder in
            let name = request.pathParameters["name"]!
            guard let version = api.routed(request, name: name, version: nil, deadlineMs: api.defaultDeadlineMs, responder) else { return }
            api.ready(name: name, version: version, responder)
        }
        router.add(.get, "/v2/models/{name}/versions/{version}/ready") { request, responder in
            let name = request.pathParameters["name"]!
            guard let version = api.routed(request, name: name, version: request.pathParameters["version"]!, deadlineMs: api.defaultDeadlineMs,
                                           responder) else { return }
            api.ready(name: name, version: version, responder)
        }
        router.add(.post, "/v2/repository/index") { _, responder in
            let server = api.server.value
            var w = JSONWriter()
            w.raw("[")
            var first = true
            var local = Set<String>()
            for (name, versions) in server.allModels {
                for v in versions {
                    local.insert("\(name)@\(v)")
                    let id = SnapshotID(validName: name, version: v)
                    let cache = server.cache
                    if !first { w.raw(",") }
                    first = false
                    w.raw("{\"name\":")
                    w.string(name)
                    w.raw(",\"version\":\"")
                    w.integer(v)
                    w.raw("\",\"state\":")
                    if cache.isUnloaded(id) {
                        w.raw("\"UNAVAILABLE\",\"reason\":\"unloaded\"}")
                    } else {
                        w.raw(cache.isLoaded(id) ? "\"READY\"}" : "\"READY\",\"reason\":\"loads on first request\"}")
                    }
                }
            }
            // The cluster's other snapshots: served by their holders through this node.
            for other in api.moreIndex?(local) ?? [] {
                if !first { w.raw(",") }
                first = false
                w.raw("{\"name\":")
                w.string(other.name)
                w.raw(",\"version\":\"")
                w.integer(other.version)
                if other.holders.isEmpty {
                    w.raw("\",\"state\":\"UNAVAILABLE\",\"reason\":\"no live holder has it ready\"}")
                } else {
                    w.raw("\",\"state\":\"READY\",\"reason\":")
                    w.string("served by " + other.holders.joined(separator: ", "))
                    w.raw("}")
                }
            }
            w.raw("]")
            responder.respond(.json(.ok, w.bytes))
        }
        router.add(.post, "/v2/repository/models/{name}/load") { request, responder in
            let server = api.server.value
            let name = request.pathParameters["name"]!
            guard let version = api.routed(request, name: name, version: nil, deadlineMs: api.defaultDeadlineMs, everyHolder: true,
                                           responder) else { return }
            let id: SnapshotID
            do throws(CallError) { id = try server.resolve(name: name, version: version) } catch {
                return responder.respond(InferenceAPI.answer(for: error))
            }
            server.cache.load(id) { result in
                switch result {
                case .success: responder.respond(HTTPResponse(status: .ok))
                case .failure(let error): responder.respond(InferenceAPI.answer(for: error))
                }
            }
        }
        router.add(.post, "/v2/repository/models/{name}/unload") { request, responder in
            let server = api.server.value
            let name = request.pathParameters["name"]!
            guard api.routed(request, name: name, version: nil, deadlineMs: api.defaultDeadlineMs, everyHolder: true, responder) != nil else {
                return
            }
            for v in server.versions(of: name) { server.cache.unload(SnapshotID(validName: name, version: v)) }
            if server.versions(of: name).isEmpty {
                return responder.respond(.error(.notFound, "model `\(name)` does not exist"))
            }
            responder.respond(HTTPResponse(status: .ok))
        }
        router.add(.get, "/metrics") { _, responder in
            let metrics = api.metrics
            let more = api.moreMetrics?() ?? "", offLoop = api.moreMetricsOffLoop
            api.server.loop.offload({ metrics.exposition() + Array((more + (offLoop?() ?? "")).utf8) }) { body in
                responder.respond(HTTPResponse(headers: ["content-type": "text/plain; version=0.0.4"], body: body))
            }
        }
    }

    /// A compressed request body (`Content-Encoding: gzip`, as Triton's client sends with
    /// `request_compression_algorithm`) gets 415 naming the encoding, not a JSON parse error.
    static func refuseEncodedBody(_ request: HTTPRequest) -> HTTPResponse? {
        guard let encoding = request.headers["content-encoding"], encoding.lowercased() != "identity" else { return nil }
        return .error(HTTPStatus(415, "Unsupported Media Type"),
                      "Content-Encoding `\(encoding)` is not supported; send the request body uncompressed")
    }

    var defaultDeadlineMs: UInt64 { config.defaultDeadline.millisecondsRoundedUp }

    /// Turns an infer request into a call for the model server, answering at once what is
    /// wrong with the request's HTTP form.
    private func infer(_ request: HTTPRequest, name: String, version: String?, _ responder: HTTPResponder) {
        if let refused = InferenceAPI.refuseEncodedBody(request) { return responder.respond(refused) }
        let server = self.server.value
        let now = server.loop.nowNanoseconds
        var deadlineMs = config.defaultDeadline.millisecondsRoundedUp
        if let header = request.headers["kaa-deadline-ms"] {
            guard let ms = UInt64(header), ms > 0 else {
                return responder.respond(.error(.badRequest, "Kaa-Deadline-Ms `\(header.prefix(40))` must be a positive number of milliseconds"))
            }
            deadlineMs = ms
        }
        // Cut to `max_deadline`, which also keeps the sum below from overflowing.
        deadlineMs = min(deadlineMs, config.maxDeadline.millisecondsRoundedUp, UInt64.max / 2_000_000)
        let headerLength: Int?
        do { headerLength = try InferenceCodec.headerLength(request.headers["inference-header-content-length"]) } catch {
            return responder.respond(.error(.badRequest, error.description))
        }
        guard let version = routed(request, name: name, version: version, deadlineMs: deadlineMs, responder) else { return }
        let call = InferenceCall(model: name, version: version, body: request.body, headerLength: headerLength,
                                 received: now, deadline: now &+ deadlineMs * 1_000_000)
        var sink = HTTPCallSink(responder: responder)
        if let deadLetters, request.headers["kaa-forwarded"] == nil {
            sink.deadLetters = deadLetters
            sink.request = request
            sink.call = DeadLetters.Call(model: name, asked: version.flatMap { Int($0) == nil ? $0 : nil }, version: version.flatMap { Int($0) })
        }
        server.call(call, CallCompletion(sink, label: name))
    }

    /// The HTTP status for each call error.
    static func status(for code: CallError.Code) -> HTTPStatus {
        switch code {
        case .badRequest: .badRequest
        case .notFound: .notFound
        case .unavailable, .shuttingDown: .serviceUnavailable
        case .overloaded: .tooManyRequests
        case .deadlineExceeded: .gatewayTimeout
        default: .internalServerError
        }
    }

    static func answer(for error: CallError) -> HTTPResponse {
        .error(status(for: error.code), error.message)
    }

    private func ready(name: String, version: String?, _ responder: HTTPResponder) {
        let server = self.server.value
        do {
            let id = try server.resolve(name: name, version: version)
            responder.respond(server.cache.isUnloaded(id)
                ? .error(.serviceUnavailable, "\(id) was unloaded") : HTTPResponse(status: .ok))
        } catch {
            responder.respond(InferenceAPI.answer(for: error))
        }
    }

    /// Model metadata from the snapshot's manifest (the model need not be loaded).
    private func metadata(name: String, version: String?, _ responder: HTTPResponder) {
        let server = self.server.value
        let id: SnapshotID
        do { id = try server.resolve(name: name, version: version) } catch {
            return responder.respond(InferenceAPI.answer(for: error))
        }
        let versions = server.versions(of: name)
        let store = self.store
        self.server.loop.offload({ () -> HTTPResponse in
            do {
                let manifest = try store.manifest(id)
                var w = JSONWriter()
                w.raw("{\"name\":")
                w.string(name)
                w.raw(",\"versions\":[")
                for (i, v) in versions.enumerated() {
                    if i > 0 { w.raw(",") }
                    w.string(String(v))
                }
                w.raw("],\"platform\":\"onnx\",\"inputs\":")
                InferenceAPI.writeSignatures(manifest.signature.inputs, to: &w)
                w.raw(",\"outputs\":")
                InferenceAPI.writeSignatures(manifest.signature.outputs, to: &w)
                w.raw(",\"parameters\":{\"version\":\"")
                w.integer(id.version)
                w.raw("\",\"digest\":")
                w.string(try store.record(id)?.digest.description ?? "")
                w.raw("}}")
                return .json(.ok, w.bytes)
            } catch let error as SnapshotError {
                return SnapshotAPI.response(for: error)
            } catch {
                return .error(.internalServerError, "\(error)")
            }
        }) { responder.respond($0) }
    }

    static func writeSignatures(_ signatures: [KaaSnapshot.TensorSignature], to w: inout JSONWriter) {
        w.raw("[")
        for (i, s) in signatures.enumerated() {
            if i > 0 { w.raw(",") }
            w.raw("{\"name\":")
            w.string(s.name)
            w.raw(",\"datatype\":")
            // A sequence of maps is served as a [batch, keys] FP32 tensor (see docs/serving.md).
            w.string(s.kind == .sequence ? "FP32" : s.dtype)
            w.raw(",\"shape\":[")
            let shape = s.shape ?? (s.kind == .sequence ? [-1, -1] : [])
            for (j, d) in shape.enumerated() {
                if j > 0 { w.raw(",") }
                w.integer(d)
            }
            w.raw("]}")
        }
        w.raw("]")
    }
}

/// Answers a call over HTTP: outputs as the protocol's JSON (or JSON and binary) body, errors
/// as `{"error": ...}` with the status of their code.
struct HTTPCallSink: CallSink {
    let responder: HTTPResponder
    /// Where a call this node accepted from its client (not one another node sent on) ends
    /// when its deadline passes or the node stops past its grace: a dead letter.
    var deadLetters: DeadLetters? = nil
    var request: HTTPRequest? = nil
    var call: DeadLetters.Call? = nil

    func deliver(_ result: CallResult) {
        switch result {
        case .success(let answer):
            var response = HTTPResponse(status: .ok, body: answer.body)
            if let headerLength = answer.headerLength {
                response.headers.add("content-type", "application/octet-stream")
                response.headers.add("inference-header-content-length", String(headerLength))
            } else {
                response.headers.add("content-type", "application/json")
            }
            responder.respond(response)
        case .failure(let error):
            if let deadLetters, let request, let call, error.code == .deadlineExceeded || error.code == .shuttingDown {
                let attempt = DeadLetter.Attempt(node: deadLetters.nodeName, start: DeadLetters.nowMs(), end: DeadLetters.nowMs(),
                                                 outcome: error.message)
                return deadLetters.fail(request, call, reason: error.code == .deadlineExceeded ? .deadline : .shutdown,
                                        status: InferenceAPI.status(for: error.code), message: error.message, attempts: [attempt], responder)
            }
            responder.respond(InferenceAPI.answer(for: error))
        }
    }
}
