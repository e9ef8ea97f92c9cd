import ArgumentParser
import Foundation
import struct KaaEngine.QuantizationReport
import KaaSnapshot

/// `kaa snapshot build|inspect|verify`.
struct SnapshotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract: "Build, inspect, verify and compare snapshot archives (.kaa).",
        subcommands: [Build.self, Inspect.self, Verify.self, Compare.self])

    struct Build: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Build a snapshot archive from an ONNX model.",
            discussion: "Without --version the snapshot is a draft: the node that receives it assigns the next free version (unsigned drafts only, since a signature covers the version).")

        @OptionGroup var options: BuildOptions
        // Declared here, not in the group: argument-parser's own `--version` flag would shadow it.
        @Option(help: "The version (a positive integer); omit for a draft.") var version: Int?
        @Option(help: "The archive to write.") var out: String

        func validate() throws {
            guard options.model != nil, options.name != nil else { throw ValidationError("--model and --name are required") }
            if let version, version <= 0 { throw ValidationError("--version must be a positive integer (omit it for a draft)") }
            try options.validate()
        }

        func run() throws {
            try reportingErrors {
                let built = try options.build(version: version, to: out)
                let id = built.manifest.isDraft ? "\(built.manifest.name) (draft)" : "\(built.manifest.name)@\(built.manifest.version)"
                print("built \(id) -> \(out)")
                print(Table.rows([
                    ["digest", built.digest.description],
                    ["archive", "\(ByteCount.format(built.archiveBytes)) (content \(ByteCount.format(built.manifest.totalFileBytes)))"],
                    ["signed", built.signerKeyID ?? "no"],
                ]))
            }
        }
    }

    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Verify a snapshot archive's digest and show its manifest.")
        @Argument(help: "The .kaa file.") var file: String
        @Flag(help: "Print JSON for scripts.") var json = false

        func run() throws {
            try reportingErrors {
                let v = try SnapshotArchive.verify(path: file)
                if json {
                    print(try SnapshotReport.json(v))
                } else {
                    print(SnapshotReport.table(v), terminator: "")
                }
            }
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Verify a snapshot archive; exits 0 only if its digest (and, with --trust, its signature) holds.")
        @Argument(help: "The .kaa file.") var file: String
        @Option(help: "A trusted public key file (repeatable); then a valid signature by one of them is required.")
        var trust: [String] = []

        func run() throws {
            try reportingErrors {
                var keys = Set<PublisherPublicKey>()
                for t in trust { keys.insert(try PublisherPublicKey(contentsOf: t)) }
                let v = try SnapshotArchive.verify(path: file, policy: .init(trustedKeys: keys))
                let id = v.manifest.isDraft ? "\(v.manifest.name) (draft)" : "\(v.manifest.name)@\(v.manifest.version)"
                let signature: String
                if let k = v.signerKeyID {
                    signature = keys.isEmpty ? "signed by \(k) (signature valid; no --trust given)" : "signed by trusted key \(k)"
                } else {
                    signature = "unsigned"
                }
                print("ok \(id) \(v.digest) \(signature)")
            }
        }
    }
}

/// Runs `body`, printing a ``SnapshotError`` as `error: ...` on stderr and exiting 1.
func reportingErrors(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let error as SnapshotError {
        FileHandle.standardError.write(Data("error: \(error.message)\n".utf8))
        throw ExitCode.failure
    }
}

func split(_ s: String) -> (String, String) {
    let i = s.firstIndex(of: "=")!
    return (String(s[..<i]), String(s[s.index(after: i)...]))
}

enum ByteCount {
    /// `512 B`, `1.5 KiB`, `12.0 MiB`, `3.2 GiB`.
    static func format(_ n: UInt64) -> String {
        if n < 1024 { return "\(n) B" }
        let units = ["KiB", "MiB", "GiB", "TiB"]
        var v = Double(n) / 1024
        var i = 0
        while v >= 1024 && i < units.count - 1 {
            v /= 1024
            i += 1
        }
        return String(format: "%.1f %@", v, units[i])
    }
}

enum Table {
    /// Left-aligned columns separated by two spaces, no trailing spaces.
    static func rows(_ rows: [[String]], indent: String = "") -> String {
        guard let width = rows.map(\.count).max() else { return "" }
        var widths = [Int](repeating: 0, count: width)
        for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
        return rows.map { r in
            var line = indent
            for (i, c) in r.enumerated() {
                line += c
                if i < r.count - 1 { line += String(repeating: " ", count: widths[i] - c.count + 2) }
            }
            return line
        }.joined(separator: "\n")
    }
}

enum SnapshotReport {
    static func table(_ v: VerifiedArchive) -> String {
        let m = v.manifest
        let f = ISO8601DateFormatter()
        let signature = v.signerKeyID.map { "\($0) (signature valid; check trust with `kaa snapshot verify --trust`)" } ?? "unsigned"
        let ratio = m.totalFileBytes > 0 ? Int((Double(v.archiveBytes) / Double(m.totalFileBytes) * 100).rounded()) : 0
        var out = Table.rows([
            ["snapshot", m.isDraft ? "\(m.name) (draft: the receiving node assigns the version)" : "\(m.name)@\(m.version)"],
            ["digest", v.digest.description],
            ["format", "\(m.formatVersion)"],
            ["created", f.string(from: m.createdAt)],
            ["archive", "\(ByteCount.format(v.archiveBytes)) for \(ByteCount.format(m.totalFileBytes)) of files (\(ratio)%)"],
            ["signature", signature],
            ["publisher", m.lineage.publisher ?? "-"],
            ["parent", m.lineage.parentVersion.map { "\(m.name)@\($0)" } ?? "-"],
            ["training data", m.lineage.trainingData ?? "-"],
            ["memory", ByteCount.format(m.requirements.memoryBytes)],
            ["accelerator", m.requirements.accelerator.rawValue],
            ["labels", m.labels.isEmpty ? "-" : m.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ", ")],
            ["pipeline", m.pipeline.map { "\($0.utf8.count) bytes" } ?? "-"],
        ] + (m.gate.map { g in [
            ["gate", g.expression],
            ["holdout", "\(g.holdout): \(g.holdoutRows) row\(g.holdoutRows == 1 ? "" : "s")" + (g.labelField.map { ", label field `\($0)`" } ?? "")],
        ] } ?? [])) + "\n"
        func values(_ title: String, _ list: [TensorSignature]) {
            out += "\n\(title)\n"
            var rows = [["NAME", "KIND", "DTYPE", "SHAPE"]]
            for t in list {
                rows.append([t.name, t.kind.rawValue, t.dtype, t.shape.map { "[" + $0.map(String.init).joined(separator: ", ") + "]" } ?? "-"])
            }
            out += Table.rows(rows, indent: "  ") + "\n"
        }
        values("inputs", m.signature.inputs)
        values("outputs", m.signature.outputs)
        out += "\nfiles\n"
        var rows = [["PATH", "ROLE", "SIZE", "SHA-256"]]
        for file in m.files { rows.append([file.path, file.role.rawValue, ByteCount.format(file.size), file.sha256]) }
        out += Table.rows(rows, indent: "  ") + "\n"
        return out
    }

    static func json(_ v: VerifiedArchive) throws(SnapshotError) -> String {
        do {
            let manifest = try JSONSerialization.jsonObject(with: Data(v.manifestBytes))
            var signature: Any = NSNull()
            if let s = v.signature {
                signature = ["key_id": s.publicKey.keyID, "public_key": Data(s.publicKey.rawBytes).base64EncodedString()]
            }
            let object: [String: Any] = [
                "digest": v.digest.description,
                "archive_bytes": v.archiveBytes,
                "signature": signature,
                "manifest": manifest,
            ]
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes])
            return String(decoding: data, as: UTF8.self)
        } catch {
            throw SnapshotError(.io, "cannot render JSON: \(error)")
        }
    }
}

/// What a snapshot is built from: `kaa snapshot build` and `kaa publish --model` share these.
struct BuildOptions: ParsableArguments {
    @Option(help: "The ONNX model file.") var model: String?
    @Option(help: "The pipeline spec file (YAML, docs/pipeline.md); checked against the model and carried in the manifest.") var pipeline: String?
    @Option(help: "The model name ([a-z0-9][a-z0-9._-]*).") var name: String?
    @Option(name: .customLong("label"), help: "A label KEY=VALUE (repeatable).") var labels: [String] = []
    @Option(name: .customLong("file"), help: "An extra file, PATH or ENTRY=PATH (repeatable).") var files: [String] = []
    @Option(help: "Sign with this private key file (from `kaa keys generate`).") var sign: String?
    @Option(help: "The version this one derives from.") var parent: Int?
    @Option(help: "A reference to the training data.") var trainingData: String?
    @Option(help: "Who publishes it (default: the signing key's id).") var publisher: String?
    @Option(help: "Estimated serving memory in bytes (default: 2 x model size + 16 MiB).") var memory: UInt64?
    @Option(help: "An accelerator the model must have: gpu (placed only on nodes with a GPU).") var requires: String?
    @Option(help: "An accelerator the model should have: gpu (placed on GPU nodes while they have room).") var prefers: String?
    @Option(help: "Creation time, RFC 3339 (default: now); fix it for reproducible builds.") var createdAt: String?
    @Option(help: "Holdout rows (JSONL) the gate runs on; carried in the archive as `holdout.jsonl`.") var holdout: String?
    @Option(help: "A quality gate checked when `stable` moves to this version, like 'agreement>=0.99,accuracy_drop<=0.005' (docs/quality-gate.md).")
    var gate: String?
    @Option(help: "The holdout rows' field holding the true label (needed for accuracy terms).") var holdoutLabel: String?
    @Option(help: "Quantize the model's large matrix products: int8 (weights per output column, activations per call; docs/quantization.md). Needs --holdout: the int8 model must pass --quantize-gate against the float one on those rows, or nothing is written.")
    var quantize: String?
    @Option(help: "The gate an int8 build must pass against its float model on the --holdout rows (default: \(QuantizeBuild.defaultGate)).")
    var quantizeGate: String?

    func validate() throws {
        for (flag, value) in [("--requires", requires), ("--prefers", prefers)] {
            if let value, value != "gpu" { throw ValidationError("\(flag) `\(value)`: the only accelerator placement knows is `gpu`") }
        }
        if requires != nil && prefers != nil { throw ValidationError("give --requires gpu or --prefers gpu, not both") }
        for l in labels where !l.contains("=") { throw ValidationError("--label `\(l)` is not KEY=VALUE") }
    }

    /// Builds the archive at `path` (a draft when `version` is nil). Requires `model` and `name`.
    /// A pipeline is parsed and checked against the model first.
    func build(version: Int?, to path: String) throws -> VerifiedArchive {
        guard var model, let name else { throw SnapshotError(.invalidManifest, "--model and --name are required to build a snapshot") }
        // Checked first: the other options are checked against the model that is built. (Not
        // in `validate()`: see the gate's checks below.)
        if let quantize, quantize != "int8" { throw SnapshotError(.invalidModel, "--quantize `\(quantize)`: the only quantization is int8") }
        if quantizeGate != nil && quantize == nil { throw SnapshotError(.invalidGate, "--quantize-gate goes with --quantize int8") }
        var quantized: (path: String, report: QuantizationReport)?
        if quantize != nil {
            guard holdout != nil else {
                throw SnapshotError(.invalidGate, "--quantize int8 checks the int8 model against the float one on holdout rows: give --holdout rows.jsonl")
            }
            quantized = try QuantizeBuild.quantize(model: model)
        }
        let floatModel = model
        defer { if let quantized { unlink(quantized.path) } }
        if let quantized { model = quantized.path }
        var labelMap: [String: String] = [:]
        for l in labels {
            let (k, v) = split(l)
            labelMap[k] = v
        }
        let extras = files.map { f -> (source: String, entry: String) in
            if f.contains("=") {
                let (entry, path) = split(f)
                return (path, entry)
            }
            return (f, (f as NSString).lastPathComponent)
        }
        var pipelineText: String?
        var servedSignature: SnapshotManifest.ModelSignature?
        if let pipeline {
            guard let t = try? String(contentsOfFile: pipeline, encoding: .utf8) else {
                throw SnapshotError(.io, "cannot read pipeline file `\(pipeline)` as UTF-8 text")
            }
            pipelineText = t
            servedSignature = try Self.checkPipeline(t, file: pipeline, model: model)
        }
        var created = Date()
        if let createdAt {
            let f = ISO8601DateFormatter()
            guard let d = f.date(from: createdAt) else {
                throw SnapshotError(.invalidManifest, "--created-at `\(createdAt)` is not RFC 3339, e.g. 2026-01-31T12:00:00Z")
            }
            created = d
        }
        let key = try sign.map { try PublisherPrivateKey(contentsOf: $0) }
        var extraFiles = extras
        var gate: SnapshotManifest.Gate?
        // Checked here rather than in `validate()`: argument-parser answers a validation error
        // with the version when the arguments hold `--version`, as `snapshot build` takes.
        // An int8 build may take holdout rows without a gate: they then serve only its check
        // against the float model, and the archive does not carry them.
        if (self.gate == nil) != (holdout == nil) && !(quantize != nil && self.gate == nil) {
            throw SnapshotError(.invalidGate, "--gate and --holdout go together: the gate runs on the holdout rows")
        }
        if holdoutLabel != nil && holdout == nil {
            throw SnapshotError(.invalidGate, "--holdout-label names a field of the --holdout rows; give --holdout")
        }
        if let expression = self.gate, let holdout {
            gate = try Self.holdoutGate(expression: expression, holdout: holdout, labelField: holdoutLabel)
            extraFiles.append((holdout, gate!.holdout))
        }
        if quantized != nil && labelMap["quantization"] == nil { labelMap["quantization"] = "int8" }
        let request = SnapshotBuildRequest(
            modelPath: model, name: name, version: version ?? 0, pipeline: pipelineText, extraFiles: extraFiles,
            labels: labelMap, createdAt: created, memoryBytes: memory,
            accelerator: requires != nil ? .gpu : prefers != nil ? .gpuPreferred : .none,
            lineage: .init(parentVersion: parent, trainingData: trainingData, publisher: publisher),
            signingKey: key, signature: servedSignature, gate: gate)
        let built = try SnapshotBuilder.build(request, to: path)
        if gate != nil {
            do { try Self.checkHoldout(path) } catch {
                unlink(path)
                throw error
            }
        }
        if let quantized, let holdout {
            // The float parent: the same snapshot but for the model, built aside to compare.
            let parentPath = path + ".float-\(getpid())"
            defer { unlink(parentPath) }
            var parent = request
            parent.modelPath = floatModel
            parent.gate = nil
            parent.extraFiles = extras
            parent.labels.removeValue(forKey: "quantization")
            do {
                _ = try SnapshotBuilder.build(parent, to: parentPath)
                let verdict = try QuantizeBuild.check(path: path, parent: parentPath, holdout: holdout, labelField: holdoutLabel,
                                                      gate: quantizeGate ?? QuantizeBuild.defaultGate)
                print(QuantizeBuild.summary(quantized.report, verdict))
                guard verdict.passed else {
                    throw SnapshotError(.invalidGate, "the int8 model fails its gate against the float model: \(verdict.failures); nothing written. Keep the float model, or loosen --quantize-gate")
                }
            } catch {
                unlink(path)
                throw error
            }
        }
        return built
    }
}
