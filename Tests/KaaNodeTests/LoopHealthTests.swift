import Dispatch
import Foundation
import Glibc
import KaaCluster
import KaaCore
import KaaIO
@testable import KaaNode
import Logging
import Testing

/// What keeps the node's loop answering, and what shows when it does not.
@Suite struct LoopHealthTests {
    @Test func aBlockedLoopShowsInTheLagHistogram() throws {
        let loop = EventLoop.start(name: "lag")
        defer { loop.shutdown() }
        let lag = loop.runBlocking { LoopBound(LoopLag(loop: loop, logger: Logger(label: "test")), loop: loop) }
        loop.runBlocking { lag.value.start() }
        // A few ticks on time, then one piece of work that holds the loop for 400 ms: the tick
        // due within 100 ms of its start runs at least 300 ms late, however fast the machine.
        Thread.sleep(forTimeInterval: 0.35)
        loop.runBlocking { usleep(400_000) }
        Thread.sleep(forTimeInterval: 0.25)
        let (worst, text) = loop.runBlocking { (lag.value.worstNanoseconds, lag.value.metricsText) }
        loop.runBlocking { lag.value.stop() }
        #expect(worst >= 300_000_000)
        let buckets = Dictionary(uniqueKeysWithValues: text.split(separator: "\n").compactMap { line -> (String, Int)? in
            guard line.hasPrefix("kaa_loop_lag_seconds_bucket{le=\""), let value = line.split(separator: " ").last.flatMap({ Int($0) }) else { return nil }
            return (String(line.split(separator: "\"")[1]), value)
        })
        // Cumulative buckets: at least one tick beyond 0.25 s, and more than one tick in all.
        let all = try #require(buckets["+Inf"]), upTo250ms = try #require(buckets["0.25"])
        #expect(all - upTo250ms >= 1)
        #expect(all >= 3)
        #expect(text.contains("kaa_loop_lag_max_seconds "))
    }

    @Test func thePlacementReportIsTheJSONOperatorsRead() throws {
        let a = NodeID("a-id"), b = NodeID("b-id"), c = NodeID("c-id")
        let report = PlacementReport(
            digest: "d1", replication: 2, settled: true, digestsAgree: false, snapshotsTotal: 2, underReplicated: 1, fetching: 3,
            rows: [
                .init(key: "zeta@2", name: "zeta", version: 2, holders: [.init(node: b, state: "fetching"), .init(node: c, state: "down")],
                      others: [.init(node: a, state: "draining")], ready: 0, replicated: false),
                .init(key: "alpha \"q\"@1", name: "alpha \"q\"", version: 1,
                      holders: [.init(node: a, state: "ready"), .init(node: b, state: "ready")], others: [], ready: 2, replicated: true),
            ],
            load: [a: 10, b: 20], names: [a: "n1", b: "n2"], httpAddresses: [a: "127.0.0.1:1", b: "127.0.0.1:2"],
            aliases: [("zeta", "stable", 2), ("alpha \"q\"", "canary", 1), ("zeta", "canary", 1)])
        let object = try #require(try JSONSerialization.jsonObject(with: Data(report.json())) as? [String: Any])
        #expect(object["digest"] as? String == "d1")
        #expect(object["digests_agree"] as? Bool == false)
        #expect(object["settled"] as? Bool == true)
        #expect(object["replication"] as? Int == 2)
        #expect(object["fetching"] as? Int == 3)
        #expect(object["snapshots_total"] as? Int == 2)
        #expect(object["under_replicated"] as? Int == 1)
        #expect(object["load"] as? [String: Int] == ["n1": 10, "n2": 20])
        #expect(object["aliases"] as? [String: [String: Int]] == ["alpha \"q\"": ["canary": 1], "zeta": ["canary": 1, "stable": 2]])
        let rows = try #require(object["snapshots"] as? [[String: Any]])
        #expect(rows.map { $0["name"] as? String } == ["alpha \"q\"", "zeta"]) // by key
        let zeta = rows[1]
        #expect(zeta["version"] as? Int == 2)
        #expect(zeta["ready"] as? Int == 0)
        #expect(zeta["replicated"] as? Bool == false)
        let holders = try #require(zeta["holders"] as? [[String: String]])
        // A node the members view has no name for is shown by its id, with no address.
        #expect(holders == [["id": "b-id", "name": "n2", "http_addr": "127.0.0.1:2", "state": "fetching"],
                            ["id": "c-id", "name": "c-id", "http_addr": "", "state": "down"]])
        #expect(zeta["others"] as? [[String: String]] == [["id": "a-id", "name": "n1", "state": "draining"]])
        // Keys in sorted order, as before, so that a diff of two answers is a diff of values.
        let text = String(decoding: report.json(), as: UTF8.self)
        #expect(text.hasPrefix("{\"aliases\":{\"alpha \\\"q\\\"\":{\"canary\":1},\"zeta\":{\"canary\":1,\"stable\":2}},\"digest\":\"d1\",\"digests_agree\":false,\"fetching\":3,\"load\":{\"n1\":10,\"n2\":20},\"replication\":2,"))
        #expect(text.contains("{\"holders\":[{\"http_addr\":\"127.0.0.1:1\",\"id\":\"a-id\",\"name\":\"n1\",\"state\":\"ready\"}"))
    }
}
