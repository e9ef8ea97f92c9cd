import Foundation
import KaaCore
import KaaEngine
public import KaaIO
public import KaaSnapshot
public import Logging

/// The node's control API for snapshots and aliases (`/kaa/v1/...`).
///
/// Every store call blocks on disk and SQLite, so it runs on the loop's thread pool; uploads
/// stream into an ingest session chunk by chunk, never whole in memory.
public struct SnapshotAPI: Sendable {
    /// A change to the catalog that the serving side must learn of.
    public enum Event: Sendable {
        case stored(SnapshotID)
        case removed(SnapshotID)
        case aliasSet(name: String, alias: String, version: Int?)
    }

    let store: SnapshotStore
    let loop: EventLoop
    let logger: Logger
    /// Called on the loop after each change.
    let observer: @Sendable (Event) -> Void

    public init(store: SnapshotStore, loop: EventLoop, logger: Logger, observer: @escaping @Sendable (Event) -> Void = { _ in }) {
        self.store = store
        self.loop = loop
        self.logger = logger
        self.observer = observer
    }

    /// Tells the observer, on the loop.
    func notify(_ events: [Event]) {
        guard !events.isEmpty else { return }
        let observer = self.observer
        loop.execute { for e in events { observer(e) } }
    }

    /// The streaming sink for `PUT /kaa/v1/snapshots/{name}[/{version}]`, or nil for other requests.
    public func streamer(_ head: HTTPRequest) -> (any HTTPBodySink)? {
        guard head.method == .put else { return nil }
        let parts = head.path.split(separator: "/")
        guard parts.count == 4 || parts.count == 5, parts[0] == "kaa", parts[1] == "v1", parts[2] == "snapshots" else {
            return nil
        }
        var request = IngestRequest(manifestCheck: SnapshotAPI.checkPipeline)
        request.expectedName = percentDecode(parts[3]) ?? String(parts[3])
        if parts.count == 5 {
            guard let version = Int(parts[4]), version > 0 else {
                return RefusingSink(.error(.badRequest, "version `\(parts[4])` is not a positive integer; leave it out to get the next free one"))
            }
            request.expectedVersion = version
        }
        if let length = head.headers["content-length"].flatMap(UInt64.init) { request.declaredLength = length }
        if let digest = head.headers["kaa-snapshot-digest"] {
            do { request.expectedDigest = try SnapshotDigest(parsing: digest) } catch {
                return RefusingSink(.error(.badRequest, "header Kaa-Snapshot-Digest: \(error.message)"))
            }
        }
        return UploadSink(api: self, request: request)
    }

    /// Refuses a snapshot whose pipeline spec does not parse (a snapshot without one is fine).
    /// Only parsing: checking it against the model needs the whole model, which arrives later;
    /// `kaa snapshot build` checks that before upload.
    static func checkPipeline(_ manifest: SnapshotManifest) throws(SnapshotError) {
        guard let text = manifest.pipeline else { return }
        do { _ = try Pipeline(yaml: text) } catch {
            throw SnapshotError(.invalidPipeline, "snapshot \(manifest.name): the pipeline does not parse: \(error.message)")
        }
    }

    /// Adds the control routes.
    public func addRoutes(to router: inout HTTPRouter) {
        let api = self
        router.add(.get, "/kaa/v1/snapshots") { request, responder in
            let name = request.query["name"]
            api.blocking(responder) {
                if let name { try SnapshotNaming.validateModelName(name) }
                let records = try api.store.list(name: name)
                return .json(.ok, try SnapshotAPI.encode(["snapshots": records.map(SnapshotSummary.init)]))
            }
        }
        router.add(.get, "/kaa/v1/snapshots/{name}/{version}") { request, responder in
            let name = request.pathParameters["name"]!, version = request.pathParameters["version"]!
            api.blocking(responder) {
                let reference = try SnapshotReference(parsing: "\(name)@\(version)")
                let record = try api.store.resolve(reference)
                var response = HTTPResponse.json(.ok, try api.store.manifestBytes(record.id))
                response.headers.add("kaa-snapshot-digest", record.digest.description)
                return response
            }
        }
        router.add(.get, "/kaa/v1/models/{name}/aliases") { request, responder in
            let name = request.pathParameters["name"]!
            api.blocking(responder) {
                try SnapshotNaming.validateModelName(name)
                return .json(.ok, try SnapshotAPI.encode(["name": .string(name)], ["aliases": try api.store.aliases(name: name)]))
            }
        }
        router.add(.put, "/kaa/v1/models/{name}/aliases/{alias}") { request, responder in
            let name = request.pathParameters["name"]!, alias = request.pathParameters["alias"]!
            let text = String(decoding: request.body, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard let version = SnapshotAPI.version(fromBody: text) else {
                responder.respond(.error(.badRequest, "the body must be the version the alias points at, like `3` or {\"version\": 3}; got `\(text.prefix(80))`"))
                return
            }
            api.blocking(responder) {
                try api.store.setAlias(name: name, alias: alias, version: version)
                api.notify([.aliasSet(name: name, alias: alias, version: version)])
                api.logger.info("alias set", metadata: ["model.name": "\(name)", "alias": "\(alias)", "model.version": "\(version)"])
                return .json(.ok, try SnapshotAPI.encode(["name": .string(name), "alias": .string(alias)], ["version": version]))
            }
        }
        router.add(.delete, "/kaa/v1/models/{name}/aliases/{alias}") { request, responder in
            let name = request.pathParameters["name"]!, alias = request.pathParameters["alias"]!
            api.blocking(responder) {
                try api.store.removeAlias(name: name, alias: alias)
                api.notify([.aliasSet(name: name, alias: alias, version: nil)])
                return HTTPResponse(status: .noContent)
            }
        }
    }

    /// Runs a blocking store call on the thread pool and answers with its result or its error.
    func blocking(_ responder: HTTPResponder, _ body: @escaping @Sendable () throws -> HTTPResponse) {
        loop.offload({ () -> HTTPResponse in
            do { return try body() } catch let error as SnapshotError {
                return SnapshotAPI.response(for: error)
            } catch {
                return .error(.internalServerError, "\(error)")
            }
        }) { responder.respond($0) }
    }

    static func response(for error: SnapshotError) -> HTTPResponse {
        let status: HTTPStatus = switch error.code {
        case .conflict, .inUse: .conflict
        case .notFound: .notFound
        case .tooLarge: .contentTooLarge
        case .io: .internalServerError
        default: .badRequest
        }
        return .error(status, error.message)
    }

    static func version(fromBody text: String) -> Int? {
        if let v = Int(text), v > 0 { return v }
        if let data = text.data(using: .utf8),
           let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
           let v = object["version"] as? Int, v > 0 { return v }
        return nil
    }

    enum JSONValue: Encodable {
        case string(String)
        func encode(to encoder: any Encoder) throws {
            var c = encoder.singleValueContainer()
            switch self { case .string(let s): try c.encode(s) }
        }
    }

    static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        return Array(try encoder.encode(value))
    }

    static func encode<T: Encodable>(_ strings: [String: JSONValue], _ extra: [String: T]) throws -> [UInt8] {
        var object = try JSONSerialization.jsonObject(with: Data(encode(strings))) as! [String: Any]
        let more = try JSONSerialization.jsonObject(with: Data(encode(extra))) as! [String: Any]
        object.merge(more) { $1 }
        return Array(try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]))
    }
}

/// One snapshot as the control API lists it.
struct SnapshotSummary: Encodable {
    var name: String
    var version: Int
    var digest: String
    var size: UInt64
    var state: String
    var receivedAt: Date
    var signer: String?

    init(_ record: SnapshotRecord) {
        name = record.id.name
        version = record.id.version
        digest = record.digest.description
        size = record.size
        state = "\(record.state)"
        receivedAt = record.receivedAt
        signer = record.signerKeyID
    }

    enum CodingKeys: String, CodingKey {
        case name, version, digest, size, state, signer
        case receivedAt = "received_at"
    }
}

/// Answers an upload that was refused from its head alone; the body is read and dropped.
final class RefusingSink: HTTPBodySink {
    let response: HTTPResponse
    init(_ response: HTTPResponse) { self.response = response }
    var maxBytes: Int { Int.max }
    func receive(_ chunk: [UInt8], ready: @escaping () -> Void) { ready() }
    func finish(_ responder: HTTPResponder) { responder.respond(response) }
    func abort(_ reason: String) {}
}

/// Feeds an upload into an ingest session on the thread pool, one chunk at a time.
/// Loop-confined; the session itself is only touched by one pool job at a time.
final class UploadSink: HTTPBodySink {
    private let api: SnapshotAPI
    private let job: IngestJob
    private var failed: SnapshotError?

    init(api: SnapshotAPI, request: IngestRequest) {
        self.api = api
        self.job = IngestJob(store: api.store, request: request)
    }

    var maxBytes: Int { Int(clamping: api.store.configuration.maxContentBytes + (64 << 20)) }

    func receive(_ chunk: [UInt8], ready: @escaping () -> Void) {
        guard failed == nil else { return ready() } // drop the rest; the answer is the first error
        let job = self.job
        api.loop.offload({ () -> SnapshotError? in
            do { try job.append(chunk); return nil } catch let error as SnapshotError { return error } catch {
                return SnapshotError(.io, "\(error)")
            }
        }) { [self] error in
            if let error { failed = error; job.abort() }
            ready()
        }
    }

    func finish(_ responder: HTTPResponder) {
        if let failed {
            responder.respond(SnapshotAPI.response(for: failed))
            return
        }
        let job = self.job, api = self.api
        api.loop.offload({ () -> HTTPResponse in
            do {
                let result = try job.finish()
                let summary = SnapshotSummary(result.record)
                let outcome = result.outcome == .stored ? "stored" : "already-present"
                api.logger.info("snapshot \(outcome)", metadata: [
                    "snapshot.id": "\(result.record.id)", "snapshot.digest": "\(result.record.digest)",
                    "snapshot.size": "\(result.record.size)",
                ])
                if result.outcome == .stored {
                    var events: [SnapshotAPI.Event] = [.stored(result.record.id)]
                    let report = try? api.store.applyRetention(name: result.record.id.name)
                    if let report, !report.deleted.isEmpty {
                        api.logger.info("retention removed old versions", metadata: ["snapshots": "\(report.deleted)"])
                        events += report.deleted.map { .removed($0) }
                    }
                    api.notify(events)
                }
                struct Answer: Encodable {
                    var snapshot: SnapshotSummary
                    var outcome: String
                    var assignedVersion: Bool
                    enum CodingKeys: String, CodingKey { case snapshot, outcome, assignedVersion = "assigned_version" }
                }
                let body = try SnapshotAPI.encode(Answer(snapshot: summary, outcome: outcome, assignedVersion: result.assignedVersion))
                return .json(result.outcome == .stored ? .created : .ok, body)
            } catch let error as SnapshotError {
                return SnapshotAPI.response(for: error)
            } catch {
                return .error(.internalServerError, "\(error)")
            }
        }) { responder.respond($0) }
    }

    func abort(_ reason: String) {
        let job = self.job
        api.loop.offload({ job.abort() }) { _ in }
        api.logger.notice("snapshot upload abandoned", metadata: ["reason": "\(reason)"])
    }
}

/// The ingest session of one upload, begun lazily on the pool.
final class IngestJob: @unchecked Sendable {
    // SAFETY: the upload sink runs one pool job at a time for this upload (the next chunk is
    // asked for only after the previous job finished), so `session` is never used concurrently.
    private let store: SnapshotStore
    private let request: IngestRequest
    private var session: IngestSession?
    private var done = false

    init(store: SnapshotStore, request: IngestRequest) {
        self.store = store
        self.request = request
    }

    func append(_ chunk: [UInt8]) throws(SnapshotError) {
        if session == nil { session = try store.beginIngest(request) }
        try session!.append(chunk)
    }

    func finish() throws(SnapshotError) -> IngestResult {
        if session == nil { session = try store.beginIngest(request) }
        done = true
        return try session!.finish()
    }

    func abort() {
        guard !done else { return }
        done = true
        session?.abort()
    }
}
