import ArgumentParser
import Foundation
import KaaCore
import KaaIO

/// `kaa predict`: score rows with a model on a node through the Open Inference Protocol.
struct PredictCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "predict",
        abstract: "Score rows with a model on a node and print the results.",
        discussion: """
            A row is a JSON object of input name → that row's value: a number, string or bool, \
            or nested arrays for the input's non-batch dimensions. `kaa predict` reads the \
            model's metadata from the node, stacks rows into one batch per request and prints \
            one line per row: a table, or JSON objects (output name → value) with --json.

              kaa predict iris-logreg --input '{"X": [5.1, 3.5, 1.4, 0.2]}'
              kaa predict iris-logreg --file rows.jsonl --json
            """)

    @Argument(help: "The model name; without --version it resolves through `stable`, else the latest.")
    var name: String

    @Option(help: "A version of the model.") var version: Int?

    @Option(help: ArgumentHelp(
        "One row as JSON, an array of rows, or a whole inference request ({\"inputs\": [...]}).",
        valueName: "json"))
    var input: String?

    @Option(help: ArgumentHelp("A JSONL file: one row object per line.", valueName: "path")) var file: String?

    @Option(name: .customLong("output"), help: ArgumentHelp("Only this output (repeatable).", valueName: "name"))
    var outputs: [String] = []

    @Option(help: "Rows per request.") var batchSize: Int = 256

    @Flag(help: "Print one JSON object per row (output name → value) instead of a table.") var json = false

    @OptionGroup var node: NodeTarget

    func validate() throws {
        if (input == nil) == (file == nil) { throw ValidationError("give the rows with exactly one of --input or --file") }
        if batchSize < 1 { throw ValidationError("--batch-size must be at least 1") }
        if let version, version < 1 { throw ValidationError("--version must be a positive integer") }
    }

    var modelPath: String { "/v2/models/\(name)" + (version.map { "/versions/\($0)" } ?? "") }

    func run() async throws {
        let source = try readRows()
        let results: [JSON]
        switch source {
        case .request(let body):
            if !outputs.isEmpty { throw ValidationError("--output applies to rows; a whole request names its \"outputs\" itself") }
            results = try Self.rows(of: try await infer(body))
        case .rows(let rows):
            let metadata = try JSON(parsing: try await send(HTTPRequest(method: .get, target: modelPath), node).body)
            let inputs = try InputSpec.list(metadata, model: name)
            var all: [JSON] = []
            for start in stride(from: 0, to: rows.count, by: batchSize) {
                let chunk = rows[start..<min(start + batchSize, rows.count)]
                let body = try Self.request(chunk, firstRow: start + 1, inputs: inputs, outputs: outputs)
                let scored = try Self.rows(of: try await infer(body))
                guard scored.count == chunk.count else {
                    throw CommandFailure("the node answered \(scored.count) rows for a batch of \(chunk.count)")
                }
                all += scored
            }
            results = all
        }
        if json {
            for row in results {
                var w = JSONWriter()
                w.value(row)
                print(String(decoding: w.bytes, as: UTF8.self))
            }
        } else {
            print(Table.rows(Self.table(results)))
        }
    }

    private func infer(_ body: [UInt8]) async throws -> JSON {
        var headers = HTTPHeaders()
        headers.add("Content-Type", "application/json")
        let request = HTTPRequest(method: .post, target: modelPath + "/infer", headers: headers, body: body)
        let response = try await send(request, node)
        do { return try JSON(parsing: response.body) } catch {
            throw CommandFailure("the node's answer is not JSON: \(error)")
        }
    }

    enum Source {
        case rows([JSON])
        case request([UInt8])
    }

    private func readRows() throws -> Source {
        if let input {
            let value: JSON
            do { value = try JSON(parsing: input) } catch { throw ValidationError("--input: \(error)") }
            switch value {
            case .object where value["inputs"]?.array != nil:
                var w = JSONWriter()
                w.value(value)
                return .request(w.bytes)
            case .object: return .rows([value])
            case .array(let rows) where !rows.isEmpty && rows.allSatisfy({ if case .object = $0 { true } else { false } }):
                return .rows(rows)
            default:
                throw ValidationError("--input must be a row object, a non-empty array of row objects, or an inference request")
            }
        }
        let path = file!
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ValidationError("--file \(path): cannot read the file")
        }
        var rows: [JSON] = []
        var lineNumber = 0
        for line in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            lineNumber += 1
            if line.allSatisfy({ $0 == 32 || $0 == 9 || $0 == 13 }) { continue }
            let row: JSON
            do { row = try JSON(parsing: line) } catch { throw CommandFailure("\(path):\(lineNumber): \(error)") }
            guard case .object = row else { throw CommandFailure("\(path):\(lineNumber): a row must be a JSON object, not \(row.typeName)") }
            rows.append(row)
        }
        if rows.isEmpty { throw CommandFailure("\(path): no rows") }
        return .rows(rows)
    }

    /// One input of the model as its metadata describes it.
    struct InputSpec {
        var name: String
        var datatype: String
        /// Dimensions after the batch dimension; -1 where any size goes.
        var perRow: [Int]

        static func list(_ metadata: JSON, model: String) throws -> [InputSpec] {
            guard let inputs = metadata["inputs"]?.array, !inputs.isEmpty else {
                throw CommandFailure("the node's metadata for \(model) lists no inputs")
            }
            return try inputs.map { input in
                guard let name = input["name"]?.string, let datatype = input["datatype"]?.string,
                      let shape = input["shape"]?.array?.compactMap(\.int64) else {
                    throw CommandFailure("the node's metadata for \(model) has an input without name, datatype or shape")
                }
                return InputSpec(name: name, datatype: datatype, perRow: shape.dropFirst().map { Int($0) })
            }
        }

        var signature: String { "\(name) \(datatype) [-1\(perRow.map { ", \($0)" }.joined())]" }
    }

    /// The inference request for a batch of rows (`firstRow` numbers them in messages).
    static func request(_ rows: ArraySlice<JSON>, firstRow: Int, inputs: [InputSpec], outputs: [String]) throws -> [UInt8] {
        let known = Set(inputs.map(\.name))
        for (i, row) in rows.enumerated() {
            if case .object(let members) = row, let extra = members.first(where: { !known.contains($0.key) }) {
                throw CommandFailure("row \(firstRow + i): '\(extra.key)' is not an input of the model; it takes \(inputs.map(\.signature).joined(separator: ", "))")
            }
        }
        var w = JSONWriter(capacity: 64 * rows.count)
        w.raw("{\"inputs\":[")
        var first = true
        for input in inputs {
            let values = rows.map { $0[input.name] }
            if values.allSatisfy({ $0 == nil }) { continue }  // the node may have a default for it
            var rowShape: [Int]?
            var leaves: [JSON] = []
            for (i, value) in values.enumerated() {
                let where_ = "row \(firstRow + i), input '\(input.name)'"
                guard let value else {
                    throw CommandFailure("\(where_): missing (the model takes \(input.signature))")
                }
                let shape = try fit(value, to: input.perRow, at: where_)
                if let rowShape, rowShape != shape {
                    throw CommandFailure("\(where_): shape \(shape) differs from the batch's \(rowShape); send such rows in separate calls")
                }
                rowShape = shape
                flatten(value, into: &leaves)
            }
            if !first { w.raw(",") }
            first = false
            w.raw("{\"name\":")
            w.string(input.name)
            w.raw(",\"datatype\":")
            w.string(input.datatype)
            w.raw(",\"shape\":[")
            w.integer(rows.count)
            for d in rowShape! {
                w.raw(",")
                w.integer(d)
            }
            w.raw("],\"data\":")
            w.value(.array(leaves))
            w.raw("}")
        }
        w.raw("]")
        if !outputs.isEmpty {
            w.raw(",\"outputs\":[")
            for (i, name) in outputs.enumerated() {
                if i > 0 { w.raw(",") }
                w.raw("{\"name\":")
                w.string(name)
                w.raw("}")
            }
            w.raw("]")
        }
        w.raw("}")
        return w.bytes
    }

    /// The per-row shape `value` is sent with: its own nesting when that matches `perRow`, or
    /// `perRow` itself for a scalar or a flat list with as many elements.
    static func fit(_ value: JSON, to perRow: [Int], at where_: String) throws -> [Int] {
        guard let shape = nestedShape(value) else {
            throw CommandFailure("\(where_): nested arrays must be rectangular")
        }
        if shape.count == perRow.count && zip(shape, perRow).allSatisfy({ $1 < 0 || $0 == $1 }) { return shape }
        let count = shape.reduce(1, *)
        if perRow.allSatisfy({ $0 >= 0 }) && shape.count <= 1 && perRow.reduce(1, *) == count { return perRow }
        throw CommandFailure("\(where_): a value of shape \(shape) where the model takes \(perRow) per row")
    }

    static func nestedShape(_ value: JSON) -> [Int]? {
        guard case .array(let items) = value else { return [] }
        guard let first = items.first else { return [0] }
        guard let inner = nestedShape(first) else { return nil }
        for item in items.dropFirst() where nestedShape(item) != inner { return nil }
        return [items.count] + inner
    }

    static func flatten(_ value: JSON, into leaves: inout [JSON]) {
        if case .array(let items) = value {
            for item in items { flatten(item, into: &leaves) }
        } else {
            leaves.append(value)
        }
    }

    /// A response's outputs split into one object per row (output name → that row's value).
    static func rows(of response: JSON) throws -> [JSON] {
        guard let outputs = response["outputs"]?.array, !outputs.isEmpty else {
            throw CommandFailure("the node's answer has no outputs")
        }
        var rows: [[(key: String, value: JSON)]] = []
        for output in outputs {
            guard let name = output["name"]?.string, let shape = output["shape"]?.array?.compactMap(\.int64).map({ Int($0) }),
                  let data = output["data"]?.array, let batch = shape.first else {
                throw CommandFailure("the node's answer has an output without name, shape or JSON data")
            }
            let perRow = Array(shape.dropFirst())
            let width = perRow.reduce(1, *)
            guard data.count == batch * width else {
                throw CommandFailure("output '\(name)': \(data.count) values for shape \(shape)")
            }
            let keys = output["parameters"]?["map_keys"]?.array
            if rows.isEmpty { rows = Array(repeating: [], count: batch) }
            guard rows.count == batch else { throw CommandFailure("outputs disagree on the batch size") }
            for r in 0..<batch {
                let slice = Array(data[(r * width)..<((r + 1) * width)])
                let value: JSON
                if let keys, perRow.count == 1, keys.count == width {
                    value = .object(zip(keys, slice).map { (key: $0.string ?? "\($0.int64 ?? 0)", value: $1) })
                } else {
                    value = nest(slice[...], perRow[...])
                }
                rows[r].append((key: name, value: value))
            }
        }
        return rows.map { .object($0) }
    }

    static func nest(_ flat: ArraySlice<JSON>, _ shape: ArraySlice<Int>) -> JSON {
        guard let n = shape.first else { return flat.first ?? .null }
        let rest = shape.dropFirst()
        let width = rest.reduce(1, *)
        return .array((0..<n).map { i in
            let start = flat.startIndex + i * width
            return nest(flat[start..<(start + width)], rest)
        })
    }

    static func table(_ rows: [JSON]) -> [[String]] {
        guard case .object(let firstMembers)? = rows.first else { return [] }
        var table = [["ROW"] + firstMembers.map { $0.key.uppercased() }]
        for (i, row) in rows.enumerated() {
            guard case .object(let members) = row else { continue }
            table.append(["\(i + 1)"] + members.map { cell($0.value) })
        }
        return table
    }

    /// A value as a short table cell.
    static func cell(_ value: JSON) -> String {
        switch value {
        case .null: return "null"
        case .bool(let b): return "\(b)"
        case .integer(let i): return "\(i)"
        case .number(let d): return String(format: "%.4g", d)
        case .string(let s): return s
        case .array(let items):
            let shown = items.prefix(6).map(cell)
            return "[" + shown.joined(separator: ", ") + (items.count > 6 ? ", … (\(items.count))" : "") + "]"
        case .object(let members):
            let shown = members.prefix(6).map { "\($0.key): \(cell($0.value))" }
            return shown.joined(separator: ", ") + (members.count > 6 ? ", …" : "")
        }
    }
}
