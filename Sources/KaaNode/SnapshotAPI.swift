import Foundation
import KaaCluster
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
        /// The replicator is about to delete this copy: stop serving it, and let its model go
        /// once its calls end (a loaded model leases its snapshot).
        case draining(SnapshotID)
        case aliasSet(name: String, alias: String, version: Int?)
    }

    let store: SnapshotStore
    let loop: EventLoop
    let logger: Logger
    /// Called on the loop after each change.
    let observer: @Sendable (Event) -> Void
    /// In a node, the replicator: a publish answers once its copies are made (the write quorum).
    var replicator: LoopCell<Replicator>?
    /// The node's access control, if on: names the token behind a forced alias move.
    var access: AccessPolicy?

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

    /// Logs an ingest's result and, for a new snapshot, applies retention and tells the serving
    /// side; returns `stored` or `already-present`. On the thread pool.
    func ingested(_ result: IngestResult) -> String {
        let outcome = result.outcome == .stored ? "stored" : "already-present"
        logger.info("snapshot \(outcome)", metadata: [
            "snapshot.id": "\(result.record.id)", "snapshot.digest": "\(result.record.digest)",
            "snapshot.size": "\(result.record.size)",
        ])
        if result.outcome == .stored {
            var events: [SnapshotAPI.Event] = [.stored(result.record.id)]
            let report = try? store.applyRetention(name: result.record.id.name)
            if let report, !report.deleted.isEmpty {
                logger.info("retention removed old versions", metadata: ["snapshots": "\(report.deleted)"])
                events += report.deleted.map { .removed($0) }
            }
            notify(events)
        }
        return outcome
    }

    /// The streaming sink for `PUT /kaa/v1/snapshots/{name}[/{version}]`, or nil for other requests.
    /// What the head alone shows to be wrong is refused before a byte of the body is read.
    public func streamer(_ head: HTTPRequest) -> (any HTTPBodySink)? {
        guard head.method == .put else { return nil }
        let parts = head.path.split(separator: "/")
        guard parts.count == 4 || parts.count == 5, parts[0] == "kaa", parts[1] == "v1", parts[2] == "snapshots" else {
            return nil
        }
        var request = IngestRequest(manifestCheck: SnapshotAPI.checkPipeline, modelCheck: SnapshotAPI.checkModel)
        let name = percentDecode(parts[3]) ?? String(parts[3])
        do { try SnapshotNaming.validateModelName(name) } catch {
            return RefusingSink(SnapshotAPI.response(for: error))
        }
        request.expectedName = name
        if parts.count == 5 {
            guard let version = SnapshotNaming.parseVersion(parts[4]) else {
                return RefusingSink(.error(.badRequest, "\(SnapshotNaming.describeBadVersion(parts[4])); leave it out to get the next free one"))
            }
            request.expectedVersion = version
        }
        if let text = head.headers["content-length"] {
            guard let length = UInt64(text) else {
                return RefusingSink(.error(.badRequest, "Content-Length `\(text.prefix(40))` is not a byte count"))
            }
            request.declaredLength = length
        }
        if let digest = head.headers["kaa-snapshot-digest"] {
            do { request.expectedDigest = try SnapshotDigest(parsing: digest) } catch {
                return RefusingSink(.error(.badRequest, "header Kaa-Snapshot-Digest: \(error.message)"))
            }
        }
        if let busy = atUploadLimit { return RefusingSink(SnapshotAPI.response(for: busy)) }
        return UploadSink(api: self, request: request)
    }

    /// Why this node takes no more uploads now (nil while it takes them): it is receiving
    /// `max_concurrent_uploads` already, uploads and copies a publish streams here alike.
    var atUploadLimit: SnapshotError? {
        let limit = store.configuration.maxConcurrentIngests
        guard store.uploadsInProgress >= limit else { return nil }
        return SnapshotError(.busy, "this node is receiving \(limit) uploads already, its limit (the node's `max_concurrent_uploads` setting); retry when one has finished")
    }

    /// Refuses a snapshot whose pipeline spec does not parse (a snapshot without one is fine),
    /// as soon as its manifest arrives. Checking it against the model needs the whole model,
    /// which arrives later: ``checkModel(_:_:)`` does that.
    static func checkPipeline(_ manifest: SnapshotManifest) throws(SnapshotError) {
        guard let text = manifest.pipeline else { return }
        do { _ = try Pipeline(yaml: text) } catch {
            throw SnapshotError(.invalidPipeline, "snapshot \(manifest.name): the pipeline does not parse: \(error.message)")
        }
    }

    /// Checks an uploaded snapshot's model once all of it arrived, as the node will serve it and
    /// as `kaa snapshot build` does: the model loads in the engine, its pipeline fits it, and,
    /// with a pipeline, the manifest's signature is what clients see through it (the store
    /// compares a snapshot without one with the graph itself). Runs on the thread pool, in the
    /// ingest's `finish`; the copy of the model it loads is at most the store's
    /// `maxModelBytes`, and is freed when it returns.
    static func checkModel(_ manifest: SnapshotManifest, _ bytes: UnsafeRawBufferPointer) throws(SnapshotError) {
        let id = manifest.isDraft ? "snapshot \(manifest.name) (draft)" : "snapshot \(manifest.name)@\(manifest.version)"
        let model: Model
        do { model = try Model(onnx: Data(bytes)) } catch {
            let message = (error as? EngineError)?.message ?? "\(error)"
            throw SnapshotError(.invalidModel, "\(id): model `\(manifest.model)` does not load: \(message)")
        }
        let pipeline: Pipeline?
        do { pipeline = try manifest.pipeline.map { (text) throws(PipelineError) in try Pipeline(yaml: text) } } catch {
            throw SnapshotError(.invalidPipeline, "\(id): the pipeline does not parse: \(error.message)")
        }
        let scorer: Scorer
        do { scorer = try Scorer(model: model, pipeline: pipeline) } catch {
            throw SnapshotError(.invalidPipeline, "\(id): the pipeline does not fit the model: \(error.message)")
        }
        guard manifest.pipeline != nil else { return }
        let served = servedSignature(of: scorer, graph: try ONNXSignatureReader.read(bytes: bytes))
        if let difference = manifest.signature.firstDifference(from: served, describing: "the model through its pipeline") {
            throw SnapshotError(.invalidManifest, "\(id): the manifest's signature is not what the model serves through its pipeline: \(difference); rebuild the snapshot with `kaa snapshot build --pipeline`, which writes it")
        }
    }

    /// The signature clients see through `scorer`, as a manifest writes it (what
    /// `kaa snapshot build --pipeline` records): the protocol's datatype names, -1 for a
    /// dimension each call chooses; a sequence of maps (ZipMap) that the pipeline passes
    /// through keeps the graph's own description from `graph`.
    static func servedSignature(of scorer: Scorer, graph: SnapshotManifest.ModelSignature) -> SnapshotManifest.ModelSignature {
        let graphValues = Dictionary((graph.inputs + graph.outputs).map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        func describe(_ s: KaaEngine.TensorSignature) -> KaaSnapshot.TensorSignature {
            if s.isSequenceOfMaps {
                if let g = graphValues[s.name] { return g }
                return .init(name: s.name, kind: .sequence, dtype: "seq(map(?,\(s.dtype.map(OIPDatatype.name) ?? "?")))", shape: nil)
            }
            let shape = s.shape?.map { d -> Int64 in if case .fixed(let n) = d { Int64(n) } else { -1 } }
            return .init(name: s.name, kind: .tensor, dtype: s.dtype.map(OIPDatatype.name) ?? "?", shape: shape)
        }
        return .init(inputs: scorer.inputs.map(describe), outputs: scorer.outputs.map(describe))
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
            api.blocking(responder) {
                let name = try SnapshotAPI.parameter(request, "name"), version = try SnapshotAPI.parameter(request, "version")
                let reference = try SnapshotReference(parsing: "\(name)@\(version)")
                let record = try api.store.resolve(reference)
                var response = HTTPResponse.json(.ok, try api.store.manifestBytes(record.id))
                response.headers.add("kaa-snapshot-digest", record.digest.description)
                return response
            }
        }
        router.add(.get, "/kaa/v1/models/{name}/aliases") { request, responder in
            api.blocking(responder) {
                let name = try SnapshotAPI.parameter(request, "name")
                try SnapshotNaming.validateModelName(name)
                return .json(.ok, try SnapshotAPI.encode(["name": .string(name)], ["aliases": try api.store.aliases(name: name)]))
            }
        }
        router.add(.put, "/kaa/v1/models/{name}/aliases/{alias}") { request, responder in
            let name: String, alias: String, version: Int, force: Bool
            do throws(SnapshotError) {
                name = try SnapshotAPI.parameter(request, "name")
                alias = try SnapshotAPI.parameter(request, "alias")
                try SnapshotNaming.validateModelName(name)
                try SnapshotNaming.validateAlias(alias)
                version = try SnapshotAPI.version(fromBody: request.body)
                force = try SnapshotAPI.force(request)
            } catch {
                return responder.respond(SnapshotAPI.response(for: error))
            }
            let answer = { @Sendable () throws -> HTTPResponse in
                .json(.ok, try SnapshotAPI.encode(["name": .string(name), "alias": .string(alias)], ["version": version]))
            }
            var move = AliasMove(name: name, alias: alias, version: version, force: force, caller: api.caller(request))
            guard let replicator = api.replicator?.value else {
                return api.checkGate(move, holders: { _ in [] }, responder) {
                    api.blocking(responder) {
                        try api.store.setAlias(name: name, alias: alias, version: version)
                        api.notify([.aliasSet(name: name, alias: alias, version: version)])
                        return try answer()
                    }
                }
            }
            // In a cluster the alias is cluster state: it moves only to a version with its
            // ready holders, and every node learns of it from this one.
            if let refusal = replicator.aliasRefusal(name: name, alias: alias, version: version) { return responder.respond(refusal) }
            move.gatedElsewhere = replicator.gated("\(name)@\(version)")
            api.checkGate(move, holders: { replicator.readyHolderNames(name: name, version: $0) }, responder) {
                api.writeAlias(name: name, alias: alias, version: version, author: replicator.me.rawValue, responder, answer)
            }
        }
        router.add(.delete, "/kaa/v1/models/{name}/aliases/{alias}") { request, responder in
            let name: String, alias: String
            do throws(SnapshotError) {
                name = try SnapshotAPI.parameter(request, "name")
                alias = try SnapshotAPI.parameter(request, "alias")
                try SnapshotNaming.validateModelName(name)
                try SnapshotNaming.validateAlias(alias)
            } catch {
                return responder.respond(SnapshotAPI.response(for: error))
            }
            let author = api.replicator?.value?.me.rawValue ?? ""
            api.writeAlias(name: name, alias: alias, version: nil, author: author, responder) { HTTPResponse(status: .noContent) }
        }
    }

    /// Writes an alias record on the thread pool, then, on the loop, hands it to the
    /// replicator (which spreads it) or straight to the serving side, and answers.
    private func writeAlias(name: String, alias: String, version: Int?, author: String, _ responder: HTTPResponder,
                            _ answer: @escaping @Sendable () throws -> HTTPResponse) {
        let api = self
        loop.offload({ () -> Result<AliasRecord, SnapshotError> in
            do throws(SnapshotError) { return .success(try api.store.writeAlias(name: name, alias: alias, version: version, author: author)) } catch {
                return .failure(error)
            }
        }) { result in
            switch result {
            case .failure(let error):
                responder.respond(SnapshotAPI.response(for: error))
            case .success(let record):
                if let replicator = api.replicator?.value { replicator.wroteAlias(record) } else {
                    api.notify([.aliasSet(name: name, alias: alias, version: version)])
                }
                do { responder.respond(try answer()) } catch { responder.respond(.error(.internalServerError, "\(error)")) }
            }
        }
    }

    /// A route's path parameter; a route without it is a programming error, answered 500.
    static func parameter(_ request: HTTPRequest, _ key: String) throws(SnapshotError) -> String {
        guard let value = request.pathParameters[key] else {
            throw SnapshotError(.io, "route has no path parameter `\(key)`")
        }
        return value
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
        case .busy: .serviceUnavailable
        case .io: .internalServerError
        default: .badRequest
        }
        var response = HTTPResponse.error(status, error.message)
        if error.code == .busy { response.headers.add("retry-after", "1") }
        return response
    }

    /// The version an alias body names: an integer literal from 1 to
    /// ``SnapshotNaming/maxVersion``, bare (`3`) or as the only member of an object
    /// (`{"version": 3}`). Anything else (`true`, `1.0`, `"3"`, `1e0`, other or repeated keys)
    /// is refused, naming what was wrong.
    static func version(fromBody body: [UInt8]) throws(SnapshotError) -> Int {
        let usage = "send the version the alias points at, like `3` or {\"version\": 3}"
        func bad(_ m: String) -> SnapshotError { SnapshotError(.invalidName, "\(m); \(usage)") }
        let json: JSON
        do { json = try JSON(parsing: body) } catch {
            if body.allSatisfy({ [0x20, 0x0A, 0x0D, 0x09].contains($0) }) { throw bad("the body is empty") }
            throw bad("the body is not JSON (\(error.description))")
        }
        func integer(_ value: JSON, _ what: String) throws(SnapshotError) -> Int {
            guard case .integer(let n) = value else {
                let shown: String
                switch value {
                case .number(let d): shown = "the number \(d), written with a fraction or an exponent or beyond 64 bits"
                case .bool(let b): shown = "the boolean \(b)"
                case .string(let s): shown = "the string \"\(s.prefix(40))\""
                default: shown = "a JSON \(value.typeName)"
                }
                throw bad("\(what) is \(shown), not an integer")
            }
            guard n >= 1 && n <= Int64(SnapshotNaming.maxVersion) else {
                throw bad("\(what) is \(n); versions are integers from 1 to \(SnapshotNaming.maxVersion)")
            }
            return Int(n)
        }
        guard case .object(let members) = json else { return try integer(json, "the body") }
        guard let first = members.first, first.key == "version", members.count == 1 else {
            let keys = members.map { "`\($0.key)`" }.joined(separator: ", ")
            throw bad("the body's object has \(members.isEmpty ? "no members" : "members \(keys)"); it takes exactly one, `version`")
        }
        return try integer(first.value, "`version`")
    }

    enum JSONValue: Encodable {
        case string(String)
        func encode(to encoder: any Encoder) throws {
            var c = encoder.singleValueContainer()
            switch self { case .string(let s): try c.encode(s) }
        }
    }

    /// `value` as a JSON response with `status`.
    static func json<T: Encodable>(_ status: HTTPStatus, _ value: T) -> HTTPResponse {
        do { return .json(status, try encode(value)) } catch { return .error(.internalServerError, "cannot encode the answer: \(error)") }
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
    /// The node gave it its version (an unsigned draft).
    var draft: Bool

    init(_ record: SnapshotRecord) {
        name = record.id.name
        version = record.id.version
        digest = record.digest.description
        size = record.size
        state = "\(record.state)"
        receivedAt = record.receivedAt
        signer = record.signerKeyID
        draft = record.isDraft
    }

    /// A snapshot this node verified and streamed on to its holders without storing it.
    init(id: SnapshotID, archive: VerifiedArchive, receivedAt: Date) {
        name = id.name
        version = id.version
        digest = archive.digest.description
        size = archive.archiveBytes
        state = "\(SnapshotRecord.State.ready)"
        self.receivedAt = receivedAt
        signer = archive.signerKeyID
        draft = false
    }

    enum CodingKeys: String, CodingKey {
        case name, version, digest, size, state, signer, draft
        case receivedAt = "received_at"
    }
}

/// Answers an upload that was refused from its head alone: the server sends ``refusal`` at
/// once, with `Connection: close`, and reads none of the body.
final class RefusingSink: HTTPBodySink {
    /// The status and message this upload is refused with.
    let response: HTTPResponse
    init(_ response: HTTPResponse) { self.response = response }
    /// The server answers with it at once and reads none of the body.
    var refusal: HTTPResponse? { response }
    var maxBytes: Int { 0 }
    func receive(_ chunk: [UInt8], ready: @escaping () -> Void) { ready() }
    func finish(_ responder: HTTPResponder) { responder.respond(response) }
    func abort(_ reason: String) {}
}

/// Feeds an upload into an ingest session on the thread pool, one chunk at a time.
/// Loop-confined; the session lives in an ``IngestJob``, which serialises every use of it.
final class UploadSink: HTTPBodySink {
    private let api: SnapshotAPI
    private let job: IngestJob
    private var failed: SnapshotError?

    init(api: SnapshotAPI, request: IngestRequest) {
        self.api = api
        self.job = IngestJob(store: api.store, request: request)
    }

    var maxBytes: Int { Int(clamping: api.store.configuration.maxArchiveBytes) }
    /// Once the upload failed (a conflict or a bad manifest found early), the server answers
    /// with the reason at once instead of reading the rest of the body.
    var refusal: HTTPResponse? { failed.map(SnapshotAPI.response(for:)) }

    func receive(_ chunk: [UInt8], ready: @escaping () -> Void) {
        guard failed == nil else { return ready() } // drop the rest; the answer is the first error
        let job = self.job
        api.loop.offload({ () -> SnapshotError? in
            do throws(SnapshotError) { try job.append(chunk); return nil } catch { return error }
        }) { [self] error in
            // A failed session has already removed its files and released what it held.
            if let error { failed = error }
            ready()
        }
    }

    /// What a publish answers.
    struct Answer: Encodable {
        var snapshot: SnapshotSummary
        var outcome: String
        var assignedVersion: Bool
        var holders: [String]?
        var readyHolders: [String]?
        var replicated: Bool?
        enum CodingKeys: String, CodingKey {
            case snapshot, outcome, holders, replicated
            case assignedVersion = "assigned_version", readyHolders = "ready_holders"
        }
    }

    /// The upload is in: verified, then stored here, or streamed on to the holders the ring
    /// names (``Replicator/publishTargets(_:bytes:accelerator:)``) and stored here as well only
    /// when this node is one of them or a holder could not take it.
    func finish(_ responder: HTTPResponder) {
        if let failed {
            responder.respond(SnapshotAPI.response(for: failed))
            return
        }
        let job = self.job, api = self.api
        guard let replicator = api.replicator?.value else { return store(responder) }
        api.loop.offload({ () -> Result<(archive: VerifiedArchive, path: String), SnapshotError> in
            do throws(SnapshotError) { return .success(try job.verify()) } catch { return .failure(error) }
        }) { [self] result in
            switch result {
            case .failure(let error):
                responder.respond(SnapshotAPI.response(for: error))
            case .success(let (archive, path)):
                // A draft takes its version from this node's store: it is stored here.
                guard !archive.manifest.isDraft,
                      let id = try? SnapshotID(name: archive.manifest.name, version: archive.manifest.version),
                      let targets = replicator.publishTargets(id, bytes: archive.archiveBytes,
                                                              accelerator: archive.manifest.requirements.accelerator),
                      !targets.peers.isEmpty else { return store(responder) }
                streamOn(archive, id: id, path: path, here: targets.here, to: targets.peers, replicator: replicator, responder)
            }
        }
    }

    /// Stores the upload here, then answers once the write quorum is met (``answer(_:)``).
    private func store(_ responder: HTTPResponder) {
        commit { [self] result in
            switch result {
            case .failure(let error): responder.respond(SnapshotAPI.response(for: error))
            case .success(let result):
                let answer = Answer(snapshot: SnapshotSummary(result.record), outcome: result.outcome == .stored ? "stored" : "already-present",
                                    assignedVersion: result.assignedVersion)
                self.answer(answer, id: result.record.id, record: result.record, responder)
            }
        }
    }

    /// Streams the verified upload at `path` to `peers` (each stores it through its own ingest)
    /// and, when `here`, stores it on this node meanwhile. Without `here`, the upload's file goes
    /// once every peer has its copy; a peer that could not take it (down, busy, cut off) makes
    /// this node keep a copy too, which the cluster then copies as it copies any other.
    private func streamOn(_ archive: VerifiedArchive, id: SnapshotID, path: String, here: Bool, to peers: [Member],
                          replicator: Replicator, _ responder: HTTPResponder) {
        // One descriptor, opened before a commit here renames the file, for every stream to share.
        api.loop.offload({ open(path, O_RDONLY | O_CLOEXEC) }) { [self] file in
            guard file >= 0 else { return store(responder) }
            let api = self.api, job = self.job
            let request = PushRequest(name: id.name, version: id.version, digest: archive.digest.description, size: archive.archiveBytes)
            let deadline = Duration.seconds(60 + Int64(archive.archiveBytes / 10_000_000))
            var answers: [(peer: Member, result: Result<PushAnswer, FrameError>)] = []
            var storedHere: Result<IngestResult, SnapshotError>?
            let receivedAt = Date()
            var decided = false
            // Runs after each answer; decides once, when every peer answered and the copy here is in.
            let allIn = { [self] in
                guard !decided, answers.count == peers.count, !here || storedHere != nil else { return }
                decided = true
                close(file)
                let failed = answers.compactMap { a in UploadSink.failure(a.result).map { (peer: a.peer, error: $0) } }
                let storedThere = answers.contains { UploadSink.stored($0.result) }
                replicator.countPushes(sent: peers.count, failed: failed.count, passedOn: !here && failed.isEmpty)
                for (peer, error) in failed {
                    api.logger.notice("a holder did not take a published snapshot streamed to it", metadata: [
                        "snapshot": "\(id)", "holder": "\(peer.info.name)", "error": "\(error.message)",
                        "then": "\(here ? "the cluster copies it from this node" : "this node keeps a copy, which the cluster copies")",
                    ])
                }
                // A holder refused the archive itself (another digest stored as this version there).
                if let refusal = failed.first(where: { $0.error.remote == .badRequest }), !here {
                    api.loop.offload({ job.abort() }) { _ in }
                    return responder.respond(.error(.conflict, "\(refusal.peer.info.name) refused \(id): \(refusal.error.message)"))
                }
                if let storedHere {
                    switch storedHere {
                    case .failure(let error): return responder.respond(SnapshotAPI.response(for: error))
                    case .success(let result):
                        let outcome = result.outcome == .stored || storedThere
                        let answer = Answer(snapshot: SnapshotSummary(result.record), outcome: outcome ? "stored" : "already-present",
                                            assignedVersion: false)
                        // Durable here and on every peer: the write quorum, as above.
                        guard failed.isEmpty else { return self.answer(answer, id: id, record: result.record, responder) }
                        return replicator.awaitQuorum(id, record: result.record, others: Set(peers.map(\.id))) { copies in
                            UploadSink.respond(answer, copies, responder)
                        }
                    }
                }
                guard failed.isEmpty else { return store(responder) }
                api.loop.offload({ job.passedOn() }) { _ in }
                api.logger.info("snapshot passed on to its holders", metadata: [
                    "snapshot.id": "\(id)", "snapshot.digest": "\(archive.digest)", "holders": "\(peers.map(\.info.name).joined(separator: ","))",
                ])
                // The holders answered once their copies were durable: that is the write quorum.
                // The answer waits only until this node knows them, so that it routes calls for
                // the snapshot as soon as the publisher has its answer.
                let answer = Answer(snapshot: SnapshotSummary(id: id, archive: archive, receivedAt: receivedAt),
                                    outcome: storedThere ? "stored" : "already-present", assignedVersion: false)
                replicator.awaitCopies(id, on: Set(peers.map(\.id))) { copies in
                    UploadSink.respond(answer, copies, responder)
                }
            }
            // One peer's copy: sent in turn with this node's other streams to that peer, and sent
            // again for up to 10 s while the peer (or the connection to it) is at its limit.
            let busyUntil = Instant.now() + .seconds(10)
            func send(to peer: Member) {
                replicator.withPushSlot(to: peer.id) { release in
                    let copy = dup(file)
                    guard copy >= 0 else {
                        release()
                        answers.append((peer, .failure(FrameError(.closed, "cannot read the verified upload: \(String(cString: strerror(errno)))"))))
                        return allIn()
                    }
                    api.push(request, file: copy, to: peer.info.peerAddress, frames: replicator.frames, deadline: deadline) { result in
                        release()
                        if let error = UploadSink.failure(result), error.code == .overloaded || error.remote == .overloaded,
                           Instant.now() < busyUntil {
                            api.loop.schedule(after: .milliseconds(100)) { send(to: peer) }
                            return
                        }
                        answers.append((peer, result))
                        allIn()
                    }
                }
            }
            for peer in peers { send(to: peer) }
            guard here else { return }
            commit { result in
                storedHere = result
                allIn()
            }
        }
    }

    /// Commits the upload into this node's store (``ingested(_:)`` follows), on the thread pool.
    private func commit(then done: @escaping (Result<IngestResult, SnapshotError>) -> Void) {
        let job = self.job, api = self.api
        api.loop.offload({ () -> Result<IngestResult, SnapshotError> in
            do throws(SnapshotError) {
                let result = try job.finish()
                _ = api.ingested(result)
                return .success(result)
            } catch {
                return .failure(error)
            }
        }, then: done)
    }

    private static func failure(_ result: Result<PushAnswer, FrameError>) -> FrameError? {
        if case .failure(let error) = result { error } else { nil }
    }

    private static func stored(_ result: Result<PushAnswer, FrameError>) -> Bool {
        if case .success(let answer) = result { answer.outcome == "stored" } else { false }
    }

    /// Answers once the write quorum is met: the table's holders have their copies ready (202
    /// Accepted when the publish timeout passes first). `record`: the copy stored here.
    private func answer(_ answer: Answer, id: SnapshotID, record: SnapshotRecord, _ responder: HTTPResponder) {
        guard let replicator = api.replicator?.value else {
            return responder.respond(SnapshotAPI.json(answer.outcome == "stored" ? .created : .ok, answer))
        }
        replicator.awaitQuorum(id, record: record) { quorum in UploadSink.respond(answer, quorum, responder) }
    }

    /// The answer with where the copies are: 201 for a new snapshot, 200 for one already
    /// there, 202 Accepted when the publish timeout passed before the copies were made.
    private static func respond(_ answer: Answer, _ quorum: Replicator.QuorumOutcome, _ responder: HTTPResponder) {
        var answer = answer
        answer.holders = quorum.holders
        answer.readyHolders = quorum.ready
        answer.replicated = quorum.replicated
        let status: HTTPStatus = quorum.timedOut ? HTTPStatus(202, "Accepted") : answer.outcome == "stored" ? .created : .ok
        responder.respond(SnapshotAPI.json(status, answer))
    }

    func abort(_ reason: String) {
        let job = self.job
        api.loop.offload({ job.abort() }) { _ in }
        api.logger.notice("snapshot upload abandoned", metadata: ["reason": "\(reason)"])
    }
}

/// The ingest session of one upload, begun lazily on the thread pool.
///
/// Every use of the session (a chunk's append, the finish, an abort) runs under one mutex, so
/// an abort that arrives while a chunk is being written waits for that write, then closes and
/// removes the file; once aborted or finished, no chunk is taken and no session is begun.
final class IngestJob: Sendable {
    private struct State {
        var session: IngestSession?
        /// Set by `finish` and `abort`: the session (if any) is over.
        var done = false
    }

    private let store: SnapshotStore
    private let request: IngestRequest
    private let state = Locked(State())

    init(store: SnapshotStore, request: IngestRequest) {
        self.store = store
        self.request = request
    }

    private static let aborted = SnapshotError(.truncated, "the upload was abandoned before it completed")

    func append(_ chunk: [UInt8]) throws(SnapshotError) {
        let store = self.store, request = self.request
        try state.withLock { (s) throws(SnapshotError) in
            guard !s.done else { throw IngestJob.aborted }
            if s.session == nil { s.session = try store.beginIngest(request) }
            try s.session?.append(chunk)
        }
    }

    /// Runs the upload's checks without storing it (``IngestSession/verify()``): the archive and
    /// the path of its temporary file, which stays until ``finish()`` or ``abort()``.
    func verify() throws(SnapshotError) -> (archive: VerifiedArchive, path: String) {
        let store = self.store, request = self.request
        return try state.withLock { (s) throws(SnapshotError) -> (archive: VerifiedArchive, path: String) in
            guard !s.done else { throw IngestJob.aborted }
            if s.session == nil { s.session = try store.beginIngest(request) }
            guard let session = s.session else { throw IngestJob.aborted }
            let archive = try session.verify()
            guard let path = session.verifiedPath else { throw IngestJob.aborted }
            return (archive, path)
        }
    }

    func finish() throws(SnapshotError) -> IngestResult {
        let store = self.store, request = self.request
        return try state.withLock { (s) throws(SnapshotError) -> IngestResult in
            guard !s.done else { throw IngestJob.aborted }
            s.done = true
            if s.session == nil { s.session = try store.beginIngest(request) }
            guard let session = s.session.take() else { throw IngestJob.aborted }
            return try session.finish()
        }
    }

    func abort() {
        state.withLock { s in
            guard !s.done else { return }
            s.done = true
            s.session?.abort()
            s.session = nil
        }
    }

    /// The verified upload went on to its holders: its temporary file goes.
    func passedOn() {
        state.withLock { s in
            guard !s.done else { return }
            s.done = true
            s.session?.discardVerified()
            s.session = nil
        }
    }
}
