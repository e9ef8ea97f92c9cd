import Foundation

/// A protobuf wire-format writer, enough to craft ONNX files by hand.
public struct ProtoWriter {
    public init() {}
    public var bytes: [UInt8] = []

    public mutating func varint(_ v: UInt64) {
        var v = v
        while v >= 0x80 {
            bytes.append(UInt8(v & 0x7F) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    public mutating func tag(_ field: Int, _ wire: Int) { varint(UInt64(field << 3 | wire)) }
    public mutating func int(_ field: Int, _ v: Int64) {
        tag(field, 0)
        varint(UInt64(bitPattern: v))
    }
    public mutating func data(_ field: Int, _ d: [UInt8]) {
        tag(field, 2)
        varint(UInt64(d.count))
        bytes += d
    }
    public mutating func string(_ field: Int, _ s: String) { data(field, Array(s.utf8)) }
    public mutating func message(_ field: Int, _ build: (inout ProtoWriter) -> Void) {
        var w = ProtoWriter()
        build(&w)
        data(field, w.bytes)
    }
}

public enum Dim {
    case value(Int64)
    case param(String)
}

/// Hand-made ONNX ModelProto bytes.
public enum ONNXFixture {
    public static func valueInfo(_ w: inout ProtoWriter, field: Int, name: String, elem: Int64, dims: [Dim]?) {
        w.message(field) { v in
            v.string(1, name)
            v.message(2) { t in
                t.message(1) { tt in
                    tt.int(1, elem)
                    if let dims {
                        tt.message(2) { s in
                            for d in dims {
                                s.message(1) { dm in
                                    switch d {
                                    case .value(let x): dm.int(1, x)
                                    case .param(let p): dm.string(2, p)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The graph fields other than the big initializer: inputs, outputs, a small initializer
    /// listed among the inputs (as old exporters do), a node.
    public static func graphBody(weightName: String = "W") -> [UInt8] {
        var g = ProtoWriter()
        g.message(1) { n in  // a NodeProto, skipped by the reader
            n.string(1, "float_input")
            n.string(2, "probabilities")
            n.string(4, "Gemm")
        }
        g.string(2, "fixture")
        valueInfo(&g, field: 11, name: "float_input", elem: 1, dims: [.param("N"), .value(4)])
        valueInfo(&g, field: 11, name: weightName, elem: 1, dims: [.value(4), .value(3)])
        valueInfo(&g, field: 12, name: "label", elem: 7, dims: [.param("N")])
        valueInfo(&g, field: 12, name: "probabilities", elem: 1, dims: [.param("N"), .value(3)])
        return g.bytes
    }

    public static func modelPrefix() -> [UInt8] {
        var m = ProtoWriter()
        m.int(1, 8)  // ir_version
        m.string(2, "kaa-tests")
        m.message(8) { o in o.int(2, 17) }  // opset_import
        return m.bytes
    }

    /// A small, complete model whose weight initializer holds `weightBytes` bytes.
    public static func small(weightBytes: Int = 48, seed: UInt8 = 1) -> [UInt8] {
        var g = ProtoWriter()
        g.bytes = graphBody()
        g.message(5) { t in
            t.int(1, 4)
            t.int(1, 3)
            t.int(2, 1)
            t.string(8, "W")
            t.data(9, (0..<weightBytes).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) })
        }
        var m = ProtoWriter()
        m.bytes = modelPrefix()
        m.data(7, g.bytes)
        return m.bytes
    }

    /// Writes a model whose initializer holds `weightBytes` bytes to `path`, streaming the
    /// weights in 1 MiB pieces (nothing of that size is held in memory).
    public static func writeLarge(to path: String, weightBytes: Int) throws {
        var tensorPrefix = ProtoWriter()
        tensorPrefix.int(1, Int64(weightBytes / 4))
        tensorPrefix.int(2, 1)
        tensorPrefix.string(8, "W")
        tensorPrefix.tag(9, 2)
        tensorPrefix.varint(UInt64(weightBytes))
        let tensorLength = tensorPrefix.bytes.count + weightBytes
        var initializerHead = ProtoWriter()
        initializerHead.tag(5, 2)
        initializerHead.varint(UInt64(tensorLength))
        let body = graphBody()
        let graphLength = body.count + initializerHead.bytes.count + tensorLength
        var head = ProtoWriter()
        head.bytes = modelPrefix()
        head.tag(7, 2)
        head.varint(UInt64(graphLength))
        head.bytes += body + initializerHead.bytes + tensorPrefix.bytes

        _ = FileManager.default.createFile(atPath: path, contents: nil)
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        defer { try? h.close() }
        try h.write(contentsOf: head.bytes)
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        var written = 0
        var state: UInt32 = 0x1234_5678
        while written < weightBytes {
            let n = min(chunk.count, weightBytes - written)
            // Float-like bytes: a noisy mantissa with repeating exponents, compressible a little.
            for i in stride(from: 0, to: n, by: 4) {
                state = state &* 1_664_525 &+ 1_013_904_223
                chunk[i] = UInt8(truncatingIfNeeded: state >> 24)
                if i + 1 < n { chunk[i + 1] = UInt8(truncatingIfNeeded: state >> 16) & 0x0F }
                if i + 2 < n { chunk[i + 2] = 0x80 }
                if i + 3 < n { chunk[i + 3] = 0x3F }
            }
            try h.write(contentsOf: chunk[0..<n])
            written += n
        }
    }
}
