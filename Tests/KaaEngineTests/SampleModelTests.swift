import Foundation
import KaaEngine
import Testing

/// Kaa against onnxruntime on the sample models exported by tools/export-samples.py.
@Suite struct SampleModelTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    struct Reference {
        var tensor: Tensor
    }

    /// A JSON number; the export writes NaN as null and infinities as "inf" / "-inf".
    static func double(_ v: Any) -> Double {
        if let n = v as? NSNumber { return n.doubleValue }
        if let s = v as? String { return s == "inf" ? .infinity : s == "-inf" ? -.infinity : .nan }
        return .nan
    }

    static func tensor(_ j: [String: Any]) throws -> Tensor {
        let shape = (j["shape"] as! [Any]).map { ($0 as! NSNumber).intValue }
        let data = j["data"] as! [Any]
        var t: Tensor
        switch j["dtype"] as! String {
        case "float32": t = Tensor(shape: shape, floats: data.map { Float(Self.double($0)) })
        case "float64": t = Tensor(shape: shape, doubles: data.map(Self.double))
        case "int64": t = Tensor(shape: shape, int64s: data.map { ($0 as! NSNumber).int64Value })
        case "int32": t = Tensor(shape: shape, int32s: data.map { ($0 as! NSNumber).int32Value })
        case "bool": t = Tensor(shape: shape, bools: data.map { ($0 as! NSNumber).boolValue })
        case "string": t = Tensor(shape: shape, strings: data.map { $0 as! String })
        default: throw EngineError(.invalidInput, "fixture dtype \(j["dtype"]!)")
        }
        if let keys = j["map_keys"] as? [Any] {
            t.mapKeys = j["map_key_dtype"] as? String == "string"
                ? .string(keys.map { $0 as! String }) : .int64(keys.map { ($0 as! NSNumber).int64Value })
        }
        return t
    }

    static func load(_ name: String, _ file: String) throws -> [String: Tensor] {
        let url = root.appendingPathComponent("Tests/KaaEngineTests/Fixtures/\(name)/\(file)")
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: [String: Any]]
        return try json.mapValues(tensor)
    }

    /// Compares float outputs with relative tolerance 1e-5 (plus 1e-6 absolute, for values
    /// near zero); everything else exactly. Returns the mismatches, described.
    static func compare(_ got: Tensor, _ want: Tensor, rows: Range<Int>? = nil) -> [String] {
        var problems: [String] = []
        if got.shape != want.shape { return ["shape \(got.shape), expected \(want.shape)"] }
        if got.mapKeys != want.mapKeys { problems.append("map keys \(String(describing: got.mapKeys)), expected \(String(describing: want.mapKeys))") }
        switch (got.storage, want.storage) {
        case (.float32(let a), .float32(let b)):
            for i in a.indices where !(a[i].isNaN && b[i].isNaN) && a[i] != b[i] && !(abs(a[i] - b[i]) <= 1e-5 * max(abs(a[i]), abs(b[i])) + 1e-6) {
                problems.append("element \(i): \(a[i]), expected \(b[i])")
                if problems.count > 5 { break }
            }
        default:
            if got.storage != want.storage { problems.append("values differ: \(got.storage) vs \(want.storage)".prefix(300).description) }
        }
        return problems
    }

    static func rowSlice(_ t: Tensor, _ r: Int) -> Tensor {
        let width = t.count / t.shape[0]
        let idx = Array(r * width..<(r + 1) * width)
        var shape = t.shape
        shape[0] = 1
        let s: Tensor.Storage = switch t.storage {
        case .float32(let v): .float32(idx.map { v[$0] })
        case .float64(let v): .float64(idx.map { v[$0] })
        case .int64(let v): .int64(idx.map { v[$0] })
        case .int32(let v): .int32(idx.map { v[$0] })
        case .bool(let v): .bool(idx.map { v[$0] })
        case .string(let v): .string(idx.map { v[$0] })
        case .uint8(let v): .uint8(idx.map { v[$0] })
        case .int8(let v): .int8(idx.map { v[$0] })
        }
        return Tensor(shape: shape, storage: s, mapKeys: t.mapKeys)
    }

    @Test(arguments: ["iris-logreg", "digits-mlp", "diabetes-gbr", "wine-forest", "news-text"])
    func matchesOnnxRuntime(name: String) throws {
        let bytes = try Data(contentsOf: Self.root.appendingPathComponent("snapshots/\(name)/model.onnx"))
        let model = try Model(onnx: bytes)
        let inputs = try Self.load(name, "inputs.json")
        let want = try Self.load(name, "outputs.json")
        #expect(model.outputs.map(\.name).sorted() == want.keys.sorted())
        #expect(model.memoryBytes >= bytes.count / 4)
        let got = try model.run(inputs)
        for (k, w) in want {
            let problems = Self.compare(try #require(got[k]), w)
            #expect(problems.isEmpty, "\(name) output `\(k)`: \(problems.joined(separator: "; "))")
        }
        // Batch 1: the same rows one at a time give the same answers.
        let rows = inputs.values.first!.shape[0]
        for r in stride(from: 0, to: rows, by: max(rows / 10, 1)) {
            let one = try model.run(inputs.mapValues { Self.rowSlice($0, r) })
            for (k, w) in want {
                let problems = Self.compare(try #require(one[k]), Self.rowSlice(w, r))
                #expect(problems.isEmpty, "\(name) row \(r) output `\(k)`: \(problems.joined(separator: "; "))")
            }
        }
    }

    @Test func concurrentRunsAgree() async throws {
        let name = "digits-mlp"
        let model = try Model(onnx: Data(contentsOf: Self.root.appendingPathComponent("snapshots/\(name)/model.onnx")))
        let inputs = try Self.load(name, "inputs.json")
        let want = try Self.load(name, "outputs.json")
        try await withThrowingTaskGroup(of: [String: Tensor].self) { group in
            for _ in 0..<8 { group.addTask { try model.run(inputs) } }
            for try await got in group {
                for (k, w) in want { #expect(Self.compare(got[k]!, w).isEmpty) }
            }
        }
    }
}
