import ArgumentParser
import Foundation
import KaaQuality
import KaaSnapshot

extension SnapshotCommand {
    /// `kaa snapshot compare`: both snapshots on the same rows, through the comparison the
    /// node's quality gate runs.
    struct Compare: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Compare a snapshot's predictions with another's on the same rows.",
            discussion: """
            Runs NEW and OLD through their pipelines on every row of --data (JSONL, one object of \
            input name to value per line, as `kaa batch` reads) and prints: the agreement of their \
            top labels, the largest and mean absolute difference of their scores, Kendall's tau-b \
            of their scores (the only score; a binary classifier's positive class; else OLD's top \
            class of each row), and with --label the accuracy of each and the drop. See \
            docs/quality-gate.md.
            """)

        @Argument(help: "The snapshot under test (.kaa).") var new: String
        @Option(help: "The snapshot to compare it with (.kaa).") var against: String
        @Option(help: "The rows (JSONL), or - for stdin.") var data: String
        @Option(help: "The rows' field holding the true label; then each one's accuracy is measured.") var label: String?
        @Flag(help: "Print JSON for scripts.") var json = false
        @Option(help: "A trusted public key file (repeatable); then a valid signature by one of them is required.")
        var trust: [String] = []

        func run() throws {
            do {
                var keys = Set<PublisherPublicKey>()
                for t in trust { keys.insert(try PublisherPublicKey(contentsOf: t)) }
                let policy = VerificationPolicy(trustedKeys: keys)
                let newSnapshot = try ComparedSnapshot.open(path: new, policy: policy)
                let oldSnapshot = try ComparedSnapshot.open(path: against, policy: policy)
                var comparison = try SnapshotComparison(new: newSnapshot, old: oldSnapshot, labelField: label)
                let reader = try RecordReader(path: data, csv: false)
                while let chunk = try reader.next(max: 1024) { try comparison.add(chunk) }
                let report = try comparison.report()
                if json {
                    print(try CompareReport.json(report))
                } else {
                    print(CompareReport.table(report, data: data), terminator: "")
                }
            } catch let e as ComparisonError {
                throw fail(e.message)
            } catch let e as SnapshotError {
                throw fail(e.message)
            } catch let e as CommandFailure {
                throw fail(e.description)
            }
        }

        func fail(_ message: String) -> ExitCode {
            FileHandle.standardError.write(Data("error: \(message)\n".utf8))
            return ExitCode.failure
        }
    }
}

/// How `kaa snapshot compare` prints a report.
enum CompareReport {
    static func table(_ r: ComparisonReport, data: String) -> String {
        func value(_ d: Double?) -> String { d.map(SnapshotComparison.format) ?? "n/a" }
        var rows = [
            ["NEW", r.new],
            ["OLD", r.old],
            ["rows", "\(r.rows) (\(data == "-" ? "stdin" : data))"],
            ["agreement", value(r.agreement) + (r.labelOutput.map { "  (top label: `\($0)`)" }
                ?? (r.agreement != nil ? "  (top label: the top score's class)" : "  (no label output)"))],
        ]
        if let output = r.scoreOutput {
            rows.append(["max score diff", value(r.maxScoreDiff) + "  (`\(output)`: \(r.classes.joined(separator: ", ")))"])
            rows.append(["mean score diff", value(r.meanScoreDiff)])
            rows.append(["kendall tau", value(r.kendallTau) + (r.tauScore.map { "  (\($0))" } ?? "")])
        } else {
            rows.append(["score diff", "n/a  (no score output)"])
        }
        if let field = r.labelField {
            rows.append(["accuracy", "NEW \(value(r.accuracy)), OLD \(value(r.oldAccuracy)), drop \(value(r.accuracyDrop))  (label field `\(field)`)"])
        }
        return Table.rows(rows) + "\n"
    }

    static func json(_ r: ComparisonReport) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return String(decoding: try encoder.encode(r), as: UTF8.self)
    }
}

extension BuildOptions {
    /// The manifest's gate for `--gate EXPRESSION --holdout FILE [--holdout-label FIELD]`:
    /// the expression parsed (refused with what is wrong), the holdout's rows counted.
    static func holdoutGate(expression: String, holdout: String, labelField: String?) throws(SnapshotError) -> SnapshotManifest.Gate {
        let gate = try QualityGate(parsing: expression)
        if gate.needsLabels && labelField == nil {
            throw SnapshotError(.invalidGate, "gate `\(gate)` bounds accuracy, which needs the true labels: give --holdout-label FIELD, the holdout rows' field that holds them")
        }
        guard let bytes = FileManager.default.contents(atPath: holdout) else {
            throw SnapshotError(.io, "cannot read the holdout file `\(holdout)`")
        }
        let rows = RecordChunk.jsonl(Array(bytes), max: 1 << 20).reduce(0) { $0 + $1.count }
        guard rows > 0 else { throw SnapshotError(.invalidGate, "the holdout file `\(holdout)` has no rows; it holds one JSON object per line") }
        return SnapshotManifest.Gate(expression: gate.description, holdout: "holdout.jsonl", holdoutRows: rows, labelField: labelField)
    }

    /// Runs the built snapshot's gate against itself: every holdout row must fit its inputs
    /// (and carry the label field), so a holdout that could never run is refused now rather
    /// than when `stable` moves.
    static func checkHoldout(_ path: String) throws(SnapshotError) {
        do {
            let snapshot = try ComparedSnapshot.open(path: path)
            _ = try SnapshotComparison.gate(new: snapshot, old: snapshot)
        } catch {
            throw SnapshotError(.invalidGate, "the holdout rows do not fit the snapshot: \(error.message)")
        }
    }
}
