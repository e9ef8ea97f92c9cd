public import Foundation
import KaaCore

/// The manifest of a snapshot: what it is, what it contains and what it needs.
///
/// Stored as the first entry (`manifest.json`) of the archive; the SHA-256 of its exact bytes is
/// the snapshot's digest (see `docs/snapshot-format.md`). Because the manifest lists every file
/// with its size and SHA-256, the digest binds all of the snapshot's content.
public struct SnapshotManifest: Sendable, Equatable, Codable {
    /// The manifest and container format this code writes, and the newest it reads.
    public static let currentFormatVersion = 1
    /// The entry name of the manifest in the container.
    public static let entryName = "manifest.json"
    /// The most files one snapshot may hold. Validation sorts the paths (n log n), and the
    /// archive reader keeps an index of them; 10,000 files make a manifest of about 4 MB.
    public static let maxFiles = 10_000

    public var formatVersion: Int
    public var name: String
    /// The version; `0` marks a draft whose version the receiving node assigns.
    public var version: Int
    public var createdAt: Date
    /// The entry name of the ONNX model file (one of ``files``, with role `model`).
    public var model: String
    /// Every file in the archive, in archive order, with its size and SHA-256.
    public var files: [File]
    /// The pipeline spec, carried as text (its format belongs to the engine).
    public var pipeline: String?
    /// The model's inputs and outputs, read from the ONNX graph.
    public var signature: ModelSignature
    public var requirements: Requirements
    /// Free `key=value` labels.
    public var labels: [String: String]
    public var lineage: Lineage
    /// The quality gate and the holdout rows it runs on, if any. Optional, and left out of the
    /// manifest's bytes when absent, so a snapshot without one has the bytes (and digest) it
    /// had before gates existed.
    public var gate: Gate?

    public init(
        name: String, version: Int, createdAt: Date, model: String, files: [File],
        pipeline: String?, signature: ModelSignature, requirements: Requirements,
        labels: [String: String], lineage: Lineage
    ) {
        self.formatVersion = Self.currentFormatVersion
        self.name = name
        self.version = version
        self.createdAt = createdAt
        self.model = model
        self.files = files
        self.pipeline = pipeline
        self.signature = signature
        self.requirements = requirements
        self.labels = labels
        self.lineage = lineage
    }

    /// A quality gate (docs/quality-gate.md): the conditions on ``QualityGate/Metric``s this
    /// version must meet against the one `stable` points at, computed on its holdout rows.
    public struct Gate: Sendable, Equatable, Codable {
        /// The gate's text, as ``QualityGate/init(parsing:)`` reads it.
        public var expression: String
        /// The entry name of the holdout rows (JSONL, one object per row), one of ``files``.
        public var holdout: String
        /// How many rows the holdout holds.
        public var holdoutRows: Int
        /// The rows' field holding the true label; required when a term needs labels.
        public var labelField: String?

        public init(expression: String, holdout: String, holdoutRows: Int, labelField: String?) {
            self.expression = expression
            self.holdout = holdout
            self.holdoutRows = holdoutRows
            self.labelField = labelField
        }

        /// The parsed expression (``SnapshotManifest/validate()`` has checked that it parses).
        public func parsed() throws(SnapshotError) -> QualityGate { try QualityGate(parsing: expression) }

        enum CodingKeys: String, CodingKey {
            case expression, holdout
            case holdoutRows = "holdout_rows"
            case labelField = "label_field"
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(expression, forKey: .expression)
            try c.encode(holdout, forKey: .holdout)
            try c.encode(holdoutRows, forKey: .holdoutRows)
            try c.encode(labelField, forKey: .labelField)
        }
    }

    /// One file of the snapshot.
    public struct File: Sendable, Equatable, Codable {
        public enum Role: String, Sendable, Codable { case model, extra }
        /// The entry name: a relative path of `[A-Za-z0-9._-]` components joined by `/`.
        public var path: String
        public var role: Role
        public var size: UInt64
        /// Lowercase hex SHA-256 of the file's bytes.
        public var sha256: String

        public init(path: String, role: Role, size: UInt64, sha256: String) {
            self.path = path
            self.role = role
            self.size = size
            self.sha256 = sha256
        }
    }

    /// The model's input and output values.
    public struct ModelSignature: Sendable, Equatable, Codable {
        public var inputs: [TensorSignature]
        public var outputs: [TensorSignature]
        public init(inputs: [TensorSignature], outputs: [TensorSignature]) {
            self.inputs = inputs
            self.outputs = outputs
        }
    }

    /// What a node needs to serve the model.
    public struct Requirements: Sendable, Equatable, Codable {
        /// What the model asks of its holders' accelerators: nothing, a GPU (placed only on
        /// nodes with one), or a GPU where there is room (`gpu-preferred`).
        public enum Accelerator: String, Sendable, Codable, CaseIterable {
            case none, gpu
            case gpuPreferred = "gpu-preferred"
        }
        /// Estimated resident memory to serve the model, in bytes.
        public var memoryBytes: UInt64
        public var accelerator: Accelerator
        public init(memoryBytes: UInt64, accelerator: Accelerator) {
            self.memoryBytes = memoryBytes
            self.accelerator = accelerator
        }
        enum CodingKeys: String, CodingKey {
            case memoryBytes = "memory_bytes"
            case accelerator
        }
    }

    /// Where the snapshot came from.
    public struct Lineage: Sendable, Equatable, Codable {
        /// The version this one was derived from (retrained, fine-tuned), if any.
        public var parentVersion: Int?
        /// A reference to the training data (a URI, a dataset id, a commit).
        public var trainingData: String?
        /// Who published it: free text, by default the signing key's id.
        public var publisher: String?
        public init(parentVersion: Int? = nil, trainingData: String? = nil, publisher: String? = nil) {
            self.parentVersion = parentVersion
            self.trainingData = trainingData
            self.publisher = publisher
        }
        enum CodingKeys: String, CodingKey {
            case parentVersion = "parent_version"
            case trainingData = "training_data"
            case publisher
        }
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(parentVersion, forKey: .parentVersion)
            try c.encode(trainingData, forKey: .trainingData)
            try c.encode(publisher, forKey: .publisher)
        }
    }

    enum CodingKeys: String, CodingKey {
        case formatVersion = "format_version"
        case name, version
        case createdAt = "created_at"
        case model, files, pipeline, signature, requirements, labels, lineage, gate
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(formatVersion, forKey: .formatVersion)
        try c.encode(name, forKey: .name)
        try c.encode(version, forKey: .version)
        try c.encode(createdAt, forKey: .createdAt)
        try c.encode(model, forKey: .model)
        try c.encode(files, forKey: .files)
        try c.encode(pipeline, forKey: .pipeline)
        try c.encode(signature, forKey: .signature)
        try c.encode(requirements, forKey: .requirements)
        try c.encode(labels, forKey: .labels)
        try c.encode(lineage, forKey: .lineage)
        try c.encodeIfPresent(gate, forKey: .gate)
    }

    /// Whether this is a draft (version 0) awaiting a version from the receiving node.
    public var isDraft: Bool { version == 0 }

    /// The canonical bytes: JSON, keys sorted, two-space indentation, `/` unescaped, dates as
    /// RFC 3339 UTC seconds, a final newline. The digest is taken over these exact bytes.
    public func canonicalBytes() throws(SnapshotError) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .custom { date, enc in
            var c = enc.singleValueContainer()
            try c.encode(ManifestDate.format(date))
        }
        do {
            var bytes = Array(try encoder.encode(self))
            bytes.append(0x0A)
            return bytes
        } catch {
            throw SnapshotError(.invalidManifest, "manifest could not be encoded: \(error)")
        }
    }

    /// Decodes and validates manifest bytes, refusing unknown, missing and wrong fields,
    /// repeated keys at any depth, and numbers that are not integer literals.
    ///
    /// The text is read first with KaaCore's JSON reader, which keeps every member of an object
    /// in order, repeats included: Foundation's readers keep one of two equal keys silently, and
    /// other languages' readers keep the other, so a digest over such text would be read
    /// differently by different readers.
    public static func decode(_ bytes: [UInt8]) throws(SnapshotError) -> SnapshotManifest {
        let json: JSON
        do { json = try JSON(parsing: bytes) } catch {
            throw SnapshotError(.invalidManifest, "manifest is not valid JSON (\(error.description)); rebuild the snapshot with `kaa snapshot build`")
        }
        guard case .object = json else {
            throw SnapshotError(.invalidManifest, "manifest is not a JSON object")
        }
        var steps: [ManifestSchema.Step] = []
        try ManifestSchema.checkText(json, at: &steps)
        if let v = json["format_version"]?.int64, v > Int64(currentFormatVersion) {
            throw SnapshotError(.invalidManifest, "manifest has format version \(v), newer than this Kaa reads (\(currentFormatVersion)); upgrade this node")
        }
        try ManifestSchema.checkKeys(json)
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .custom { dec in
            let c = try dec.singleValueContainer()
            let s = try c.decode(String.self)
            guard let d = ManifestDate.parse(s) else {
                throw DecodingError.dataCorruptedError(in: c, debugDescription: "`\(s)` is not an RFC 3339 UTC time like 2026-01-31T12:00:00Z")
            }
            return d
        }
        let manifest: SnapshotManifest
        do {
            manifest = try decoder.decode(SnapshotManifest.self, from: Data(bytes))
        } catch let e as DecodingError {
            throw SnapshotError(.invalidManifest, ManifestSchema.describe(e))
        } catch {
            throw SnapshotError(.invalidManifest, "manifest could not be read: \(error)")
        }
        try manifest.validate()
        return manifest
    }

    /// Checks the manifest's fields against each other and the format's rules.
    public func validate() throws(SnapshotError) {
        func bad(_ m: String) -> SnapshotError { SnapshotError(.invalidManifest, "manifest: \(m)") }
        guard formatVersion >= 1 && formatVersion <= Self.currentFormatVersion else {
            throw bad("format_version \(formatVersion) is not one this Kaa reads (1...\(Self.currentFormatVersion))")
        }
        do { try SnapshotNaming.validateModelName(name) } catch { throw bad(error.message) }
        guard version >= 0 && version <= SnapshotNaming.maxVersion else {
            throw bad("version \(version) is out of range; versions are integers from 1 to \(SnapshotNaming.maxVersion), or 0 for a draft")
        }
        guard !files.isEmpty else { throw bad("`files` is empty; a snapshot holds at least its model file") }
        guard files.count <= Self.maxFiles else {
            throw bad("`files` lists \(files.count) files; a snapshot holds at most \(Self.maxFiles) (pack small files into one)")
        }
        var seen = Set<String>()
        var total: UInt64 = 0
        for f in files {
            do { try EntryPath.validate(f.path) } catch { throw bad(error.message) }
            guard f.path != Self.entryName else { throw bad("file `\(f.path)` uses the manifest's reserved name") }
            guard seen.insert(f.path).inserted else { throw bad("file `\(f.path)` is listed twice") }
            guard f.size > 0 else { throw bad("file `\(f.path)` has size 0; empty files are refused") }
            let (sum, overflow) = total.addingReportingOverflow(f.size)
            guard !overflow else { throw bad("the files' sizes add up to more than 2^64 bytes") }
            total = sum
            guard f.sha256.utf8.count == 64, Hex.decode(f.sha256) != nil, f.sha256 == f.sha256.lowercased() else {
                throw bad("file `\(f.path)` has sha256 `\(f.sha256)`, not 64 lowercase hex digits")
            }
        }
        // A file that is also a directory of another (`a` and `a/b`): with `/` ordered before
        // every byte a path may hold, the paths under `a/` sort right after `a`, so comparing
        // neighbours finds every such pair (n log n, where comparing each pair was n^2).
        let keys = files.map { f in f.path.utf8.map { $0 == 0x2F ? UInt8(0x01) : $0 } }
        let order = keys.indices.sorted { keys[$0].lexicographicallyPrecedes(keys[$1]) }
        for (i, j) in zip(order, order.dropFirst()) {
            let dir = keys[i] + [0x01]
            if keys[j].count > dir.count && keys[j].starts(with: dir) {
                throw bad("file `\(files[i].path)` is also a directory of `\(files[j].path)`")
            }
        }
        let models = files.filter { $0.role == .model }
        guard models.count == 1, models[0].path == model else {
            throw bad("`model` is `\(model)` but the files list \(models.count) file(s) with role `model` (\(models.map(\.path).joined(separator: ", "))); exactly one, matching `model`, is required")
        }
        for (k, v) in labels {
            guard !k.isEmpty, k.utf8.count <= 128, k.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != 0x3D }) else {
                throw bad("label key `\(k)` must be 1 to 128 printable ASCII characters without spaces or `=`")
            }
            guard v.utf8.count <= 1024 else { throw bad("label `\(k)` has a value longer than 1024 bytes") }
        }
        guard requirements.memoryBytes > 0 else { throw bad("requirements.memory_bytes is 0; give an estimate in bytes") }
        if let p = lineage.parentVersion {
            guard p >= 1 && p <= SnapshotNaming.maxVersion else {
                throw bad("lineage.parent_version \(p) is out of range; versions are integers from 1 to \(SnapshotNaming.maxVersion)")
            }
            if version > 0 && p >= version {
                throw bad("lineage.parent_version \(p) is not older than version \(version)")
            }
        }
        for (label, list) in [("inputs", signature.inputs), ("outputs", signature.outputs)] {
            var names = Set<String>()
            for t in list {
                guard !t.name.isEmpty else { throw bad("signature.\(label) has a value with an empty name") }
                guard names.insert(t.name).inserted else { throw bad("signature.\(label) lists `\(t.name)` twice") }
                if let shape = t.shape, let d = shape.first(where: { $0 < -1 }) {
                    throw bad("signature.\(label) `\(t.name)` has dimension \(d); dimensions are >= 0, or -1 when variable")
                }
            }
        }
        guard !signature.outputs.isEmpty else { throw bad("signature.outputs is empty; the ONNX graph must declare an output") }
        if let gate {
            let parsed: QualityGate
            do { parsed = try gate.parsed() } catch { throw bad(error.message) }
            guard files.contains(where: { $0.path == gate.holdout && $0.role == .extra }) else {
                throw bad("gate.holdout `\(gate.holdout)` is not one of the snapshot's extra files")
            }
            guard gate.holdoutRows >= 1 else { throw bad("gate.holdout_rows is \(gate.holdoutRows); a holdout holds at least one row") }
            if let l = gate.labelField, l.isEmpty { throw bad("gate.label_field is empty; leave it out or name the rows' label field") }
            if parsed.needsLabels, gate.labelField == nil {
                throw bad("gate `\(gate.expression)` bounds accuracy, but gate.label_field names no field of the holdout rows holding the true label")
            }
        }
    }

    /// The model file's entry.
    public var modelFile: File? { files.first { $0.path == model } }

    /// Total size of the files, in bytes (saturating at `UInt64.max`; ``validate()`` refuses a
    /// manifest whose sizes overflow).
    public var totalFileBytes: UInt64 {
        files.reduce(0) { total, f in
            let (sum, overflow) = total.addingReportingOverflow(f.size)
            return overflow ? .max : sum
        }
    }
}

extension SnapshotManifest.ModelSignature {
    /// The first way this signature (what a manifest declares) differs from `actual`, in
    /// words naming `actual` as `describing`; `nil` when they are equal.
    public func firstDifference(from actual: Self, describing source: String = "the model") -> String? {
        func names(_ list: [TensorSignature]) -> String {
            list.isEmpty ? "none" : list.map { "`\($0.name)`" }.joined(separator: ", ")
        }
        func shape(_ s: [Int64]?) -> String {
            s.map { "[" + $0.map(String.init).joined(separator: ", ") + "]" } ?? "no shape (rank unknown)"
        }
        for (side, declared, real) in [("input", inputs, actual.inputs), ("output", outputs, actual.outputs)] {
            guard declared.map(\.name) == real.map(\.name) else {
                return "the manifest declares \(side)s \(names(declared)) but \(source) has \(names(real))"
            }
            for (d, r) in zip(declared, real) where d != r {
                if d.kind != r.kind {
                    return "\(side) `\(d.name)` is a \(r.kind.rawValue) in \(source) but a \(d.kind.rawValue) in the manifest"
                }
                if d.dtype != r.dtype {
                    return "\(side) `\(d.name)` has dtype \(r.dtype) in \(source) but \(d.dtype) in the manifest"
                }
                return "\(side) `\(d.name)` has shape \(shape(r.shape)) in \(source) but \(shape(d.shape)) in the manifest"
            }
        }
        return nil
    }
}

/// One input or output of a model, as the ONNX graph declares it.
public struct TensorSignature: Sendable, Equatable, Codable {
    /// What the value is; serving handles tensors, the others come from converters (ZipMap).
    public enum Kind: String, Sendable, Codable {
        case tensor, sequence, map, optional
        case sparseTensor = "sparse_tensor"
    }

    public var name: String
    public var kind: Kind
    /// The element type in the Open Inference Protocol's names (`FP32`, `INT64`, `BYTES`, ...);
    /// for a non-tensor kind, a description such as `map(INT64,FP32)`.
    public var dtype: String
    /// The dimensions, -1 where variable; `nil` when the rank itself is unknown or the value is
    /// not a tensor.
    public var shape: [Int64]?

    public init(name: String, kind: Kind, dtype: String, shape: [Int64]?) {
        self.name = name
        self.kind = kind
        self.dtype = dtype
        self.shape = shape
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        try c.encode(kind, forKey: .kind)
        try c.encode(dtype, forKey: .dtype)
        try c.encode(shape, forKey: .shape)
    }

    enum CodingKeys: String, CodingKey { case name, kind, dtype, shape }
}

/// `created_at` as text, both ways, through one `Date.ISO8601FormatStyle`: a value made once.
/// A new `ISO8601DateFormatter` per date cost about 250 µs, most of a small model's cold load
/// (every load decodes a manifest, every ingest encodes one); the style takes under a
/// microsecond.
enum ManifestDate {
    /// RFC 3339 UTC seconds. The time is rounded to the millisecond, then cut to the second,
    /// as the formatter used before did, so that the same date gives the same canonical bytes.
    static func format(_ date: Date) -> String {
        let ms = (date.timeIntervalSince1970 * 1000).rounded()
        return style.format(Date(timeIntervalSince1970: (ms / 1000).rounded(.down)))
    }

    /// Reads what `format` writes, and RFC 3339 times with an offset; not fractional seconds.
    /// The style would also read fractional seconds, which the formatter refused and the
    /// canonical form never writes, so those are refused here first.
    static func parse(_ text: String) -> Date? {
        guard !text.utf8.contains(UInt8(ascii: ".")) else { return nil }
        return try? style.parse(text)
    }

    private static let style = Date.ISO8601FormatStyle()
}

/// The keys each manifest object may hold: anything else is refused, so a typo or a field
/// from an unknown format never passes silently.
enum ManifestSchema {
    static let top: Set<String> = ["format_version", "name", "version", "created_at", "model", "files",
                                   "pipeline", "signature", "requirements", "labels", "lineage", "gate"]
    static let file: Set<String> = ["path", "role", "size", "sha256"]
    static let signature: Set<String> = ["inputs", "outputs"]
    static let tensor: Set<String> = ["name", "kind", "dtype", "shape"]
    static let requirements: Set<String> = ["memory_bytes", "accelerator"]
    static let lineage: Set<String> = ["parent_version", "training_data", "publisher"]
    static let gate: Set<String> = ["expression", "holdout", "holdout_rows", "label_field"]

    static func checkKeys(_ top: JSON) throws(SnapshotError) {
        try check(top, allowed: Self.top, at: "")
        for (i, f) in (top["files"]?.array ?? []).enumerated() {
            try check(f, allowed: file, at: "files[\(i)].")
        }
        if let s = top["signature"] {
            try check(s, allowed: signature, at: "signature.")
            for side in ["inputs", "outputs"] {
                for (i, t) in (s[side]?.array ?? []).enumerated() { try check(t, allowed: tensor, at: "signature.\(side)[\(i)].") }
            }
        }
        if let r = top["requirements"] { try check(r, allowed: requirements, at: "requirements.") }
        if let l = top["lineage"] { try check(l, allowed: lineage, at: "lineage.") }
        if let g = top["gate"] { try check(g, allowed: gate, at: "gate.") }
    }

    /// Refuses unknown keys of `value` when it is an object (other types are the decoder's to
    /// refuse, with the field's name).
    private static func check(_ value: JSON, allowed: Set<String>, at prefix: String) throws(SnapshotError) {
        guard case .object(let members) = value else { return }
        for key in members.map(\.key).sorted() where !allowed.contains(key) {
            throw SnapshotError(.invalidManifest, "manifest has unknown field `\(prefix)\(key)`; known fields there: \(allowed.sorted().joined(separator: ", "))")
        }
    }

    /// One step of the way to a value, for messages: a member's key or an element's index.
    enum Step {
        case key(String)
        case index(Int)
    }

    static func path(_ steps: [Step]) -> String {
        var s = ""
        for step in steps {
            switch step {
            case .index(let i): s += "[\(i)]"
            case .key(let k): s += (s.isEmpty ? "" : ".") + k
            }
        }
        return s
    }

    /// Refuses, at any depth, an object that repeats a key, and a number that is not an integer
    /// literal within `Int64` (no manifest field is fractional; `1.0`, `1e0` and `2^64` read
    /// differently in different languages). Keys compare as Swift strings, so two spellings
    /// of one key (an escape, a composed character) count as a repeat too.
    static func checkText(_ value: JSON, at steps: inout [Step]) throws(SnapshotError) {
        switch value {
        case .object(let members):
            var seen = Set<String>()
            for m in members {
                guard seen.insert(m.key).inserted else {
                    let place = steps.isEmpty ? "the top-level object" : "`\(path(steps))`"
                    throw SnapshotError(.invalidManifest, "manifest repeats the key `\(m.key)` in \(place); JSON readers disagree on which value counts (Kaa's read the first, Python's the last), so a repeated key is refused at any depth: rebuild the snapshot with `kaa snapshot build`")
                }
                steps.append(.key(m.key))
                try checkText(m.value, at: &steps)
                steps.removeLast()
            }
        case .array(let elements):
            for (i, e) in elements.enumerated() {
                steps.append(.index(i))
                try checkText(e, at: &steps)
                steps.removeLast()
            }
        case .number(let d):
            throw SnapshotError(.invalidManifest, "manifest field `\(path(steps))` is the number \(d), not an integer literal; every number in a manifest is an integer written without fraction or exponent, within 64 bits")
        case .null, .bool, .integer, .string:
            break
        }
    }

    static func path(_ codingPath: [any CodingKey]) -> String {
        var s = ""
        for k in codingPath {
            if let i = k.intValue { s += "[\(i)]" } else { s += (s.isEmpty ? "" : ".") + k.stringValue }
        }
        return s
    }

    static func describe(_ e: DecodingError) -> String {
        switch e {
        case .keyNotFound(let key, let ctx):
            let p = path(ctx.codingPath + [key])
            return "manifest is missing field `\(p)`"
        case .valueNotFound(_, let ctx):
            return "manifest field `\(path(ctx.codingPath))` is null but is required"
        case .typeMismatch(let type, let ctx):
            return "manifest field `\(path(ctx.codingPath))` has the wrong type (expected \(type))"
        case .dataCorrupted(let ctx):
            return "manifest field `\(path(ctx.codingPath))` is invalid: \(ctx.debugDescription)"
        @unknown default:
            return "manifest could not be read: \(e)"
        }
    }
}
