import Foundation
@testable import KaaNode
import KaaTestSupport
import Testing

/// The request series behind `GET /kaa/v1/stats` and the dashboard, driven by hand: the time is
/// an argument, so every second is chosen by the test.
@Suite struct RequestStatsTests {
    static let second: UInt64 = 1_000_000_000
    /// A time far from zero, as the loop's monotonic clock is.
    static let t0: UInt64 = 86_400 * second

    static func ms(_ n: UInt64) -> UInt64 { n * 1_000_000 }

    @Test func callsLandInTheirSecondOldestFirst() {
        var stats = RequestStats(window: 5, maxModels: 10)
        let t = RequestStatsTests.t0, s = RequestStatsTests.second
        stats.record(model: "iris", failed: false, latency: RequestStatsTests.ms(2), now: t)
        stats.record(model: "iris", failed: true, latency: RequestStatsTests.ms(6), now: t + s / 2)
        stats.record(model: "digits", failed: false, latency: RequestStatsTests.ms(1), now: t + 2 * s)
        let report = stats.report(now: t + 3 * s, top: 10)
        // Seconds t-1 ... t+3: the window ends with the second under way.
        #expect(report.total.buckets.map(\.calls) == [0, 2, 0, 1, 0])
        #expect(report.total.buckets.map(\.errors) == [0, 1, 0, 0, 0])
        #expect(report.total.buckets[1].meanMicroseconds == 4_000)
        #expect(report.total.buckets[1].latencyMax == RequestStatsTests.ms(6))
        #expect(report.models.map(\.name) == ["iris", "digits"], "busiest first")
        #expect(report.models[0].buckets.map(\.calls) == [0, 2, 0, 0, 0])
        #expect(report.models[1].buckets.map(\.calls) == [0, 0, 0, 1, 0])
        #expect(report.modelsWithCalls == 2)
    }

    @Test func aSlotIsClearedBeforeItsSecondIsUsedAgain() {
        var stats = RequestStats(window: 3, maxModels: 10)
        let t = RequestStatsTests.t0, s = RequestStatsTests.second
        for _ in 0..<4 { stats.record(model: "m", failed: false, latency: 1_000, now: t) }
        // Three seconds on, the slot of `t` serves `t + 3`: the old calls are not counted there.
        stats.record(model: "m", failed: false, latency: 1_000, now: t + 3 * s)
        #expect(stats.report(now: t + 3 * s, top: 1).total.buckets.map(\.calls) == [0, 0, 1])
        // Far beyond the window: nothing of the past remains.
        stats.record(model: "m", failed: false, latency: 1_000, now: t + 100 * s)
        #expect(stats.report(now: t + 100 * s, top: 1).models[0].buckets.map(\.calls) == [0, 0, 1])
        // A report later than the last call shows the seconds since as empty.
        #expect(stats.report(now: t + 102 * s, top: 1).total.buckets.map(\.calls) == [1, 0, 0])
        #expect(stats.report(now: t + 103 * s, top: 1).total.buckets.map(\.calls) == [0, 0, 0])
    }

    @Test func aLateRecordCountsInItsSecondOrNowhere() {
        var stats = RequestStats(window: 3, maxModels: 10)
        let t = RequestStatsTests.t0, s = RequestStatsTests.second
        stats.record(model: "m", failed: false, latency: 1_000, now: t + 5 * s)
        stats.record(model: "m", failed: false, latency: 1_000, now: t + 4 * s)  // within the window
        stats.record(model: "m", failed: false, latency: 1_000, now: t + 2 * s)  // older than it
        #expect(stats.report(now: t + 5 * s, top: 1).total.buckets.map(\.calls) == [0, 1, 1])
    }

    @Test func idleModelsAreDropped() {
        var stats = RequestStats(window: 10, maxModels: 100)
        let t = RequestStatsTests.t0, s = RequestStatsTests.second
        for i in 0..<50 { stats.record(model: "m\(i)", failed: false, latency: 1_000, now: t) }
        #expect(stats.modelCount == 50)
        stats.record(model: "busy", failed: false, latency: 1_000, now: t + 9 * s)
        #expect(stats.modelCount == 51, "still within the window")
        stats.record(model: "busy", failed: false, latency: 1_000, now: t + 10 * s)
        #expect(stats.modelCount == 1, "the fifty had no call in the window ending now")
        #expect(stats.report(now: t + 10 * s, top: 100).models.map(\.name) == ["busy"])
    }

    @Test func modelsPastTheCapShareOneSeries() {
        var stats = RequestStats(window: 10, maxModels: 3)
        let t = RequestStatsTests.t0, s = RequestStatsTests.second
        for name in ["a", "b", "c", "d", "e"] { stats.record(model: name, failed: false, latency: 1_000, now: t) }
        stats.record(model: "a", failed: false, latency: 1_000, now: t)
        #expect(stats.modelCount == 4, "three of their own and `_other`")
        let report = stats.report(now: t, top: 10)
        #expect(report.models.map(\.name) == ["_other", "a", "b", "c"])
        #expect(report.models.map(\.calls) == [2, 2, 1, 1])
        #expect(report.total.calls == 6, "the node's series counts every call")
        // Once the first ones are idle, a new model gets its own series again.
        stats.record(model: "f", failed: false, latency: 1_000, now: t + 10 * s)
        #expect(stats.report(now: t + 10 * s, top: 10).models.map(\.name) == ["f"])
    }

    @Test func memoryStaysBoundedWithTenThousandModels() {
        var stats = RequestStats()
        let t = RequestStatsTests.t0
        for i in 0..<10_000 { stats.record(model: "model-\(i)", failed: i % 7 == 0, latency: UInt64(i), now: t + UInt64(i) * 1_000_000) }
        #expect(stats.modelCount == stats.maxModels + 1)
        let report = stats.report(now: t + 10 * RequestStatsTests.second, top: 10)
        #expect(report.total.calls == 10_000)
        #expect(report.models.count == 10)
        #expect(report.models[0].name == RequestStats.otherModels && report.models[0].calls == 9_000)
        #expect(report.modelsWithCalls == 1_001)
    }

    @Test func theTopModelsAreTheBusiestThenByName() {
        var stats = RequestStats(window: 10, maxModels: 100)
        let t = RequestStatsTests.t0
        for (name, n) in [("c", 2), ("a", 2), ("b", 5), ("d", 1)] {
            for _ in 0..<n { stats.record(model: name, failed: false, latency: 1, now: t) }
        }
        #expect(stats.report(now: t, top: 3).models.map(\.name) == ["b", "a", "c"])
        #expect(stats.report(now: t, top: 0).models.isEmpty)
        #expect(stats.report(now: t, top: 0).modelsWithCalls == 4)
    }

    @Test func theStatsParameterAndTheReportJSON() throws {
        #expect(try StatsRoute.modelsParameter(nil).get() == StatsRoute.defaultModels)
        #expect(try StatsRoute.modelsParameter("0").get() == 0)
        for bad in ["-1", "101", "x", ""] {
            guard case .failure(let why) = StatsRoute.modelsParameter(bad) else { Issue.record("`\(bad)` taken"); continue }
            #expect(why.message.contains("must be a whole number from 0 to 100"))
        }

        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let store = try DeadLetterStore(path: dir.path + "/deadletters.sqlite")
        func letter(_ id: String, _ by: String, _ reason: DeadLetter.Reason) -> DeadLetter {
            DeadLetter(id: id, requestID: "r-\(id)", model: "iris", target: "/v2/models/iris/infer", headers: [], payload: Data("{}".utf8),
                       reason: reason, message: "m", attempts: [], acceptedBy: by, createdAt: 1_000)
        }
        try store.write(letter("01A", "n1", .noHolder))
        try store.write(letter("01B", "n1", .deadline))
        try store.write(letter("01C", "n1", .noHolder))
        try store.write(letter("01D", "n2", .noHolder)) // a copy of another node's: not counted as n1's

        var requests = RequestStats(window: 4, maxModels: 10)
        let t = RequestStatsTests.t0
        requests.record(model: "iris", failed: false, latency: RequestStatsTests.ms(3), now: t)
        requests.record(model: "iris", failed: true, latency: RequestStatsTests.ms(5), now: t)
        let taken = StatsRoute.Taken(node: "n1", id: "id-1", requests: requests, now: t, unixMs: 42, models: 10)
        let bytes = StatsRoute.json(taken, deadLetters: store)
        let report = try #require(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
        #expect(report["node"] as? String == "n1")
        #expect(report["window_seconds"] as? Int == 4)
        #expect(report["models_with_calls"] as? Int == 1)
        let total = try #require(report["total"] as? [String: Any])
        #expect(total["calls"] as? [Int] == [0, 0, 0, 2])
        #expect(total["errors"] as? [Int] == [0, 0, 0, 1])
        #expect(total["latency_mean_us"] as? [Int] == [0, 0, 0, 4_000])
        #expect(total["latency_max_us"] as? [Int] == [0, 0, 0, 5_000])
        let models = try #require(report["models"] as? [[String: Any]])
        #expect(models.map { $0["name"] as? String } == ["iris"])
        let dead = try #require(report["dead_letters"] as? [String: Any])
        let reasons = try #require(dead["by_reason"] as? [String: Int])
        #expect(reasons == ["deadline": 1, "no-holder": 2, "unreachable": 0, "holder-failed": 0, "shutdown": 0])
        #expect((dead["newest"] as? [[String: Any]])?.map { $0["id"] as? String } == ["01C", "01B", "01A"], "newest first, n1's only")

        // The cluster view keeps the answers that are JSON objects and names the rest.
        let merged = StatsRoute.merge([("n1", bytes), ("n2", Array("not json".utf8))], failed: ["n3"])
        let cluster = try #require(try JSONSerialization.jsonObject(with: Data(merged)) as? [String: Any])
        #expect((cluster["nodes"] as? [[String: Any]])?.map { $0["node"] as? String } == ["n1"])
        #expect(cluster["unreachable"] as? [String] == ["n2", "n3"])
    }
}
