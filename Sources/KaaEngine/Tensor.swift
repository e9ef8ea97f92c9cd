/// The element types the engine computes with.
///
/// The raw values are ONNX's `TensorProto.DataType` codes, so a type read from a model maps
/// onto this enum with `DType(rawValue:)`.
public enum DType: Int, Sendable, CaseIterable, CustomStringConvertible {
    case float32 = 1
    case uint8 = 2
    case int8 = 3
    case int32 = 6
    case int64 = 7
    case string = 8
    case bool = 9
    case float64 = 11

    /// The name ONNX and the Open Inference Protocol use (`FP32`, `INT64`, ...).
    public var description: String {
        switch self {
        case .float32: "float32"
        case .uint8: "uint8"
        case .int8: "int8"
        case .int32: "int32"
        case .int64: "int64"
        case .string: "string"
        case .bool: "bool"
        case .float64: "float64"
        }
    }

    /// Bytes one element takes in memory (strings count their `String` header only).
    public var byteWidth: Int {
        switch self {
        case .float32, .int32: 4
        case .int64, .float64: 8
        case .bool, .uint8, .int8: 1
        case .string: MemoryLayout<String>.stride
        }
    }

    /// The name of an ONNX data type code, also for the codes the engine does not support,
    /// so that errors can name them.
    static func onnxName(_ code: Int) -> String {
        let names = [
            0: "undefined", 1: "float", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16",
            6: "int32", 7: "int64", 8: "string", 9: "bool", 10: "float16", 11: "double",
            12: "uint32", 13: "uint64", 14: "complex64", 15: "complex128", 16: "bfloat16",
        ]
        return names[code] ?? "type code \(code)"
    }
}

/// A dense, row-major tensor: a shape and contiguous elements of one ``DType``.
///
/// A tensor may also carry ``mapKeys``: then it is the value of a sequence of maps (what the
/// `ZipMap` operator produces), one map per row, whose keys are `mapKeys` and whose values
/// are the row's elements.
public struct Tensor: Sendable, Equatable {
    /// The elements, in row-major order.
    public enum Storage: Sendable, Equatable {
        case float32([Float])
        case float64([Double])
        case int64([Int64])
        case int32([Int32])
        case bool([Bool])
        case string([String])
        /// Quantized values (ONNX `uint8`), as DynamicQuantizeLinear and QuantizeLinear write them.
        case uint8([UInt8])
        /// Quantized values (ONNX `int8`), as quantized weights are stored.
        case int8([Int8])
    }

    /// Keys of the maps of a sequence-of-maps value (see ``Tensor``).
    public enum MapKeys: Sendable, Equatable {
        case int64([Int64])
        case string([String])

        /// How many keys there are.
        public var count: Int {
            switch self {
            case .int64(let k): k.count
            case .string(let k): k.count
            }
        }
    }

    /// The dimensions; empty for a scalar.
    public var shape: [Int]
    /// The elements; their count is the product of ``shape``.
    public var storage: Storage
    /// Set when this value is a sequence of maps (ZipMap's output), `nil` for a plain tensor.
    public var mapKeys: MapKeys?

    /// A tensor from a shape and elements whose count MUST be the product of the shape.
    public init(shape: [Int], storage: Storage, mapKeys: MapKeys? = nil) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        self.shape = shape
        self.storage = storage
        self.mapKeys = mapKeys
        precondition(Self.product(shape) == storage.count, "\(storage.count) elements for shape \(shape)")
    }

    /// The product of `shape`, or `nil` when it overflows.
    static func product(_ shape: [Int]) -> Int? {
        if shape.contains(0) { return 0 }
        var n = 1
        for d in shape {
            let (p, overflow) = n.multipliedReportingOverflow(by: d)
            if overflow { return nil }
            n = p
        }
        return n
    }

    /// A tensor from untrusted parts (a request's shape and data): throws instead of trapping
    /// when a dimension is negative, the element count overflows, or the data does not fill
    /// the shape exactly.
    public init(validating shape: [Int], storage: Storage) throws {
        guard shape.count <= 32 else { throw EngineError.input("shape \(shape) has more than 32 dimensions") }
        var n = 1
        for d in shape {
            guard d >= 0 else { throw EngineError.input("shape \(shape) has a negative dimension") }
            let (p, overflow) = n.multipliedReportingOverflow(by: d)
            guard !overflow else { throw EngineError.input("shape \(shape) has too many elements") }
            n = p
        }
        guard n == storage.count else {
            throw EngineError.input("shape \(shape) needs \(n) elements, the data has \(storage.count)")
        }
        self.init(shape: shape, storage: storage)
    }

    /// A float32 tensor.
    public init(shape: [Int], floats: [Float]) { self.init(shape: shape, storage: .float32(floats)) }
    /// A float64 tensor.
    public init(shape: [Int], doubles: [Double]) { self.init(shape: shape, storage: .float64(doubles)) }
    /// An int64 tensor.
    public init(shape: [Int], int64s: [Int64]) { self.init(shape: shape, storage: .int64(int64s)) }
    /// An int32 tensor.
    public init(shape: [Int], int32s: [Int32]) { self.init(shape: shape, storage: .int32(int32s)) }
    /// A bool tensor.
    public init(shape: [Int], bools: [Bool]) { self.init(shape: shape, storage: .bool(bools)) }
    /// A string tensor.
    public init(shape: [Int], strings: [String]) { self.init(shape: shape, storage: .string(strings)) }
    /// A uint8 tensor.
    public init(shape: [Int], uint8s: [UInt8]) { self.init(shape: shape, storage: .uint8(uint8s)) }
    /// An int8 tensor.
    public init(shape: [Int], int8s: [Int8]) { self.init(shape: shape, storage: .int8(int8s)) }

    /// The element type.
    public var dtype: DType { storage.dtype }
    /// The number of elements.
    public var count: Int { storage.count }
    /// The number of dimensions.
    public var rank: Int { shape.count }

    /// The elements as float32, or `nil` when the tensor holds another type.
    public var floats: [Float]? { if case .float32(let v) = storage { v } else { nil } }
    /// The elements as float64, or `nil` when the tensor holds another type.
    public var doubles: [Double]? { if case .float64(let v) = storage { v } else { nil } }
    /// The elements as int64, or `nil` when the tensor holds another type.
    public var int64s: [Int64]? { if case .int64(let v) = storage { v } else { nil } }
    /// The elements as int32, or `nil` when the tensor holds another type.
    public var int32s: [Int32]? { if case .int32(let v) = storage { v } else { nil } }
    /// The elements as bool, or `nil` when the tensor holds another type.
    public var bools: [Bool]? { if case .bool(let v) = storage { v } else { nil } }
    /// The elements as strings, or `nil` when the tensor holds another type.
    public var strings: [String]? { if case .string(let v) = storage { v } else { nil } }
    /// The elements as uint8, or `nil` when the tensor holds another type.
    public var uint8s: [UInt8]? { if case .uint8(let v) = storage { v } else { nil } }
    /// The elements as int8, or `nil` when the tensor holds another type.
    public var int8s: [Int8]? { if case .int8(let v) = storage { v } else { nil } }

    /// Bytes the elements take in memory (strings: their headers plus their UTF-8 bytes).
    public var byteCount: Int {
        if case .string(let s) = storage {
            return s.reduce(s.count * MemoryLayout<String>.stride) { $0 + $1.utf8.count }
        }
        return count * dtype.byteWidth
    }

    /// The elements converted to Double, for numeric and bool tensors (`nil` for strings).
    public func asDoubles() -> [Double]? {
        switch storage {
        case .float32(let v): v.map(Double.init)
        case .float64(let v): v
        case .int64(let v): v.map(Double.init)
        case .int32(let v): v.map(Double.init)
        case .bool(let v): v.map { $0 ? 1 : 0 }
        case .uint8(let v): v.map(Double.init)
        case .int8(let v): v.map(Double.init)
        case .string: nil
        }
    }
}

extension Tensor.Storage {
    /// The element type.
    public var dtype: DType {
        switch self {
        case .float32: .float32
        case .float64: .float64
        case .int64: .int64
        case .int32: .int32
        case .bool: .bool
        case .string: .string
        case .uint8: .uint8
        case .int8: .int8
        }
    }

    /// The number of elements.
    public var count: Int {
        switch self {
        case .float32(let v): v.count
        case .float64(let v): v.count
        case .int64(let v): v.count
        case .int32(let v): v.count
        case .bool(let v): v.count
        case .string(let v): v.count
        case .uint8(let v): v.count
        case .int8(let v): v.count
        }
    }
}

/// One dimension of a declared input or output shape.
public enum Dimension: Sendable, Equatable, CustomStringConvertible {
    /// A fixed size.
    case fixed(Int)
    /// A size named by the model (e.g. `N` or `batch`), chosen by each call.
    case symbolic(String)
    /// A size the model leaves open.
    case unknown

    public var description: String {
        switch self {
        case .fixed(let n): String(n)
        case .symbolic(let s): s
        case .unknown: "?"
        }
    }
}

/// The declared name, element type and shape of a model input or output.
public struct TensorSignature: Sendable, Equatable {
    /// The graph value's name.
    public var name: String
    /// The element type, or `nil` when the model declares one the engine cannot represent.
    public var dtype: DType?
    /// The declared dimensions, or `nil` when the model declares no shape.
    public var shape: [Dimension]?
    /// Set when the value is a sequence of maps (ZipMap's output) rather than a tensor.
    public var isSequenceOfMaps: Bool

    public init(name: String, dtype: DType?, shape: [Dimension]?, isSequenceOfMaps: Bool = false) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.isSequenceOfMaps = isSequenceOfMaps
    }
}
