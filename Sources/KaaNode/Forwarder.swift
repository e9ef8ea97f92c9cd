import Foundation
import KaaCluster
import KaaCore
import KaaIO
import Logging

/// A call sent on to another node over the peer plane (`call` frames, type 5): the request as
/// the client sent it, with what the holder needs to run it and what the sender needs to try
/// the next holder.
///
/// On the wire: a 4-byte big-endian length, that many bytes of JSON (the head), then the body
/// as received (JSON or binary tensors). An answer has the same form, its head the status and
/// headers.
struct ForwardedCall: Equatable {
    struct Head: Codable, Equatable {
        var method: String
        var target: String
        /// The request's headers, as `[name, value]` pairs, in order.
        var headers: [[String]]
        /// What is left of the call's deadline, in milliseconds.
        var deadlineMs: UInt64
        var requestID: String
        /// Hops taken: 1 when the first node sends it on. A holder never sends it further.
        var hop: Int
        /// The holders tried before this one, by name.
        var tried: [String]

        enum CodingKeys: String, CodingKey {
            case method, target, headers, hop, tried
            case deadlineMs = "deadline_ms", requestID = "request_id"
        }
    }

    struct AnswerHead: Codable, Equatable {
        var status: Int
        var reason: String
        var headers: [[String]]
    }

    /// Headers a hop does not carry: the connection's own, and the token (the holder trusts the
    /// sending node, which checked it).
    static let hopHeaders: Set<String> = ["connection", "keep-alive", "content-length", "transfer-encoding", "te", "upgrade",
                                          "host", "authorization", "expect"]

    static func encode<H: Encodable>(_ head: H, body: [UInt8]) -> [UInt8] {
        let json = (try? JSONEncoder().encode(head)).map(Array.init) ?? Array("{}".utf8)
        let n = UInt32(json.count)
        return [UInt8(n >> 24), UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF)] + json + body
    }

    /// What is wrong with a call frame.
    struct Malformed: Error, CustomStringConvertible {
        var description: String
    }

    /// The head and the body of `payload`, or what is wrong with it.
    static func decode<H: Decodable>(_ type: H.Type, _ payload: [UInt8]) -> Result<(H, [UInt8]), Malformed> {
        guard payload.count >= 4 else { return .failure(Malformed(description: "a call frame starts with a 4-byte head length; it has \(payload.count) bytes")) }
        let n = Int(payload[0]) << 24 | Int(payload[1]) << 16 | Int(payload[2]) << 8 | Int(payload[3])
        guard n <= payload.count - 4 else { return .failure(Malformed(description: "the head is \(n) bytes but \(payload.count - 4) follow its length")) }
        do {
            let head = try JSONDecoder().decode(H.self, from: Data(payload[4..<(4 + n)]))
            return .success((head, Array(payload[(4 + n)...])))
        } catch {
            return .failure(Malformed(description: "the head is not the JSON of a call: \(error)"))
        }
    }

    static func pairs(_ headers: HTTPHeaders) -> [[String]] {
        headers.fields.filter { !hopHeaders.contains($0.name.lowercased()) }.map { [$0.name, $0.value] }
    }

    static func headers(_ pairs: [[String]]) -> HTTPHeaders {
        var out = HTTPHeaders()
        for p in pairs where p.count == 2 && !hopHeaders.contains(p[0].lowercased()) { out.add(p[0], p[1]) }
        return out
    }
}

/// Sends calls for models this node does not hold to a holder, and runs calls other nodes
/// send here. Loop-confined.
final class Forwarder {
    let loop: EventLoop
    let frames: FrameClient
    let logger: Logger
    let myName: String
    let myZone: String
    /// This node's own routes, for the share of a load or unload this node carries out.
    let routes: HTTPRouter
    /// Where a call that no holder answered ends.
    let deadLetters: DeadLetters?
    /// Calls this node has sent to each node and not yet heard back from.
    private var inFlight: [NodeID: Int] = [:]
    private(set) var forwarded = 0
    private(set) var retried = 0

    init(loop: EventLoop, frames: FrameClient, myName: String, myZone: String, routes: HTTPRouter, deadLetters: DeadLetters?,
         logger: Logger) {
        self.loop = loop
        self.routes = routes
        self.deadLetters = deadLetters
        self.frames = frames
        self.myName = myName
        self.myZone = myZone
        self.logger = logger
    }

    /// The order to try `holders` in: the same zone first, then the less busy (calls this node
    /// has in flight there), ties at random, so a burst of calls spreads over the holders.
    func order(_ holders: [Member]) -> [Member] {
        holders.shuffled().enumerated().sorted { a, b in
            let ka = (a.element.info.zone == myZone ? 0 : 1, inFlight[a.element.id] ?? 0, a.offset)
            let kb = (b.element.info.zone == myZone ? 0 : 1, inFlight[b.element.id] ?? 0, b.offset)
            return ka < kb
        }.map(\.element)
    }

    /// Sends `request` to the first of `holders` that takes it, trying the next one only when
    /// the call certainly did not run there (no connection, or an answer that it does not have
    /// the version ready, is unloaded, or is full); answers the client with the holder's answer
    /// and `Kaa-Served-By`, 503 when no holder took it, 504 when the deadline passed.
    /// One call on its way to a holder: what it is, where it has been.
    private struct Trip {
        var request: HTTPRequest
        var headers: HTTPHeaders
        var requestID: String
        var key: String
        /// For the dead letter of a call (nil for metadata and readiness, which have none).
        var call: DeadLetters.Call?
        var deadline: UInt64
        var tried: [String] = []
        var attempts: [DeadLetter.Attempt] = []
        var last: HTTPResponse?
    }

    func forward(_ request: HTTPRequest, key: String, holders: [Member], deadlineMs: UInt64, call: DeadLetters.Call? = nil,
                 _ responder: HTTPResponder) {
        forwarded += 1
        var headers = request.headers
        let requestID = headers["kaa-request-id"] ?? UUID().uuidString.lowercased()
        headers.set("kaa-request-id", requestID)
        let trip = Trip(request: request, headers: headers, requestID: requestID, key: key, call: call,
                        deadline: loop.nowNanoseconds &+ deadlineMs &* 1_000_000)
        attempt(trip, queue: order(holders)[...], responder)
    }

    /// Ends a call no holder answered: a dead letter when it is a call, else just the error.
    private func fail(_ trip: Trip, _ reason: DeadLetter.Reason, _ status: HTTPStatus, _ message: String, _ responder: HTTPResponder) {
        guard let deadLetters, let call = trip.call else { return responder.respond(.error(status, message)) }
        deadLetters.fail(trip.request, call, reason: reason, status: status, message: message, attempts: trip.attempts, responder)
    }

    private func attempt(_ trip: Trip, queue: ArraySlice<Member>, _ responder: HTTPResponder) {
        let now = loop.nowNanoseconds
        let tried = trip.tried.joined(separator: ", ")
        guard now < trip.deadline else {
            return fail(trip, .deadline, .gatewayTimeout, "the deadline passed before a holder of \(trip.key) answered (tried: \(tried))", responder)
        }
        guard let holder = queue.first else {
            guard let last = trip.last else {
                return fail(trip, .unreachable, .serviceUnavailable, "no holder of \(trip.key) could be reached (tried: \(tried))", responder)
            }
            // Full queues everywhere: a refusal the client retries, not a dead letter.
            if last.status.code == 429 { return responder.respond(last) }
            let said = String(decoding: last.body.prefix(300), as: UTF8.self)
            return fail(trip, .noHolder, .serviceUnavailable, "no holder of \(trip.key) took the call (tried: \(tried); the last said HTTP \(last.status.code) \(said))", responder)
        }
        let started = DeadLetters.nowMs()
        send(trip.request, headers: trip.headers, requestID: trip.requestID, to: holder, tried: trip.tried, deadline: trip.deadline) { [self] result in
            var trip = trip
            let outcome: String
            switch result {
            case .success(let response): outcome = "HTTP \(response.status.code)"
            case .failure(let error): outcome = error.message
            }
            trip.attempts.append(.init(node: holder.info.name, start: started, end: DeadLetters.nowMs(), outcome: outcome))
            let next = { (answer: HTTPResponse?) in
                self.retried += 1
                self.logger.debug("a holder did not take a call; trying the next", metadata: [
                    "snapshot": "\(trip.key)", "holder": "\(holder.info.name)", "reason": "\(outcome)", "request.id": "\(trip.requestID)",
                ])
                var after = trip
                after.tried.append(holder.info.name)
                if let answer { after.last = answer }
                self.attempt(after, queue: queue.dropFirst(), responder)
            }
            switch result {
            case .success(let response):
                // Not held there, unloaded or failed to load, or its queue full: it did not run.
                if [404, 429, 503].contains(response.status.code) { return next(response) }
                if response.status.code == 504 {
                    let said = String(decoding: response.body.prefix(300), as: UTF8.self)
                    return fail(trip, .deadline, .gatewayTimeout, "the deadline passed while holder \(holder.info.name) ran the call for \(trip.key): \(said)", responder)
                }
                responder.respond(response)
            case .failure(let error):
                if Forwarder.didNotRun(error) { return next(nil) }
                switch error.code {
                case .frameTooLarge:
                    responder.respond(Forwarder.answer(for: error, holder: holder, key: trip.key, bytes: trip.request.body.count))
                case .deadlineExceeded:
                    fail(trip, .deadline, .gatewayTimeout, "holder \(holder.info.name) did not answer the call for \(trip.key) within its deadline", responder)
                default:
                    fail(trip, .holderFailed, .serviceUnavailable, "holder \(holder.info.name) failed during the call for \(trip.key): \(error.message)", responder)
                }
            }
        }
    }

    /// Whether a failed send certainly did not run the call: no connection, or the holder
    /// refused it before starting.
    static func didNotRun(_ error: FrameError) -> Bool {
        switch error.code {
        case .connectFailed, .handshakeFailed, .overloaded: true
        case .remoteError: error.remote == .notReady
        default: false
        }
    }

    static func answer(for error: FrameError, holder: Member, key: String, bytes: Int) -> HTTPResponse {
        switch error.code {
        case .frameTooLarge:
            .error(.contentTooLarge, "the call is too large to send on to a holder of \(key) (\(bytes) bytes); send it to one of its holders, or raise max_peer_frame_bytes")
        case .deadlineExceeded:
            .error(.gatewayTimeout, "holder \(holder.info.name) did not answer the call for \(key) within its deadline")
        case .connectFailed, .handshakeFailed, .overloaded:
            .error(.serviceUnavailable, "holder \(holder.info.name) of \(key) cannot be reached: \(error.message)")
        default:
            .error(.badGateway, "holder \(holder.info.name) failed during the call for \(key): \(error.message)")
        }
    }

    /// One try at one holder; `completion` gets its HTTP answer (with `Kaa-Served-By`), on the loop.
    private func send(_ request: HTTPRequest, headers: HTTPHeaders, requestID: String, to holder: Member, tried: [String],
                      deadline: UInt64, completion: @escaping (Result<HTTPResponse, FrameError>) -> Void) {
        let remainingMs = max(1, (deadline &- loop.nowNanoseconds) / 1_000_000)
        let head = ForwardedCall.Head(method: request.method.rawValue, target: request.target, headers: ForwardedCall.pairs(headers),
                                      deadlineMs: remainingMs, requestID: requestID, hop: 1, tried: tried)
        let payload = ForwardedCall.encode(head, body: request.body)
        inFlight[holder.id, default: 0] += 1
        let bound = LoopBound(self, loop: loop)
        let done = LoopBound(completion, loop: loop)
        frames.request(to: holder.info.peerAddress, type: Node.PeerFrameType.call, payload: payload,
                       deadline: .milliseconds(Int64(remainingMs)) + .seconds(1)) { result in
            let self_ = bound.value
            self_.inFlight[holder.id, default: 1] -= 1
            if self_.inFlight[holder.id] == 0 { self_.inFlight[holder.id] = nil }
            switch result {
            case .failure(let error):
                done.value(.failure(error))
            case .success(let frame):
                switch ForwardedCall.decode(ForwardedCall.AnswerHead.self, frame.payload) {
                case .failure(let why):
                    done.value(.success(.error(.badGateway, "holder \(holder.info.name) answered a call frame that does not decode: \(why)")))
                case .success(let (head, body)):
                    var response = HTTPResponse(status: HTTPStatus(head.status, head.reason), headers: ForwardedCall.headers(head.headers), body: body)
                    if response.headers["kaa-served-by"] == nil { response.headers.set("kaa-served-by", holder.info.name) }
                    done.value(.success(response))
                }
            }
        }
    }

    /// Sends `request` (a load or an unload) to every one of `holders`, and runs it here too
    /// when `alsoHere`; answers once all have: the first answer that is not a success, else
    /// the first, with `Kaa-Served-By` naming them all.
    func broadcast(_ request: HTTPRequest, key: String, holders: [Member], alsoHere: Bool, deadlineMs: UInt64, _ responder: HTTPResponder) {
        let deadline = loop.nowNanoseconds &+ deadlineMs &* 1_000_000
        let requestID = request.headers["kaa-request-id"] ?? UUID().uuidString.lowercased()
        let expected = holders.count + (alsoHere ? 1 : 0)
        var answers: [(name: String, response: HTTPResponse)] = []
        let collect = { (name: String, response: HTTPResponse) in
            answers.append((name, response))
            guard answers.count == expected else { return }
            var chosen = answers.first { !(200..<300).contains($0.response.status.code) }?.response ?? answers[0].response
            chosen.headers.set("kaa-served-by", answers.map(\.name).sorted().joined(separator: ", "))
            responder.respond(chosen)
        }
        for holder in holders {
            send(request, headers: request.headers, requestID: requestID, to: holder, tried: [], deadline: deadline) { result in
                switch result {
                case .success(let response): collect(holder.info.name, response)
                case .failure(let error): collect(holder.info.name, Forwarder.answer(for: error, holder: holder, key: key, bytes: request.body.count))
                }
            }
        }
        if alsoHere {
            var local = request
            local.headers.set("kaa-forwarded", "0")
            let here = LoopBound(collect, loop: loop), loop = self.loop, name = myName
            routes.handle(local, HTTPResponder { response in loop.execute { here.value(name, response) } })
        }
    }

    /// Lines for `/metrics`.
    var metricsText: String {
        """
        # HELP kaa_calls_forwarded_total Calls this node sent on to a holder of their model.
        # TYPE kaa_calls_forwarded_total counter
        kaa_calls_forwarded_total \(forwarded)
        # HELP kaa_call_retries_total Calls sent on to the next holder after one did not take them.
        # TYPE kaa_call_retries_total counter
        kaa_call_retries_total \(retried)

        """
    }

    /// Runs a call another node sent here through this node's own routes (it is never sent
    /// further), and answers with the result and `Kaa-Served-By`.
    static func serve(_ frame: Frame, _ responder: FrameResponder, routes: HTTPRouter, myName: String) {
        let head: ForwardedCall.Head, body: [UInt8]
        switch ForwardedCall.decode(ForwardedCall.Head.self, frame.payload) {
        case .failure(let why): return responder.fail(.badRequest, why.description)
        case .success(let decoded): (head, body) = decoded
        }
        guard head.target.hasPrefix("/v2/") else {
            return responder.fail(.badRequest, "only Open Inference Protocol calls (/v2/...) are sent between nodes, not `\(head.target.prefix(80))`")
        }
        var request = HTTPRequest(method: HTTPMethod(rawValue: head.method), target: head.target, headers: ForwardedCall.headers(head.headers),
                                  body: body)
        request.headers.set("kaa-forwarded", "\(head.hop)")
        request.headers.set("kaa-deadline-ms", "\(max(1, head.deadlineMs))")
        routes.handle(request, HTTPResponder { response in
            var headers = response.headers
            headers.set("kaa-served-by", myName)
            let answer = ForwardedCall.AnswerHead(status: response.status.code, reason: response.status.reason,
                                                  headers: ForwardedCall.pairs(headers))
            responder.respond(ForwardedCall.encode(answer, body: response.body))
        })
    }
}
