import Foundation
import KaaCore
import KaaEngine
import KaaQuality

/// Reads a file (or stdin) in 1 MiB blocks and cuts it into records: lines, or for CSV,
/// lines outside quoted fields. Blank lines are skipped (but counted). Memory: one block plus
/// the records of one chunk.
final class RecordReader {
    private let fd: Int32
    private let csv: Bool
    private var buffer: [UInt8] = []
    private var block = [UInt8](repeating: 0, count: 1 << 20)
    private var start = 0
    private var scan = 0
    private var inQuotes = false
    private var eof = false
    private var line = 1
    private var sequence = 0
    /// Bytes read so far.
    private(set) var bytesRead = 0
    /// The input's size in bytes, when known (a regular file).
    let size: Int?

    init(path: String, csv: Bool) throws {
        if path == "-" {
            fd = 0
        } else {
            fd = open(path, O_RDONLY)
            guard fd >= 0 else { throw CommandFailure("cannot open `\(path)`: \(String(cString: strerror(errno)))") }
        }
        var st = stat()
        size = fstat(fd, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG ? Int(st.st_size) : nil
        self.csv = csv
    }

    deinit { if fd > 0 { close(fd) } }

    private func fill() throws {
        if start > 0 && start >= buffer.count / 2 {
            buffer.removeSubrange(0..<start)
            scan -= start
            start = 0
        }
        let n = block.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
        guard n >= 0 else { throw CommandFailure("cannot read the input: \(String(cString: strerror(errno)))") }
        buffer.append(contentsOf: block[0..<n])
        bytesRead += n
        if n == 0 { eof = true }
    }

    /// The first record of the input (the CSV header), or nil when the input is empty.
    func header() throws -> (fields: [String], line: Int)? {
        guard let c = try next(max: 1) else { return nil }
        sequence = 0 // the header is no chunk: the first rows are chunk 0
        return (CSVRecord.fields(c.record(0)).map { String(decoding: $0, as: UTF8.self) }, c.lines[0])
    }

    /// The next up to `max` records, or nil at the end of the input.
    func next(max: Int) throws -> RecordChunk? {
        var bytes: [UInt8] = []
        var ends: [Int] = []
        var lines: [Int] = []
        while ends.count < max {
            // Find the end of the record that starts at `start`.
            var end: Int?
            buffer.withUnsafeBufferPointer { b in
                var i = scan
                while i < b.count {
                    let c = b[i]
                    if csv && c == 0x22 { inQuotes.toggle() } else if c == 0x0A && !inQuotes { end = i; break }
                    i += 1
                }
                scan = i
            }
            if end == nil {
                if !eof { try fill(); continue }
                guard start < buffer.count else { break }
                end = buffer.count // the last record has no newline
            }
            let e = end!
            let record = buffer[start..<e]
            let newlines = csv ? record.reduce(0) { $0 + ($1 == 0x0A ? 1 : 0) } : 0 // JSONL records hold none
            if !record.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) {
                bytes.append(contentsOf: record)
                ends.append(bytes.count)
                lines.append(line)
            }
            line += newlines + 1
            start = min(e + 1, buffer.count)
            scan = start
            inQuotes = false
        }
        guard !ends.isEmpty else { return nil }
        defer { sequence += 1 }
        return RecordChunk(sequence: sequence, bytes: bytes, ends: ends, lines: lines)
    }
}

/// Writes output rows as JSONL: one object per row, output name to that row's value.
enum RowEncoder {
    static func encode(_ outputs: [String: Tensor], order: [TensorSignature], rows: Int, into w: inout JSONWriter) {
        // Per chunk, not per row: each output's `"name":` and its map keys' `"key":` as bytes.
        func key(_ s: String) -> [UInt8] {
            var k = JSONWriter(capacity: s.utf8.count + 3)
            k.string(s)
            k.byte(UInt8(ascii: ":"))
            return k.bytes
        }
        let tensors = order.compactMap { sig -> (name: [UInt8], tensor: Tensor, keys: [[UInt8]]?)? in
            guard let t = outputs[sig.name] else { return nil }
            let keys: [[UInt8]]? = switch t.mapKeys {
            case .int64(let v)?: v.map { key(String($0)) }
            case .string(let v)?: v.map(key)
            case nil: nil
            }
            return (key(sig.name), t, keys)
        }
        for r in 0..<rows {
            w.byte(UInt8(ascii: "{"))
            for (i, o) in tensors.enumerated() {
                if i > 0 { w.byte(UInt8(ascii: ",")) }
                w.append(o.name)
                value(o.tensor, keys: o.keys, row: r, rows: rows, into: &w)
            }
            w.byte(UInt8(ascii: "}"))
            w.byte(0x0A)
        }
    }

    static func value(_ t: Tensor, keys: [[UInt8]]?, row r: Int, rows: Int, into w: inout JSONWriter) {
        guard t.rank >= 1, t.shape[0] == rows else {
            // Not per row (a scalar or another batch size): the whole value on every row.
            nested(t, shape: t.shape, offset: 0, into: &w)
            return
        }
        let per = rows == 0 ? 0 : t.count / rows
        if let keys {
            w.byte(UInt8(ascii: "{"))
            for k in keys.indices {
                if k > 0 { w.byte(UInt8(ascii: ",")) }
                w.append(keys[k])
                element(t.storage, r * per + k, into: &w)
            }
            w.byte(UInt8(ascii: "}"))
            return
        }
        nested(t, shape: Array(t.shape.dropFirst()), offset: r * per, into: &w)
    }

    static func nested(_ t: Tensor, shape: [Int], offset: Int, into w: inout JSONWriter) {
        guard let first = shape.first else { return element(t.storage, offset, into: &w) }
        let inner = Array(shape.dropFirst())
        let step = inner.reduce(1, *)
        w.byte(UInt8(ascii: "["))
        for i in 0..<first {
            if i > 0 { w.byte(UInt8(ascii: ",")) }
            nested(t, shape: inner, offset: offset + i * step, into: &w)
        }
        w.byte(UInt8(ascii: "]"))
    }

    static func element(_ s: Tensor.Storage, _ i: Int, into w: inout JSONWriter) {
        switch s {
        case .float32(let v): w.number(v[i])
        case .float64(let v): w.number(v[i])
        case .int64(let v): w.integer(v[i])
        case .int32(let v): w.integer(v[i])
        case .bool(let v): w.bool(v[i])
        case .string(let v): w.string(v[i])
        case .uint8(let v): w.integer(Int64(v[i]))
        case .int8(let v): w.integer(Int64(v[i]))
        }
    }
}
