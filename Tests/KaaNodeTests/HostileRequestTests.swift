import Foundation
import Glibc
import KaaCore
import KaaTestSupport
import Testing

/// Requests crafted to crash, stall or exhaust a node, each sent to a real node process; after
/// each the node must answer the request with a clear error (or serve it) and stay healthy.
@Suite struct HostileRequestTests {
    static let iris = #"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}"#

    /// A node with iris (and the text sample) published, and a connection to it.
    static func withNode(extra: [String] = [], _ body: (KaaProcess, UInt16, RawSocket, TemporaryDirectory) throws -> Void) throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let (node, port) = try NodeProcessTests.startNode(dir, extra: extra)
        defer { node.signal(SIGTERM); node.wait() }
        try ServingTests.publish("iris-logreg", as: "iris", version: 1, port: port, dir: dir)
        try ServingTests.publish("news-text", as: "news", version: 1, port: port, dir: dir)
        let c = try RawSocket(port: port)
        try body(node, port, c, dir)
        // Whatever came before, the node is alive and still serves.
        let health = try RawSocket(port: port)
        try health.send("GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(try health.readResponse().status == 200)
        #expect(try ServingTests.post(health, "/v2/models/iris/infer", iris).status == 200)
    }

    @Test(arguments: ["100000000000000", "9223372036854775808", "18446744073709", "18446744073709551615"])
    func hugeDeadlinesAreCutNotOverflowed(ms: String) throws {
        try HostileRequestTests.withNode { _, _, c, _ in
            let r = try ServingTests.post(c, "/v2/models/iris/infer", HostileRequestTests.iris, headers: "Kaa-Deadline-Ms: \(ms)\r\n")
            #expect(r.status == 200, "\(r.text)")
            let tooBig = try ServingTests.post(c, "/v2/models/iris/infer", HostileRequestTests.iris,
                                               headers: "Kaa-Deadline-Ms: 1\(ms)00000000000\r\n")
            #expect(tooBig.status == 400, "\(tooBig.text)")
            #expect(tooBig.text.contains("must be a positive number of milliseconds"))
        }
    }

    @Test func binarySizesNearTheLimitsOfAnIntegerAreRefused() throws {
        try HostileRequestTests.withNode { _, _, c, _ in
            for size in ["9223372036854775807", "9223372036854775792", "-1", "18446744073709551615"] {
                let header = #"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":\#(size)}}]}"#
                let body = Array(header.utf8) + [UInt8](repeating: 0, count: 16)
                try c.send("POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: \(header.utf8.count)\r\nContent-Length: \(body.count)\r\n\r\n")
                try c.send(body)
                let r = try c.readResponse()
                #expect(r.status == 400, "\(size): \(r.text)")
                #expect(r.text.contains("binary_data_size"), "\(size): \(r.text)")
            }
            let r = try ServingTests.post(c, "/v2/models/iris/infer", HostileRequestTests.iris,
                                          headers: "Inference-Header-Content-Length: twelve\r\n")
            #expect(r.status == 400, "\(r.text)")
            #expect(r.text.contains("Inference-Header-Content-Length `twelve` must be the byte length of the JSON header"), "\(r.text)")
        }
    }

    @Test func repeatedInputAndOutputNamesAreRefused() throws {
        try HostileRequestTests.withNode { _, _, c, _ in
            let input = #"{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}"#
            // Both the fast path's form and one only the general parser reads.
            for inputs in ["\(input),\(input)", #"\#(input),{"name":"input","shape":[1,4],"datatype":"FP32","data":[[1,2,3,4]]}"#] {
                let r = try ServingTests.post(c, "/v2/models/iris/infer", #"{"inputs":[\#(inputs)]}"#)
                #expect(r.status == 400, "\(r.text)")
                #expect(r.text.contains("input `input` is given twice"), "\(r.text)")
            }
            let outputs = Array(repeating: #"{"name":"output_label"}"#, count: 3).joined(separator: ",")
            let r = try ServingTests.post(c, "/v2/models/iris/infer", #"{"inputs":[\#(input)],"outputs":[\#(outputs)]}"#)
            #expect(r.status == 400, "\(r.text)")
            #expect(r.text.contains("output `output_label` is asked for twice"), "\(r.text)")
        }
    }

    @Test func rowAndElementLimitsRefuseACallBeforeItRuns() throws {
        try HostileRequestTests.withNode(extra: ["--max-call-rows", "100", "--max-call-elements", "1000"]) { _, _, c, _ in
            let rows = Array(repeating: #""""#, count: 101).joined(separator: ",")
            let text = try ServingTests.post(c, "/v2/models/news/infer", #"{"inputs":[{"name":"input","shape":[101,1],"datatype":"BYTES","data":[\#(rows)]}]}"#)
            #expect(text.status == 400, "\(text.text)")
            #expect(text.text.contains("at most 100 rows per call (max_call_rows)"), "\(text.text)")
            // The fast path (flat FP32) and the general path refuse alike.
            let data = Array(repeating: "1", count: 1004).joined(separator: ",")
            for body in [#"{"inputs":[{"name":"input","shape":[251,4],"datatype":"FP32","data":[\#(data)]}]}"#,
                         #"{"inputs":[{"name":"input","shape":[251,4],"datatype":"FP32","data":[\#(data)],"parameters":{}}]}"#] {
                let r = try ServingTests.post(c, "/v2/models/iris/infer", body)
                #expect(r.status == 400, "\(r.text)")
                #expect(r.text.contains("limit of 1000 elements per call (max_call_elements)"), "\(r.text)")
            }
            // A huge declared shape with no data is refused from the shape alone.
            let huge = try ServingTests.post(c, "/v2/models/iris/infer", #"{"inputs":[{"name":"input","shape":[2147483647,4],"datatype":"FP32","data":[]}]}"#)
            #expect(huge.status == 400, "\(huge.text)")
            let ok = Array(repeating: "1", count: 400).joined(separator: ",")
            #expect(try ServingTests.post(c, "/v2/models/iris/infer", #"{"inputs":[{"name":"input","shape":[100,4],"datatype":"FP32","data":[\#(ok)]}]}"#).status == 200)
        }
    }

    @Test func aModelThatFailsToLoadAnswers503AndIsNotRetriedOnEveryCall() throws {
        try HostileRequestTests.withNode(extra: ["--load-retry-after", "1h"]) { node, port, c, dir in
            try ServingTests.publish("iris-logreg", as: "broken", version: 1, port: port, dir: dir)
            // Damage the stored archive in place (same size): its digest no longer verifies at load.
            let path = dir.path + "/data/snapshots/broken/1.kaa"
            var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
            bytes[bytes.count - 20] ^= 0xFF
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            let first = try ServingTests.post(c, "/v2/models/broken/infer", HostileRequestTests.iris)
            #expect(first.status == 503, "\(first.text)")
            #expect(first.text.contains("cannot load broken@1"), "\(first.text)")
            let second = try ServingTests.post(c, "/v2/models/broken/infer", HostileRequestTests.iris)
            #expect(second.status == 503, "\(second.text)")
            #expect(second.text.contains("the next try is in"), "\(second.text)")
            let metrics = try ServingTests.metrics(c)
            #expect(ServingTests.value("kaa_model_load_failures_total", in: metrics) == 1, "one load tried, not one per call")
            // An explicit load request tries again at once.
            let load = try ServingTests.post(c, "/v2/repository/models/broken/load", "")
            #expect(load.status == 503, "\(load.text)")
            #expect(ServingTests.value("kaa_model_load_failures_total", in: try ServingTests.metrics(c)) == 2)
        }
    }

    @Test func clientsThatResetWhileTheirAnswersAreWrittenDoNotKillTheNode() throws {
        try HostileRequestTests.withNode { _, port, _, _ in
            // Many answers asked for, the client's half closed (FIN), then the socket closed with
            // answers unread (RST): the node's next write meets a socket the peer closed, which
            // raises SIGPIPE (and ends the process) unless the node ignores it.
            let rows = Array(repeating: "[5.1,3.5,1.4,0.2]", count: 2_000).joined(separator: ",")
            let request = ServingTests.request("/v2/models/iris/infer",
                #"{"inputs":[{"name":"input","shape":[2000,4],"datatype":"FP32","data":[\#(rows)]}]}"#)
            for _ in 0..<20 {
                let c = try RawSocket(port: port)
                try c.send(String(repeating: request, count: 16))
                Glibc.shutdown(c.fd, Int32(SHUT_WR))
                _ = try? c.readSome() // the first answers are on their way; the rest stay unread
            }
        }
    }

    @Test func aCallOverTheMemoryLimitIsRefusedAndTheNodeKeepsServing() throws {
        try HostileRequestTests.withNode(extra: ["--max-call-bytes", "64KiB"]) { _, _, c, _ in
            let rows = Array(repeating: "[5.1,3.5,1.4,0.2]", count: 4_000).joined(separator: ",")
            let r = try ServingTests.post(c, "/v2/models/iris/infer",
                #"{"inputs":[{"name":"input","shape":[4000,4],"datatype":"FP32","data":[\#(rows)]}]}"#)
            #expect(r.status == 400, "\(r.text)")
            #expect(r.text.contains("limit"), "\(r.text)")
        }
    }
}
