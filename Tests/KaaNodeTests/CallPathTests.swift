import Foundation
import KaaCore
import KaaIO
@testable import KaaNode
import KaaSnapshot
import KaaTestSupport
import Logging
import Synchronization
import Testing

/// The call path in-process: admission driven by hand, the registry's resolution, the
/// exactly-once completion, and the model server with a real store and loop, no HTTP.
@Suite struct AdmissionTests {
    typealias A = Admission<Int>
    static let settings = A.Settings(concurrency: 2, queueLimit: 2, inlineThresholdNanos: 100_000)

    @Test func startsUpToTheLimitQueuesUpToTheQueueThenRefuses() {
        var a = A(AdmissionTests.settings)
        let decisions = (1...5).map { a.arrive($0, deadline: 1_000, now: 0) }
        #expect(decisions.map(AdmissionTests.describe) == ["start 1", "start 2", "queued", "queued", "overloaded 5"])
        #expect(a.running == 2 && a.waiting == 2)
        #expect(a.finished(now: 10).map(AdmissionTests.describe) == ["start 3"])
        #expect(a.running == 2 && a.waiting == 1)
    }

    @Test func callsWhoseDeadlinePassedWhileWaitingExpireInsteadOfStarting() {
        var a = A(AdmissionTests.settings)
        _ = a.arrive(1, deadline: 1_000, now: 0)
        _ = a.arrive(2, deadline: 1_000, now: 0)
        _ = a.arrive(3, deadline: 50, now: 0)
        _ = a.arrive(4, deadline: 1_000, now: 0)
        // Call 3's deadline passed by the time a slot frees: it expires and call 4 starts.
        #expect(a.finished(now: 100).map(AdmissionTests.describe) == ["expired 3", "start 4"])
        #expect(a.arrive(5, deadline: 99, now: 100).map(AdmissionTests.describe) == "expired 5")
    }

    @Test func aModelMeasuredTinyRunsInlineWhenNothingRunsOnThePool() {
        var a = A(AdmissionTests.settings)
        #expect(AdmissionTests.describe(a.arrive(1, deadline: 1_000, now: 0)) == "start 1")
        a.measured(20_000)
        // Measured under the threshold, but a call is on the pool: order is kept.
        #expect(AdmissionTests.describe(a.arrive(2, deadline: 1_000, now: 0)) == "start 2")
        _ = a.finished(now: 1)
        _ = a.finished(now: 1)
        #expect(AdmissionTests.describe(a.arrive(3, deadline: 1_000, now: 2)) == "inline 3")
        // Measured over it (one slow call moves the average up), the model goes to the pool.
        a.measured(10_000_000)
        #expect(AdmissionTests.describe(a.arrive(4, deadline: 1_000, now: 2)) == "start 4")
    }

    @Test func removeAllWaitingEmptiesTheQueue() {
        var a = A(A.Settings(concurrency: 1, queueLimit: 10, inlineThresholdNanos: 0))
        for i in 1...6 { _ = a.arrive(i, deadline: 1_000, now: 0) }
        #expect(a.removeAllWaiting() == [2, 3, 4, 5, 6])
        #expect(a.waiting == 0)
        #expect(a.finished(now: 1).isEmpty)
    }

    static func describe(_ d: A.Decision) -> String {
        switch d {
        case .runInline(let t): "inline \(t)"
        case .start(let t): "start \(t)"
        case .queued: "queued"
        case .overloaded(let t): "overloaded \(t)"
        case .expired(let t): "expired \(t)"
        }
    }
}

extension Admission<Int>.Decision {
    func map(_ f: (Self) -> String) -> String { f(self) }
}

@Suite struct ModelRegistryTests {
    @Test func resolvesThroughStableThenLatestAndNamesWhatExists() throws {
        var r = ModelRegistry()
        r.stored(SnapshotID(validName: "iris", version: 2))
        r.stored(SnapshotID(validName: "iris", version: 1))
        r.stored(SnapshotID(validName: "wine", version: 4))
        #expect(try r.resolve(name: "iris", version: nil).version == 2)
        r.aliasSet(name: "iris", alias: "stable", version: 1)
        #expect(try r.resolve(name: "iris", version: nil).version == 1)
        #expect(try r.resolve(name: "iris", version: "2").version == 2)
        #expect(try r.resolve(name: "iris", version: "stable").version == 1)
        #expect { try r.resolve(name: "nope", version: nil) } throws: {
            ($0 as? CallError)?.code == .notFound && "\($0)".contains("model `nope` does not exist; models: iris, wine")
        }
        #expect { try r.resolve(name: "iris", version: "9") } throws: { "\($0)".contains("has no version 9; versions: 1, 2") }
        #expect { try r.resolve(name: "iris", version: "canary") } throws: {
            "\($0)".contains("has no version or alias `canary`; versions: 1, 2; aliases: stable")
        }
        r.removed(SnapshotID(validName: "wine", version: 4))
        #expect(!r.contains("wine"))
        #expect(r.versionCount == 2)
        // Aliases are cluster state: kept for models and versions this node does not hold.
        r.aliasSet(name: "rose", alias: "stable", version: 3)
        r.aliasSet(name: "iris", alias: "stable", version: 5)
        #expect { try r.resolve(name: "iris", version: nil) } throws: {
            "\($0)".contains("alias `stable` is version 5, which this node does not hold; versions here: 1, 2")
        }
        r.stored(SnapshotID(validName: "rose", version: 3))
        #expect(try r.resolve(name: "rose", version: nil).version == 3, "an alias that arrived before its version")
        r.aliasSet(name: "iris", alias: "stable", version: nil)
        #expect(try r.resolve(name: "iris", version: nil).version == 2)
    }
}

/// Collects the results delivered to it.
final class ResultBox: CallSink, Sendable {
    let results = Mutex<[CallResult]>([])
    let delivered = DispatchSemaphore(value: 0)
    func deliver(_ result: CallResult) {
        results.withLock { $0.append(result) }
        delivered.signal()
    }
    var codes: [String] { results.withLock { $0.map { r in if case .failure(let e) = r { e.code.description } else { "ok" } } } }
}

struct NoSink: CallSink {
    func deliver(_ result: CallResult) {}
}

@Suite struct CallCompletionTests {
    @Test func theFirstCompletionWinsAndLaterOnesAreIgnored() {
        let box = ResultBox()
        let c = CallCompletion(box, label: "m")
        #expect(c.complete(.success(CallAnswer(body: [1], headerLength: nil))))
        #expect(!c.complete(.failure(CallError(.internal, "late"))))
        #expect(box.codes == ["ok"])
        #expect(c.isCompleted)
    }

    @Test func aCompletionDroppedUnansweredTrapsInDebugBuilds() async {
        await #expect(processExitsWith: .failure) {
            _ = CallCompletion(NoSink(), label: "dropped")
        }
    }
}

/// A model server over a real store and loop, with no HTTP in between.
final class ServerHarness {
    let dir = TemporaryDirectory()
    let loop = EventLoop.start(name: "call-path-test")
    let store: SnapshotStore
    let server: LoopBound<ModelServer>

    init(config: ServingConfig) throws {
        let archive = dir.path + "/iris.kaa"
        let build = try KaaProcess.run(["snapshot", "build", "--model", "\(ServingTests.repo)/snapshots/iris-logreg/model.onnx",
                                        "--name", "iris", "--version", "1", "--out", archive])
        guard build.0 == 0 else { throw RawSocketError("build: \(build.2)") }
        store = try SnapshotStore(configuration: .init(directory: dir.path + "/data"), logger: Logger(label: "test"))
        _ = try store.ingest(file: archive)
        let registry = try ModelRegistry.load(from: store)
        server = loop.runBlocking { [loop, store] in
            LoopBound(ModelServer(loop: loop, store: store, registry: registry, config: config, metrics: ServingMetrics(),
                                  logger: Logger(label: "test")), loop: loop)
        }
    }

    static let irisBody = Array(#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}"#.utf8)

    /// Sends `count` calls in one turn of the loop, then runs `then` in the same turn.
    func send(_ count: Int, model: String = "iris", body: [UInt8] = irisBody, then: @escaping @Sendable (ModelServer) -> Void = { _ in }) -> [ResultBox] {
        let boxes = (0..<count).map { _ in ResultBox() }
        let server = self.server
        loop.execute {
            let now = server.value.loop.nowNanoseconds
            for box in boxes {
                server.value.call(InferenceCall(model: model, version: nil, body: body, headerLength: nil,
                                                received: now, deadline: now + 10_000_000_000), CallCompletion(box, label: model))
            }
            then(server.value)
        }
        for box in boxes { box.delivered.wait() }
        return boxes
    }

    func stop() {
        loop.shutdown()
        dir.remove()
    }
}

@Suite struct ModelServerTests {
    @Test func aCallIsAnsweredWithTheModelsOutputs() throws {
        let h = try ServerHarness(config: ServingConfig())
        defer { h.stop() }
        let box = h.send(1)[0]
        let answer = try #require(try box.results.withLock { $0 }.first?.get())
        #expect(String(decoding: answer.body, as: UTF8.self).contains(#""name":"output_label","datatype":"INT64","shape":[1],"data":[0]"#))
        #expect(h.send(1, model: "nope")[0].codes == ["not-found"])
        #expect(h.send(1, body: Array("{".utf8))[0].codes == ["bad-request"])
    }

    @Test func aFullQueueRefusesTheCallAsOverloaded() throws {
        var config = ServingConfig()
        config.modelConcurrency = 1
        config.modelQueue = 1
        config.inlineThreshold = .zero
        let h = try ServerHarness(config: config)
        defer { h.stop() }
        _ = h.send(1) // loads the model
        #expect(h.send(3).flatMap(\.codes) == ["ok", "ok", "overloaded"])
    }

    @Test func theEndOfTheShutdownGraceAnswersEveryUnfinishedCall() throws {
        var config = ServingConfig()
        config.modelConcurrency = 1
        config.modelQueue = 8
        config.inlineThreshold = .zero
        let h = try ServerHarness(config: config)
        defer { h.stop() }
        _ = h.send(1) // loads the model
        // One call on the pool and four queued; the grace ends in the same turn of the loop.
        let boxes = h.send(5) { $0.endGrace() }
        #expect(boxes.flatMap(\.codes) == Array(repeating: "shutting-down", count: 5))
        // The call that was running finishes on its worker later: its result is not delivered twice.
        Thread.sleep(forTimeInterval: 0.2)
        #expect(boxes.allSatisfy { $0.results.withLock { $0.count } == 1 })
        // Calls waiting for a model to load are answered too.
        let loading = try ServerHarness(config: config)
        defer { loading.stop() }
        #expect(loading.send(2) { $0.endGrace() }.flatMap(\.codes) == ["shutting-down", "shutting-down"])
    }
}
