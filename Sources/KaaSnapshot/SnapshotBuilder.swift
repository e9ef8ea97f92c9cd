public import Foundation
import Crypto

/// What to put in a new snapshot.
public struct SnapshotBuildRequest: Sendable {
    /// The ONNX model file on disk.
    public var modelPath: String
    public var name: String
    /// The version, or 0 for a draft whose version the receiving node assigns.
    public var version: Int
    /// The pipeline spec's text, if any.
    public var pipeline: String?
    /// The signature clients see when a pipeline changes it (its fields in, its outputs out);
    /// `nil` reads the graph's own from the model file.
    public var signature: SnapshotManifest.ModelSignature?
    /// Extra files: path on disk and entry name in the archive.
    public var extraFiles: [(source: String, entry: String)]
    public var labels: [String: String]
    public var createdAt: Date
    /// Estimated serving memory; `nil` estimates it (2 × model size + 16 MiB).
    public var memoryBytes: UInt64?
    public var accelerator: SnapshotManifest.Requirements.Accelerator
    public var lineage: SnapshotManifest.Lineage
    /// Signs the snapshot when set; sets `lineage.publisher` to the key id when that is empty.
    public var signingKey: PublisherPrivateKey?
    /// A quality gate; its holdout MUST be one of ``extraFiles`` (by entry name).
    public var gate: SnapshotManifest.Gate?

    public init(
        modelPath: String, name: String, version: Int = 0, pipeline: String? = nil,
        extraFiles: [(source: String, entry: String)] = [], labels: [String: String] = [:],
        createdAt: Date = Date(), memoryBytes: UInt64? = nil, accelerator: SnapshotManifest.Requirements.Accelerator = .none,
        lineage: SnapshotManifest.Lineage = .init(), signingKey: PublisherPrivateKey? = nil,
        signature: SnapshotManifest.ModelSignature? = nil, gate: SnapshotManifest.Gate? = nil
    ) {
        self.gate = gate
        self.signature = signature
        self.modelPath = modelPath
        self.name = name
        self.version = version
        self.pipeline = pipeline
        self.extraFiles = extraFiles
        self.labels = labels
        self.createdAt = createdAt
        self.memoryBytes = memoryBytes
        self.accelerator = accelerator
        self.lineage = lineage
        self.signingKey = signingKey
    }
}

/// Builds `.kaa` archives.
public enum SnapshotBuilder {
    /// The model's entry name in archives the builder writes.
    public static let modelEntryName = "model.onnx"

    /// Builds the snapshot described by `request` into `outputPath`, atomically (a temporary
    /// sibling renamed into place). Streams every file twice in 1 MiB pieces: once to hash it for
    /// the manifest, once into the archive while checking it did not change in between.
    public static func build(_ request: SnapshotBuildRequest, to outputPath: String) throws(SnapshotError) -> VerifiedArchive {
        try SnapshotNaming.validateModelName(request.name)
        guard request.version >= 0 else {
            throw SnapshotError(.invalidName, "version \(request.version) is negative; give a positive version or none")
        }
        let signature: SnapshotManifest.ModelSignature
        if let given = request.signature { signature = given } else { signature = try ONNXSignatureReader.read(path: request.modelPath) }

        var sources: [(source: String, file: SnapshotManifest.File)] = []
        let modelFile = try hashFile(request.modelPath, entry: modelEntryName, role: .model)
        sources.append((request.modelPath, modelFile))
        for extra in request.extraFiles {
            try EntryPath.validate(extra.entry)
            guard !sources.contains(where: { $0.file.path == extra.entry }), extra.entry != SnapshotManifest.entryName else {
                throw SnapshotError(.invalidEntry, "two files would share the entry name `\(extra.entry)`; rename one")
            }
            sources.append((extra.source, try hashFile(extra.source, entry: extra.entry, role: .extra)))
        }
        var lineage = request.lineage
        if lineage.publisher == nil, let key = request.signingKey { lineage.publisher = key.publicKey.keyID }
        let (doubled, o1) = modelFile.size.multipliedReportingOverflow(by: 2)
        let (estimate, o2) = doubled.addingReportingOverflow(16 << 20)
        let memory = request.memoryBytes ?? (o1 || o2 ? .max : estimate)
        // Dates carry whole seconds so the manifest round-trips exactly.
        let created = Date(timeIntervalSince1970: request.createdAt.timeIntervalSince1970.rounded(.down))
        var manifest = SnapshotManifest(
            name: request.name, version: request.version, createdAt: created, model: modelEntryName,
            files: sources.map(\.file), pipeline: request.pipeline, signature: signature,
            requirements: .init(memoryBytes: memory, accelerator: request.accelerator),
            labels: request.labels, lineage: lineage)
        manifest.gate = request.gate
        try manifest.validate()
        let manifestBytes = try manifest.canonicalBytes()
        let digest = SnapshotDigest(SHA256.hash(data: manifestBytes))
        var archiveSignature: ArchiveSignature?
        if let key = request.signingKey {
            archiveSignature = ArchiveSignature(publicKey: key.publicKey, signature: try key.sign(digest))
        }

        let temp = outputPath + ".tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let out = try PosixFile.createExclusive(temp)
        var ok = false
        defer {
            out.close()
            if !ok { PosixFile.unlinkIfPresent(temp) }
        }
        var compressed: UInt64 = 0
        let encoder = try LZ4FrameEncoder { (bytes) throws(SnapshotError) in
            compressed += UInt64(bytes.count)
            try out.write(bytes)
        }
        let writer = try ArchiveWriter(encoder: encoder)
        try writer.manifest(manifestBytes)
        for s in sources {
            try writer.beginFile(path: s.file.path, size: s.file.size)
            var h = SHA256()
            try PosixFile.forEachChunk(of: s.source) { (chunk) throws(SnapshotError) in
                h.update(bufferPointer: chunk)
                try writer.fileData(chunk)
            }
            try writer.endFile()
            guard Hex.encode(h.finalize()) == s.file.sha256 else {
                throw SnapshotError(.io, "`\(s.source)` changed while the snapshot was being built; build again")
            }
        }
        if let archiveSignature { try writer.signature(archiveSignature) }
        try writer.finish()
        try out.sync()
        try PosixFile.rename(temp, outputPath)
        ok = true
        return VerifiedArchive(manifest: manifest, manifestBytes: manifestBytes, digest: digest, signature: archiveSignature,
                               archiveBytes: compressed, containerBytes: encoder.bytesIn)
    }

    static func hashFile(_ path: String, entry: String, role: SnapshotManifest.File.Role) throws(SnapshotError) -> SnapshotManifest.File {
        var h = SHA256()
        var size: UInt64 = 0
        try PosixFile.forEachChunk(of: path) { (chunk) throws(SnapshotError) in
            h.update(bufferPointer: chunk)
            size += UInt64(chunk.count)
        }
        guard size > 0 else {
            throw SnapshotError(.invalidEntry, "`\(path)` is a 0-byte file; empty files cannot go into a snapshot")
        }
        return SnapshotManifest.File(path: entry, role: role, size: size, sha256: Hex.encode(h.finalize()))
    }
}
