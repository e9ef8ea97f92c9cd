import Foundation
import KaaAllocationCounter
import KaaEngine
import Testing

/// The ONNX backend node tests (Debian `libonnx-testdata`) for every operator Kaa supports.
///
/// Each case is a `model.onnx` with `test_data_set_0/input_N.pb` and `output_N.pb`. A case
/// whose operator Kaa lacks is not counted; a case that uses a dtype or attribute value Kaa
/// does not support is skipped with the reason; every other case must pass.
@Suite struct BackendNodeTests {
    static let dataDirectory = ProcessInfo.processInfo.environment["KAA_ONNX_TESTDATA"]
        ?? "/usr/share/libonnx-testdata/data/node"

    enum Outcome { case pass(allocations: Int), fail(String), skip(String), notApplicable }

    static func close(_ a: Tensor, _ b: Tensor) -> String? {
        guard a.shape == b.shape else { return "shape \(a.shape), expected \(b.shape)" }
        guard a.dtype == b.dtype else { return "dtype \(a.dtype), expected \(b.dtype)" }
        if let x = a.asDoubles(), let y = b.asDoubles(), a.dtype == .float32 || a.dtype == .float64 {
            for i in x.indices {
                if x[i].isNaN && y[i].isNaN { continue }
                if x[i] == y[i] { continue }
                if !(abs(x[i] - y[i]) <= 1e-7 + 1e-3 * abs(y[i])) { return "element \(i): \(x[i]), expected \(y[i])" }
            }
            return nil
        }
        return a.storage == b.storage ? nil : "values differ"
    }

    static func runCase(_ dir: URL) -> Outcome {
        let model: Model
        do {
            model = try Model(onnx: Data(contentsOf: dir.appendingPathComponent("model.onnx")))
        } catch let e as EngineError {
            if e.code == .unsupportedOperator { return .notApplicable }
            if e.code == .unsupported { return .skip(e.message) }
            return .fail("load: \(e)")
        } catch { return .fail("load: \(error)") }
        let set = dir.appendingPathComponent("test_data_set_0")
        func read(_ prefix: String, _ count: Int) throws -> [Tensor] {
            try (0..<count).map { try Tensor(onnxTensorBytes: Data(contentsOf: set.appendingPathComponent("\(prefix)_\($0).pb"))) }
        }
        let inputs: [Tensor], outputs: [Tensor]
        do {
            inputs = try read("input", model.inputs.count)
            outputs = try read("output", model.outputs.count)
        } catch let e as EngineError where e.code == .unsupported { return .skip("test data: \(e.message)") }
        catch { return .fail("test data: \(error)") }
        do {
            let given = Dictionary(uniqueKeysWithValues: zip(model.inputs.map(\.name), inputs))
            let got = try model.run(given)
            for (sig, want) in zip(model.outputs, outputs) {
                guard let g = got[sig.name] else { return .fail("output `\(sig.name)` missing") }
                if let problem = close(g, want) { return .fail("output `\(sig.name)`: \(problem)") }
            }
            // Again, reusing the workspace and handing back outputs: same results, and count
            // what the fourth run allocates (the second and third warm the reuse lists).
            var out: [String: Tensor] = [:]
            try model.run(given, into: &out)
            try model.run(given, into: &out)
            kaa_allocations_start()
            let counted = Result { try model.run(given, into: &out) }
            let allocations = kaa_allocations_stop()
            try counted.get()
            for (sig, want) in zip(model.outputs, outputs) {
                guard let g = out[sig.name] else { return .fail("output `\(sig.name)` missing on a reused run") }
                if let problem = close(g, want) { return .fail("output `\(sig.name)` on a reused run: \(problem)") }
            }
            return .pass(allocations: allocations)
        } catch { return .fail("run: \(error)") }
    }

    /// Cases whose operators make new strings (text operators, casts to and from strings),
    /// which allocate on every run; every other case repeats a run without allocating.
    static func makesStrings(_ name: String) -> Bool {
        name.hasPrefix("test_strnormalizer") || name.hasPrefix("test_tfidfvectorizer") || name.contains("STRING")
    }

    @Test func nodeTestsPass() throws {
        let root = URL(fileURLWithPath: Self.dataDirectory)
        let cases = try FileManager.default.contentsOfDirectory(atPath: root.path).sorted()
        #expect(cases.count > 500, "expected the ONNX node tests in \(root.path); run tools/install-deps.sh (libonnx-testdata)")
        var pass = 0, skip = 0, allocationFree = 0, failures: [String] = [], allocating: [String] = []
        for c in cases {
            switch Self.runCase(root.appendingPathComponent(c)) {
            case .pass(let allocations):
                pass += 1
                print("onnx-node pass \(c)\(allocations > 0 ? " (a repeated run allocates \(allocations) times)" : "")")
                if allocations == 0 { allocationFree += 1 } else if !Self.makesStrings(c) { allocating.append("\(c): \(allocations)") }
            case .skip(let why): skip += 1; print("onnx-node skip \(c): \(why)")
            case .fail(let why): failures.append("\(c): \(why)"); print("onnx-node FAIL \(c): \(why)")
            case .notApplicable: break
            }
        }
        print("onnx-node totals: \(pass) passed, \(failures.count) failed, \(skip) skipped (of \(cases.count) cases; the rest use operators Kaa lacks)")
        print("onnx-node allocations: \(allocationFree) of \(pass) passing cases repeat a run without allocating")
        #expect(pass > 100)
        #expect(failures.isEmpty, "\(failures.count) ONNX node tests failed:\n\(failures.joined(separator: "\n"))")
        #expect(allocating.isEmpty, "numeric cases whose repeated run allocates:\n\(allocating.joined(separator: "\n"))")
    }
}
