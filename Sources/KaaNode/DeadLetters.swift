import Foundation
import KaaCluster
import KaaCore
import KaaIO
import Logging
import Synchronization

/// Every call this node accepted and could not answer becomes one dead letter, durable before
/// the client hears of it, with a copy on one other live node; operators list, read, delete
/// and replay them (`/kaa/v1/deadletters`).
final class DeadLetters: Sendable {
    let store: DeadLetterStore
    let loop: EventLoop
    let nodeName: String
    let logger: Logger
    /// The live peers a copy can go to, and the frames to send it with; set once the node has them.
    let peers = Mutex<(@Sendable () -> [Member])?>(nil)
    let frames = Mutex<FrameClient?>(nil)
    /// This node's routes, for replays; set once they exist.
    let routes = Mutex<HTTPRouter?>(nil)
    private let written = Atomic<Int>(0)
    private let copied = Atomic<Int>(0)
    private let copyFailures = Atomic<Int>(0)
    private let replays = Atomic<Int>(0)
    /// Dead letters are kept this many milliseconds, and at most this many payload bytes.
    let retainMs: Int64
    let retainBytes: Int64

    init(store: DeadLetterStore, loop: EventLoop, nodeName: String, retain: Duration, retainBytes: Int64, logger: Logger) {
        self.store = store
        self.loop = loop
        self.nodeName = nodeName
        self.retainMs = Int64(retain.components.seconds * 1000)
        self.retainBytes = retainBytes
        self.logger = logger
    }

    /// What the dead letter of a failed call records about it besides the request.
    struct Call: Sendable {
        var model: String
        var asked: String?
        var version: Int?
        var digest: String?
    }

    static func nowMs() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    /// Writes the dead letter of `request` (off the loop), then answers the client with
    /// `status`, `{"error", "dead_letter"}` and `Kaa-Dead-Letter`. When it cannot be written the
    /// client gets the error and the reason it was not kept.
    ///
    /// A `shutdown` dead letter is written on the calling thread (the loop, as the grace ends):
    /// the node closes its connections right after, and the client must still get its answer.
    func fail(_ request: HTTPRequest, _ call: Call, reason: DeadLetter.Reason, status: HTTPStatus, message: String,
              attempts: [DeadLetter.Attempt], _ responder: HTTPResponder) {
        // A replay that fails again keeps its result in the dead letter it replays, not in a new one.
        if request.headers["kaa-replay"] != nil { return responder.respond(.error(status, message)) }
        let carried = request.headers.fields.filter {
            ["content-type", "inference-header-content-length", "kaa-request-id"].contains($0.name.lowercased())
        }.map { [$0.name, $0.value] }
        let letter = DeadLetter(
            id: ULID.make(), requestID: request.headers["kaa-request-id"] ?? DeadLetters.requestID(in: request.body) ?? "",
            model: call.model, asked: call.asked, version: call.version, digest: call.digest, target: request.target,
            contentType: request.headers["content-type"], headers: carried, payload: Data(request.body), reason: reason,
            message: message, attempts: attempts, acceptedBy: nodeName, createdAt: DeadLetters.nowMs())
        let store = self.store
        let write = { @Sendable () -> DeadLetterStore.Failure? in
            do throws(DeadLetterStore.Failure) { try store.write(letter); return nil } catch { return error }
        }
        if reason == .shutdown { return deliver(letter, call, reason, status, message, write(), responder) }
        loop.offload(write) { [self] failure in deliver(letter, call, reason, status, message, failure, responder) }
    }

    /// Answers the client once its dead letter is written (or could not be).
    private func deliver(_ letter: DeadLetter, _ call: Call, _ reason: DeadLetter.Reason, _ status: HTTPStatus, _ message: String,
                         _ failure: DeadLetterStore.Failure?, _ responder: HTTPResponder) {
        if let failure {
            logger.error("a dead letter could not be written", metadata: ["error": "\(failure)", "model": "\(call.model)"])
            return responder.respond(.error(status, "\(message) (no dead letter: \(failure))"))
        }
        written.add(1, ordering: .relaxed)
        logger.notice("dead letter", metadata: ["dead_letter": "\(letter.id)", "model": "\(call.model)", "reason": "\(reason.rawValue)"])
        var body = JSONWriter()
        body.raw("{\"error\":")
        body.string(message)
        body.raw(",\"dead_letter\":")
        body.string(letter.id)
        body.raw("}")
        var response = HTTPResponse.json(status, body.bytes)
        response.headers.set("kaa-dead-letter", letter.id)
        responder.respond(response)
        copy(letter)
    }

    /// The OIP `id` of a JSON request body, when it has one at its top level.
    static func requestID(in body: [UInt8]) -> String? {
        guard body.first == UInt8(ascii: "{"), let json = try? JSON(parsing: body), case .object(let members) = json else { return nil }
        for m in members where m.key == "id" { if case .string(let s) = m.value { return s } }
        return nil
    }

    // MARK: copies

    /// Sends a copy to one other live node, so losing this node's disk loses none.
    private func copy(_ letter: DeadLetter) {
        guard let peers = peers.withLock({ $0 })?(), let frames = frames.withLock({ $0 }), let peer = peers.randomElement(),
              let payload = try? JSONEncoder().encode(Message(op: .copy, letter: letter)) else { return }
        frames.request(to: peer.info.peerAddress, type: Node.PeerFrameType.deadLetters, payload: Array(payload), deadline: .seconds(10)) { [self] result in
            switch result {
            case .success: copied.add(1, ordering: .relaxed)
            case .failure(let error):
                copyFailures.add(1, ordering: .relaxed)
                logger.warning("a dead letter's copy did not reach a peer", metadata: ["dead_letter": "\(letter.id)", "peer": "\(peer.info.name)",
                                                                                      "error": "\(error.message)"])
            }
        }
    }

    /// A `dead-letters` frame: a copy to keep, or a listing to answer.
    struct Message: Codable {
        enum Op: String, Codable { case copy, list, replay, delete, purge, get }
        var op: Op
        var letter: DeadLetter?
        /// For `replay`: which, and whether to the alias's current version.
        var id: String?
        var current: Bool?
        /// For `purge`: only those written before this (milliseconds since the epoch).
        var before: Int64?
        var model: String?
        var reason: String?
        var since: Int64?
        var limit: Int?
    }

    /// Answers a peer's `dead-letters` frame (off the loop for the store).
    func answer(_ frame: Frame, _ responder: FrameResponder) {
        let message: Message
        do { message = try JSONDecoder().decode(Message.self, from: Data(frame.payload)) } catch {
            return responder.fail(.badRequest, "dead-letters wants JSON {op: copy|list, ...}: \(error)")
        }
        if message.op == .replay {
            // The node that accepted it replays it, so one record decides whether it ran.
            return replayAsDecider(message.id ?? "", current: message.current ?? false, HTTPResponder { response in
                responder.respond(ForwardedCall.encode(response))
            })
        }
        let store = self.store
        loop.offload({ () -> Result<[UInt8], DeadLetterStore.Failure> in
            do throws(DeadLetterStore.Failure) {
                switch message.op {
                case .replay:
                    return .success([])
                case .delete:
                    _ = try store.delete(message.id ?? "")
                    return .success(Array("{}".utf8))
                case .purge:
                    let n = try store.purge(model: message.model, reason: message.reason, before: message.before)
                    return .success(Array("{\"purged\":\(n)}".utf8))
                case .copy:
                    guard let letter = message.letter else { return .success(Array("{}".utf8)) }
                    try store.write(letter)
                    return .success(Array("{}".utf8))
                case .get:
                    // `null` when this node has no record of it.
                    let letter = try store.get(message.id ?? "")
                    return .success(Array((try? JSONEncoder.sorted.encode(letter)) ?? Data("null".utf8)))
                case .list:
                    let letters = try store.list(.init(model: message.model, reason: message.reason, since: message.since,
                                                       limit: message.limit ?? 100))
                    return .success(Array((try? JSONEncoder().encode(letters.map(Summary.init))) ?? Data("[]".utf8)))
                }
            } catch { return .failure(error) }
        }) { result in
            switch result {
            case .success(let bytes): responder.respond(bytes)
            case .failure(let error): responder.fail(.internal, error.description)
            }
        }
    }

    // MARK: what operators see

    /// A dead letter without its payload, as listings show it.
    struct Summary: Codable, Equatable {
        var id: String
        var requestID: String
        var model: String
        var asked: String?
        var version: Int?
        var reason: String
        var message: String
        var acceptedBy: String
        var createdAt: Int64
        var state: String
        var bytes: Int
        var replayStatus: Int?

        init(_ d: DeadLetter) {
            id = d.id
            requestID = d.requestID
            model = d.model
            asked = d.asked
            version = d.version
            reason = d.reason.rawValue
            message = d.message
            acceptedBy = d.acceptedBy
            createdAt = d.createdAt
            state = d.state.rawValue
            bytes = d.payload.count
            replayStatus = d.replay?.status
        }

        enum CodingKeys: String, CodingKey {
            case id, model, asked, version, reason, message, state, bytes
            case requestID = "request_id", acceptedBy = "accepted_by", createdAt = "created_at", replayStatus = "replay_status"
        }
    }

    /// Lines for `/metrics`; reads the store, so off the loop.
    var metricsText: String {
        let counts = (try? store.countsByReason()) ?? [:]
        var lines = """
        # HELP kaa_dead_letters_written_total Dead letters this node wrote for calls it accepted.
        # TYPE kaa_dead_letters_written_total counter
        kaa_dead_letters_written_total \(written.load(ordering: .relaxed))
        # HELP kaa_dead_letter_copies_total Copies of this node's dead letters another node confirmed.
        # TYPE kaa_dead_letter_copies_total counter
        kaa_dead_letter_copies_total \(copied.load(ordering: .relaxed))
        # HELP kaa_dead_letter_copy_failures_total Copies that did not reach a peer.
        # TYPE kaa_dead_letter_copy_failures_total counter
        kaa_dead_letter_copy_failures_total \(copyFailures.load(ordering: .relaxed))
        # HELP kaa_dead_letter_replays_total Dead letters this node replayed.
        # TYPE kaa_dead_letter_replays_total counter
        kaa_dead_letter_replays_total \(replays.load(ordering: .relaxed))
        # HELP kaa_dead_letters Dead letters kept on this node (its own and copies), by reason.
        # TYPE kaa_dead_letters gauge

        """
        for reason in DeadLetter.Reason.allCases {
            lines += "kaa_dead_letters{reason=\"\(reason.rawValue)\"} \(counts[reason.rawValue] ?? 0)\n"
        }
        return lines
    }

    func addRoutes(to router: inout HTTPRouter) {
        let letters = self
        router.add(.get, "/kaa/v1/deadletters") { request, responder in
            let q = request.query
            var filter = DeadLetterStore.Filter(model: q["model"], reason: q["reason"], after: q["after"])
            if let since = q["since"] {
                guard let ms = DeadLetters.parseSince(since) else {
                    return responder.respond(.error(.badRequest, "since `\(since.prefix(40))` is not a time: give milliseconds since the epoch, or an RFC 3339 time like 2026-12-06T17:00:00Z"))
                }
                filter.since = ms
            }
            if let limit = q["limit"] {
                guard let n = Int(limit), n >= 1, n <= 1000 else {
                    return responder.respond(.error(.badRequest, "limit `\(limit.prefix(40))` must be a whole number from 1 to 1000"))
                }
                filter.limit = n
            }
            letters.listClusterWide(filter, responder)
        }
        router.add(.get, "/kaa/v1/deadletters/{id}") { request, responder in
            let id = request.pathParameters["id"] ?? ""
            let store = letters.store
            letters.loop.offload({ () -> HTTPResponse? in
                do throws(DeadLetterStore.Failure) {
                    guard let letter = try store.get(id) else { return nil }
                    return .json(.ok, Array((try? JSONEncoder.sorted.encode(letter)) ?? Data()))
                } catch { return .error(.internalServerError, error.description) }
            }) { found in
                if let found { return responder.respond(found) }
                // Kept on the node that accepted the call and one other: any node finds it.
                letters.askEveryPeer(Message(op: .get, id: id), deadline: .seconds(5)) { answers in
                    for answer in answers {
                        // A record is a JSON object (`null`: that peer has none); peers are authenticated.
                        guard case .success(let frame) = answer.result, frame.payload.first == UInt8(ascii: "{") else { continue }
                        return responder.respond(.json(.ok, frame.payload))
                    }
                    let unreachable = PeerAnswers.unreachable(answers)
                    responder.respond(.error(.notFound, "no dead letter `\(id.prefix(40))` on this node or its live peers"
                        + (unreachable.isEmpty ? "" : " (not answering: \(unreachable.joined(separator: ", ")))")
                        + "; `kaa deadletters list` shows the cluster's"))
                }
            }
        }
        router.add(.delete, "/kaa/v1/deadletters/{id}") { request, responder in
            // Here and on every live peer (where its copy is).
            let id = request.pathParameters["id"] ?? ""
            let store = letters.store
            letters.askEveryPeer(Message(op: .delete, id: id), deadline: .seconds(10)) { _ in }
            letters.loop.offload({ () -> HTTPResponse in
                do throws(DeadLetterStore.Failure) {
                    _ = try store.delete(id)
                    return HTTPResponse(status: .noContent)
                } catch { return .error(.internalServerError, error.description) }
            }) { responder.respond($0) }
        }
        router.add(.post, "/kaa/v1/deadletters/{id}/replay") { request, responder in
            letters.replay(request.pathParameters["id"] ?? "", current: request.query["to"] == "current", responder)
        }
        router.add(.post, "/kaa/v1/deadletters/replay") { request, responder in
            letters.replayMany(request.body, responder)
        }
        router.add(.delete, "/kaa/v1/deadletters") { request, responder in
            let q = request.query
            var before: Int64?
            if let text = q["before"] {
                guard let ms = DeadLetters.parseSince(text) else {
                    return responder.respond(.error(.badRequest, "before `\(text.prefix(40))` is not a time: give milliseconds since the epoch, or an RFC 3339 time"))
                }
                before = ms
            }
            guard q["model"] != nil || q["reason"] != nil || before != nil else {
                return responder.respond(.error(.badRequest, "a purge takes a filter: model=, reason= or before= (delete one dead letter with DELETE /kaa/v1/deadletters/{id})"))
            }
            letters.purge(model: q["model"], reason: q["reason"], before: before, responder)
        }
    }

    /// Deletes what the filter selects here and on every live peer; answers with the count.
    private func purge(model: String?, reason: String?, before: Int64?, _ responder: HTTPResponder) {
        let store = self.store
        loop.offload({ try? store.purge(model: model, reason: reason, before: before) }) { [self] here in
            askEveryPeer(Message(op: .purge, before: before, model: model, reason: reason), deadline: .seconds(10)) { answers in
                var object: [String: Any] = ["purged": answers.reduce(here ?? 0) { total, answer in
                    guard case .success(let frame) = answer.result else { return total }
                    return total + ((try? JSONSerialization.jsonObject(with: Data(frame.payload)) as? [String: Any])?["purged"] as? Int ?? 0)
                }]
                let unreachable = PeerAnswers.unreachable(answers)
                if !unreachable.isEmpty { object["unreachable"] = unreachable }
                responder.respond(.json(.ok, Array((try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data())))
            }
        }
    }

    /// Sends `message` to every live peer at once; `done` gets every answer or failure, on the
    /// loop, once all are in (at once when there is no peer).
    func askEveryPeer(_ message: Message, deadline: Duration, done: @escaping ([PeerAnswer]) -> Void) {
        let peers = self.peers.withLock { $0 }?() ?? []
        guard let frames = frames.withLock({ $0 }), let payload = try? JSONEncoder().encode(message) else { return done([]) }
        frames.askEach(peers, type: Node.PeerFrameType.deadLetters, payload: Array(payload), deadline: deadline, done: done)
    }

    /// This node's dead letters that `filter` selects and the live peers' (asked for up to
    /// `peerLimit` each), a copy counted once, oldest first; and the peers that did not answer.
    private func gather(_ filter: DeadLetterStore.Filter, peerLimit: Int,
                        done: @escaping (Result<(letters: [Summary], unreachable: [String]), DeadLetterStore.Failure>) -> Void) {
        let store = self.store
        loop.offload({ () -> Result<[Summary], DeadLetterStore.Failure> in
            do throws(DeadLetterStore.Failure) { return .success(try store.list(filter).map(Summary.init)) } catch { return .failure(error) }
        }) { [self] result in
            guard case .success(let mine) = result else {
                if case .failure(let error) = result { done(.failure(error)) }
                return
            }
            let message = Message(op: .list, model: filter.model, reason: filter.reason, since: filter.since, limit: peerLimit)
            askEveryPeer(message, deadline: .seconds(5)) { answers in
                var all = mine
                for answer in answers {
                    if case .success(let frame) = answer.result { all += (try? JSONDecoder().decode([Summary].self, from: Data(frame.payload))) ?? [] }
                }
                var seen = Set<String>()
                done(.success((all.filter { seen.insert($0.id).inserted }.sorted { $0.id < $1.id }, PeerAnswers.unreachable(answers))))
            }
        }
    }

    /// `POST /kaa/v1/deadletters/replay`: JSON `{"ids": [...]}` or a filter `{"model", "reason",
    /// "since"}` (dead ones only), with `"to": "same"|"current"` and `"rate"` (replays a second,
    /// default 50): each replayed as by id, one after another, paced; answers with each result.
    private func replayMany(_ body: [UInt8], _ responder: HTTPResponder) {
        struct Ask: Decodable {
            var ids: [String]?
            var model: String?
            var reason: String?
            var since: Int64?
            var to: String?
            var rate: Double?
        }
        let ask: Ask
        do { ask = try JSONDecoder().decode(Ask.self, from: Data(body.isEmpty ? Array("{}".utf8) : body)) } catch {
            return responder.respond(.error(.badRequest, "replay wants JSON {\"ids\": [...]} or a filter {\"model\", \"reason\", \"since\"}, with \"to\": \"same\" or \"current\" and \"rate\": replays a second; \(error)"))
        }
        guard ask.to == nil || ask.to == "same" || ask.to == "current" else {
            return responder.respond(.error(.badRequest, "\"to\" is `same` (the version it resolved to) or `current` (as its alias resolves now), not `\(ask.to!.prefix(40))`"))
        }
        guard ask.ids != nil || ask.model != nil || ask.reason != nil || ask.since != nil else {
            return responder.respond(.error(.badRequest, "replay takes ids or a filter (model, reason, since); to replay every dead letter, give since: 0"))
        }
        let current = ask.to == "current"
        let gap = Duration.nanoseconds(Int64(1e9 / max(0.1, min(ask.rate ?? 50, 1000))))
        let run = { [self] (ids: [String]) in
            let batch = LoopBound(ReplayBatch(ids: ids, current: current, gap: gap, responder: responder), loop: loop)
            step(batch)
        }
        if let ids = ask.ids { return run(ids) }
        // The filter's dead ones, cluster-wide.
        gather(DeadLetterStore.Filter(model: ask.model, reason: ask.reason, since: ask.since, limit: 1000), peerLimit: 1000) { result in
            switch result {
            case .failure(let error): responder.respond(.error(.internalServerError, error.description))
            case .success(let found): run(found.letters.filter { $0.state == DeadLetter.State.dead.rawValue }.map(\.id))
            }
        }
    }

    /// A replay of many, one after another. Loop-confined.
    private final class ReplayBatch {
        let ids: [String]
        let current: Bool
        let gap: Duration
        let responder: HTTPResponder
        var index = 0
        var items: [[String: Any]] = []
        init(ids: [String], current: Bool, gap: Duration, responder: HTTPResponder) {
            self.ids = ids
            self.current = current
            self.gap = gap
            self.responder = responder
        }
    }

    /// Replays the batch's next dead letter, or answers with every result once none is left.
    private func step(_ batch: LoopBound<ReplayBatch>) {
        let b = batch.value
        guard b.index < b.ids.count else {
            let object: [String: Any] = ["replayed": b.items.count, "results": b.items]
            return b.responder.respond(.json(.ok, Array((try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data())))
        }
        let id = b.ids[b.index]
        b.index += 1
        let loop = self.loop
        replay(id, current: b.current, HTTPResponder { [self] response in
            loop.execute { [self] in
                var item: [String: Any] = ["id": id]
                if let object = try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any], response.status.code == 200 {
                    item["status"] = object["status"] ?? 0
                    item["ran_now"] = object["ran_now"] ?? false
                } else {
                    item["status"] = response.status.code
                    item["error"] = String(decoding: response.body.prefix(300), as: UTF8.self)
                }
                batch.value.items.append(item)
                loop.schedule(after: batch.value.gap) { [self] in step(batch) }
            }
        })
    }

    static func parseSince(_ text: String) -> Int64? {
        if let ms = Int64(text), ms >= 0 { return ms }
        let f = ISO8601DateFormatter()
        return f.date(from: text).map { Int64($0.timeIntervalSince1970 * 1000) }
    }

    /// This node's dead letters and the live peers', merged by id (a copy counts once), oldest
    /// first, a page at a time.
    private func listClusterWide(_ filter: DeadLetterStore.Filter, _ responder: HTTPResponder) {
        gather(filter, peerLimit: filter.limit + 1000) { result in
            switch result {
            case .failure(let error):
                responder.respond(.error(.internalServerError, error.description))
            case .success(let found):
                var all = found.letters
                if let after = filter.after { all = all.filter { $0.id > after } }
                let page = Array(all.prefix(filter.limit))
                var object: [String: Any] = ["dead_letters": page.map { s -> [String: Any] in
                    (try? JSONSerialization.jsonObject(with: JSONEncoder().encode(s))) as? [String: Any] ?? [:]
                }]
                if all.count > filter.limit, let last = page.last { object["next"] = last.id }
                if !found.unreachable.isEmpty { object["unreachable"] = found.unreachable }
                let body = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
                responder.respond(.json(.ok, Array(body)))
            }
        }
    }

    /// Replays dead letter `id` on the node that decides for it: the node that accepted it
    /// while that node is alive, else the node with its copy. Any node takes the request and
    /// finds that node (its own record names the owner; without one it asks its peers).
    private func replay(_ id: String, current: Bool, _ responder: HTTPResponder) {
        let store = self.store
        loop.offload({ try? store.get(id) }) { [self] letter in
            let live = peers.withLock { $0 }?() ?? []
            if let letter, letter.acceptedBy == nodeName || !live.contains(where: { $0.info.name == letter.acceptedBy }) {
                return runReplay(id, current: current, responder)
            }
            let owner = live.filter { $0.info.name == letter?.acceptedBy }
            askPeers(id, current: current, queue: (owner + live.filter { $0.info.name != letter?.acceptedBy })[...], hasCopy: letter != nil, responder)
        }
    }

    /// Asks each peer in turn to replay `id` as the node that decides; a peer without it
    /// (404) or that is not the one to decide (421) passes.
    private func askPeers(_ id: String, current: Bool, queue: ArraySlice<Member>, hasCopy: Bool, _ responder: HTTPResponder) {
        guard let peer = queue.first, let frames = frames.withLock({ $0 }),
              let payload = try? JSONEncoder().encode(Message(op: .replay, id: id, current: current)) else {
            // Nobody else decides: with a copy here, this node does.
            if hasCopy { return runReplay(id, current: current, responder) }
            return responder.respond(.error(.notFound, "no live node has dead letter `\(id.prefix(40))`; `kaa deadletters list` shows them"))
        }
        frames.request(to: peer.info.peerAddress, type: Node.PeerFrameType.deadLetters, payload: Array(payload), deadline: .seconds(120)) { [self] result in
            switch result {
            case .success(let frame):
                guard case .success(let response) = ForwardedCall.response(frame.payload) else {
                    return responder.respond(.error(.badGateway, "\(peer.info.name) answered the replay of \(id) with a frame that does not decode"))
                }
                if response.status.code == 404 || response.status.code == 421 {
                    return askPeers(id, current: current, queue: queue.dropFirst(), hasCopy: hasCopy, responder)
                }
                responder.respond(response)
            case .failure(let error) where Forwarder.didNotRun(error):
                askPeers(id, current: current, queue: queue.dropFirst(), hasCopy: hasCopy, responder)
            case .failure(let error):
                responder.respond(.error(.badGateway, "\(peer.info.name) did not finish the replay of \(id): \(error.message); ask again for its result"))
            }
        }
    }

    /// A peer's `replay`: runs it when this node decides for `id`, else 404 or 421.
    private func replayAsDecider(_ id: String, current: Bool, _ responder: HTTPResponder) {
        let store = self.store
        loop.offload({ try? store.get(id) }) { [self] letter in
            guard let letter else { return responder.respond(.error(.notFound, "no dead letter `\(id.prefix(40))` here")) }
            let live = peers.withLock { $0 }?() ?? []
            if letter.acceptedBy != nodeName && live.contains(where: { $0.info.name == letter.acceptedBy }) {
                return responder.respond(.error(HTTPStatus(421, "Misdirected Request"), "\(letter.acceptedBy) decides for \(id)"))
            }
            runReplay(id, current: current, responder)
        }
    }

    /// Runs dead letter `id` again, at most once: claims it (a lease of a minute, so a replay
    /// on a node that died is taken up again), runs the request through this node's routes
    /// (to the version it resolved to, or with `current` as the alias or name resolves now),
    /// and keeps the result; a later replay answers with the kept result.
    private func runReplay(_ id: String, current: Bool, _ responder: HTTPResponder) {
        let store = self.store
        let now = DeadLetters.nowMs()
        loop.offload({ () -> Result<DeadLetterStore.Claim, DeadLetterStore.Failure> in
            do throws(DeadLetterStore.Failure) { return .success(try store.claim(id, now: now, leaseUntil: now + 60_000)) } catch { return .failure(error) }
        }) { [self] result in
            switch result {
            case .failure(let e): responder.respond(.error(.internalServerError, e.description))
            case .success(.missing): responder.respond(.error(.notFound, "no dead letter `\(id.prefix(40))` on this node"))
            case .success(.busy):
                // Another replay runs it now: answer with its result once kept (or run it, if its lease runs out).
                loop.schedule(after: .milliseconds(50)) { [self] in runReplay(id, current: current, responder) }
            case .success(.replayed(let letter)): responder.respond(DeadLetters.replayAnswer(letter, ranNow: false))
            case .success(.run(let letter)):
                guard let routes = routes.withLock({ $0 }) else { return responder.respond(.error(.serviceUnavailable, "the node is starting")) }
                var target = letter.target
                if !current, let v = letter.version { target = "/v2/models/\(letter.model)/versions/\(v)/infer" }
                var request = HTTPRequest(method: .post, target: target, headers: ForwardedCall.headers(letter.headers), body: Array(letter.payload))
                request.headers.set("kaa-request-id", letter.requestID.isEmpty ? "replay-\(letter.id)" : letter.requestID)
                request.headers.set("kaa-replay", letter.id)
                replays.add(1, ordering: .relaxed)
                let loop = self.loop, me = nodeName
                routes.handle(request, HTTPResponder { response in
                    let kept = DeadLetter.Replay(status: response.status.code, body: String(decoding: response.body.prefix(65_536), as: UTF8.self),
                                                 at: DeadLetters.nowMs(), by: me)
                    loop.offload({ try? store.finishReplay(id, kept) }) { finished in
                        responder.respond(finished.map { DeadLetters.replayAnswer($0, ranNow: true) }
                                          ?? .error(.internalServerError, "the replay of \(id) ran (HTTP \(kept.status)) but its result could not be kept"))
                    }
                })
            }
        }
    }

    static func replayAnswer(_ letter: DeadLetter, ranNow: Bool) -> HTTPResponse {
        let object: [String: Any] = ["id": letter.id, "ran_now": ranNow, "status": letter.replay?.status ?? 0,
                                     "body": letter.replay?.body ?? "", "at": letter.replay?.at ?? 0, "by": letter.replay?.by ?? ""]
        return .json(.ok, Array((try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()))
    }

    /// Applies retention now and every ten minutes.
    func scheduleRetention() {
        loop.offload({ [self] in applyRetention() }) { [self] in
            loop.schedule(after: .seconds(600)) { [self] in scheduleRetention() }
        }
    }

    /// Drops what retention no longer keeps; off the loop.
    func applyRetention() {
        let removed = (try? store.applyRetention(olderThan: DeadLetters.nowMs() - retainMs, maxBytes: retainBytes)) ?? 0
        if removed > 0 { logger.info("dead-letter retention removed old records", metadata: ["removed": "\(removed)"]) }
    }
}

extension JSONEncoder {
    static var sorted: JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return e
    }
}
