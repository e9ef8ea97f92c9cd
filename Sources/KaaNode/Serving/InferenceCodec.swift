import Foundation
import KaaCore
public import KaaEngine

/// A bad inference request: what is wrong, for the 400 answer.
public struct InferenceInputError: Error, CustomStringConvertible, Sendable {
    public var description: String
    init(_ description: String) { self.description = description }
}

/// The Open Inference Protocol's datatype names for the engine's element types.
public enum OIPDatatype {
    public static func name(_ dtype: DType) -> String {
        switch dtype {
        case .float32: "FP32"
        case .float64: "FP64"
        case .int64: "INT64"
        case .int32: "INT32"
        case .bool: "BOOL"
        case .string: "BYTES"
        case .uint8: "UINT8"
        case .int8: "INT8"
        }
    }

    public static func dtype(_ name: String) -> DType? {
        switch name {
        case "FP32": .float32
        case "FP64": .float64
        case "INT64": .int64
        case "INT32": .int32
        case "BOOL": .bool
        case "UINT8": .uint8
        case "INT8": .int8
        case "BYTES": .string
        default: nil
        }
    }

    static let known = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                        "FP16", "FP32", "FP64", "BF16", "BYTES"]
}

/// A parsed inference request (JSON or binary-tensor form), validated against a model.
public struct InferRequest: Sendable {
    public var id: String?
    public var inputs: [String: Tensor]
    /// Outputs asked for, in order (empty: all), and whether each wants binary data.
    public var outputs: [(name: String, binary: Bool)]
    /// `binary_data_output`: every output in binary unless it says otherwise.
    public var binaryByDefault: Bool
    public var batchSize: Int
}

/// What one call may ask of the node: checked while a request is parsed, before any of its
/// tensors is allocated (node settings `max_call_rows`, `max_call_elements`).
public struct CallLimits: Sendable {
    /// Rows (the first dimension) of any one input.
    public var maxRows: Int
    /// Elements of all inputs together.
    public var maxElements: Int

    public init(maxRows: Int, maxElements: Int) {
        self.maxRows = maxRows
        self.maxElements = maxElements
    }

    /// 65,536 rows and 16,777,216 elements (64 MiB of FP32): more than a JSON body within the
    /// default 16 MiB body limit can carry, while a row limit still bounds what per-row work
    /// (text tokenizers, one-hot encoders) a small request can make the node do.
    public static let `default` = CallLimits(maxRows: 65_536, maxElements: 1 << 24)

    /// Whether `inputs` together stay within the limits.
    func admits(_ inputs: [String: Tensor]) -> Bool {
        var elements = 0
        for t in inputs.values {
            if (t.shape.first ?? 0) > maxRows { return false }
            elements += t.count
        }
        return elements <= maxElements
    }
}

/// Parses and encodes the Open Inference Protocol's REST bodies.
public enum InferenceCodec {
    /// Parses a request body. `headerLength` is `Inference-Header-Content-Length` when the body
    /// carries binary tensor data after its JSON header.
    public static func parseRequest(body: [UInt8], headerLength: Int?, model: Scorer,
                                    limits: CallLimits = .default) throws(InferenceInputError) -> InferRequest {
        if headerLength == nil, let request = InferenceFastPath.parse(body, model: model, limits: limits) { return request }
        return try parseGeneral(body: body, headerLength: headerLength, model: model, limits: limits)
    }

    /// Reads the `Inference-Header-Content-Length` header: nil when absent, else a byte count.
    public static func headerLength(_ text: String?) throws(InferenceInputError) -> Int? {
        guard let text else { return nil }
        guard let n = Int(text), n >= 0 else {
            throw InferenceInputError("Inference-Header-Content-Length `\(text.prefix(40))` must be the byte length of the JSON header, a non-negative integer")
        }
        return n
    }

    /// Parses any request body through a JSON tree; names what is wrong with a bad one.
    static func parseGeneral(body: [UInt8], headerLength: Int?, model: Scorer,
                             limits: CallLimits = .default) throws(InferenceInputError) -> InferRequest {
        let jsonEnd: Int
        if let headerLength {
            guard headerLength >= 0, headerLength <= body.count else {
                throw InferenceInputError("Inference-Header-Content-Length is \(headerLength) but the body has \(body.count) bytes")
            }
            jsonEnd = headerLength
        } else {
            jsonEnd = body.count
        }
        let json: JSON
        do { json = try JSON(parsing: body[0..<jsonEnd]) } catch {
            throw InferenceInputError("the request body is not valid JSON: \(error)")
        }
        guard case .object = json else { throw InferenceInputError("the request body must be a JSON object with an `inputs` array") }
        let id = try requestID(json)
        guard let inputsJSON = json["inputs"]?.array else {
            throw InferenceInputError("the request has no `inputs` array; send {\"inputs\": [{\"name\", \"shape\", \"datatype\", \"data\"}]}")
        }
        var binaryOffset = jsonEnd
        var inputs: [String: Tensor] = [:]
        var batch = -1
        var elements = 0
        for (index, input) in inputsJSON.enumerated() {
            let tensor = try parseInput(input, index: index, body: body, binaryOffset: &binaryOffset, model: model,
                                        limits: limits, elements: &elements)
            guard inputs[tensor.name] == nil else {
                throw InferenceInputError("input `\(tensor.name)` is given twice; send each input once")
            }
            inputs[tensor.name] = tensor.tensor
            if let first = tensor.tensor.shape.first { batch = max(batch, first) }
        }
        if headerLength != nil && binaryOffset != body.count {
            throw InferenceInputError("the body has \(body.count - binaryOffset) bytes of binary data that no input claims (check binary_data_size)")
        }
        for signature in model.inputs where inputs[signature.name] == nil && model.defaults[signature.name] == nil {
            throw InferenceInputError("input `\(signature.name)` is missing; the model needs \(describe(model.inputs))")
        }
        let (outputs, binaryByDefault) = try requestedOutputs(json, model: model)
        return InferRequest(id: id, inputs: inputs, outputs: outputs, binaryByDefault: binaryByDefault, batchSize: max(batch, 1))
    }

    /// The request's `id`, which must be a string when present.
    static func requestID(_ json: JSON) throws(InferenceInputError) -> String? {
        guard let value = json["id"] else { return nil }
        guard let s = value.string else { throw InferenceInputError("`id` must be a string") }
        return s
    }

    /// The `outputs` asked for (each with its binary flag) and `binary_data_output`.
    static func requestedOutputs(_ json: JSON, model: Scorer) throws(InferenceInputError) -> ([(name: String, binary: Bool)], Bool) {
        var outputs: [(name: String, binary: Bool)] = []
        var binaryByDefault = false
        if let parameters = json["parameters"], let b = parameters["binary_data_output"]?.bool { binaryByDefault = b }
        if let requested = json["outputs"] {
            guard let list = requested.array else { throw InferenceInputError("`outputs` must be an array") }
            for output in list {
                guard let name = output["name"]?.string else { throw InferenceInputError("each requested output needs a `name`") }
                guard !outputs.contains(where: { $0.name == name }) else {
                    throw InferenceInputError("output `\(name)` is asked for twice; ask for each output once")
                }
                guard model.outputs.contains(where: { $0.name == name }) else {
                    throw InferenceInputError("output `\(name)` does not exist; the model has \(model.outputs.map { "`\($0.name)`" }.joined(separator: ", "))")
                }
                outputs.append((name, output["parameters"]?["binary_data"]?.bool ?? binaryByDefault))
            }
        }
        return (outputs, binaryByDefault)
    }

    static func describe(_ signatures: [TensorSignature]) -> String {
        signatures.map { s in
            "`\(s.name)` \(s.dtype.map(OIPDatatype.name) ?? "?") \(s.shape.map { "[" + $0.map { d in if case .fixed(let n) = d { String(n) } else { "-1" } }.joined(separator: ", ") + "]" } ?? "")"
        }.joined(separator: ", ")
    }

    private static func parseInput(_ input: JSON, index: Int, body: [UInt8], binaryOffset: inout Int, model: Scorer,
                                   limits: CallLimits, elements: inout Int) throws(InferenceInputError) -> (name: String, tensor: Tensor) {
        guard let name = input["name"]?.string else { throw InferenceInputError("inputs[\(index)] has no `name`") }
        guard let signature = model.inputs.first(where: { $0.name == name }) else {
            throw InferenceInputError("input `\(name)` does not exist; the model needs \(describe(model.inputs))")
        }
        guard let datatype = input["datatype"]?.string else { throw InferenceInputError("input `\(name)` has no `datatype`") }
        guard let dtype = OIPDatatype.dtype(datatype) else {
            let known = OIPDatatype.known.contains(datatype) ? "is not supported by the engine" : "is not an Open Inference Protocol datatype"
            throw InferenceInputError("input `\(name)`: datatype \(datatype) \(known); the model expects \(signature.dtype.map(OIPDatatype.name) ?? "?")")
        }
        if let expected = signature.dtype, expected != dtype {
            throw InferenceInputError("input `\(name)` has datatype \(datatype), the model expects \(OIPDatatype.name(expected))")
        }
        guard let shapeJSON = input["shape"]?.array else { throw InferenceInputError("input `\(name)` has no `shape` array") }
        var shape: [Int] = []
        for d in shapeJSON {
            guard let v = d.int64, v >= 0, v < 1 << 31 else {
                throw InferenceInputError("input `\(name)`: shape \(render(shapeJSON)) must hold non-negative integers")
            }
            shape.append(Int(v))
        }
        let (count, overflow) = shape.reduce((1, false)) { acc, d in
            let (p, o) = acc.0.multipliedReportingOverflow(by: d)
            return (p, acc.1 || o)
        }
        guard !overflow, count <= limits.maxElements - elements else {
            throw InferenceInputError("input `\(name)`: shape \(shape) takes the call past the node's limit of \(limits.maxElements) elements per call (max_call_elements); send fewer rows per call")
        }
        if let rows = shape.first, rows > limits.maxRows {
            throw InferenceInputError("input `\(name)` has \(rows) rows; the node takes at most \(limits.maxRows) rows per call (max_call_rows); split the batch")
        }
        elements += count
        if let declared = signature.shape {
            guard declared.count == shape.count else {
                throw InferenceInputError("input `\(name)` has shape \(shape) (rank \(shape.count)); the model expects rank \(declared.count): \(describe([signature]))")
            }
            for (axis, (d, got)) in zip(declared, shape).enumerated() {
                if case .fixed(let want) = d, want != got {
                    throw InferenceInputError("input `\(name)` has shape \(shape); dimension \(axis) must be \(want): \(describe([signature]))")
                }
            }
        }
        let storage: Tensor.Storage
        if let size = input["parameters"]?["binary_data_size"] {
            guard let n = size.int64, n >= 0, n <= Int64(body.count - binaryOffset) else {
                throw InferenceInputError("input `\(name)`: binary_data_size \(size.int64.map(String.init) ?? size.typeName) runs past the end of the body")
            }
            let bytes = body[binaryOffset..<(binaryOffset + Int(n))]
            binaryOffset += Int(n)
            storage = try decodeBinary(bytes, dtype: dtype, count: count, name: name)
        } else {
            guard let data = input["data"] else { throw InferenceInputError("input `\(name)` has neither `data` nor binary_data_size") }
            storage = try decodeJSON(data, dtype: dtype, count: count, shape: shape, name: name)
        }
        return (name, Tensor(shape: shape, storage: storage))
    }

    private static func render(_ values: [JSON]) -> String {
        var w = JSONWriter()
        w.value(.array(values))
        return String(decoding: w.bytes, as: UTF8.self)
    }

    /// Flattens `data` (flat, or nested as the shape) into elements of `dtype`.
    private static func decodeJSON(_ data: JSON, dtype: DType, count: Int, shape: [Int], name: String) throws(InferenceInputError) -> Tensor.Storage {
        var flat: [JSON] = []
        flat.reserveCapacity(count)
        guard let top = data.array else { throw InferenceInputError("input `\(name)`: `data` must be an array") }
        let nested = top.first?.array != nil
        if nested {
            try flatten(top, shape: shape, axis: 0, into: &flat, name: name)
        } else {
            flat = top
        }
        guard flat.count == count else {
            throw InferenceInputError("input `\(name)` has \(flat.count) values; shape \(shape) needs \(count)")
        }
        func bad(_ i: Int, _ what: String) -> InferenceInputError {
            InferenceInputError("input `\(name)`: element \(i) is \(flat[i].typeName == "number" ? "\(flat[i].double ?? 0)" : "a \(flat[i].typeName)"), not \(what)")
        }
        switch dtype {
        case .float32:
            var out = [Float](repeating: 0, count: count)
            for i in 0..<count {
                guard let d = flat[i].double else { throw bad(i, "a number") }
                out[i] = Float(d)
            }
            return .float32(out)
        case .float64:
            var out = [Double](repeating: 0, count: count)
            for i in 0..<count {
                guard let d = flat[i].double else { throw bad(i, "a number") }
                out[i] = d
            }
            return .float64(out)
        case .int64:
            var out = [Int64](repeating: 0, count: count)
            for i in 0..<count {
                guard let v = flat[i].int64 else { throw bad(i, "an integer") }
                out[i] = v
            }
            return .int64(out)
        case .int32:
            var out = [Int32](repeating: 0, count: count)
            for i in 0..<count {
                guard let v = flat[i].int64, let w = Int32(exactly: v) else { throw bad(i, "a 32-bit integer") }
                out[i] = w
            }
            return .int32(out)
        case .uint8:
            var out = [UInt8](repeating: 0, count: count)
            for i in 0..<count {
                guard let v = flat[i].int64, let w = UInt8(exactly: v) else { throw bad(i, "an integer from 0 to 255") }
                out[i] = w
            }
            return .uint8(out)
        case .int8:
            var out = [Int8](repeating: 0, count: count)
            for i in 0..<count {
                guard let v = flat[i].int64, let w = Int8(exactly: v) else { throw bad(i, "an integer from -128 to 127") }
                out[i] = w
            }
            return .int8(out)
        case .bool:
            var out = [Bool](repeating: false, count: count)
            for i in 0..<count {
                guard let b = flat[i].bool else { throw bad(i, "true or false") }
                out[i] = b
            }
            return .bool(out)
        case .string:
            var out = [String](repeating: "", count: count)
            for i in 0..<count {
                guard let s = flat[i].string else { throw bad(i, "a string") }
                out[i] = s
            }
            return .string(out)
        }
    }

    private static func flatten(_ values: [JSON], shape: [Int], axis: Int, into out: inout [JSON], name: String) throws(InferenceInputError) {
        guard axis < shape.count, values.count == shape[axis] else {
            throw InferenceInputError("input `\(name)`: nested `data` does not match shape \(shape) at dimension \(axis) (\(values.count) values)")
        }
        if axis == shape.count - 1 {
            for v in values where v.array != nil {
                throw InferenceInputError("input `\(name)`: nested `data` is deeper than shape \(shape)")
            }
            out.append(contentsOf: values)
            return
        }
        for v in values {
            guard let inner = v.array else {
                throw InferenceInputError("input `\(name)`: nested `data` is shallower than shape \(shape) at dimension \(axis + 1)")
            }
            try flatten(inner, shape: shape, axis: axis + 1, into: &out, name: name)
        }
    }

    /// Binary tensor data: little-endian elements; BYTES as a 4-byte length, then the bytes.
    private static func decodeBinary(_ bytes: ArraySlice<UInt8>, dtype: DType, count: Int, name: String) throws(InferenceInputError) -> Tensor.Storage {
        func check(_ width: Int) throws(InferenceInputError) {
            guard bytes.count == count * width else {
                throw InferenceInputError("input `\(name)`: binary data has \(bytes.count) bytes; \(count) \(OIPDatatype.name(dtype)) values need \(count * width)")
            }
        }
        switch dtype {
        case .float32:
            try check(4)
            return .float32(bytes.withUnsafeBytes { raw in (0..<count).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) } })
        case .float64:
            try check(8)
            return .float64(bytes.withUnsafeBytes { raw in (0..<count).map { Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 8, as: UInt64.self))) } })
        case .int64:
            try check(8)
            return .int64(bytes.withUnsafeBytes { raw in (0..<count).map { Int64(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self)) } })
        case .int32:
            try check(4)
            return .int32(bytes.withUnsafeBytes { raw in (0..<count).map { Int32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self)) } })
        case .bool:
            try check(1)
            return .bool(bytes.map { $0 != 0 })
        case .uint8:
            try check(1)
            return .uint8(Array(bytes))
        case .int8:
            try check(1)
            return .int8(bytes.map { Int8(bitPattern: $0) })
        case .string:
            var out: [String] = []
            out.reserveCapacity(count)
            var i = bytes.startIndex
            while i < bytes.endIndex {
                guard i + 4 <= bytes.endIndex else { throw InferenceInputError("input `\(name)`: BYTES data ends inside a length prefix") }
                let n = Int(UInt32(bytes[i]) | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2]) << 16 | UInt32(bytes[i + 3]) << 24)
                i += 4
                guard i + n <= bytes.endIndex else { throw InferenceInputError("input `\(name)`: a BYTES element of \(n) bytes runs past its data") }
                out.append(String(decoding: bytes[i..<(i + n)], as: UTF8.self))
                i += n
            }
            guard out.count == count else {
                throw InferenceInputError("input `\(name)` has \(out.count) BYTES elements; its shape needs \(count)")
            }
            return .string(out)
        }
    }

    /// Encodes the response; returns the body and, when binary outputs follow the JSON, the
    /// JSON header's length for `Inference-Header-Content-Length`.
    public static func encodeResponse(modelName: String, modelVersion: Int, request: InferRequest,
                                      outputs: [String: Tensor], order: [TensorSignature]) -> (body: [UInt8], headerLength: Int?) {
        var w = JSONWriter(capacity: 256)
        w.raw("{\"model_name\":")
        w.string(modelName)
        w.raw(",\"model_version\":\"")
        w.integer(Int64(modelVersion))
        w.raw("\"")
        if let id = request.id {
            w.raw(",\"id\":")
            w.string(id)
        }
        w.raw(",\"outputs\":[")
        var binary: [UInt8] = []
        var first = true
        func write(_ name: String, _ wantsBinary: Bool) {
            guard let tensor = outputs[name] else { return }
            if !first { w.byte(UInt8(ascii: ",")) }
            first = false
            w.raw("{\"name\":")
            w.string(name)
            w.raw(",\"datatype\":\"")
            w.raw(staticName(tensor.dtype))
            w.raw("\",\"shape\":[")
            if let keys = tensor.mapKeys {
                w.integer(Int64(tensor.shape.first ?? 0))
                w.byte(UInt8(ascii: ","))
                w.integer(Int64(keys.count))
            } else {
                for (j, d) in tensor.shape.enumerated() {
                    if j > 0 { w.byte(UInt8(ascii: ",")) }
                    w.integer(Int64(d))
                }
            }
            w.raw("]")
            // JSON has no NaN or infinity: such elements are written as null, and the output says so.
            let nonFinite = !wantsBinary && hasNonFinite(tensor.storage)
            if tensor.mapKeys != nil || wantsBinary || nonFinite {
                w.raw(",\"parameters\":{")
                if let keys = tensor.mapKeys {
                    w.raw("\"map_keys\":[")
                    switch keys {
                    case .int64(let k): for (j, v) in k.enumerated() { if j > 0 { w.byte(UInt8(ascii: ",")) }; w.integer(v) }
                    case .string(let k): for (j, v) in k.enumerated() { if j > 0 { w.byte(UInt8(ascii: ",")) }; w.string(v) }
                    }
                    w.raw("]")
                    if wantsBinary || nonFinite { w.byte(UInt8(ascii: ",")) }
                }
                if nonFinite { w.raw("\"non_finite_as_null\":true") }
                if wantsBinary {
                    let before = binary.count
                    appendBinary(tensor.storage, to: &binary)
                    w.raw("\"binary_data_size\":")
                    w.integer(Int64(binary.count - before))
                }
                w.raw("}")
            }
            if !wantsBinary {
                w.raw(",\"data\":[")
                appendJSONData(tensor.storage, to: &w)
                w.raw("]")
            }
            w.raw("}")
        }
        if request.outputs.isEmpty {
            for signature in order { write(signature.name, request.binaryByDefault) }
        } else {
            for (name, wantsBinary) in request.outputs { write(name, wantsBinary) }
        }
        w.raw("]}")
        if binary.isEmpty { return (w.bytes, nil) }
        let headerLength = w.bytes.count
        w.append(binary)
        return (w.bytes, headerLength)
    }

    private static func staticName(_ dtype: DType) -> StaticString {
        switch dtype {
        case .float32: "FP32"
        case .float64: "FP64"
        case .int64: "INT64"
        case .int32: "INT32"
        case .bool: "BOOL"
        case .string: "BYTES"
        case .uint8: "UINT8"
        case .int8: "INT8"
        }
    }

    /// Whether a float tensor holds NaN or an infinity (which JSON cannot carry).
    private static func hasNonFinite(_ storage: Tensor.Storage) -> Bool {
        switch storage {
        case .float32(let v): v.contains { !$0.isFinite }
        case .float64(let v): v.contains { !$0.isFinite }
        default: false
        }
    }

    private static func appendJSONData(_ storage: Tensor.Storage, to w: inout JSONWriter) {
        switch storage {
        case .float32(let v): for (i, x) in v.enumerated() { if i > 0 { w.byte(UInt8(ascii: ",")) }; w.number(x) }
        case .float64(let v): for (i, x) in v.enumerated() { if i > 0 { w.byte(UInt8(ascii: ",")) }; w.number(x) }
        case .int64(let v): for (i, x) in v.enumerated() { if i > 0 { w.byte(UInt8(ascii: ",")) }; w.integer(x) }
        case .int32(let v): for (i, x) in v.enumerated() { if i > 0 { w.byte(UInt8(ascii: ",")) }; w.integer(Int64(x)) }
        case .bool(let v): for (i, x) in v.enumerated() { if i > 0 { w.byte(UInt8(ascii: ",")) }; w.bool(x) }
        case .string(let v): for (i, x) in v.enumerated() { if i > 0 { w.byte(UInt8(ascii: ",")) }; w.string(x) }
        case .uint8(let v): for (i, x) in v.enumerated() { if i > 0 { w.byte(UInt8(ascii: ",")) }; w.integer(Int64(x)) }
        case .int8(let v): for (i, x) in v.enumerated() { if i > 0 { w.byte(UInt8(ascii: ",")) }; w.integer(Int64(x)) }
        }
    }

    private static func appendBinary(_ storage: Tensor.Storage, to out: inout [UInt8]) {
        switch storage {
        case .float32(let v): for x in v { withUnsafeBytes(of: x.bitPattern.littleEndian) { out.append(contentsOf: $0) } }
        case .float64(let v): for x in v { withUnsafeBytes(of: x.bitPattern.littleEndian) { out.append(contentsOf: $0) } }
        case .int64(let v): for x in v { withUnsafeBytes(of: x.littleEndian) { out.append(contentsOf: $0) } }
        case .int32(let v): for x in v { withUnsafeBytes(of: x.littleEndian) { out.append(contentsOf: $0) } }
        case .bool(let v): out.append(contentsOf: v.map { $0 ? 1 : 0 })
        case .uint8(let v): out.append(contentsOf: v)
        case .int8(let v): out.append(contentsOf: v.map { UInt8(bitPattern: $0) })
        case .string(let v):
            for s in v {
                withUnsafeBytes(of: UInt32(s.utf8.count).littleEndian) { out.append(contentsOf: $0) }
                out.append(contentsOf: s.utf8)
            }
        }
    }
}
