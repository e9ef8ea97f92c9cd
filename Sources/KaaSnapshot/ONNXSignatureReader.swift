/// Reads a model's input/output signature from an ONNX file's protobuf wire format.
///
/// This is deliberately small: it walks `ModelProto.graph` and reads only `input`, `output`
/// (`ValueInfoProto`: name, type, shape) and the names of `initializer`s (older exporters list
/// weights among the inputs; those are not inputs a client sends). Every other field is skipped
/// by its length without being copied, so a 500 MB model costs a scan of tags. Every read is
/// bounds-checked, and types nest at most ``maxTypeDepth`` deep (a few bytes per level would
/// otherwise recurse past any thread's stack); malformed bytes give an
/// ``SnapshotError/Code/invalidModel`` error that says where the file went wrong. The engine
/// parses ONNX fully elsewhere.
public enum ONNXSignatureReader {
    /// The deepest nesting of value types read (`seq(seq(map(INT64, seq(...))))`); real models
    /// use 3 at most.
    public static let maxTypeDepth = 16

    /// Reads the signature of the ONNX file at `path` (memory-mapped, not copied).
    public static func read(path: String) throws(SnapshotError) -> SnapshotManifest.ModelSignature {
        let map = try MappedFile(path: path)
        do {
            return try read(bytes: map.bytes)
        } catch {
            throw SnapshotError(.invalidModel, "`\(path)` is not a usable ONNX model: \(error.message)")
        }
    }

    /// Reads the signature from ONNX bytes.
    public static func read(bytes: UnsafeRawBufferPointer) throws(SnapshotError) -> SnapshotManifest.ModelSignature {
        guard bytes.count > 0 else { throw err("the file is empty (0 bytes)") }
        var model = ProtoReader(bytes, 0, bytes.count, context: "ModelProto")
        var graphs = 0
        var sawIRVersion = false
        var inputs: [TensorSignature] = []
        var outputs: [TensorSignature] = []
        var initializers = Set<String>()
        while !model.atEnd {
            let (field, wire) = try model.tag()
            switch (field, wire) {
            case (1, 0):
                _ = try model.varint()
                sawIRVersion = true
            case (7, 2):
                graphs += 1
                var graph = try model.message(context: "GraphProto")
                while !graph.atEnd {
                    let (gf, gw) = try graph.tag()
                    switch (gf, gw) {
                    case (11, 2): inputs.append(try valueInfo(try graph.message(context: "GraphProto.input")))
                    case (12, 2): outputs.append(try valueInfo(try graph.message(context: "GraphProto.output")))
                    case (5, 2):
                        var t = try graph.message(context: "GraphProto.initializer")
                        while !t.atEnd {
                            let (tf, tw) = try t.tag()
                            if tf == 8 && tw == 2 { initializers.insert(try t.string()) } else { try t.skip(tw) }
                        }
                    case (11, _), (12, _), (5, _):
                        throw err("GraphProto field \(gf) has wire type \(gw), expected 2 (length-delimited)")
                    default: try graph.skip(gw)
                    }
                }
            case (1, _), (7, _):
                throw err("ModelProto field \(field) has wire type \(wire), which ONNX does not use there")
            default:
                try model.skip(wire)
            }
        }
        guard graphs > 0 else {
            throw err(sawIRVersion ? "the model has no graph" : "no ONNX ModelProto graph found; is this an ONNX file?")
        }
        let realInputs = inputs.filter { !initializers.contains($0.name) }
        guard !outputs.isEmpty else { throw err("the graph declares no outputs") }
        return SnapshotManifest.ModelSignature(inputs: realInputs, outputs: outputs)
    }

    static func err(_ m: String) -> SnapshotError { SnapshotError(.invalidModel, m) }

    private static func valueInfo(_ r: ProtoReader) throws(SnapshotError) -> TensorSignature {
        var r = r
        var name: String?
        var type: (TensorSignature.Kind, String, [Int64]?)?
        while !r.atEnd {
            let (f, w) = try r.tag()
            switch (f, w) {
            case (1, 2): name = try r.string()
            case (2, 2): type = try typeProto(try r.message(context: "TypeProto"), depth: 1)
            case (1, _), (2, _): throw err("ValueInfoProto field \(f) has wire type \(w), expected 2")
            default: try r.skip(w)
            }
        }
        guard let name, !name.isEmpty else { throw err("a graph input or output has no name") }
        guard let type else { throw err("graph value `\(name)` has no type") }
        return TensorSignature(name: name, kind: type.0, dtype: type.1, shape: type.2)
    }

    /// Returns kind, dtype text and shape of a `TypeProto` nested `depth` deep.
    private static func typeProto(_ r: ProtoReader, depth: Int) throws(SnapshotError) -> (TensorSignature.Kind, String, [Int64]?) {
        guard depth <= maxTypeDepth else {
            throw err("a value's type nests deeper than \(maxTypeDepth) levels")
        }
        var r = r
        var result: (TensorSignature.Kind, String, [Int64]?)?
        while !r.atEnd {
            let (f, w) = try r.tag()
            guard w == 2 || [6, 7].contains(f) else {
                if [1, 4, 5, 8, 9].contains(f) { throw err("TypeProto field \(f) has wire type \(w), expected 2") }
                try r.skip(w)
                continue
            }
            switch f {
            case 1:
                let (dt, shape) = try tensorType(try r.message(context: "TypeProto.Tensor"))
                result = (.tensor, dt, shape)
            case 8:
                let (dt, shape) = try tensorType(try r.message(context: "TypeProto.SparseTensor"))
                result = (.sparseTensor, dt, shape)
            case 4:
                result = (.sequence, "seq(\(try elementType(try r.message(context: "TypeProto.Sequence"), depth: depth)))", nil)
            case 9:
                result = (.optional, "optional(\(try elementType(try r.message(context: "TypeProto.Optional"), depth: depth)))", nil)
            case 5:
                var m = try r.message(context: "TypeProto.Map")
                var key = "?"
                var value = "?"
                while !m.atEnd {
                    let (mf, mw) = try m.tag()
                    if mf == 1 && mw == 0 { key = elemTypeName(try m.varint()) }
                    else if mf == 2 && mw == 2 { value = try innerType(try m.message(context: "TypeProto"), depth: depth + 1) }
                    else { try m.skip(mw) }
                }
                result = (.map, "map(\(key),\(value))", nil)
            default:
                try r.skip(w)
            }
        }
        guard let result else { throw err("a TypeProto holds none of tensor, sequence, map, optional or sparse tensor") }
        return result
    }

    private static func innerType(_ r: ProtoReader, depth: Int) throws(SnapshotError) -> String {
        try typeProto(r, depth: depth).1
    }

    /// The `elem_type` (field 1, a `TypeProto`) of a `Sequence` or `Optional` at `depth`.
    private static func elementType(_ r: ProtoReader, depth: Int) throws(SnapshotError) -> String {
        var r = r
        var result = "?"
        while !r.atEnd {
            let (f, w) = try r.tag()
            if f == 1 && w == 2 { result = try innerType(try r.message(context: "TypeProto"), depth: depth + 1) } else { try r.skip(w) }
        }
        return result
    }

    private static func tensorType(_ r: ProtoReader) throws(SnapshotError) -> (String, [Int64]?) {
        var r = r
        var elem: UInt64 = 0
        var shape: [Int64]?
        while !r.atEnd {
            let (f, w) = try r.tag()
            switch (f, w) {
            case (1, 0): elem = try r.varint()
            case (2, 2):
                var s = try r.message(context: "TensorShapeProto")
                var dims: [Int64] = []
                while !s.atEnd {
                    let (sf, sw) = try s.tag()
                    guard sf == 1 else { try s.skip(sw); continue }
                    guard sw == 2 else { throw err("TensorShapeProto.dim has wire type \(sw), expected 2") }
                    var d = try s.message(context: "TensorShapeProto.Dimension")
                    var value: Int64 = -1
                    while !d.atEnd {
                        let (df, dw) = try d.tag()
                        if df == 1 && dw == 0 {
                            let v = Int64(bitPattern: try d.varint())
                            value = v >= 0 ? v : -1
                        } else if df == 2 && dw == 2 {
                            _ = try d.string()
                            value = -1
                        } else { try d.skip(dw) }
                    }
                    dims.append(value)
                }
                shape = dims
            case (1, _), (2, _): throw err("TypeProto.Tensor field \(f) has wire type \(w)")
            default: try r.skip(w)
            }
        }
        guard elem != 0 else { throw err("a tensor type has no element type (elem_type is UNDEFINED)") }
        return (elemTypeName(elem), shape)
    }

    /// ONNX `TensorProto.DataType` in the Open Inference Protocol's spelling.
    static func elemTypeName(_ code: UInt64) -> String {
        switch code {
        case 1: return "FP32"
        case 2: return "UINT8"
        case 3: return "INT8"
        case 4: return "UINT16"
        case 5: return "INT16"
        case 6: return "INT32"
        case 7: return "INT64"
        case 8: return "BYTES"
        case 9: return "BOOL"
        case 10: return "FP16"
        case 11: return "FP64"
        case 12: return "UINT32"
        case 13: return "UINT64"
        case 14: return "COMPLEX64"
        case 15: return "COMPLEX128"
        case 16: return "BF16"
        case 17: return "FP8E4M3FN"
        case 18: return "FP8E4M3FNUZ"
        case 19: return "FP8E5M2"
        case 20: return "FP8E5M2FNUZ"
        case 21: return "UINT4"
        case 22: return "INT4"
        case 23: return "FP4E2M1"
        default: return "ONNX_TYPE_\(code)"
        }
    }
}

/// A bounds-checked cursor over protobuf wire-format bytes.
struct ProtoReader {
    let base: UnsafeRawBufferPointer
    private(set) var position: Int
    let end: Int
    let context: String

    init(_ base: UnsafeRawBufferPointer, _ start: Int, _ end: Int, context: String) {
        self.base = base
        self.position = start
        self.end = end
        self.context = context
    }

    var atEnd: Bool { position >= end }

    private func fail(_ m: String) -> SnapshotError {
        SnapshotError(.invalidModel, "malformed protobuf in \(context) at byte \(position): \(m)")
    }

    mutating func varint() throws(SnapshotError) -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard position < end else { throw fail("varint runs past the end") }
            let b = base[position]
            position += 1
            if shift == 63 && b > 1 { throw fail("varint is longer than 64 bits") }
            result |= UInt64(b & 0x7F) << shift
            if b & 0x80 == 0 { return result }
            shift += 7
            if shift > 63 { throw fail("varint is longer than 10 bytes") }
        }
    }

    mutating func tag() throws(SnapshotError) -> (field: UInt64, wire: UInt64) {
        let t = try varint()
        let field = t >> 3
        guard field > 0 else { throw fail("field number 0") }
        return (field, t & 7)
    }

    mutating func lengthDelimited() throws(SnapshotError) -> (Int, Int) {
        let n = try varint()
        guard n <= UInt64(end - position) else {
            throw fail("a length-delimited field claims \(n) bytes but only \(end - position) remain")
        }
        let start = position
        position += Int(n)
        return (start, position)
    }

    mutating func message(context: String) throws(SnapshotError) -> ProtoReader {
        let (s, e) = try lengthDelimited()
        return ProtoReader(base, s, e, context: context)
    }

    mutating func string() throws(SnapshotError) -> String {
        let (s, e) = try lengthDelimited()
        guard e - s <= 65_536 else { throw fail("a name is longer than 64 KiB") }
        let bytes = UnsafeRawBufferPointer(rebasing: base[s..<e])
        guard let text = String(validating: bytes, as: UTF8.self) else { throw fail("a string is not valid UTF-8") }
        return text
    }

    mutating func skip(_ wire: UInt64) throws(SnapshotError) {
        switch wire {
        case 0: _ = try varint()
        case 1:
            guard end - position >= 8 else { throw fail("fixed64 runs past the end") }
            position += 8
        case 2: _ = try lengthDelimited()
        case 5:
            guard end - position >= 4 else { throw fail("fixed32 runs past the end") }
            position += 4
        default: throw fail("wire type \(wire) is not valid (groups are not used by ONNX)")
        }
    }
}
