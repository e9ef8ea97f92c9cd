import Foundation
import KaaEngine
@testable import KaaNode
import KaaTestSupport
import Testing

/// The request fast path against the general parser, and the response encoder's exact text.
@Suite struct InferenceCodecTests {
    /// The sample's graph without its pipeline: the codec checks requests against what the
    /// scorer takes, here the graph's own inputs.
    static func model(_ sample: String) throws -> Scorer {
        try Scorer(model: Model(onnx: Data(contentsOf: URL(fileURLWithPath: ServingTests.repo + "/snapshots/\(sample)/model.onnx"))), pipeline: nil)
    }

    /// Parses `body` both ways; they must agree exactly (same request, or the same error).
    static func agree(_ body: String, _ model: Scorer, sourceLocation: SourceLocation = #_sourceLocation) -> InferRequest? {
        let bytes = Array(body.utf8)
        let viaCodec = Result { () throws(InferenceInputError) in try InferenceCodec.parseRequest(body: bytes, headerLength: nil, model: model) }
        let general = Result { () throws(InferenceInputError) in try InferenceCodec.parseGeneral(body: bytes, headerLength: nil, model: model) }
        switch (viaCodec, general) {
        case (.success(let a), .success(let b)):
            #expect(a.id == b.id && a.inputs == b.inputs && a.binaryByDefault == b.binaryByDefault && a.batchSize == b.batchSize
                    && a.outputs.map(\.name) == b.outputs.map(\.name) && a.outputs.map(\.binary) == b.outputs.map(\.binary),
                    "\(body)", sourceLocation: sourceLocation)
            return a
        case (.failure(let a), .failure(let b)):
            #expect(a.description == b.description, "\(body)", sourceLocation: sourceLocation)
        default:
            Issue.record("fast and general paths disagree on \(body): \(viaCodec) vs \(general)", sourceLocation: sourceLocation)
        }
        return nil
    }

    static func fast(_ body: String, _ model: Scorer) -> Bool { InferenceFastPath.parse(Array(body.utf8), model: model) != nil }

    @Test func fastPathTakesCommonRequestsAndAgreesWithTheGeneralParser() throws {
        let digits = try InferenceCodecTests.model("digits-mlp")
        let row = (0..<64).map { ["0.0", "16", "-3.25", "1e2", "2.5E-3", "0.1", "123456789.125", "7"][$0 % 8] }.joined(separator: ",")
        let common = #"{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[\#(row)]}]}"#
        #expect(InferenceCodecTests.fast(common, digits))
        let parsed = try #require(InferenceCodecTests.agree(common, digits))
        #expect(parsed.inputs["input"]?.storage == .float32((0..<64).map { [0, 16, -3.25, 100, 0.0025, 0.1, 123456789.125, 7][$0 % 8] }))

        // Spacing, member order, id, outputs and parameters: still the fast path, same answer.
        let spaced = " {\n \"id\" : \"r-1\", \"inputs\" : [ { \"data\" : [ \(row) ] , \"datatype\" : \"FP32\", \"shape\" : [ 1 , 64 ], \"x\": {\"y\": [1, \"]\"]} } ],"
            + " \"outputs\": [{\"name\": \"output_label\", \"parameters\": {\"binary_data\": true}}], \"parameters\": {\"binary_data_output\": false} } "
            + ""
        let spacedWithName = spaced.replacingOccurrences(of: "\"datatype\" : \"FP32\"", with: "\"datatype\" : \"FP32\", \"name\": \"input\"")
        #expect(InferenceCodecTests.fast(spacedWithName, digits))
        let withOutputs = try #require(InferenceCodecTests.agree(spacedWithName, digits))
        #expect(withOutputs.id == "r-1")
        #expect(withOutputs.outputs.map(\.name) == ["output_label"] && withOutputs.outputs.map(\.binary) == [true])

        // Forms the fast path leaves to the general parser, which must then give the same result.
        let declined = [
            #"{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[[\#(row)]]}]}"#,          // nested
            #"{"inputs":[{"name":"in\u0070ut","shape":[1,64],"datatype":"FP32","data":[\#(row)]}]}"#,      // escaped name
            #"{"inputs":[{"name":"input","shape":[1.0,64],"datatype":"FP32","data":[\#(row)]}]}"#,         // 1.0 as a dimension
            #"{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[\#(row)],"parameters":{}}]}"#,
            #"{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[\#(row.replacingOccurrences(of: "0.1", with: "0.12345678901234567890123"))]}]}"#,
            #"{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[\#(row.replacingOccurrences(of: "1e2", with: "1e40"))]}]}"#,
            #"{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[\#(row)]}],"inputs":[]}"#, // repeated key
            #"{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[\#(row)],"data":[\#(row)]}]}"#, // read in place, then again
            #"{"inputs":[{"data":[\#(row)],"name":"input","shape":[1,64],"datatype":"FP32","data":[\#(row)]}]}"#, // skipped, then read in place
        ]
        for body in declined {
            #expect(!InferenceCodecTests.fast(body, digits), "\(body)")
            _ = InferenceCodecTests.agree(body, digits)
        }

        // Bad requests: the fast path declines, the general parser names the problem.
        let bad = [
            "", "{", "[]", #"{"inputs":{}}"#, #"{"inputs":[]}"#, #"{"id":7,"inputs":[]}"#,
            #"{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[\#(row)]}]} x"#,
            #"{"inputs":[{"name":"input","shape":[1,63],"datatype":"FP32","data":[\#(row)]}]}"#,
            #"{"inputs":[{"name":"input","shape":[2,64],"datatype":"FP32","data":[\#(row)]}]}"#,
            #"{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP64","data":[\#(row)]}]}"#,
            #"{"inputs":[{"name":"input","shape":[1,64],"datatype":"INT64","data":[\#(row)]}]}"#,
            #"{"inputs":[{"name":"input","shape":[-1,64],"datatype":"FP32","data":[\#(row)]}]}"#,
            #"{"inputs":[{"name":"input","shape":[1,064],"datatype":"FP32","data":[\#(row)]}]}"#,
            #"{"inputs":[{"name":"nope","shape":[1,64],"datatype":"FP32","data":[\#(row)]}]}"#,
            #"{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[\#(row),]}]}"#,
            #"{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[\#(row.replacingOccurrences(of: "16", with: "016"))]}]}"#,
            #"{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[\#(row.replacingOccurrences(of: "7", with: "\"7\""))]}]}"#,
            #"{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[\#(row.replacingOccurrences(of: "0.0", with: "0."))]}]}"#,
            #"{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[\#(row)]}],"outputs":[{"name":"nope"}]}"#,
            #"{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[\#(row)]}],"outputs":{}}"#,
            #"{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[\#(row)] 7}]}"#,          // read in place, junk after
            #"{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[\#(row), 1]}]}"#,         // one number too many
        ]
        for body in bad {
            #expect(!InferenceCodecTests.fast(body, digits), "\(body)")
            #expect(InferenceCodecTests.agree(body, digits) == nil, "\(body)")
        }
    }

    /// Random edits of valid bodies (a byte dropped, replaced or inserted, a span repeated or
    /// cut): the fast path and the general parser agree on every one, and neither traps.
    @Test func mutatedBodiesParseTheSameBothWays() throws {
        let digits = try InferenceCodecTests.model("digits-mlp")
        let iris = try InferenceCodecTests.model("iris-logreg")
        let row = (0..<64).map { ["0.5", "16", "-3.25", "1e2", "0", "7"][$0 % 6] }.joined(separator: ",")
        let seeds: [(String, Scorer)] = [
            (#"{"id":"a","inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[\#(row)]}],"outputs":[{"name":"output_label"}]}"#, digits),
            (#"{"inputs":[{"datatype":"FP32","name":"input","shape":[2,4],"data":[5.1,3.5,1.4,0.2,6.7,3.0,5.2,2.3]}],"parameters":{"binary_data_output":false}}"#, iris),
        ]
        let alphabet = Array(#"{}[],:" \0123456789.eE+-abnrtuxlsfFP3264INTdameshpiy"#.utf8)
        var rng = SplitMix64(seed: 0x6b61_6135)
        var accepted = 0, fast = 0
        let count = 3000
        for _ in 0..<count {
            let (seed, model) = seeds[Int.random(in: 0..<seeds.count, using: &rng)]
            var bytes = Array(seed.utf8)
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                let i = Int.random(in: 0..<bytes.count, using: &rng)
                let j = min(bytes.count, i + Int.random(in: 1...12, using: &rng))
                switch Int.random(in: 0..<5, using: &rng) {
                case 0: bytes.remove(at: i)
                case 1: bytes[i] = alphabet.randomElement(using: &rng)!
                case 2: bytes.insert(alphabet.randomElement(using: &rng)!, at: i)
                case 3: bytes.insert(contentsOf: Array(bytes[i..<j]), at: j)
                default: bytes.removeSubrange(i..<j)
                }
                if bytes.isEmpty { bytes = Array(seed.utf8) }
            }
            let body = String(decoding: bytes, as: UTF8.self)
            if InferenceCodecTests.agree(body, model) != nil { accepted += 1 }
            if InferenceCodecTests.fast(body, model) { fast += 1 }
        }
        // Some edits leave a valid request (a digit for a digit, a space), most do not.
        #expect(accepted > 0 && accepted < count, "\(accepted) of \(count) accepted")
        #expect(fast > 0, "the fast path took none of \(count) mutated bodies")
    }

    @Test func numbersReadExactlyAsTheGeneralReaderReadsThem() throws {
        let iris = try InferenceCodecTests.model("iris-logreg")
        var rng = SystemRandomNumberGenerator()
        var texts: [String] = ["0", "-0", "-0.0", "9007199254740993", "-9223372036854775808", "1234567890123456789",
                               "0.30000000000000004", "1e22", "1e-22", "4.9e-7", "3.4028235e38", "1.17549435E-38"]
        for _ in 0..<400 {
            texts.append(Float.random(in: -1000..<1000, using: &rng).description)
            texts.append((Float.random(in: -1..<1, using: &rng) * 1e-4).description)
            texts.append(Double.random(in: -10..<10, using: &rng).description)
            texts.append(String(Int.random(in: -1_000_000...1_000_000, using: &rng)) + "." + String(Int.random(in: 0...99_999, using: &rng)))
        }
        var fast = 0, bodies = 0
        for chunk in stride(from: 0, to: texts.count - 3, by: 4) {
            let values = texts[chunk..<(chunk + 4)].joined(separator: ",")
            let body = #"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[\#(values)]}]}"#
            #expect(InferenceCodecTests.agree(body, iris) != nil, "\(body)")
            if InferenceCodecTests.fast(body, iris) { fast += 1 }
            bodies += 1
        }
        #expect(fast * 2 > bodies, "the fast path took \(fast) of \(bodies) bodies")
    }

    @Test func responseTextIsExact() throws {
        let request = InferRequest(id: "a\"b\n", inputs: [:], outputs: [], binaryByDefault: false, batchSize: 2)
        let outputs: [String: Tensor] = [
            "label": Tensor(shape: [2], int64s: [-12, 3]),
            "p": Tensor(shape: [2, 2], storage: .float32([0.25, 1, 1e-8, Float.nan]), mapKeys: .int64([0, 1])),
            "text": Tensor(shape: [1], storage: .string(["x\u{1}y"])),
        ]
        let order = [TensorSignature(name: "label", dtype: .int64, shape: nil), TensorSignature(name: "p", dtype: .float32, shape: nil),
                     TensorSignature(name: "text", dtype: .string, shape: nil)]
        let (body, header) = InferenceCodec.encodeResponse(modelName: "m", modelVersion: 12, request: request, outputs: outputs, order: order)
        #expect(header == nil)
        #expect(String(decoding: body, as: UTF8.self) == #"{"model_name":"m","model_version":"12","id":"a\"b\n","outputs":[{"name":"label","datatype":"INT64","shape":[2],"data":[-12,3]},{"name":"p","datatype":"FP32","shape":[2,2],"parameters":{"map_keys":[0,1],"non_finite_as_null":true},"data":[0.25,1,1e-08,null]},{"name":"text","datatype":"BYTES","shape":[1],"data":["x\u0001y"]}]}"#)

        // Binary outputs, in the order asked for, a missing name skipped without a stray comma.
        let binary = InferRequest(id: nil, inputs: [:], outputs: [("nope", false), ("p", true), ("label", false)], binaryByDefault: false, batchSize: 2)
        let (bytes, length) = InferenceCodec.encodeResponse(modelName: "m", modelVersion: 1, request: binary, outputs: outputs, order: order)
        let json = #"{"model_name":"m","model_version":"1","outputs":[{"name":"p","datatype":"FP32","shape":[2,2],"parameters":{"map_keys":[0,1],"binary_data_size":16}},{"name":"label","datatype":"INT64","shape":[2],"data":[-12,3]}]}"#
        #expect(length == json.utf8.count)
        #expect(String(decoding: bytes.prefix(json.utf8.count), as: UTF8.self) == json)
        #expect(bytes.count == json.utf8.count + 16)
    }
    /// UINT8 and INT8 inputs (as a quantized model may take) decode from JSON and binary data,
    /// refuse values out of their range, and encode back as integers.
    @Test func eightBitTensorsDecodeAndEncode() throws {
        // Cast(pixels: uint8) + Cast(offsets: int8), from tools/export-quantized-fixtures.py.
        let model = try Scorer(model: Model(onnx: Data(contentsOf: URL(fileURLWithPath: ServingTests.repo
            + "/Tests/KaaEngineTests/Fixtures/mlp-int8/bytes-in.onnx"))), pipeline: nil)
        let parsed = try #require(Self.agree(#"{"inputs":[{"name":"pixels","datatype":"UINT8","shape":[1,3],"data":[0,7,255]},{"name":"offsets","datatype":"INT8","shape":[1,3],"data":[-128,0,127]}]}"#, model))
        #expect(parsed.inputs["pixels"] == Tensor(shape: [1, 3], uint8s: [0, 7, 255]))
        #expect(parsed.inputs["offsets"] == Tensor(shape: [1, 3], int8s: [-128, 0, 127]))
        for (bad, message) in [("[0,7,256]", "input `pixels`: element 2 is 256.0, not an integer from 0 to 255"),
                               ("[0,-1,2]", "input `pixels`: element 1 is -1.0, not an integer from 0 to 255")] {
            let body = #"{"inputs":[{"name":"pixels","datatype":"UINT8","shape":[1,3],"data":"# + bad + #"},{"name":"offsets","datatype":"INT8","shape":[1,3],"data":[0,0,0]}]}"#
            do {
                _ = try InferenceCodec.parseGeneral(body: Array(body.utf8), headerLength: nil, model: model)
                Issue.record("\(bad) was accepted")
            } catch { #expect(error.description == message) }
        }
        // Binary data: one byte per element.
        let json = #"{"inputs":[{"name":"pixels","datatype":"UINT8","shape":[1,3],"parameters":{"binary_data_size":3}},{"name":"offsets","datatype":"INT8","shape":[1,3],"parameters":{"binary_data_size":3}}]}"#
        let body = Array(json.utf8) + [1, 2, 200, 0xFF, 0x80, 5]
        let fromBinary = try InferenceCodec.parseGeneral(body: body, headerLength: json.utf8.count, model: model)
        #expect(fromBinary.inputs["pixels"] == Tensor(shape: [1, 3], uint8s: [1, 2, 200]))
        #expect(fromBinary.inputs["offsets"] == Tensor(shape: [1, 3], int8s: [-1, -128, 5]))
        #expect(OIPDatatype.dtype("UINT8") == .uint8 && OIPDatatype.dtype("INT8") == .int8)
        #expect(OIPDatatype.name(.uint8) == "UINT8" && OIPDatatype.name(.int8) == "INT8")
        let outputs: [String: Tensor] = ["q": Tensor(shape: [3], uint8s: [0, 7, 255]), "s": Tensor(shape: [2], int8s: [-128, 127])]
        let order = [TensorSignature(name: "q", dtype: .uint8, shape: nil), TensorSignature(name: "s", dtype: .int8, shape: nil)]
        let request = InferRequest(id: nil, inputs: [:], outputs: [], binaryByDefault: false, batchSize: 1)
        let (text, _) = InferenceCodec.encodeResponse(modelName: "m", modelVersion: 1, request: request, outputs: outputs, order: order)
        #expect(String(decoding: text, as: UTF8.self) == #"{"model_name":"m","model_version":"1","outputs":[{"name":"q","datatype":"UINT8","shape":[3],"data":[0,7,255]},{"name":"s","datatype":"INT8","shape":[2],"data":[-128,127]}]}"#)
        let binary = InferRequest(id: nil, inputs: [:], outputs: [("q", true), ("s", true)], binaryByDefault: false, batchSize: 1)
        let (bytes, length) = InferenceCodec.encodeResponse(modelName: "m", modelVersion: 1, request: binary, outputs: outputs, order: order)
        #expect(Array(bytes[try #require(length)...]) == [0, 7, 255, 128, 127])
    }
}
