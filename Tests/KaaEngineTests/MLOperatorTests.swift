import Foundation
import KaaAllocationCounter
@testable import KaaEngine
import Testing

/// The ai.onnx.ml operators that the sample models do not use (Binarizer, Imputer,
/// OneHotEncoder, LabelEncoder): their results, and that a repeated run allocates nothing.
@Suite struct MLOperatorTests {
    static func attribute(_ name: String, floats: [Float]? = nil, ints: [Int64]? = nil, strings: [String]? = nil,
                          float: Float? = nil, int: Int64? = nil) -> Onnx_AttributeProto {
        var a = Onnx_AttributeProto()
        a.name = name
        if let floats { a.type = .floats; a.floats = floats }
        if let ints { a.type = .ints; a.ints = ints }
        if let strings { a.type = .strings; a.strings = strings.map { Data($0.utf8) } }
        if let float { a.type = .float; a.f = float }
        if let int { a.type = .int; a.i = int }
        return a
    }

    /// A one-node ai.onnx.ml model from input `x` ([2, width] of `type`) to output `y`.
    static func model(_ op: String, _ attributes: [Onnx_AttributeProto], _ type: DType, width: Int64, mlOpset: Int64 = 1) throws -> Model {
        var node = LoaderErrorTests.node(op, ["x"], ["y"], domain: "ai.onnx.ml")
        node.attribute = attributes
        var m = Onnx_ModelProto()
        m.irVersion = 8
        var onnx = Onnx_OperatorSetIdProto()
        onnx.version = 17
        var ml = Onnx_OperatorSetIdProto()
        ml.domain = "ai.onnx.ml"
        ml.version = mlOpset
        m.opsetImport = [onnx, ml]
        m.graph.node = [node]
        m.graph.input = [LoaderErrorTests.valueInfo("x", type, [2, width])]
        var y = Onnx_ValueInfoProto()
        y.name = "y"
        m.graph.output = [y]
        return try Model(onnx: m.serializedData())
    }

    /// Runs `model` on `x`, checks the output, then that a repeated run allocates nothing.
    static func check(_ model: Model, _ x: Tensor, _ want: Tensor) throws {
        let given = ["x": x]
        var out: [String: Tensor] = [:]
        for _ in 0..<3 { try model.run(given, into: &out) }
        #expect(out["y"] == want)
        kaa_allocations_start()
        let run = Result { try model.run(given, into: &out) }
        let allocations = kaa_allocations_stop()
        try run.get()
        #expect(out["y"] == want)
        if kaa_allocations_available() == 1 { #expect(allocations == 0) }
    }

    @Test func binarizer() throws {
        let m = try Self.model("Binarizer", [Self.attribute("threshold", float: 0.5)], .float32, width: 3)
        try Self.check(m, Tensor(shape: [2, 3], floats: [0.2, 0.5, 0.9, -1, 3, .nan]),
                       Tensor(shape: [2, 3], floats: [0, 0, 1, 0, 1, 0]))
    }

    @Test func imputer() throws {
        let m = try Self.model("Imputer", [Self.attribute("imputed_value_floats", floats: [7, 8]),
                                           Self.attribute("replaced_value_float", float: .nan)], .float32, width: 2)
        try Self.check(m, Tensor(shape: [2, 2], floats: [.nan, 1, 2, .nan]), Tensor(shape: [2, 2], floats: [7, 1, 2, 8]))
    }

    @Test func oneHotEncoder() throws {
        let m = try Self.model("OneHotEncoder", [Self.attribute("cats_int64s", ints: [1, 2, 3])], .int64, width: 1)
        try Self.check(m, Tensor(shape: [2, 1], int64s: [2, 9]), Tensor(shape: [2, 1, 3], floats: [0, 1, 0, 0, 0, 0]))
        let strict = try Self.model("OneHotEncoder", [Self.attribute("cats_int64s", ints: [1]), Self.attribute("zeros", int: 0)],
                                    .float32, width: 1)
        #expect(throws: EngineError.self) { try strict.run(["x": Tensor(shape: [2, 1], floats: [1, .nan])]) }
    }

    @Test func labelEncoder() throws {
        let m = try Self.model("LabelEncoder", [Self.attribute("keys_strings", strings: ["a", "b"]),
                                                Self.attribute("values_int64s", ints: [10, 20])], .string, width: 1, mlOpset: 2)
        try Self.check(m, Tensor(shape: [2, 1], strings: ["b", "z"]), Tensor(shape: [2, 1], int64s: [20, -1]))
    }

    /// String outputs reused run after run keep the workspace's byte count steady: taking a
    /// kept string array back counts it out again.
    @Test func reusedStringOutputsDoNotInflateKeptBytes() throws {
        let m = try Self.model("LabelEncoder", [Self.attribute("keys_int64s", ints: [1, 2]),
                                                Self.attribute("values_strings", strings: ["one", "two"])], .int64, width: 1, mlOpset: 2)
        let given = ["x": Tensor(shape: [2, 1], int64s: [2, 7])]
        var out: [String: Tensor] = [:]
        for _ in 0..<3 { try m.run(given, into: &out) }
        let settled = m.workspaceBytes
        for _ in 0..<200 { try m.run(given, into: &out) }
        #expect(out["y"] == Tensor(shape: [2, 1], strings: ["two", "_Unused"]))
        #expect(m.workspaceBytes == settled)
    }
}
