import KaaCore
import KaaEngine

/// The fast path of ``InferenceCodec/parseRequest(body:headerLength:model:)`` for the common
/// request: a JSON body whose inputs are flat FP32 or FP64 `data` arrays without `parameters`.
///
/// It scans the body once, writing numbers straight into the tensors' storage, instead of
/// building a JSON tree and converting it. It handles nothing else: it returns nil for any
/// other form (binary data, nested or non-float data, escaped strings, repeated keys, ...) and
/// for anything invalid, and the general path then parses the body and names what is wrong.
/// Every request it accepts yields exactly the ``InferRequest`` the general path would: numbers
/// are read by `KaaCore.JSONNumberText`, the scanner of `KaaCore.JSON` (a number that needs the
/// C library makes it return nil), then narrowed the same way.
enum InferenceFastPath {
    static func parse(_ body: [UInt8], model: Scorer, limits: CallLimits = .default) -> InferRequest? {
        body.withUnsafeBufferPointer { buffer in
            var scanner = Scanner(bytes: buffer)
            return scanner.request(model: model, limits: limits)
        }
    }

    struct Scanner {
        let bytes: UnsafeBufferPointer<UInt8>
        var i = 0

        init(bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

        mutating func request(model: Scorer, limits: CallLimits) -> InferRequest? {
            guard consume(UInt8(ascii: "{")) else { return nil }
            var inputs: [String: Tensor] = [:]
            var sawInputs = false
            var batch = -1
            var others: [(key: String, value: JSON)] = []
            if !consume(UInt8(ascii: "}")) {
                repeat {
                    guard let key = plainString(), consume(UInt8(ascii: ":")) else { return nil }
                    if key == "inputs" {
                        guard !sawInputs, consume(UInt8(ascii: "[")) else { return nil }
                        sawInputs = true
                        if !consume(UInt8(ascii: "]")) {
                            repeat {
                                // A repeated input name is refused by the general path.
                                guard let (name, tensor) = input(model: model, limits: limits), inputs[name] == nil else { return nil }
                                inputs[name] = tensor
                                if let first = tensor.shape.first { batch = max(batch, first) }
                            } while consume(UInt8(ascii: ","))
                            guard consume(UInt8(ascii: "]")) else { return nil }
                        }
                    } else {
                        // `id`, `outputs`, `parameters` and unknown members: the general reader
                        // parses just this member's text.
                        guard !others.contains(where: { $0.key == key }), let range = skipValue(),
                              let value = try? JSON(parsing: UnsafeBufferPointer(rebasing: bytes[range])) else { return nil }
                        others.append((key, value))
                    }
                } while consume(UInt8(ascii: ","))
                guard consume(UInt8(ascii: "}")) else { return nil }
            }
            skipSpace()
            guard i == bytes.count, sawInputs else { return nil }
            for signature in model.inputs where inputs[signature.name] == nil && model.defaults[signature.name] == nil { return nil }
            guard limits.admits(inputs) else { return nil }
            let json = JSON.object(others)
            let id: String?
            let outputs: [(name: String, binary: Bool)], binaryByDefault: Bool
            do {
                id = try InferenceCodec.requestID(json)
                (outputs, binaryByDefault) = try InferenceCodec.requestedOutputs(json, model: model)
            } catch {
                return nil
            }
            return InferRequest(id: id, inputs: inputs, outputs: outputs, binaryByDefault: binaryByDefault, batchSize: max(batch, 1))
        }

        /// One input object, fully validated against the model; nil for anything the general
        /// path must handle or refuse.
        mutating func input(model: Scorer, limits: CallLimits) -> (String, Tensor)? {
            guard consume(UInt8(ascii: "{")) else { return nil }
            var name: String?, datatype: String?, shape: [Int]?, data: Range<Int>?
            var storage: Tensor.Storage?
            var others: [String] = []
            if !consume(UInt8(ascii: "}")) {
                repeat {
                    guard let key = plainString(), consume(UInt8(ascii: ":")) else { return nil }
                    switch key {
                    case "name": guard name == nil, let s = plainString() else { return nil }; name = s
                    case "datatype": guard datatype == nil, let s = plainString() else { return nil }; datatype = s
                    case "shape": guard shape == nil, let s = dimensions() else { return nil }; shape = s
                    case "data":
                        guard data == nil, storage == nil else { return nil }
                        // Read in place when the members it depends on came first (the usual
                        // order); else find its end now and read it once they are known.
                        if let name, let datatype, let shape, let (count, dtype) = Self.expect(name, datatype, shape, model, limits) {
                            guard let s = numbers(count: count, dtype: dtype) else { return nil }
                            storage = s
                        } else {
                            guard let r = skipValue() else { return nil }
                            data = r
                        }
                    case "parameters": return nil
                    default:
                        guard !others.contains(key), skipValue() != nil else { return nil }
                        others.append(key)
                    }
                } while consume(UInt8(ascii: ","))
                guard consume(UInt8(ascii: "}")) else { return nil }
            }
            guard let name, let datatype, let shape, let (count, dtype) = Self.expect(name, datatype, shape, model, limits) else { return nil }
            if storage == nil {
                guard let data else { return nil }
                var values = Scanner(bytes: UnsafeBufferPointer(rebasing: bytes[data]))
                guard let s = values.numbers(count: count, dtype: dtype), values.atEnd() else { return nil }
                storage = s
            }
            return (name, Tensor(shape: shape, storage: storage!))
        }

        /// The element count and dtype of an input named `name` with this datatype and shape, when
        /// the model takes it as a float tensor of that shape within `limits`; nil otherwise.
        static func expect(_ name: String, _ datatype: String, _ shape: [Int], _ model: Scorer, _ limits: CallLimits) -> (Int, DType)? {
            guard let signature = model.inputs.first(where: { $0.name == name }),
                  let dtype = OIPDatatype.dtype(datatype), dtype == .float32 || dtype == .float64,
                  signature.dtype == nil || signature.dtype == dtype else { return nil }
            var count = 1
            for d in shape {
                let (p, overflow) = count.multipliedReportingOverflow(by: d)
                guard !overflow else { return nil }
                count = p
            }
            guard count <= limits.maxElements, (shape.first ?? 0) <= limits.maxRows else { return nil }
            if let declared = signature.shape {
                guard declared.count == shape.count else { return nil }
                for (d, got) in zip(declared, shape) {
                    if case .fixed(let want) = d, want != got { return nil }
                }
            }
            return (count, dtype)
        }

        /// A flat array of exactly `count` numbers, as `dtype` elements.
        mutating func numbers(count: Int, dtype: DType) -> Tensor.Storage? {
            if dtype == .float32 {
                guard let v = flatNumbers(count: count, as: Float.self, { Float($0) }) else { return nil }
                return .float32(v)
            }
            guard let v = flatNumbers(count: count, as: Double.self, { $0 }) else { return nil }
            return .float64(v)
        }

        /// Only white space is left.
        mutating func atEnd() -> Bool {
            skipSpace()
            return i == bytes.count
        }

        /// `[n, ...]` of plain non-negative integers below 2^31.
        mutating func dimensions() -> [Int]? {
            guard consume(UInt8(ascii: "[")) else { return nil }
            var out: [Int] = []
            if consume(UInt8(ascii: "]")) { return out }
            repeat {
                skipSpace()
                var v = 0, digits = 0
                while i < bytes.count, bytes[i] >= 0x30, bytes[i] <= 0x39 {
                    v = v * 10 + Int(bytes[i] - 0x30)
                    digits += 1
                    i += 1
                    guard digits <= 10 else { return nil }
                }
                guard digits > 0, v < 1 << 31, !(digits > 1 && bytes[i - digits] == 0x30) else { return nil }
                out.append(v)
            } while consume(UInt8(ascii: ","))
            return consume(UInt8(ascii: "]")) ? out : nil
        }

        /// A flat array of exactly `count` numbers.
        mutating func flatNumbers<T>(count: Int, as: T.Type, _ convert: (Double) -> T) -> [T]? {
            guard consume(UInt8(ascii: "[")) else { return nil }
            var out: [T] = []
            // Each number takes at least two bytes of the body (a digit and a comma).
            out.reserveCapacity(min(count, (bytes.count - i) / 2 + 1))
            if !consume(UInt8(ascii: "]")) {
                repeat {
                    skipSpace()
                    guard out.count < count, let d = number() else { return nil }
                    out.append(convert(d))
                } while consume(UInt8(ascii: ","))
                guard consume(UInt8(ascii: "]")) else { return nil }
            }
            return out.count == count ? out : nil
        }

        /// A JSON number as `KaaCore.JSON` reads it and `JSON.double` converts it; nil where
        /// that reader would need the C library (or would refuse the text).
        mutating func number() -> Double? {
            switch JSONNumberText.scan(UnsafeRawBufferPointer(bytes), at: &i) {
            case .integer(let v): Double(v)
            case .double(let d): d
            case .long, .invalid: nil
            }
        }

        mutating func skipSpace() {
            while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x0A || bytes[i] == 0x0D || bytes[i] == 0x09 { i += 1 }
        }

        mutating func consume(_ c: UInt8) -> Bool {
            skipSpace()
            guard i < bytes.count, bytes[i] == c else { return false }
            i += 1
            return true
        }

        /// A string of printable ASCII without escapes.
        mutating func plainString() -> String? {
            guard consume(UInt8(ascii: "\"")) else { return nil }
            let start = i
            while i < bytes.count {
                let c = bytes[i]
                if c == UInt8(ascii: "\"") {
                    i += 1
                    return String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<(i - 1)]), as: UTF8.self)
                }
                guard c >= 0x20, c < 0x80, c != UInt8(ascii: "\\") else { return nil }
                i += 1
            }
            return nil
        }

        /// The byte range of the next value, found by nesting and string boundaries only; the
        /// caller parses (and so validates) what it keeps.
        mutating func skipValue() -> Range<Int>? {
            skipSpace()
            let start = i
            var depth = 0
            while i < bytes.count {
                let c = bytes[i]
                switch c {
                case UInt8(ascii: "{"), UInt8(ascii: "["):
                    depth += 1
                    i += 1
                case UInt8(ascii: "}"), UInt8(ascii: "]"):
                    if depth == 0 { return i > start ? start..<i : nil }
                    depth -= 1
                    i += 1
                    if depth == 0 { return start..<i }
                case UInt8(ascii: "\""):
                    i += 1
                    while i < bytes.count, bytes[i] != UInt8(ascii: "\"") { i += bytes[i] == UInt8(ascii: "\\") ? 2 : 1 }
                    guard i < bytes.count else { return nil }
                    i += 1
                    if depth == 0 { return start..<i }
                case UInt8(ascii: ","), 0x20, 0x0A, 0x0D, 0x09:
                    if depth == 0 { return i > start ? start..<i : nil }
                    i += 1
                default:
                    i += 1
                }
            }
            return depth == 0 && i > start ? start..<i : nil
        }
    }
}
