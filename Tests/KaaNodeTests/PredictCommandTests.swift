import Foundation
import Glibc
import KaaCore
import KaaTestSupport
import Testing

/// `kaa predict` against a real node: rows in, one result per row out, clear errors.
@Suite struct PredictCommandTests {
    @Test func rowsFromFlagsAndFilesAsTableAndJSON() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let (node, port) = try NodeProcessTests.startNode(dir)
        defer { node.signal(SIGTERM); node.wait() }
        try ServingTests.publish("iris-logreg", as: "iris", version: 1, port: port, dir: dir)
        try ServingTests.publish("news-text", as: "news", version: 1, port: port, dir: dir)
        let to = ["--to", "http://127.0.0.1:\(port)"]

        // One row, a table with one line per row.
        let one = try KaaProcess.run(["predict", "iris", "--input", #"{"input": [5.1, 3.5, 1.4, 0.2]}"#] + to)
        #expect(one.0 == 0, "\(one.2)")
        let lines = one.1.split(separator: "\n")
        #expect(lines.count == 2)
        #expect(lines.first?.hasPrefix("ROW  OUTPUT_LABEL  OUTPUT_PROBABILITY") == true)
        #expect(lines.last?.hasPrefix("1    0") == true)

        // A JSONL file scored in several requests (--batch-size 2), JSON out, in order.
        let rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5], [4.9, 3.0, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]
        let file = dir.path + "/rows.jsonl"
        try (rows.map { #"{"input": \#($0)}"# }.joined(separator: "\n") + "\n\n").write(toFile: file, atomically: true, encoding: .utf8)
        let many = try KaaProcess.run(["predict", "iris", "--version", "1", "--file", file, "--batch-size", "2", "--json"] + to)
        #expect(many.0 == 0, "\(many.2)")
        let results = try many.1.split(separator: "\n").map { try JSON(parsing: String($0)) }
        #expect(results.map { $0["output_label"]?.int64 } == [0, 2, 1, 0, 2])
        let p = try #require(results.first?["output_probability"])
        #expect(abs((p["0"]?.double ?? 0) - 0.98158) < 1e-4)

        // Only the outputs asked for; text rows as a string or a one-element list.
        let some = try KaaProcess.run(["predict", "news", "--input", #"[{"input": "the rocket launch"}, {"input": ["a recipe for soup"]}]"#,
                                       "--output", "output_label", "--json"] + to)
        #expect(some.0 == 0, "\(some.2)")
        let labels = try some.1.split(separator: "\n").map { try JSON(parsing: String($0)) }
        #expect(labels.count == 2)
        #expect(labels.allSatisfy { $0["output_probability"] == nil && $0["output_label"]?.string != nil })

        // Errors name the row and the input, and exit non-zero.
        let short = try KaaProcess.run(["predict", "iris", "--input", #"{"input": [5.1, 3.5, 1.4]}"#] + to)
        #expect(short.0 != 0)
        #expect(short.2.contains("row 1, input 'input': a value of shape [3] where the model takes [4] per row"), "\(short.2)")
        let unknown = try KaaProcess.run(["predict", "iris", "--input", #"{"petal": 1}"#] + to)
        #expect(unknown.0 != 0)
        #expect(unknown.2.contains("'petal' is not an input of the model; it takes input FP32 [-1, 4]"), "\(unknown.2)")
        try "{\"input\": [1, 2, 3, 4]}\n{\"input\": [1, 2,\n".write(toFile: file, atomically: true, encoding: .utf8)
        let broken = try KaaProcess.run(["predict", "iris", "--file", file] + to)
        #expect(broken.0 != 0)
        #expect(broken.2.contains("rows.jsonl:2: malformed JSON"), "\(broken.2)")
        let missing = try KaaProcess.run(["predict", "nosuch", "--input", #"{"input": 1}"#] + to)
        #expect(missing.0 != 0)
        #expect(missing.2.contains("does not exist"), "\(missing.2)")
        let both = try KaaProcess.run(["predict", "iris"] + to)
        #expect(both.0 != 0)
        #expect(both.2.contains("exactly one of --input or --file"), "\(both.2)")
    }
}
