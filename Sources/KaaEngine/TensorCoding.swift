public import Foundation

/// Limits that keep a hostile model from making the loader allocate absurd amounts.
enum Limits {
    /// The most elements one tensor may have (2^31).
    static let maxElements = 1 << 31
    /// The most dimensions one tensor may have.
    static let maxRank = 32
}

/// Conversion between ONNX `TensorProto` messages and ``Tensor``.
enum TensorCoding {
    /// The element count of `dims`, checked for negative values and overflow as
    /// ``K/count(_:_:)`` checks a value's shape at run time: the non-zero dimensions multiply to
    /// at most ``Limits/maxElements`` (an empty tensor of shape `[0, 2^62]` is refused too, so
    /// that no product of a constant's dimensions can overflow in a kernel).
    static func elementCount(_ dims: [Int64], what: String) throws -> Int {
        guard dims.count <= Limits.maxRank else {
            throw EngineError.invalid("\(what) has \(dims.count) dimensions; at most \(Limits.maxRank) are supported")
        }
        var n = 1
        for d in dims {
            guard d >= 0 else { throw EngineError.invalid("\(what) has negative dimension \(d) in \(dims)") }
            if d == 0 { continue }
            let (p, overflow) = n.multipliedReportingOverflow(by: Int(d))
            guard !overflow, p <= Limits.maxElements else {
                throw EngineError.invalid("\(what) has shape \(dims) with more than \(Limits.maxElements) elements\(dims.contains(0) ? " (leaving out the zero dimensions)" : "")")
            }
            n = p
        }
        return dims.contains(0) ? 0 : n
    }

    /// Decodes a tensor, checking its type, its shape and that it holds exactly the number
    /// of elements its shape says.
    static func decode(_ t: Onnx_TensorProto, what: String) throws -> Tensor {
        if t.hasDataLocation, t.dataLocation == .external {
            throw EngineError.unsupported("\(what) keeps its data in an external file; embed the weights in the ONNX file (onnx.save_model(..., save_as_external_data=False))")
        }
        let n = try elementCount(t.dims, what: what)
        let shape = t.dims.map { Int($0) }
        guard let dtype = DType(rawValue: Int(t.dataType)) else {
            throw EngineError.unsupported("\(what) has element type \(DType.onnxName(Int(t.dataType))); supported: \(DType.allCases.map(\.description).joined(separator: ", "))")
        }
        let raw = t.hasRawData ? t.rawData : nil
        func sizeError(_ got: Int) -> EngineError {
            EngineError.invalid("\(what) declares shape \(shape) (\(n) elements of \(dtype)) but holds \(got)")
        }
        func fromRaw<T>(_ type: T.Type, _ data: Data) throws -> [T] {
            let width = MemoryLayout<T>.size
            guard data.count == n * width else { throw sizeError(data.count / width) }
            return data.withUnsafeBytes { raw in
                (0..<n).map { raw.loadUnaligned(fromByteOffset: $0 * width, as: T.self) }
            }
        }
        let storage: Tensor.Storage
        switch dtype {
        case .float32:
            let v = try raw.map { try fromRaw(Float.self, $0) } ?? t.floatData
            guard v.count == n else { throw sizeError(v.count) }
            storage = .float32(v)
        case .float64:
            let v = try raw.map { try fromRaw(Double.self, $0) } ?? t.doubleData
            guard v.count == n else { throw sizeError(v.count) }
            storage = .float64(v)
        case .int64:
            let v = try raw.map { try fromRaw(Int64.self, $0) } ?? t.int64Data
            guard v.count == n else { throw sizeError(v.count) }
            storage = .int64(v)
        case .int32:
            let v = try raw.map { try fromRaw(Int32.self, $0) } ?? t.int32Data
            guard v.count == n else { throw sizeError(v.count) }
            storage = .int32(v)
        case .bool:
            let v = try raw.map { try fromRaw(UInt8.self, $0).map { $0 != 0 } } ?? t.int32Data.map { $0 != 0 }
            guard v.count == n else { throw sizeError(v.count) }
            storage = .bool(v)
        case .uint8:
            // Without raw_data, ONNX keeps 8-bit values in int32_data, one per entry.
            let v = try raw.map { try fromRaw(UInt8.self, $0) } ?? t.int32Data.map {
                guard let b = UInt8(exactly: $0) else { throw EngineError.invalid("\(what) is uint8 but holds \($0)") }
                return b
            }
            guard v.count == n else { throw sizeError(v.count) }
            storage = .uint8(v)
        case .int8:
            let v = try raw.map { try fromRaw(Int8.self, $0) } ?? t.int32Data.map {
                guard let b = Int8(exactly: $0) else { throw EngineError.invalid("\(what) is int8 but holds \($0)") }
                return b
            }
            guard v.count == n else { throw sizeError(v.count) }
            storage = .int8(v)
        case .string:
            guard raw == nil else { throw EngineError.invalid("\(what) is a string tensor with raw_data; strings belong in string_data") }
            guard t.stringData.count == n else { throw sizeError(t.stringData.count) }
            storage = .string(t.stringData.map { String(decoding: $0, as: UTF8.self) })
        }
        return Tensor(shape: shape, storage: storage)
    }

    /// Encodes a tensor (for tools and tests that write ONNX test data).
    static func encode(_ t: Tensor, name: String = "") -> Onnx_TensorProto {
        var p = Onnx_TensorProto()
        p.name = name
        p.dims = t.shape.map { Int64($0) }
        p.dataType = Int32(t.dtype.rawValue)
        switch t.storage {
        case .float32(let v): p.floatData = v
        case .float64(let v): p.doubleData = v
        case .int64(let v): p.int64Data = v
        case .int32(let v): p.int32Data = v
        case .bool(let v): p.int32Data = v.map { $0 ? 1 : 0 }
        case .string(let v): p.stringData = v.map { Data($0.utf8) }
        case .uint8(let v): p.rawData = Data(v)
        case .int8(let v): p.rawData = v.withUnsafeBytes { Data($0) }
        }
        return p
    }
}

extension Tensor {
    /// Decodes a serialized ONNX `TensorProto` (the format of the ONNX test data's
    /// `input_N.pb` / `output_N.pb` files).
    public init(onnxTensorBytes bytes: Data) throws {
        let proto: Onnx_TensorProto
        do { proto = try Onnx_TensorProto(serializedBytes: bytes) } catch {
            throw EngineError.malformed("not a serialized ONNX TensorProto: \(error)")
        }
        self = try TensorCoding.decode(proto, what: "tensor `\(proto.name)`")
    }

    /// The tensor as a serialized ONNX `TensorProto`.
    public func onnxTensorBytes(name: String = "") throws -> Data {
        try TensorCoding.encode(self, name: name).serializedData()
    }
}
