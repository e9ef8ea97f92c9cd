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
        #expect(why([0, 0, 0, 2] + Array("{}".utf8)).hasPrefix("the head is not the JSON of a call"))
        #expect(why(ForwardedCall.encode(["method": "GET"], body: [])).hasPrefix("the head is not the JSON of a call"))
    }
}
