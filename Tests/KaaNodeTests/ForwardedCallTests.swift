import Foundation
import KaaIO
@testable import KaaNode
import Testing

/// The `call` frame's form, by hand: what goes in comes out, a hop carries neither the
/// connection's headers nor the token, and a malformed frame is named, not crashed on.
@Suite struct ForwardedCallTests {
    @Test func aCallAndItsAnswerRoundTrip() throws {
        let headers: HTTPHeaders = ["Content-Type": "application/json", "Authorization": "Bearer secret", "Connection": "keep-alive",
                                    "Content-Length": "9", "Inference-Header-Content-Length": "7", "Kaa-Request-Id": "r1"]
        let pairs = ForwardedCall.pairs(headers)
        #expect(pairs == [["Content-Type", "application/json"], ["Inference-Header-Content-Length", "7"], ["Kaa-Request-Id", "r1"]])
        let head = ForwardedCall.Head(method: "POST", target: "/v2/models/iris/infer?x=1", headers: pairs, deadlineMs: 250,
                                      requestID: "r1", hop: 1, tried: ["n2"])
        let body: [UInt8] = [0, 1, 2, 255] + Array("{\"a\":1}".utf8)
        let payload = ForwardedCall.encode(head, body: body)
        let decoded = try ForwardedCall.decode(ForwardedCall.Head.self, payload).get()
        #expect(decoded.0 == head)
        #expect(decoded.1 == body)
        // A peer cannot smuggle the hop headers back in either.
        let back = ForwardedCall.headers([["Host", "evil"], ["authorization", "x"], ["X-Trace", "1"], ["broken"]])
        #expect(back.fields.map(\.name) == ["X-Trace"])

        let answer = ForwardedCall.AnswerHead(status: 404, reason: "Not Found", headers: [["content-type", "application/json"]])
        let answered = try ForwardedCall.decode(ForwardedCall.AnswerHead.self, ForwardedCall.encode(answer, body: [])).get()
        #expect(answered.0 == answer && answered.1.isEmpty)
    }

    @Test func malformedFramesAreNamed() {
        func why(_ payload: [UInt8]) -> String {
            if case .failure(let e) = ForwardedCall.decode(ForwardedCall.Head.self, payload) { return e.description }
            return "decoded"
        }
        #expect(why([0, 0]) == "a call frame starts with a 4-byte head length; it has 2 bytes")
        #expect(why([0, 0, 0, 9, 1]) == "the head is 9 bytes but 1 follow its length")
        #expect(why([255, 255, 255, 255]) == "the head is 4294967295 bytes but 0 follow its length")
        #expect(why([0, 0, 0, 2, 1, 0x41]) == "the head ends inside its target")
        #expect(why([0, 0, 0, 2, 9, 0x41]) == "the head's method is 9 bytes but 1 are left")
        #expect(why([0, 0, 0, 3, 1, 0xFF, 0]) == "the head's method is not UTF-8")
        #expect(why([0, 0, 0, 11] + [UInt8](repeating: 0xFF, count: 11)) == "the head's method is longer than 64 bits")
        #expect(why([0, 0, 0, 5, 0, 0, 0x7F, 0, 0]) == "the head counts 127 headers in 2 bytes")
        var long = ForwardedCall.encode(ForwardedCall.Head(method: "GET", target: "/v2", headers: [], deadlineMs: 1, requestID: "r", hop: 1,
                                                          tried: []), body: [])
        long[3] += 1
        long.append(0)
        #expect(why(long) == "the head has 1 bytes after its last field")
        if case .failure(let e) = ForwardedCall.decode(ForwardedCall.AnswerHead.self, [0, 0, 0, 3, 0x90, 0x4E, 0]) {
            #expect(e.description == "status 10000 is not an HTTP status")
        } else { Issue.record("a status of 10000 decoded") }
    }

    /// The call's life at the node that sends it on, decided by hand: which outcomes try the
    /// next holder (only those where the call certainly did not run), which answer, which end
    /// in a dead letter and with what; and the deadline arithmetic at its edges.
    @Test func theCallsLifeIsDecidedByItsOutcomes() {
        typealias F = Forwarder
        #expect(F.step(after: .answered(200)) == .answer)
        #expect(F.step(after: .answered(400)) == .answer, "bad input is the client's answer")
        #expect(F.step(after: .answered(500)) == .answer)
        for status in [404, 429, 503] { #expect(F.step(after: .answered(status)) == .next, "HTTP \(status)") }
        #expect(F.step(after: .answered(504)) == .deadLetter(.deadline, status: 504))
        #expect(F.step(after: .failed(.connectFailed, remote: nil)) == .next)
        #expect(F.step(after: .failed(.handshakeFailed, remote: nil)) == .next)
        #expect(F.step(after: .failed(.overloaded, remote: nil)) == .next)
        #expect(F.step(after: .failed(.remoteError, remote: .notReady)) == .next)
        #expect(F.step(after: .failed(.remoteError, remote: .badRequest)) == .deadLetter(.holderFailed, status: 503))
        #expect(F.step(after: .failed(.closed, remote: nil)) == .deadLetter(.holderFailed, status: 503), "it may have run")
        #expect(F.step(after: .failed(.protocolViolation, remote: nil)) == .deadLetter(.holderFailed, status: 503))
        #expect(F.step(after: .failed(.deadlineExceeded, remote: nil)) == .deadLetter(.deadline, status: 504))
        #expect(F.step(after: .failed(.frameTooLarge, remote: nil)) == .refuse(status: 413))
        // No holder left: none answered, all refused, or all full.
        #expect(F.end(lastStatus: nil)! == (DeadLetter.Reason.unreachable, 503))
        #expect(F.end(lastStatus: 404)! == (DeadLetter.Reason.noHolder, 503))
        #expect(F.end(lastStatus: 503)! == (DeadLetter.Reason.noHolder, 503))
        #expect(F.end(lastStatus: 429) == nil)
        // The deadline: none left at or past it; under a millisecond left still goes, as 1 ms.
        #expect(F.remainingMs(deadline: 5_000_000, now: 5_000_000) == nil)
        #expect(F.remainingMs(deadline: 5_000_000, now: 9_000_000) == nil)
        #expect(F.remainingMs(deadline: 5_000_000, now: 4_999_999) == 1)
        #expect(F.remainingMs(deadline: 5_000_000, now: 0) == 5)
        #expect(F.remainingMs(deadline: .max, now: 0) == UInt64.max / 1_000_000)
    }

    @Test func aSlowTryIsSentOnOnlyWithinTheLimitAndTheBudget() {
        typealias F = Forwarder
        let ms: UInt64 = 1_000_000
        // Eight times the usual try, at least 100 ms, and only with half the deadline left over.
        #expect(F.tryLimitNs(typicalNs: nil, remainingNs: 10_000 * ms) == nil, "no usual time yet")
        #expect(F.tryLimitNs(typicalNs: 300_000, remainingNs: 10_000 * ms) == 100 * ms)
        #expect(F.tryLimitNs(typicalNs: 50 * ms, remainingNs: 10_000 * ms) == 400 * ms)
        #expect(F.tryLimitNs(typicalNs: 50 * ms, remainingNs: 800 * ms) == 400 * ms)
        #expect(F.tryLimitNs(typicalNs: 50 * ms, remainingNs: 799 * ms) == nil)
        #expect(F.tryLimitNs(typicalNs: 300_000, remainingNs: 150 * ms) == nil)

        // One token to start; then one second try per ten calls; never more than ten saved up.
        var budget = RetryBudget()
        let first = budget.withdraw(), second = budget.withdraw()
        #expect(first && !second)
        var granted = 0
        for call in 1...1_002 {
            budget.deposit()
            if call % 3 == 0, budget.withdraw() { granted += 1 }
        }
        #expect(granted == 100, "\(granted) second tries over 1,002 calls")
        for _ in 0..<1_000 { budget.deposit() }
        var burst = 0
        while budget.withdraw() { burst += 1 }
        #expect(burst == 10)
    }

    @Test func latencyHistogramBuckets() {
        var h = LatencyHistogram()
        h.record(50_000)          // 50 µs
        h.record(300_000)         // 300 µs
        h.record(20_000_000_000)  // 20 s
        let text = h.exposition(name: "x")
        #expect(text.contains("x_bucket{le=\"0.0001\"} 1\n"))
        #expect(text.contains("x_bucket{le=\"0.0005\"} 2\n"))
        #expect(text.contains("x_bucket{le=\"10.0\"} 2\n"))
        #expect(text.contains("x_bucket{le=\"+Inf\"} 3\nx_sum 20.00035\nx_count 3\n"))
    }
}
