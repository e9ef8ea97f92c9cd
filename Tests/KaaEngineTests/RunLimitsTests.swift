import Foundation
@testable import KaaEngine
import Testing

/// A call is refused, before the array that would cross it is allocated, when it would hold
/// more memory than its `RunLimits` allow; what it holds is what is live at once, not the sum
/// of everything handed out.
@Suite struct RunLimitsTests {
    static let mib = 1 << 20

    /// `MatMul` of `a` by `b`, both graph inputs without a declared shape.
    static func matMul() throws -> Model {
        try ShapeArithmeticTests.model("MatMul", [("a", .float32), ("b", .float32)])
    }

    /// A chain of `count` Relu nodes from `x` to `y`.
    static func reluChain(_ count: Int) throws -> Model {
        let nodes = (0..<count).map { i in
            LoaderErrorTests.node("Relu", [i == 0 ? "x" : "r\(i - 1)"], [i == count - 1 ? "y" : "r\(i)"])
        }
        return try GemmTests.model(nodes, x: [1, 1024], batch: "batch", constants: [], asInputs: false)
    }

    /// The least limit a run of `model` on `inputs` passes: the most it holds at once.
    static func peak(_ model: Model, _ inputs: [String: Tensor]) throws -> Int {
        var low = 0, high = 1 << 31
        while low < high {
            let mid = (low + high) / 2
            do {
                _ = try model.run(inputs, limits: RunLimits(maxBytes: mid))
                high = mid
            } catch let e as EngineError where e.code == .limitExceeded {
                low = mid + 1
            }
        }
        return low
    }

    @Test func aProductOverTheLimitIsRefusedNamingTheStepAndTheLimit() throws {
        // The reproduced case in small: [1024, 0] x [0, 1024] asks for 4 MiB of zeros.
        let model = try Self.matMul()
        let inputs = ["a": ShapeArithmeticTests.floats([1024, 0]), "b": ShapeArithmeticTests.floats([0, 1024])]
        let e = try #require(ShapeArithmeticTests.error(model, inputs, limits: RunLimits(maxBytes: Self.mib)))
        #expect(e.code == .limitExceeded)
        for part in ["`MatMul` node", "4 MiB (4194304 bytes)", "1048576 float32 elements", "the per-call limit is 1 MiB (1048576 bytes)", "smaller batch"] {
            #expect(e.message.contains(part), "missing \(part): \(e.message)")
        }
        let out = try model.run(inputs, limits: RunLimits(maxBytes: 5 * Self.mib))
        #expect(out["y"]?.shape == [1024, 1024] && out["y"]?.floats?.allSatisfy { $0 == 0 } == true)
        // Without limits a call may hold 1 GiB: [32768, 0] x [0, 32768] would need 4 GiB.
        let big = try #require(ShapeArithmeticTests.error(model, ["a": ShapeArithmeticTests.floats([32768, 0]), "b": ShapeArithmeticTests.floats([0, 32768])]))
        #expect(big.code == .limitExceeded && big.message.contains("the per-call limit is 1 GiB"), "\(big)")
    }

    /// Ten Relus of 1 MiB each hold two arrays at once (input and output of the step that
    /// runs): 2 MiB passes, though 10 MiB are handed out in all; less than 2 MiB does not.
    @Test func theLimitCountsWhatIsLiveAtOnce() throws {
        let model = try Self.reluChain(10)
        let x = ["x": Tensor(shape: [256, 1024], floats: [Float](repeating: -1, count: 256 * 1024))]
        #expect(try Self.peak(model, x) == 2 * Self.mib)
        let e = try #require(ShapeArithmeticTests.error(model, x, limits: RunLimits(maxBytes: 2 * Self.mib - 1)))
        #expect(e.code == .limitExceeded && e.message.contains("`Relu` node"), "\(e)")
        // The caller's input is not the call's to count: one Relu holds its output only.
        #expect(try Self.peak(try Self.reluChain(1), x) == Self.mib)
    }

    /// Arrays reused from earlier calls count as new ones do: a call that allocates nothing
    /// is still refused over its limit.
    @Test func reusedArraysCountToo() throws {
        let model = try Self.reluChain(3)
        let x = ["x": Tensor(shape: [64, 1024], floats: [Float](repeating: 1, count: 64 * 1024))]
        var out: [String: Tensor] = [:]
        for _ in 0..<3 { try model.run(x, into: &out) }
        #expect(throws: EngineError.self) { try model.run(x, into: &out, limits: RunLimits(maxBytes: 256 * 1024)) }
        try model.run(x, into: &out, limits: RunLimits(maxBytes: 512 * 1024))
        #expect(out["y"]?.floats?.first == 1)
    }

    /// The default (1 GiB) is far above what ordinary calls hold: every sample model at batch
    /// 4096 holds under 1% of it (RunLimits.default's documentation says so).
    @Test(arguments: ["iris-logreg", "digits-mlp", "diabetes-gbr", "wine-forest", "news-text"])
    func samplesAtBatch4096HoldUnderOnePercentOfTheDefault(name: String) throws {
        let (model, inputs, _) = try AllocationTests.sample(name)
        let rows = inputs.values.first!.shape[0]
        let batch = inputs.mapValues { t in
            let picks = (0..<4096).map { SampleModelTests.rowSlice(t, $0 % rows) }
            var shape = t.shape
            shape[0] = 4096
            let storage: Tensor.Storage = switch t.storage {
            case .float32: .float32(picks.flatMap { $0.floats! })
            case .float64: .float64(picks.flatMap { $0.doubles! })
            case .int64: .int64(picks.flatMap { $0.int64s! })
            case .string: .string(picks.flatMap { $0.strings! })
            default: t.storage
            }
            return Tensor(shape: shape, storage: storage)
        }
        let peak = try Self.peak(model, batch)
        print("\(name) at batch 4096 holds \(EngineError.bytes(peak))")
        #expect(peak > 0 && peak < RunLimits.default.maxBytes / 100, "\(name): \(peak) bytes")
    }

    /// Through a pipeline, the pre steps' blocks count with the graph's run: a `text_hash` of
    /// 2^20 columns for 16 rows (64 MiB) is refused under a 32 MiB limit, naming the step.
    @Test func pipelineStepsCountAgainstTheLimit() throws {
        let model = try PipelineTests.model("Relu", .float32, [1 << 20])
        let scorer = try PipelineTests.scorer("""
            fields: [{name: text, dtype: string}]
            pre:
              - {step: text_hash, field: text, output: features, width: 1048576}
              - {step: select, into: X, fields: [features]}
            """, model)
        let texts = ["text": Tensor(shape: [16], strings: (0..<16).map { "words number \($0)" })]
        let e = try #require(PipelineTests.error { _ = try scorer.run(texts, limits: RunLimits(maxBytes: 32 * Self.mib)) })
        #expect(e.code == .limitExceeded && e.step?.kind == "text_hash", "\(e)")
        #expect(e.message.contains("the per-call limit is 32 MiB"), "\(e)")
        // The graph's run counts on top of what the pre steps hold: the 64 MiB of features
        // (which `select` passes on as they are), then Relu's 64 MiB output.
        let g = try #require(PipelineTests.error { _ = try scorer.run(texts, limits: RunLimits(maxBytes: 128 * Self.mib - 1)) })
        #expect(g.code == .limitExceeded && g.message.contains("`Relu` node"), "\(g)")
        let out = try scorer.run(texts, limits: RunLimits(maxBytes: 128 * Self.mib))
        #expect(out["Y"]?.shape == [16, 1 << 20])
    }
}
