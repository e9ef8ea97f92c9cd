import Foundation
import KaaCore
public import KaaEngine

/// The input formats `kaa batch` reads.
public enum BatchFormat: String, CaseIterable, Sendable {
    case jsonl, csv

    /// The format a file name's extension implies, if any.
    public static func guess(_ path: String) -> BatchFormat? {
        switch (path as NSString).pathExtension.lowercased() {
        case "jsonl", "ndjson", "json": .jsonl
        case "csv": .csv
        default: nil
        }
    }
}

/// Records (rows) cut from the input, with where each starts.
public struct RecordChunk: Sendable {
    /// Position of the chunk in the input, from 0.
    public var sequence: Int
    /// The records' bytes, back to back.
    public var bytes: [UInt8]
    /// End offset in ``bytes`` of each record (its start is the previous end).
    public var ends: [Int]
    /// The input line each record starts on, from 1.
    public var lines: [Int]

    public init(sequence: Int, bytes: [UInt8], ends: [Int], lines: [Int]) {
        self.sequence = sequence
        self.bytes = bytes
        self.ends = ends
        self.lines = lines
    }

    public var count: Int { ends.count }
    public func record(_ i: Int) -> ArraySlice<UInt8> { bytes[(i == 0 ? 0 : ends[i - 1])..<ends[i]] }
}

/// RFC 4180 fields of one CSV record: commas outside quotes separate, `""` inside quotes is a quote.
public enum CSVRecord {
    public static func fields(_ record: ArraySlice<UInt8>) -> [[UInt8]] {
        var out: [[UInt8]] = []
        var field: [UInt8] = []
        var quoted = false
        var i = record.startIndex
        var end = record.endIndex
        if end > i, record[end - 1] == 0x0D { end -= 1 }
        while i < end {
            let c = record[i]
            if quoted {
                if c == 0x22 {
                    if i + 1 < end, record[i + 1] == 0x22 { field.append(0x22); i += 1 } else { quoted = false }
                } else {
                    field.append(c)
                }
            } else if c == 0x22 {
                quoted = true
            } else if c == 0x2C {
                out.append(field)
                field.removeAll(keepingCapacity: true)
            } else {
                field.append(c)
            }
            i += 1
        }
        out.append(field)
        return out
    }
}

/// A bad row: its line, the field at fault (if one is), and what was wrong.
public struct RowError: Error, Sendable, CustomStringConvertible {
    public var line: Int
    public var field: String?
    public var message: String
    public init(line: Int, field: String? = nil, message: String) {
        self.line = line
        self.field = field
        self.message = message
    }
    public var description: String { "line \(line)" + (field.map { ": field `\($0)`" } ?? "") + ": " + message }
}

/// How rows become the scorer's input tensors.
public struct RowDecoder: Sendable {
    public struct Column: Sendable {
        public var name: String
        public var dtype: DType
        /// The dimensions after the batch; 0 for one the model leaves open (learned per chunk).
        var rowShape: [Int]
        var defaultValue: Tensor?
        /// CSV: the columns that hold this input's values.
        var csvColumns: [Int] = []
    }

    public var columns: [Column]
    public var format: BatchFormat
    /// CSV: how many columns a record must have.
    var csvWidth = 0

    public init(scorer: Scorer, format: BatchFormat) {
        self.format = format
        columns = scorer.inputs.map { sig in
            let rest = sig.shape.map { Array($0.dropFirst()) } ?? [.unknown]
            return Column(name: sig.name, dtype: sig.dtype ?? .float32,
                          rowShape: rest.map { if case .fixed(let n) = $0 { n } else { 0 } },
                          defaultValue: scorer.defaults[sig.name])
        }
    }

    /// Matches a CSV header to the inputs: by name when every input without a default has a
    /// column, else, for a model with one 2-D input, every column in order.
    public mutating func bind(header: [String], line: Int) throws(RowError) {
        csvWidth = header.count
        var index: [String: Int] = [:]
        for (i, h) in header.enumerated() {
            index[h.trimmingCharacters(in: .whitespaces)] = index[h.trimmingCharacters(in: .whitespaces)] ?? i
        }
        let missing = columns.filter { index[$0.name] == nil && $0.defaultValue == nil }
        if missing.isEmpty {
            for i in columns.indices {
                guard let c = index[columns[i].name] else { continue }
                guard columns[i].rowShape.reduce(1, *) == 1 else {
                    throw RowError(line: line, message: "input `\(columns[i].name)` takes \(columns[i].rowShape) values per row; a CSV column holds one. Use JSONL for it")
                }
                columns[i].csvColumns = [c]
            }
            return
        }
        if columns.count == 1, columns[0].rowShape.count == 1 {
            let w = columns[0].rowShape[0]
            if w == 0 || w == header.count {
                columns[0].rowShape = [header.count]
                columns[0].csvColumns = Array(0..<header.count)
                return
            }
            throw RowError(line: line, message: "the header has \(header.count) columns and none is named `\(columns[0].name)`; the model's one input `\(columns[0].name)` takes \(w) values per row, so give \(w) columns or a column named `\(columns[0].name)`")
        }
        throw RowError(line: line, message: "the CSV header has no column for \(missing.map { "`\($0.name)`" }.joined(separator: ", ")) (and no default in the pipeline); the model takes \(columns.map { "`\($0.name)`" }.joined(separator: ", ")); the header has \(header.prefix(20).map { "`\($0)`" }.joined(separator: ", "))")
    }

    /// Values of one column over a chunk, in the column's dtype.
    struct Builder {
        var dtype: DType
        var floats: [Float] = [], doubles: [Double] = [], int64s: [Int64] = [], int32s: [Int32] = []
        var bools: [Bool] = [], strings: [String] = []
        var uint8s: [UInt8] = [], int8s: [Int8] = []
        /// Values per row, once known.
        var perRow: Int?

        var count: Int {
            switch dtype {
            case .float32: floats.count
            case .float64: doubles.count
            case .int64: int64s.count
            case .int32: int32s.count
            case .bool: bools.count
            case .string: strings.count
            case .uint8: uint8s.count
            case .int8: int8s.count
            }
        }

        mutating func truncate(_ n: Int) {
            floats.removeSubrange(min(n, floats.count)...); doubles.removeSubrange(min(n, doubles.count)...)
            int64s.removeSubrange(min(n, int64s.count)...); int32s.removeSubrange(min(n, int32s.count)...)
            bools.removeSubrange(min(n, bools.count)...); strings.removeSubrange(min(n, strings.count)...)
            uint8s.removeSubrange(min(n, uint8s.count)...); int8s.removeSubrange(min(n, int8s.count)...)
        }

        /// Appends a number; integer columns MUST get integral values in range (see ``fits(_:)``).
        mutating func append(number d: Double) {
            switch dtype {
            case .float32: floats.append(Float(d))
            case .float64: doubles.append(d)
            case .int64: int64s.append(Int64(d))
            case .int32: int32s.append(Int32(d))
            case .bool: bools.append(d != 0)
            case .uint8: uint8s.append(UInt8(d))
            case .int8: int8s.append(Int8(d))
            case .string: break
            }
        }

        /// Whether `d` can go into this column: anything for floats and bools; for integers, an
        /// integral value in the type's range.
        func fits(_ d: Double) -> Bool {
            switch dtype {
            case .int64: d.rounded() == d && abs(d) < 9.2e18
            case .int32: d.rounded() == d && abs(d) <= Double(Int32.max)
            case .uint8: UInt8(exactly: d) != nil
            case .int8: Int8(exactly: d) != nil
            default: true
            }
        }

        mutating func append(_ t: Tensor) {
            switch t.storage {
            case .float32(let v): floats += v
            case .float64(let v): doubles += v
            case .int64(let v): int64s += v
            case .int32(let v): int32s += v
            case .bool(let v): bools += v
            case .string(let v): strings += v
            case .uint8(let v): uint8s += v
            case .int8(let v): int8s += v
            }
        }

        func tensor(rows: Int, rowShape: [Int]) -> Tensor {
            let storage: Tensor.Storage = switch dtype {
            case .float32: .float32(floats)
            case .float64: .float64(doubles)
            case .int64: .int64(int64s)
            case .int32: .int32(int32s)
            case .bool: .bool(bools)
            case .string: .string(strings)
            case .uint8: .uint8(uint8s)
            case .int8: .int8(int8s)
            }
            return Tensor(shape: [rows] + rowShape, storage: storage)
        }
    }

    /// Decodes the records of `chunk` into input tensors. A bad record throws ``RowError``, or
    /// with `skipBad` is left out and reported in `bad` with its index; `records` are the
    /// indices of the records that made it.
    public func decode(_ chunk: RecordChunk, skipBad: Bool) throws(RowError) -> (inputs: [String: Tensor], records: [Int], bad: [(Int, RowError)]) {
        var builders = columns.map { Builder(dtype: $0.dtype, perRow: $0.rowShape.contains(0) ? nil : $0.rowShape.reduce(1, *)) }
        var records: [Int] = []
        var bad: [(Int, RowError)] = []
        records.reserveCapacity(chunk.count)
        for r in 0..<chunk.count {
            let line = chunk.lines[r]
            let counts = builders.map(\.count)
            do throws(RowError) {
                switch format {
                case .jsonl: try decodeJSON(chunk.record(r), line: line, into: &builders)
                case .csv: try decodeCSV(chunk.record(r), line: line, into: &builders)
                }
                records.append(r)
            } catch {
                guard skipBad else { throw error }
                for i in builders.indices { builders[i].truncate(counts[i]) }
                bad.append((r, error))
            }
        }
        var inputs: [String: Tensor] = [:]
        for (c, b) in zip(columns, builders) {
            var shape = c.rowShape
            if shape.contains(0) {
                // One open dimension: its size is what the rows gave.
                let known = shape.filter { $0 != 0 }.reduce(1, *)
                let per = b.perRow ?? known
                shape = shape.map { $0 == 0 ? (known > 0 ? per / known : 0) : $0 }
            }
            inputs[c.name] = b.tensor(rows: records.count, rowShape: shape)
        }
        return (inputs, records, bad)
    }

    private func decodeJSON(_ bytes: ArraySlice<UInt8>, line: Int, into builders: inout [Builder]) throws(RowError) {
        let row: JSON
        do { row = try JSON(parsing: bytes) } catch {
            throw RowError(line: line, message: "not valid JSON: \(error)")
        }
        guard case .object = row else { throw RowError(line: line, message: "each line must be a JSON object of input name to value, got \(row.typeName)") }
        for c in columns.indices {
            let value = row[columns[c].name]
            if value == nil || value!.isNull {
                guard let d = columns[c].defaultValue else {
                    throw RowError(line: line, field: columns[c].name, message: "is missing and has no default")
                }
                builders[c].append(d)
                continue
            }
            let before = builders[c].count
            try append(value!, to: &builders[c], line: line, field: columns[c].name)
            let n = builders[c].count - before
            if let per = builders[c].perRow {
                guard n == per else {
                    let column = columns[c]
                    let want = column.rowShape.count <= 1 && per == 1 ? "one value" : "\(per) values (shape \(column.rowShape))"
                    throw RowError(line: line, field: column.name, message: "has \(n) value\(n == 1 ? "" : "s"); the model takes \(want) per row")
                }
            } else {
                builders[c].perRow = n
            }
        }
    }

    private func append(_ value: JSON, to b: inout Builder, line: Int, field: String) throws(RowError) {
        switch value {
        case .array(let items):
            for item in items { try append(item, to: &b, line: line, field: field) }
        case .integer(let i):
            guard b.dtype != .string else { throw RowError(line: line, field: field, message: "expected a string, got the number \(i)") }
            if b.dtype == .int64 { b.int64s.append(i); return }
            guard b.fits(Double(i)) else { throw RowError(line: line, field: field, message: "\(i) is out of range for \(b.dtype)") }
            b.append(number: Double(i))
        case .number(let d):
            guard b.dtype != .string else { throw RowError(line: line, field: field, message: "expected a string, got the number \(d)") }
            guard b.fits(d) else { throw RowError(line: line, field: field, message: "expected \(b.dtype), got \(d)") }
            b.append(number: d)
        case .bool(let v):
            guard b.dtype != .string else { throw RowError(line: line, field: field, message: "expected a string, got \(v)") }
            b.append(number: v ? 1 : 0)
        case .string(let s):
            guard b.dtype == .string else {
                throw RowError(line: line, field: field, message: "expected a number, got the string \"\(s.prefix(40))\"")
            }
            b.strings.append(s)
        case .null:
            // Inside an array: a missing number, NaN (tree models route it).
            guard b.dtype == .float32 || b.dtype == .float64 else { throw RowError(line: line, field: field, message: "has a null value") }
            b.append(number: .nan)
        case .object:
            throw RowError(line: line, field: field, message: "expected \(b.dtype == .string ? "a string" : "a number") or an array, got an object")
        }
    }

    private func decodeCSV(_ bytes: ArraySlice<UInt8>, line: Int, into builders: inout [Builder]) throws(RowError) {
        let cells = CSVRecord.fields(bytes)
        guard cells.count == csvWidth else {
            throw RowError(line: line, message: "has \(cells.count) column\(cells.count == 1 ? "" : "s"); the header has \(csvWidth)")
        }
        for (c, column) in columns.enumerated() {
            if column.csvColumns.isEmpty {
                builders[c].append(column.defaultValue!)
                continue
            }
            for index in column.csvColumns {
                let cell = cells[index]
                if column.dtype == .string {
                    builders[c].strings.append(String(decoding: cell, as: UTF8.self))
                    continue
                }
                let text = String(decoding: cell, as: UTF8.self).trimmingCharacters(in: .whitespaces)
                if text.isEmpty {
                    guard column.csvColumns.count == 1, let d = column.defaultValue else {
                        throw RowError(line: line, field: column.name, message: "is empty and has no default")
                    }
                    builders[c].append(d)
                    continue
                }
                if column.dtype == .bool, let b = ["true": true, "false": false][text.lowercased()] {
                    builders[c].bools.append(b)
                    continue
                }
                guard let d = Double(text) else {
                    throw RowError(line: line, field: column.name, message: "expected a number, got \"\(text.prefix(40))\"")
                }
                guard builders[c].fits(d) else {
                    throw RowError(line: line, field: column.name, message: "expected \(column.dtype), got \(text)")
                }
                builders[c].append(number: d)
            }
        }
    }
}

