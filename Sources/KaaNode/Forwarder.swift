import Foundation
import KaaCluster
import KaaCore
import KaaIO
import Logging

/// A histogram of durations with fixed buckets from 100 µs to 10 s, for `/metrics`.
struct LatencyHistogram {
    static let bounds: [Double] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10]
    private(set) var counts = [Int](repeating: 0, count: LatencyHistogram.bounds.count + 1)
    private(set) var sum = 0.0

    mutating func record(_ nanoseconds: UInt64) {
        let seconds = Double(nanoseconds) / 1e9
        sum += seconds
        counts[LatencyHistogram.bounds.firstIndex { seconds <= $0 } ?? LatencyHistogram.bounds.count] += 1
    }

    /// The Prometheus lines (cumulative buckets, sum, count), ending with a newline.
    func exposition(name: String) -> String {
        var out = "", running = 0
        for (i, bound) in LatencyHistogram.bounds.enumerated() {
            running += counts[i]
            out += "\(name)_bucket{le=\"\(bound)\"} \(running)\n"
        }
        running += counts[LatencyHistogram.bounds.count]
        out += "\(name)_bucket{le=\"+Inf\"} \(running)\n\(name)_sum \(sum)\n\(name)_count \(running)\n"
        return out
    }
}

/// A call sent on to another node over the peer plane (`call` frames, type 5): the request as
/// the client sent it, with what the holder needs to run it and what the sender needs to try
/// the next holder.
///
/// On the wire: a 4-byte big-endian length, that many bytes of JSON (the head), then the body
/// as received (JSON or binary tensors). An answer has the same form, its head the status and
/// headers.
struct ForwardedCall: Equatable {
    struct Head: CallFrameHead, Equatable {
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

        func write(to w: inout CallFrameWriter) {
            w.string(method)
            w.string(target)
            w.pairs(headers)
            w.u64(deadlineMs)
            w.string(requestID)
            w.u64(UInt64(max(0, hop)))
            w.strings(tried)
        }

        init(method: String, target: String, headers: [[String]], deadlineMs: UInt64, requestID: String, hop: Int, tried: [String]) {
            self.method = method
            self.target = target
            self.headers = headers
            self.deadlineMs = deadlineMs
            self.requestID = requestID
            self.hop = hop
            self.tried = tried
        }

        init(reading r: inout CallFrameReader) throws(ForwardedCall.Malformed) {
            method = try r.string("method")
            target = try r.string("target")
            headers = try r.pairs()
            deadlineMs = try r.u64("deadline")
            requestID = try r.string("request id")
            hop = Int(min(try r.u64("hop"), 255))
            tried = try r.strings("tried")
        }
    }

    struct AnswerHead: CallFrameHead, Equatable {
        var status: Int
        var reason: String
        var headers: [[String]]

        func write(to w: inout CallFrameWriter) {
            w.u64(UInt64(max(0, status)))
            w.string(reason)
            w.pairs(headers)
        }

        init(status: Int, reason: String, headers: [[String]]) {
            self.status = status
            self.reason = reason
            self.headers = headers
        }

        init(reading r: inout CallFrameReader) throws(ForwardedCall.Malformed) {
            let code = try r.u64("status")
            guard (100...599).contains(code) else { throw Malformed(description: "status \(code) is not an HTTP status") }
            status = Int(code)
            reason = try r.string("reason")
            headers = try r.pairs()
        }
    }

    /// Headers a hop does not carry: the connection's own, and the token (the holder trusts the
    /// sending node, which checked it).
    static let hopHeaders: Set<String> = ["connection", "keep-alive", "content-length", "transfer-encoding", "te", "upgrade",
                                          "host", "authorization", "expect"]

    static func encode<H: CallFrameHead>(_ head: H, body: [UInt8]) -> [UInt8] {
        var w = CallFrameWriter()
        head.write(to: &w)
        let n = UInt32(w.bytes.count)
        var out = [UInt8(n >> 24), UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF)]
        out.reserveCapacity(4 + w.bytes.count + body.count)
        out += w.bytes
        out += body
        return out
    }

    /// What is wrong with a call frame.
    struct Malformed: Error, CustomStringConvertible {
        var description: String
    }

    /// The head and the body of `payload`, or what is wrong with it.
    static func decode<H: CallFrameHead>(_ type: H.Type, _ payload: [UInt8]) -> Result<(H, [UInt8]), Malformed> {
        guard payload.count >= 4 else { return .failure(Malformed(description: "a call frame starts with a 4-byte head length; it has \(payload.count) bytes")) }
        let n = Int(payload[0]) << 24 | Int(payload[1]) << 16 | Int(payload[2]) << 8 | Int(payload[3])
        guard n <= payload.count - 4 else { return .failure(Malformed(description: "the head is \(n) bytes but \(payload.count - 4) follow its length")) }
        var r = CallFrameReader(bytes: payload[4..<(4 + n)])
        do throws(Malformed) {
            let head = try H(reading: &r)
            guard r.atEnd else { throw Malformed(description: "the head has \(r.left) bytes after its last field") }
            return .success((head, Array(payload[(4 + n)...])))
        } catch {
            return .failure(error)
        }
    }

    /// An HTTP answer as the payload of a `call` frame's answer.
    static func encode(_ response: HTTPResponse) -> [UInt8] {
        encode(AnswerHead(status: response.status.code, reason: response.status.reason, headers: pairs(response.headers)), body: response.body)
    }

    /// The HTTP answer a `call` frame's answer carries.
    static func response(_ payload: [UInt8]) -> Result<HTTPResponse, Malformed> {
        decode(AnswerHead.self, payload).map { head, body in
            HTTPResponse(status: HTTPStatus(head.status, head.reason), headers: headers(head.headers), body: body)
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

/// A call frame's head: its fields in a fixed order, each an unsigned LEB128 integer or a
/// length-prefixed UTF-8 string (lists as a count, then their items).
protocol CallFrameHead {
    func write(to w: inout CallFrameWriter)
    init(reading r: inout CallFrameReader) throws(ForwardedCall.Malformed)
}

struct CallFrameWriter {
    var bytes: [UInt8] = []

    mutating func u64(_ v: UInt64) {
        var v = v
        while v >= 0x80 { bytes.append(UInt8(v & 0x7F) | 0x80); v >>= 7 }
        bytes.append(UInt8(v))
    }

    mutating func string(_ s: String) {
        u64(UInt64(s.utf8.count))
        bytes += s.utf8
    }

    mutating func strings(_ list: [String]) {
        u64(UInt64(list.count))
        for s in list { string(s) }
    }

    mutating func pairs(_ list: [[String]]) {
        let valid = list.filter { $0.count == 2 }
        u64(UInt64(valid.count))
        for p in valid { string(p[0]); string(p[1]) }
    }
}

struct CallFrameReader {
    let bytes: ArraySlice<UInt8>
    var at: Int

    init(bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
        at = bytes.startIndex
    }

    var atEnd: Bool { at == bytes.endIndex }
    var left: Int { bytes.endIndex - at }

    mutating func u64(_ what: String) throws(ForwardedCall.Malformed) -> UInt64 {
        var v: UInt64 = 0, shift: UInt64 = 0
        while true {
            guard at < bytes.endIndex else { throw ForwardedCall.Malformed(description: "the head ends inside its \(what)") }
            let b = bytes[at]
            at += 1
            guard shift < 64 else { throw ForwardedCall.Malformed(description: "the head's \(what) is longer than 64 bits") }
            v |= UInt64(b & 0x7F) << shift
            if b & 0x80 == 0 { return v }
            shift += 7
        }
    }

    mutating func string(_ what: String) throws(ForwardedCall.Malformed) -> String {
        let n = try u64(what)
        guard n <= UInt64(left) else { throw ForwardedCall.Malformed(description: "the head's \(what) is \(n) bytes but \(left) are left") }
        let text = bytes[at..<(at + Int(n))]
        at += Int(n)
        guard let s = String(validating: text, as: UTF8.self) else { throw ForwardedCall.Malformed(description: "the head's \(what) is not UTF-8") }
        return s
    }

    mutating func strings(_ what: String) throws(ForwardedCall.Malformed) -> [String] {
        let n = try u64(what)
        guard n <= UInt64(left) else { throw ForwardedCall.Malformed(description: "the head's \(what) counts \(n) items in \(left) bytes") }
        var out: [String] = []
        for _ in 0..<n { out.append(try string(what)) }
        return out
    }

    mutating func pairs() throws(ForwardedCall.Malformed) -> [[String]] {
        let n = try u64("headers")
        guard n <= UInt64(left) else { throw ForwardedCall.Malformed(description: "the head counts \(n) headers in \(left) bytes") }
        var out: [[String]] = []
        for _ in 0..<n { out.append([try string("header name"), try string("header value")]) }
        return out
    }
}

/// The share of calls that may be sent to a second holder after the first did not answer in
/// time: each call adds a tenth of a token, a second try takes a whole one, and at most ten
/// are kept, so over any stretch such tries are at most 10% of calls (plus a burst of ten).
struct RetryBudget {
    /// In tenths of a token.
    private(set) var tenths = 10

    mutating func deposit() { tenths = min(100, tenths + 1) }

    /// Takes a token; false when there is none.
    mutating func withdraw() -> Bool {
        guard tenths >= 10 else { return false }
        tenths -= 10
        return true
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
    /// Calls sent to a second holder after the first did not answer within its try limit.
    private(set) var retriedSlow = 0
    private var budget = RetryBudget()
    /// Each snapshot's usual time for a try, from this node's view, decayed (1/16 per answer).
    private var typicalNs: [String: UInt64] = [:]
    /// How long a try at a holder took, from this node's view (send to answer).
    private var latency = LatencyHistogram()

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

    /// 16 random hex digits.
    static func makeRequestID() -> String {
        var rng = SystemRandomNumberGenerator()
        let v = rng.next() as UInt64
        let hex = String(v, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
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
        /// Whether the call has been sent again after a slow try (it is, at most once).
        var resentAfterSlowTry = false
    }

    /// How a call ends, shared by its tries: the first end wins. A try that passed its limit
    /// may still answer while the call is tried at the next holder; while it is out, a failure
    /// of the next holders waits for it.
    private final class Ending {
        var done = false
        var slowTryOut = false
        var heldFailure: (() -> Void)?
    }

    /// Sends `request` to the first of `holders` that takes it, trying the next one only when
    /// the call certainly did not run there (no connection, or an answer that it does not have
    /// the version ready, is unloaded, or is full); answers the client with the holder's answer
    /// and `Kaa-Served-By`, and, for a call (`call`), a dead letter
    /// with 503 when no holder took it or 504 when the deadline passed.
    func forward(_ request: HTTPRequest, key: String, holders: [Member], deadlineMs: UInt64, call: DeadLetters.Call? = nil,
                 _ responder: HTTPResponder) {
        forwarded += 1
        var headers = request.headers
        let requestID = headers["kaa-request-id"] ?? Forwarder.makeRequestID()
        headers.set("kaa-request-id", requestID)
        let trip = Trip(request: request, headers: headers, requestID: requestID, key: key, call: call,
                        deadline: loop.nowNanoseconds &+ deadlineMs &* 1_000_000)
        if call != nil { budget.deposit() }
        attempt(trip, queue: order(holders)[...], Ending(), responder)
    }

    /// Ends a call no holder answered: a dead letter when it is a call, else just the error.
    /// While a slow try is still out, the failure waits for it: its answer, if it comes, wins.
    private func fail(_ trip: Trip, _ reason: DeadLetter.Reason, _ status: HTTPStatus, _ message: String, _ ending: Ending,
                      _ responder: HTTPResponder) {
        hold(ending) { [self] in
            ending.done = true
            guard let deadLetters, let call = trip.call else { return responder.respond(.error(status, message)) }
            deadLetters.fail(trip.request, call, reason: reason, status: status, message: message, attempts: trip.attempts, responder)
        }
    }

    /// Runs `end` now, or once the slow try that is still out has failed too.
    private func hold(_ ending: Ending, _ end: @escaping () -> Void) {
        guard !ending.done else { return }
        if ending.slowTryOut { ending.heldFailure = end } else { end() }
    }

    /// Answers the client, once.
    private func finish(_ response: HTTPResponse, _ ending: Ending, _ responder: HTTPResponder) {
        guard !ending.done else { return }
        ending.done = true
        ending.heldFailure = nil
        responder.respond(response)
    }

    // MARK: the call's life, decided by pure functions

    /// How one try at a holder ended.
    enum TryOutcome: Equatable {
        /// The holder answered with this HTTP status.
        case answered(Int)
        /// The frame failed.
        case failed(FrameError.Code, remote: PeerErrorCode?)
    }

    /// What follows one try.
    enum Step: Equatable {
        /// The holder's answer goes to the client.
        case answer
        /// The call did not run there: the next holder is tried.
        case next
        /// The call ends in a dead letter with this reason and status.
        case deadLetter(DeadLetter.Reason, status: Int)
        /// Refused before it was accepted (too large to send on): no dead letter.
        case refuse(status: Int)
    }

    static func step(after outcome: TryOutcome) -> Step {
        switch outcome {
        // Not held there, unloaded or failed to load, or its queue full: it did not run.
        case .answered(404), .answered(429), .answered(503): return .next
        case .answered(504): return .deadLetter(.deadline, status: 504)
        case .answered: return .answer
        case .failed(let code, let remote):
            if didNotRun(code, remote: remote) { return .next }
            switch code {
            case .frameTooLarge: return .refuse(status: 413)
            case .deadlineExceeded: return .deadLetter(.deadline, status: 504)
            default: return .deadLetter(.holderFailed, status: 503)
            }
        }
    }

    /// How a call ends when no holder is left to try: the status of the last answer, nil when
    /// no holder answered at all. `nil` result: that last answer goes to the client (429,
    /// every queue full: a refusal the client retries, not a dead letter).
    static func end(lastStatus: Int?) -> (reason: DeadLetter.Reason, status: Int)? {
        guard let lastStatus else { return (.unreachable, 503) }
        if lastStatus == 429 { return nil }
        return (.noHolder, 503)
    }

    /// The milliseconds a hop may take, nil once the deadline has passed: at least 1, so a call
    /// with part of a millisecond left still goes (and the holder, not this node, says it ran out).
    static func remainingMs(deadline: UInt64, now: UInt64) -> UInt64? {
        guard now < deadline else { return nil }
        return max(1, (deadline - now) / 1_000_000)
    }

    /// How long a try at a holder may take before the call is sent to the next one as well:
    /// eight times the snapshot's usual try, at least 100 ms. nil (no second try) when the
    /// snapshot has no usual time yet, or when the limit would use more than half of what is
    /// left of the deadline (the second try would have too little).
    static func tryLimitNs(typicalNs: UInt64?, remainingNs: UInt64) -> UInt64? {
        guard let typicalNs else { return nil }
        let limit = max(100_000_000, typicalNs &* 8)
        return limit <= remainingNs / 2 ? limit : nil
    }

    private func attempt(_ trip: Trip, queue: ArraySlice<Member>, _ ending: Ending, _ responder: HTTPResponder) {
        let tried = trip.tried.joined(separator: ", ")
        guard let remaining = Forwarder.remainingMs(deadline: trip.deadline, now: loop.nowNanoseconds) else {
            return fail(trip, .deadline, .gatewayTimeout, "the deadline passed before a holder of \(trip.key) answered (tried: \(tried))",
                        ending, responder)
        }
        guard let holder = queue.first else {
            guard let (reason, status) = Forwarder.end(lastStatus: trip.last?.status.code) else {
                // Every queue full: the refusal goes to the client, no dead letter (after a slow try, if it fails).
                return hold(ending) { [self] in finish(trip.last!, ending, responder) }
            }
            let said = trip.last.map { "; the last said HTTP \($0.status.code) \(String(decoding: $0.body.prefix(300), as: UTF8.self))" } ?? ""
            let what = reason == .unreachable ? "could be reached" : "took the call"
            return fail(trip, reason, HTTPStatus(code: status), "no holder of \(trip.key) \(what) (tried: \(tried)\(said))", ending, responder)
        }
        let started = DeadLetters.nowMs()
        let sentAt = loop.nowNanoseconds
        // Passed its limit: the call went to the next holder too, and this try only answers if it beats that.
        var abandoned = false, answered = false
        if trip.call != nil, !trip.resentAfterSlowTry, queue.count > 1,
           let limit = Forwarder.tryLimitNs(typicalNs: typicalNs[trip.key], remainingNs: remaining &* 1_000_000) {
            loop.schedule(after: .nanoseconds(Int64(limit))) { [self] in
                guard !answered, !ending.done, budget.withdraw() else { return }
                abandoned = true
                retriedSlow += 1
                ending.slowTryOut = true
                logger.info("a holder did not answer a call within its try limit; sending it to the next as well", metadata: [
                    "snapshot": "\(trip.key)", "holder": "\(holder.info.name)", "limit.ms": "\(limit / 1_000_000)",
                    "request.id": "\(trip.requestID)",
                ])
                var next = trip
                next.resentAfterSlowTry = true
                next.tried.append(holder.info.name)
                next.attempts.append(.init(node: holder.info.name, start: started, end: DeadLetters.nowMs(),
                                           outcome: "no answer within \(limit / 1_000_000) ms; sent to the next holder as well"))
                attempt(next, queue: queue.dropFirst(), ending, responder)
            }
        }
        send(trip.request, headers: trip.headers, requestID: trip.requestID, to: holder, tried: trip.tried, deadline: trip.deadline) { [self] result in
            answered = true
            let took = loop.nowNanoseconds &- sentAt
            latency.record(took)
            if case .success = result {
                let before = typicalNs[trip.key] ?? took
                typicalNs[trip.key] = before - before / 16 + took / 16
            }
            if abandoned {
                // The slow try ends: its answer wins if the call is still open; else a failure
                // of the next holders that waited for it goes out now.
                ending.slowTryOut = false
                if case .success(let response) = result, Forwarder.step(after: .answered(response.status.code)) == .answer {
                    return finish(response, ending, responder)
                }
                if let held = ending.heldFailure {
                    ending.heldFailure = nil
                    held()
                }
                return
            }
            guard !ending.done else { return }
            var trip = trip
            let outcome: TryOutcome, said: String
            switch result {
            case .success(let response):
                outcome = .answered(response.status.code)
                said = "HTTP \(response.status.code)"
            case .failure(let error):
                outcome = .failed(error.code, remote: error.remote)
                said = error.message
            }
            trip.attempts.append(.init(node: holder.info.name, start: started, end: DeadLetters.nowMs(), outcome: said))
            switch Forwarder.step(after: outcome) {
            case .answer:
                if case .success(let response) = result { finish(response, ending, responder) }
            case .next:
                retried += 1
                logger.debug("a holder did not take a call; trying the next", metadata: [
                    "snapshot": "\(trip.key)", "holder": "\(holder.info.name)", "reason": "\(said)", "request.id": "\(trip.requestID)",
                ])
                trip.tried.append(holder.info.name)
                if case .success(let response) = result { trip.last = response }
                attempt(trip, queue: queue.dropFirst(), ending, responder)
            case .refuse:
                if case .failure(let error) = result {
                    finish(Forwarder.answer(for: error, holder: holder, key: trip.key, bytes: trip.request.body.count), ending, responder)
                }
            case .deadLetter(let reason, let status):
                var message = "holder \(holder.info.name) failed during the call for \(trip.key): \(said)"
                if reason == .deadline {
                    if case .success(let response) = result {
                        message = "the deadline passed while holder \(holder.info.name) ran the call for \(trip.key): \(String(decoding: response.body.prefix(300), as: UTF8.self))"
                    } else {
                        message = "holder \(holder.info.name) did not answer the call for \(trip.key) within its deadline"
                    }
                }
                fail(trip, reason, HTTPStatus(code: status), message, ending, responder)
            }
        }
    }

    /// Whether a failed send certainly did not run the call: no connection, or the holder
    /// refused it before starting.
    static func didNotRun(_ error: FrameError) -> Bool { didNotRun(error.code, remote: error.remote) }

    static func didNotRun(_ code: FrameError.Code, remote: PeerErrorCode?) -> Bool {
        switch code {
        case .connectFailed, .handshakeFailed, .overloaded: true
        case .remoteError: remote == .notReady
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
        let remainingMs = Forwarder.remainingMs(deadline: deadline, now: loop.nowNanoseconds) ?? 1
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
                switch ForwardedCall.response(frame.payload) {
                case .failure(let why):
                    done.value(.success(.error(.badGateway, "holder \(holder.info.name) answered a call frame that does not decode: \(why)")))
                case .success(var response):
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
        let requestID = request.headers["kaa-request-id"] ?? Forwarder.makeRequestID()
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
        # HELP kaa_call_slow_retries_total Calls sent to a second holder after the first did not answer within its try limit (at most 10% of calls).
        # TYPE kaa_call_slow_retries_total counter
        kaa_call_slow_retries_total \(retriedSlow)
        # HELP kaa_forward_seconds Time from sending a call to a holder to its answer, seen from this node.
        # TYPE kaa_forward_seconds histogram
        \(latency.exposition(name: "kaa_forward_seconds"))
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
            var response = response
            response.headers.set("kaa-served-by", myName)
            responder.respond(ForwardedCall.encode(response))
        })
    }
}
