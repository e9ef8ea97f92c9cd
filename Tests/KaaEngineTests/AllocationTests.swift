import Foundation
import KaaAllocationCounter
@testable import KaaEngine
import Testing

/// The plan's buffers are reused: once a model has run a batch size, running it again with
/// that batch size (handing back the previous outputs) allocates nothing, and the reused
/// memory never leaks one call's values into another's results.
@Suite struct AllocationTests {
    /// Heap allocations this thread makes while `body` runs (malloc family, counted by the
    /// KaaAllocationCounter interposer).
    static func allocations(_ body: () throws -> Void) rethrows -> Int {
        kaa_allocations_start()
        defer { _ = kaa_allocations_stop() }
        try body()
        return kaa_allocations_stop()
    }

    /// Allocations of 20 calls of `run`, after two that fill the workspace.
    static func allocationsOfRepeats(_ run: () throws -> Void) rethrows -> Int {
        try run()
        try run()
        return try allocations { for _ in 0..<20 { try run() } }
    }

    static func sample(_ name: String) throws -> (Model, [String: Tensor], [String: Tensor]) {
        let bytes = try Data(contentsOf: SampleModelTests.root.appendingPathComponent("snapshots/\(name)/model.onnx"))
        return (try Model(onnx: bytes), try SampleModelTests.load(name, "inputs.json"), try SampleModelTests.load(name, "outputs.json"))
    }

    /// The torch.onnx.export form of an MLP (Gemm transB=1 + Relu), with seeded weights.
    static func torchMLP(_ sizes: [Int]) throws -> Model {
        var values = GemmTests.Values(state: 11)
        var nodes: [Onnx_NodeProto] = []
        var constants: [Onnx_TensorProto] = []
        var prev = "x"
        for (i, (a, b)) in zip(sizes, sizes.dropFirst()).enumerated() {
            constants.append(GemmTests.tensor("w\(i)", [b, a], values.array(a * b)))
            constants.append(GemmTests.tensor("b\(i)", [b], values.array(b)))
            let last = i == sizes.count - 2
            var gemm = LoaderErrorTests.node("Gemm", [prev, "w\(i)", "b\(i)"], [last ? "y" : "g\(i)"])
            gemm.name = "gemm_\(i)"
            gemm.attribute = [GemmTests.attribute("transB", int: 1)]
            nodes.append(gemm)
            if !last {
                var relu = LoaderErrorTests.node("Relu", ["g\(i)"], ["r\(i)"])
                relu.name = "relu_\(i)"
                nodes.append(relu)
                prev = "r\(i)"
            }
        }
        return try GemmTests.model(nodes, x: [1, Int64(sizes[0])], batch: "batch", constants: constants, asInputs: false)
    }

    @Test func counterSeesAllocations() throws {
        try #require(kaa_allocations_available() == 1, "the allocation counter needs glibc")
        let n = Self.allocations { _ = [Int](repeating: 1, count: Int.random(in: 100...200)) }
        #expect(n >= 1)
    }

    @Test(arguments: ["iris-logreg", "digits-mlp", "diabetes-gbr", "wine-forest"])
    func sampleRunsWithoutAllocating(name: String) throws {
        try #require(kaa_allocations_available() == 1, "the allocation counter needs glibc")
        let (model, inputs, want) = try Self.sample(name)
        let one = inputs.mapValues { SampleModelTests.rowSlice($0, 0) }
        for batch in [inputs, one] {
            var out: [String: Tensor] = [:]
            let n = try Self.allocationsOfRepeats { try model.run(batch, into: &out) }
            #expect(n == 0, "\(name), batch \(batch.values.first!.shape[0]): \(n) allocations in 20 calls")
        }
        _ = want
    }

    @Test func torchStyleMLPRunsWithoutAllocating() throws {
        try #require(kaa_allocations_available() == 1, "the allocation counter needs glibc")
        let model = try Self.torchMLP([784, 256, 128, 10])
        var values = GemmTests.Values(state: 5)
        for rows in [1, 64] {
            let x = ["x": Tensor(shape: [rows, 784], floats: values.array(rows * 784))]
            var out: [String: Tensor] = [:]
            let n = try Self.allocationsOfRepeats { try model.run(x, into: &out) }
            #expect(n == 0, "batch \(rows): \(n) allocations in 20 calls")
        }
    }

    /// Alternating batch sizes, and handing back outputs, never changes a result: every reused
    /// array is written in full before it is read.
    @Test(arguments: ["iris-logreg", "digits-mlp", "diabetes-gbr", "wine-forest", "news-text"])
    func reuseKeepsResultsExact(name: String) throws {
        let (model, inputs, want) = try Self.sample(name)
        let rows = inputs.values.first!.shape[0]
        var out: [String: Tensor] = [:]
        for round in 0..<3 {
            for r in [0, rows / 2, rows - 1] {
                try model.run(inputs.mapValues { SampleModelTests.rowSlice($0, r) }, into: &out)
                for (k, w) in want {
                    let problems = SampleModelTests.compare(try #require(out[k]), SampleModelTests.rowSlice(w, r))
                    #expect(problems.isEmpty, "\(name) round \(round) row \(r) output `\(k)`: \(problems.joined(separator: "; "))")
                }
            }
            try model.run(inputs, into: &out)
            for (k, w) in want {
                let problems = SampleModelTests.compare(try #require(out[k]), w)
                #expect(problems.isEmpty, "\(name) round \(round) output `\(k)`: \(problems.joined(separator: "; "))")
            }
        }
        // Outputs the caller keeps are never overwritten by later calls.
        let kept = try model.run(inputs)
        _ = try model.run(inputs.mapValues { SampleModelTests.rowSlice($0, 0) })
        _ = try model.run(inputs)
        for (k, w) in want { #expect(SampleModelTests.compare(kept[k]!, w).isEmpty, "\(name) kept output `\(k)`") }
    }

    /// A scorer without a pipeline hands its outputs back to the model, as the node's serving
    /// loop does: the repeated call allocates nothing and each answer is still exact.
    @Test(arguments: ["iris-logreg", "digits-mlp"])
    func scorerRunsIntoHandedBackOutputs(name: String) throws {
        let (model, inputs, want) = try Self.sample(name)
        let scorer = try Scorer(model: model, pipeline: nil)
        let rows = inputs.values.first!.shape[0]
        var out: [String: Tensor] = [:]
        for r in [0, rows / 2, rows - 1, 0] {
            try scorer.run(inputs.mapValues { SampleModelTests.rowSlice($0, r) }, into: &out)
            for (k, w) in want {
                let problems = SampleModelTests.compare(try #require(out[k]), SampleModelTests.rowSlice(w, r))
                #expect(problems.isEmpty, "\(name) row \(r) output `\(k)`: \(problems.joined(separator: "; "))")
            }
        }
        try #require(kaa_allocations_available() == 1, "the allocation counter needs glibc")
        let one = inputs.mapValues { SampleModelTests.rowSlice($0, 1) }
        let n = try Self.allocationsOfRepeats { try scorer.run(one, into: &out) }
        #expect(n == 0, "\(name): \(n) allocations in 20 calls")
    }

    /// A step that reads one value twice (`x * x`, then `y + y`) gets it in both places: the
    /// run moves a slot's tensor into the argument list once and copies it for the repeat.
    @Test func stepReadingOneValueTwice() throws {
        let model = try GemmTests.model([
            LoaderErrorTests.node("Mul", ["x", "x"], ["sq"]),
            LoaderErrorTests.node("Add", ["sq", "sq"], ["y"]),
        ], x: [1, 3], batch: "batch", constants: [], asInputs: false)
        var out: [String: Tensor] = [:]
        for round in 0..<3 {
            let v = (0..<6).map { Float($0 + round) - 2.5 }
            try model.run(["x": Tensor(shape: [2, 3], floats: v)], into: &out)
            #expect(out["y"]?.floats == v.map { 2 * $0 * $0 }, "round \(round)")
        }
    }

    /// Idle workspaces keep only a bounded amount of memory, however large a batch was.
    @Test func keptMemoryIsBounded() throws {
        let model = try Self.torchMLP([784, 256, 128, 10])
        var values = GemmTests.Values(state: 9)
        let x = ["x": Tensor(shape: [4096, 784], floats: values.array(4096 * 784))]
        _ = try model.run(x)
        #expect(model.workspaceBytes <= Workspace.keptBytesLimit * model.plan.pool.limit)
        // A small batch's intermediates fit, and are kept.
        _ = try model.run(["x": Tensor(shape: [8, 784], floats: values.array(8 * 784))])
        #expect(model.workspaceBytes > 0)
        #expect(model.workspaceBytes <= Workspace.keptBytesLimit * model.plan.pool.limit)
    }
}
