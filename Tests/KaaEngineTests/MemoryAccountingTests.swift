import Foundation
import KaaAllocationCounter
@testable import KaaEngine
import Testing

/// What a model counts against the node's memory budget (``Model/memoryBytes``) against the
/// heap it really keeps.
@Suite struct MemoryAccountingTests {
    /// The heap a load keeps: bytes allocated and not freed on this thread while the model is
    /// built (the protobuf and other scratch are freed; weights, tables and plan stay). Counted
    /// by the KaaAllocationCounter interposer, so the same on every run.
    static func keptBytes(loading bytes: Data) throws -> (Model, Int) {
        _ = try Model(onnx: bytes) // first-use costs (type metadata, caches) outside the count
        kaa_allocations_start()
        let model = try Model(onnx: bytes)
        _ = kaa_allocations_stop()
        return (model, kaa_allocations_net_bytes())
    }

    @Test(arguments: ["iris-logreg", "digits-mlp", "wine-forest", "diabetes-gbr", "news-text"])
    func countedBytesAreCloseToTheHeapAModelKeeps(_ name: String) throws {
        let bytes = try Data(contentsOf: SampleModelTests.root.appendingPathComponent("snapshots/\(name)/model.onnx"))
        let (model, kept) = try MemoryAccountingTests.keptBytes(loading: bytes)
        let ratio = Double(model.memoryBytes) / Double(kept)
        #expect(ratio > 0.75 && ratio < 1.34, "\(name): counts \(model.memoryBytes) bytes, keeps \(kept)")
    }
}
