import Foundation
import KaaCore
public import KaaEngine
public import KaaSnapshot

/// Why two snapshots could not be compared.
public struct ComparisonError: Error, Sendable, CustomStringConvertible {
    /// The kind of failure. New codes may be added; switch with a `default`.
    public struct Code: Hashable, Sendable {
        let raw: String
        /// An archive did not verify or load, or its model or pipeline does not load.
        public static let snapshot = Code(raw: "snapshot")
        /// A row does not fit a snapshot's inputs, or lacks the label field.
        public static let badRow = Code(raw: "bad-row")
        /// The snapshots' outputs differ (names, label sets): their predictions do not pair up.
        public static let incomparable = Code(raw: "incomparable")
        /// There are no rows to compare on.
        public static let noRows = Code(raw: "no-rows")
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}

/// A snapshot opened for comparison: its manifest, its scorer (the same ``Scorer`` that
/// `kaa batch` and the node run) and, when it carries a gate, its holdout rows.
public struct ComparedSnapshot: Sendable {
    /// `name@version`, or the name for a draft.
    public let id: String
    public let manifest: SnapshotManifest
    public let scorer: Scorer
    /// The bytes of the gate's holdout file; nil without a gate.
    public let holdout: [UInt8]?

    public init(id: String, manifest: SnapshotManifest, scorer: Scorer, holdout: [UInt8]?) {
        self.id = id
        self.manifest = manifest
        self.scorer = scorer
        self.holdout = holdout
    }

    /// Verifies the archive at `path` with `policy`, loads its model and binds its pipeline.
    /// Keeps the model's bytes and the holdout's in memory, nothing else. Blocks on disk.
    public static func open(path: String, policy: VerificationPolicy = .init()) throws(ComparisonError) -> ComparedSnapshot {
        let archive: VerifiedArchive, files: [String: [UInt8]]
        do {
            (archive, files) = try SnapshotArchive.loadFiles(path: path, policy: policy) { manifest, file in
                file.role == .model || file.path == manifest.gate?.holdout
            }
        } catch {
            throw ComparisonError(.snapshot, error.message)
        }
        let m = archive.manifest
        let id = m.isDraft ? m.name : "\(m.name)@\(m.version)"
        guard let bytes = files[m.model] else { throw ComparisonError(.snapshot, "\(id): the archive has no model file `\(m.model)`") }
        let model: Model
        do { model = try Model(onnx: Data(bytes)) } catch {
            throw ComparisonError(.snapshot, "\(id): cannot load the model: \((error as? EngineError)?.message ?? "\(error)")")
        }
        let scorer: Scorer
        do {
            let pipeline = try m.pipeline.map { (text) throws(PipelineError) in try Pipeline(yaml: text) }
            scorer = try Scorer(model: model, pipeline: pipeline)
        } catch {
            throw ComparisonError(.snapshot, "\(id): the pipeline does not fit the model: \(error.message)")
        }
        var holdout: [UInt8]?
        if let gate = m.gate {
            guard let h = files[gate.holdout] else { throw ComparisonError(.snapshot, "\(id): the archive has no holdout file `\(gate.holdout)`") }
            holdout = h
        }
        return ComparedSnapshot(id: id, manifest: m, scorer: scorer, holdout: holdout)
    }
}

/// What a comparison found; `--json` and the node's gate refusals carry it as JSON.
public struct ComparisonReport: Sendable, Equatable, Encodable {
    /// The snapshot under test and the one it is compared against.
    public var new: String
    public var old: String
    public var rows: Int
    /// The output read as each row's top label: the first one-string-or-integer-per-row
    /// output; nil when there is none (then the top score's class, with two or more classes).
    public var labelOutput: String?
    /// The output read as scores: the first floating-point output with one row per input row
    /// whose values are keyed by class (ZipMap's probabilities), else the first one.
    public var scoreOutput: String?
    /// The score output's classes (map keys, else column numbers from 0).
    public var classes: [String]
    /// Whose score Kendall's tau ranks (see ``SnapshotComparison/tauClass(width:)``).
    public var tauScore: String?
    public var agreement: Double?
    public var maxScoreDiff: Double?
    public var meanScoreDiff: Double?
    public var kendallTau: Double?
    /// The rows' field holding the true label, when one was given.
    public var labelField: String?
    /// NEW's accuracy, OLD's, and OLD's minus NEW's.
    public var accuracy: Double?
    public var oldAccuracy: Double?
    public var accuracyDrop: Double?

    /// The metrics a ``QualityGate`` bounds, by name; those not computed are absent.
    public var metrics: [QualityGate.Metric: Double] {
        var m: [QualityGate.Metric: Double] = [:]
        m[.agreement] = agreement
        m[.accuracy] = accuracy
        m[.accuracyDrop] = accuracyDrop
        m[.maxScoreDiff] = maxScoreDiff
        m[.meanScoreDiff] = meanScoreDiff
        m[.kendallTau] = kendallTau
        return m
    }

    enum CodingKeys: String, CodingKey {
        case new, old, rows, classes, agreement, accuracy
        case labelOutput = "label_output", scoreOutput = "score_output", tauScore = "tau_score"
        case maxScoreDiff = "max_score_diff", meanScoreDiff = "mean_score_diff", kendallTau = "kendall_tau"
        case labelField = "label_field", oldAccuracy = "old_accuracy", accuracyDrop = "accuracy_drop"
    }

    /// Every key, with null for what was not computed.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(new, forKey: .new)
        try c.encode(old, forKey: .old)
        try c.encode(rows, forKey: .rows)
        try c.encode(labelOutput, forKey: .labelOutput)
        try c.encode(scoreOutput, forKey: .scoreOutput)
        try c.encode(classes, forKey: .classes)
        try c.encode(tauScore, forKey: .tauScore)
        try c.encode(agreement, forKey: .agreement)
        try c.encode(maxScoreDiff, forKey: .maxScoreDiff)
        try c.encode(meanScoreDiff, forKey: .meanScoreDiff)
        try c.encode(kendallTau, forKey: .kendallTau)
        try c.encode(labelField, forKey: .labelField)
        try c.encode(accuracy, forKey: .accuracy)
        try c.encode(oldAccuracy, forKey: .oldAccuracy)
        try c.encode(accuracyDrop, forKey: .accuracyDrop)
    }
}

/// A gate's verdict: each term with the value it was held against, and the comparison.
public struct GateReport: Sendable, Equatable, Encodable {
    public struct Term: Sendable, Equatable, Encodable {
        public var term: String
        public var value: Double?
        public var passed: Bool
    }
    public var gate: String
    public var passed: Bool
    public var terms: [Term]
    public var comparison: ComparisonReport

    public init(gate: QualityGate, comparison: ComparisonReport) {
        let outcomes = gate.evaluate(comparison.metrics)
        self.gate = gate.description
        self.terms = outcomes.map { Term(term: $0.term.description, value: $0.value, passed: $0.passed) }
        self.passed = outcomes.allSatisfy(\.passed)
        self.comparison = comparison
    }

    /// The failing terms in words: `agreement 0.9600 (needs >= 0.99)`, `kendall_tau not computed (needs >= 0.9)`.
    public var failures: String {
        terms.filter { !$0.passed }.map { t in
            let name = t.term.prefix { $0 != ">" && $0 != "<" }
            let need = t.term.dropFirst(name.count)
            let value = t.value.map { SnapshotComparison.format($0) } ?? "not computed"
            return "\(name) \(value) (needs \(need.prefix(2)) \(need.dropFirst(2)))"
        }.joined(separator: ", ")
    }
}

/// Runs two snapshots on the same rows and measures how their predictions differ: the one
/// implementation behind `kaa snapshot compare` and the node's quality gate.
///
/// Feed it rows with ``add(_:)`` (JSONL records, each an object of input name to value, as
/// `kaa batch` reads), then take ``report()``. Each snapshot decodes the rows through its own
/// inputs, so NEW may take fields OLD does not; every row must fit both.
public struct SnapshotComparison: Sendable {
    public let new: ComparedSnapshot
    public let old: ComparedSnapshot
    /// The rows' field holding the true label, if accuracy is wanted.
    public let labelField: String?
    private let newDecoder: RowDecoder
    private let oldDecoder: RowDecoder

    private var rows = 0
    private var layout: Layout?
    private var newLabels: [String] = [], oldLabels: [String] = [], truth: [String] = []
    private var newScores: [Double] = [], oldScores: [Double] = []
    private var tauNew: [Double] = [], tauOld: [Double] = []

    /// How the two versions' outputs pair up, learned from the first rows.
    struct Layout {
        var labelOutput: String?
        var scoreOutput: String?
        var classes: [String]
        /// For each of OLD's classes, the column of NEW's scores with the same class.
        var newColumn: [Int]
    }

    /// Refuses snapshots whose output names differ.
    public init(new: ComparedSnapshot, old: ComparedSnapshot, labelField: String?) throws(ComparisonError) {
        self.new = new
        self.old = old
        self.labelField = labelField
        let a = new.scorer.outputs.map(\.name), b = old.scorer.outputs.map(\.name)
        guard Set(a) == Set(b) else {
            func list(_ l: [String]) -> String { l.map { "`\($0)`" }.joined(separator: ", ") }
            throw ComparisonError(.incomparable, "NEW (\(new.id)) and OLD (\(old.id)) are not comparable: NEW outputs \(list(a)), OLD outputs \(list(b)); compare versions of one model, whose outputs have the same names")
        }
        newDecoder = RowDecoder(scorer: new.scorer, format: .jsonl)
        oldDecoder = RowDecoder(scorer: old.scorer, format: .jsonl)
    }

    /// Runs both snapshots on the rows of `chunk` and keeps their predictions.
    public mutating func add(_ chunk: RecordChunk) throws(ComparisonError) {
        guard chunk.count > 0 else { return }
        let n = try Self.predict(new, decoder: newDecoder, side: "NEW", chunk)
        let o = try Self.predict(old, decoder: oldDecoder, side: "OLD", chunk)
        if layout == nil { layout = try pairUp(n, o) }
        let layout = self.layout!
        if let labelField {
            for r in 0..<chunk.count { truth.append(try Self.label(in: chunk, row: r, field: labelField)) }
        }
        if let nl = n.topLabels, let ol = o.topLabels {
            newLabels += nl
            oldLabels += ol
        }
        if layout.scoreOutput != nil {
            let w = layout.classes.count
            guard n.width == w, o.width == w else {
                throw ComparisonError(.incomparable, "the score output `\(layout.scoreOutput!)` changed width between rows (NEW \(n.width), OLD \(o.width), first \(w))")
            }
            let k = Self.tauClass(width: w)
            for r in 0..<chunk.count {
                for c in 0..<w {
                    oldScores.append(o.scores[r * w + c])
                    newScores.append(n.scores[r * w + layout.newColumn[c]])
                }
                let column: Int
                if let k { column = k } else {
                    // OLD's top class of this row (the first of equal scores).
                    var best = 0
                    for c in 1..<w where o.scores[r * w + c] > o.scores[r * w + best] { best = c }
                    column = best
                }
                tauOld.append(o.scores[r * w + column])
                tauNew.append(n.scores[r * w + layout.newColumn[column]])
            }
        }
        rows += chunk.count
    }

    /// The score whose ranks Kendall's tau compares: with one score column, that column; with
    /// two (a binary classifier's negative and positive class), the second, the positive
    /// class; nil with more, meaning OLD's top class of each row, so that tau says whether
    /// NEW orders the rows by confidence in OLD's answer as OLD does.
    public static func tauClass(width: Int) -> Int? {
        width == 1 ? 0 : width == 2 ? 1 : nil
    }

    /// The metrics over every row added; refuses when none was.
    public func report() throws(ComparisonError) -> ComparisonReport {
        guard rows > 0, let layout else {
            throw ComparisonError(.noRows, "there are no rows to compare NEW (\(new.id)) and OLD (\(old.id)) on; give a JSONL file with one object per row")
        }
        let diffs = ComparisonMetrics.scoreDifferences(newScores, oldScores)
        var tauScore: String?
        if layout.scoreOutput != nil {
            let w = layout.classes.count
            tauScore = switch Self.tauClass(width: w) {
            case 0?: "the only score"
            case 1?: "the positive class `\(layout.classes[1])`"
            default: "OLD's top class of each row"
            }
        }
        let accuracy = labelField == nil || newLabels.isEmpty ? nil : ComparisonMetrics.accuracy(newLabels, truth: truth)
        let oldAccuracy = labelField == nil || oldLabels.isEmpty ? nil : ComparisonMetrics.accuracy(oldLabels, truth: truth)
        return ComparisonReport(
            new: new.id, old: old.id, rows: rows, labelOutput: layout.labelOutput, scoreOutput: layout.scoreOutput,
            classes: layout.classes, tauScore: tauScore,
            agreement: newLabels.isEmpty ? nil : ComparisonMetrics.agreement(newLabels, oldLabels),
            maxScoreDiff: diffs?.max, meanScoreDiff: diffs?.mean,
            kendallTau: ComparisonMetrics.kendallTauB(tauNew, tauOld),
            labelField: labelField, accuracy: accuracy, oldAccuracy: oldAccuracy,
            accuracyDrop: accuracy.flatMap { a in oldAccuracy.map { $0 - a } })
    }

    /// Compares `new` with `old` on the JSONL `rows` (all of them, in chunks of `chunkRows`).
    public static func compare(new: ComparedSnapshot, old: ComparedSnapshot, rows: [UInt8], labelField: String?,
                               chunkRows: Int = 1024) throws(ComparisonError) -> ComparisonReport {
        var comparison = try SnapshotComparison(new: new, old: old, labelField: labelField)
        for chunk in RecordChunk.jsonl(rows, max: chunkRows) { try comparison.add(chunk) }
        return try comparison.report()
    }

    /// Runs `new`'s gate against `old` on `new`'s holdout rows; nil when `new` has no gate.
    public static func gate(new: ComparedSnapshot, old: ComparedSnapshot) throws(ComparisonError) -> GateReport? {
        guard let gate = new.manifest.gate, let holdout = new.holdout else { return nil }
        let parsed: QualityGate
        do { parsed = try gate.parsed() } catch { throw ComparisonError(.snapshot, "\(new.id): \(error.message)") }
        let report = try compare(new: new, old: old, rows: holdout, labelField: gate.labelField)
        return GateReport(gate: parsed, comparison: report)
    }

    /// A metric as the table prints it: 4 decimals, or 6 significant digits when smaller.
    public static func format(_ d: Double) -> String {
        if d.isNaN { return "nan" }
        if d.isInfinite { return d > 0 ? "inf" : "-inf" }
        if d != 0 && abs(d) < 0.001 { return String(format: "%.6g", d) }
        return String(format: "%.4f", d)
    }

    // MARK: one side's predictions

    struct Predictions {
        var labelOutput: String?
        var labels: [String]?
        var scoreOutput: String?
        var classes: [String] = []
        var scores: [Double] = []
        var width = 0
        /// The scores carry class keys (a sequence of maps).
        var keyed = false

        /// The label of each row: the label output, else the top score's class (two or more classes).
        var topLabels: [String]? {
            if let labels { return labels }
            guard width >= 2 else { return nil }
            let rows = scores.count / width
            return (0..<rows).map { r in
                var best = 0
                for c in 1..<width where scores[r * width + c] > scores[r * width + best] { best = c }
                return classes[best]
            }
        }
    }

    /// Decodes the chunk through `snapshot`'s inputs, runs it, and reads the outputs.
    static func predict(_ snapshot: ComparedSnapshot, decoder: RowDecoder, side: String, _ chunk: RecordChunk) throws(ComparisonError) -> Predictions {
        let decoded: (inputs: [String: Tensor], records: [Int], bad: [(Int, RowError)])
        do { decoded = try decoder.decode(chunk, skipBad: false) } catch {
            throw ComparisonError(.badRow, "a row does not fit the inputs of \(side) (\(snapshot.id)): \(error)")
        }
        let outputs: [String: Tensor]
        do { outputs = try snapshot.scorer.run(decoded.inputs) } catch {
            let at = error.row.map { "line \(chunk.lines[decoded.records[$0]]): " } ?? "lines \(chunk.lines.first ?? 0)-\(chunk.lines.last ?? 0): "
            throw ComparisonError(.badRow, "\(side) (\(snapshot.id)) cannot score a row: \(at)\(PipelineError(error.code, error.reason, step: error.step, field: error.field).message)")
        }
        let rows = chunk.count
        var p = Predictions()
        for sig in snapshot.scorer.outputs {
            guard let t = outputs[sig.name], t.rank >= 1, t.shape[0] == rows else { continue }
            let per = t.count / rows
            switch t.storage {
            case .string(let v) where p.labels == nil && per == 1:
                p.labelOutput = sig.name
                p.labels = v
            case .int64(let v) where p.labels == nil && per == 1:
                p.labelOutput = sig.name
                p.labels = v.map { String($0) }
            case .int32(let v) where p.labels == nil && per == 1:
                p.labelOutput = sig.name
                p.labels = v.map { String($0) }
            // A map-keyed output (ZipMap's per-class probabilities) over any other.
            case .float32(let v) where per >= 1 && (p.scoreOutput == nil || !p.keyed && t.mapKeys != nil):
                p.scoreOutput = sig.name
                p.scores = v.map(Double.init)
                p.width = per
                p.classes = classes(t.mapKeys, per)
                p.keyed = t.mapKeys != nil
            case .float64(let v) where per >= 1 && (p.scoreOutput == nil || !p.keyed && t.mapKeys != nil):
                p.scoreOutput = sig.name
                p.scores = v
                p.width = per
                p.classes = classes(t.mapKeys, per)
                p.keyed = t.mapKeys != nil
            default:
                continue
            }
        }
        return p
    }

    static func classes(_ keys: Tensor.MapKeys?, _ width: Int) -> [String] {
        switch keys {
        case .int64(let k)?: k.map { String($0) }
        case .string(let k)?: k
        case nil: (0..<width).map { String($0) }
        }
    }

    /// Checks that the two sides' predictions pair up: the same label and score outputs, and
    /// the same classes (in any order).
    func pairUp(_ n: Predictions, _ o: Predictions) throws(ComparisonError) -> Layout {
        func bad(_ m: String) -> ComparisonError {
            ComparisonError(.incomparable, "NEW (\(new.id)) and OLD (\(old.id)) are not comparable: \(m)")
        }
        guard n.labelOutput == o.labelOutput else {
            throw bad("NEW's label output is \(n.labelOutput.map { "`\($0)`" } ?? "none"), OLD's \(o.labelOutput.map { "`\($0)`" } ?? "none")")
        }
        guard n.scoreOutput == o.scoreOutput else {
            throw bad("NEW's score output is \(n.scoreOutput.map { "`\($0)`" } ?? "none"), OLD's \(o.scoreOutput.map { "`\($0)`" } ?? "none")")
        }
        guard n.scoreOutput == nil || Set(n.classes) == Set(o.classes), n.classes.count == o.classes.count else {
            throw bad("their label sets differ: NEW's `\(n.scoreOutput ?? "")` has classes \(n.classes.joined(separator: ", ")); OLD's has \(o.classes.joined(separator: ", "))")
        }
        let index = Dictionary(n.classes.enumerated().map { ($1, $0) }, uniquingKeysWith: { a, _ in a })
        return Layout(labelOutput: o.labelOutput, scoreOutput: o.scoreOutput, classes: o.classes,
                      newColumn: o.classes.map { index[$0] ?? 0 })
    }

    /// The true label of a row: its `field`, as text (a number without a fraction as an integer).
    static func label(in chunk: RecordChunk, row r: Int, field: String) throws(ComparisonError) -> String {
        let line = chunk.lines[r]
        guard let json = try? JSON(parsing: chunk.record(r)), let value = json[field], !value.isNull else {
            throw ComparisonError(.badRow, "line \(line): field `\(field)` (the label field) is missing; every row needs its true label to measure accuracy")
        }
        switch value {
        case .string(let s): return s
        case .integer(let i): return String(i)
        case .number(let d): return d.rounded() == d && abs(d) < 9e15 ? String(Int64(d)) : "\(d)"
        case .bool(let b): return b ? "true" : "false"
        default:
            throw ComparisonError(.badRow, "line \(line): field `\(field)` (the label field) is a JSON \(value.typeName); give the label as a string or a number")
        }
    }
}

extension RecordChunk {
    /// JSONL text cut into chunks of at most `max` records; blank lines are skipped but counted.
    public static func jsonl(_ bytes: [UInt8], max: Int) -> [RecordChunk] {
        var chunks: [RecordChunk] = []
        var current = RecordChunk(sequence: 0, bytes: [], ends: [], lines: [])
        var line = 1, start = 0
        func take(_ end: Int) {
            let record = bytes[start..<end]
            if !record.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) {
                current.bytes.append(contentsOf: record)
                current.ends.append(current.bytes.count)
                current.lines.append(line)
                if current.count == max {
                    chunks.append(current)
                    current = RecordChunk(sequence: chunks.count, bytes: [], ends: [], lines: [])
                }
            }
            line += 1
            start = end + 1
        }
        for (i, b) in bytes.enumerated() where b == 0x0A { take(i) }
        if start < bytes.count { take(bytes.count) }
        if current.count > 0 { chunks.append(current) }
        return chunks
    }
}
