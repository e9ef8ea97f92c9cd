import Foundation
import KaaEngine
import KaaQuality
import KaaSnapshot

/// `kaa snapshot build --quantize int8`: the model's large matrix products quantized to int8
/// (``Quantization``), then held to a gate against the float model before the archive stays.
enum QuantizeBuild {
    /// The gate an int8 build must pass against its float parent unless `--quantize-gate`
    /// names another.
    static let defaultGate = "agreement>=0.99"

    /// Writes the int8 model of `model` to a temporary file and returns its path and report.
    static func quantize(model: String) throws(SnapshotError) -> (path: String, report: QuantizationReport) {
        guard let bytes = FileManager.default.contents(atPath: model) else {
            throw SnapshotError(.io, "cannot read model file `\(model)`")
        }
        let quantized: Data, report: QuantizationReport
        do { (quantized, report) = try Quantization.int8(onnx: bytes) } catch {
            let message = (error as? EngineError)?.message ?? "\(error)"
            throw SnapshotError(.invalidModel, "cannot quantize `\(model)` to int8: \(message)")
        }
        let path = NSTemporaryDirectory() + "kaa-int8-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).onnx"
        guard FileManager.default.createFile(atPath: path, contents: quantized) else {
            throw SnapshotError(.io, "cannot write the quantized model to `\(path)`")
        }
        return (path, report)
    }

    /// Compares the int8 snapshot at `path` with the float one at `parent` on the holdout rows
    /// and returns the gate's verdict.
    static func check(path: String, parent: String, holdout: String, labelField: String?, gate expression: String) throws(SnapshotError) -> GateReport {
        let gate = try QualityGate(parsing: expression)
        if gate.needsLabels && labelField == nil {
            throw SnapshotError(.invalidGate, "--quantize-gate `\(gate)` bounds accuracy, which needs the true labels: give --holdout-label FIELD")
        }
        guard let rows = FileManager.default.contents(atPath: holdout) else {
            throw SnapshotError(.io, "cannot read the holdout file `\(holdout)`")
        }
        do {
            let new = try ComparedSnapshot.open(path: path), old = try ComparedSnapshot.open(path: parent)
            let report = try SnapshotComparison.compare(new: new, old: old, rows: Array(rows), labelField: labelField)
            return GateReport(gate: gate, comparison: report)
        } catch {
            throw SnapshotError(.invalidGate, "the int8 model could not be compared with the float one on `\(holdout)`: \(error.message)")
        }
    }

    /// What the build prints: which products run int8, the weights' size, the gate's figures.
    static func summary(_ report: QuantizationReport, _ verdict: GateReport) -> String {
        var lines = ["int8: \(report.quantized) of \(report.products.count) matrix products quantized; their weights \(ByteCount.format(UInt64(report.floatWeightBytes))) -> \(ByteCount.format(UInt64(report.int8WeightBytes)))"]
        for p in report.products {
            lines.append("  \(p.node) \(p.k)x\(p.n): \(p.keptFloat.map { "float32 (\($0))" } ?? "int8")")
        }
        let c = verdict.comparison
        func f(_ d: Double?) -> String { d.map(SnapshotComparison.format) ?? "n/a" }
        var figures = "agreement \(f(c.agreement)), max score diff \(f(c.maxScoreDiff)), mean score diff \(f(c.meanScoreDiff)), kendall tau \(f(c.kendallTau))"
        if c.labelField != nil { figures += ", accuracy int8 \(f(c.accuracy)) float \(f(c.oldAccuracy)) drop \(f(c.accuracyDrop))" }
        lines.append("gate \(verdict.gate) against the float model on \(c.rows) holdout rows: \(verdict.passed ? "passed" : "FAILED") (\(figures))")
        return lines.joined(separator: "\n")
    }
}
