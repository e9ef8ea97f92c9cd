import Foundation
import KaaEngine
import Testing

/// Tree ensembles against onnxruntime: every aggregate function, post transform, branch mode
/// and missing-value track (hand-built models from tools/export-samples.py).
@Suite struct TreeEnsembleTests {
    static let directory = SampleModelTests.root.appendingPathComponent("Tests/KaaEngineTests/Fixtures/trees")

    static var variants: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []).sorted()
    }

    @Test func allVariantsArePresent() {
        #expect(Self.variants.count == 29)
    }

    @Test(arguments: variants)
    func matchesOnnxRuntime(variant: String) throws {
        let model = try Model(onnx: Data(contentsOf: Self.directory.appendingPathComponent("\(variant)/model.onnx")))
        let inputs = try SampleModelTests.load("trees/\(variant)", "inputs.json")
        let want = try SampleModelTests.load("trees/\(variant)", "outputs.json")
        let got = try model.run(inputs)
        for (k, w) in want {
            let problems = SampleModelTests.compare(try #require(got[k]), w)
            #expect(problems.isEmpty, "\(variant) output `\(k)`: \(problems.joined(separator: "; "))")
        }
    }
}
