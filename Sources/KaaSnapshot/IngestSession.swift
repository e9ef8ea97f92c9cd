public import Foundation
import Logging

/// What the uploader said about an upload (from the URL and headers of a `PUT`).
public struct IngestRequest: Sendable {
    /// The model name the upload is addressed to; the manifest MUST match.
    public var expectedName: String?
    /// The version the upload is addressed to: the manifest's version MUST match it, or, for a
    /// draft, it is the version to assign.
    public var expectedVersion: Int?
    /// The digest the uploader expects.
    public var expectedDigest: SnapshotDigest?
    /// The upload's announced length (`Content-Length`); fewer or more bytes are refused.
    public var declaredLength: UInt64?
    /// Runs on the manifest as soon as it is read (before the rest of the upload is stored):
    /// a check the store cannot make itself, like the node parsing the pipeline spec. Its
    /// error refuses the upload.
    public var manifestCheck: (@Sendable (SnapshotManifest) throws(SnapshotError) -> Void)?
    /// Runs once every byte of the upload verified, before it is committed, on the manifest and
    /// the model file's bytes: a check that needs the whole model, like the node loading it in
    /// its engine with its pipeline. Its error refuses the upload.
    ///
    /// The store has already checked that the model file decodes as ONNX and, for a snapshot
    /// without a pipeline, that its graph's inputs and outputs are the manifest's `signature`.
    /// The bytes are a read-only mapping of a temporary file, valid only during the call (at
    /// most ``SnapshotStore/Configuration/maxModelBytes``); a check that keeps them MUST copy
    /// them. It runs on the thread that calls ``IngestSession/finish()``.
    public var modelCheck: (@Sendable (SnapshotManifest, UnsafeRawBufferPointer) throws(SnapshotError) -> Void)?

    public init(expectedName: String? = nil, expectedVersion: Int? = nil, expectedDigest: SnapshotDigest? = nil, declaredLength: UInt64? = nil,
                manifestCheck: (@Sendable (SnapshotManifest) throws(SnapshotError) -> Void)? = nil,
                modelCheck: (@Sendable (SnapshotManifest, UnsafeRawBufferPointer) throws(SnapshotError) -> Void)? = nil) {
        self.expectedName = expectedName
        self.expectedVersion = expectedVersion
        self.expectedDigest = expectedDigest
        self.declaredLength = declaredLength
        self.manifestCheck = manifestCheck
        self.modelCheck = modelCheck
    }
}

/// The result of a successful ingest.
public struct IngestResult: Sendable, Equatable {
    public enum Outcome: Sendable, Equatable {
        /// Newly stored.
        case stored
        /// The same snapshot (same digest) was already stored; nothing changed.
        case alreadyPresent
    }

    public var record: SnapshotRecord
    public var outcome: Outcome
    /// Whether the upload was a draft that this node gave a version.
    public var assignedVersion: Bool
}

extension SnapshotStore {
    /// Starts receiving an archive. Feed its bytes with ``IngestSession/append(_:)`` as they
    /// arrive, then call ``IngestSession/finish()``; call ``IngestSession/abort()`` if the
    /// upload is cut off. Until `finish` returns, nothing is visible in the store.
    public func beginIngest(_ request: IngestRequest = .init()) throws(SnapshotError) -> IngestSession {
        try IngestSession(store: self, request: request)
    }

    /// Ingests the archive at `path` (streamed in 1 MiB reads).
    public func ingest(file path: String, _ request: IngestRequest = .init()) throws(SnapshotError) -> IngestResult {
        let session = try beginIngest(request)
        do {
            try PosixFile.forEachChunk(of: path) { (chunk) throws(SnapshotError) in try session.append(chunk) }
        } catch {
            session.abort()
            throw error
        }
        return try session.finish()
    }

    /// Ingests an archive arriving as a sequence of chunks (an HTTP upload body).
    public func ingest<S: AsyncSequence>(chunks: S, _ request: IngestRequest = .init()) async throws -> IngestResult where S.Element == [UInt8] {
        let session = try beginIngest(request)
        do {
            for try await chunk in chunks { try session.append(chunk) }
        } catch {
            session.abort()
            throw error
        }
        return try session.finish()
    }

    /// Moves the verified archive at `temp` into place and records it; `temp` is consumed.
    /// `assigned`: the node gave the draft its version (recorded, for retention).
    func commit(temp: String, verified: VerifiedArchive, assigned: Bool) throws(SnapshotError) -> IngestResult {
        let id = try SnapshotID(name: verified.manifest.name, version: verified.manifest.version)
        return try shared.withCommitLock { () throws(SnapshotError) -> IngestResult in
            if let existing = try record(id) {
                PosixFile.unlinkIfPresent(temp)
                guard existing.digest == verified.digest else {
                    throw SnapshotError(.conflict, "\(id) is already stored with digest \(existing.digest); this archive has \(verified.digest). Snapshots are immutable: publish it as a new version")
                }
                return IngestResult(record: existing, outcome: .alreadyPresent, assignedVersion: assigned)
            }
            let dir = snapshotsDirectory + "/" + id.name
            let created = !PosixFile.exists(dir)
            try PosixFile.makeDirectories(dir)
            if created { try PosixFile.syncDirectory(snapshotsDirectory) }
            let final = archivePath(id)
            try PosixFile.rename(temp, final)
            try PosixFile.syncDirectory(dir)
            let now = Date()
            do {
                try catalog.pool.write { db in
                    try db.execute(sql: """
                        INSERT INTO snapshot (name, version, digest, size, state, received_at, signer, manifest, draft)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                        """, arguments: [id.name, id.version, verified.digest.description, Int64(verified.archiveBytes),
                                         SnapshotRecord.State.ready.rawValue, now.timeIntervalSince1970,
                                         verified.signerKeyID, Data(verified.manifestBytes), assigned])
                }
            } catch {
                PosixFile.unlinkIfPresent(final)
                throw SnapshotError(.io, "cannot record \(id) in the catalog: \(error)")
            }
            logger.info("snapshot stored", metadata: [
                "snapshot": "\(id)", "snapshot.digest": "\(verified.digest)", "snapshot.bytes": "\(verified.archiveBytes)",
            ])
            let record = SnapshotRecord(id: id, digest: verified.digest, size: verified.archiveBytes, state: .ready,
                                        receivedAt: Date(timeIntervalSince1970: now.timeIntervalSince1970),
                                        signerKeyID: verified.signerKeyID, isDraft: assigned, path: final,
                                        accelerator: verified.manifest.requirements.accelerator,
                                        hasGate: verified.manifest.gate != nil)
            return IngestResult(record: record, outcome: .stored, assignedVersion: assigned)
        }
    }

    /// Copies the verified draft at `source` into `destination` with `version` written into
    /// its manifest; returns the new archive's verification.
    static func assignVersion(source: String, destination: String, version: Int) throws(SnapshotError) -> VerifiedArchive {
        let out = try PosixFile.createExclusive(destination)
        defer { out.close() }
        let encoder = try LZ4FrameEncoder { (b) throws(SnapshotError) in try out.write(b) }
        let writer = try ArchiveWriter(encoder: encoder)
        let reader = try ArchiveReader(policy: .init()) { (event) throws(SnapshotError) in
            switch event {
            case .manifest(var m, _, _):
                m.version = version
                try m.validate()
                let bytes = try m.canonicalBytes()
                try writer.manifest(bytes)
            case .fileStart(let f): try writer.beginFile(path: f.path, size: f.size)
            case .fileData(let b): try writer.fileData(b)
            case .fileEnd: try writer.endFile()
            }
        }
        try PosixFile.forEachChunk(of: source) { (chunk) throws(SnapshotError) in try reader.feed(chunk) }
        _ = try reader.finish()
        try writer.finish()
        try out.sync()
        // Verify what was written, as every stored archive is.
        return try SnapshotArchive.verify(path: destination, policy: .init(allowDraft: false))
    }
}

/// One archive upload in progress. Not thread-safe: one owner feeds it, in order, and calls
/// `finish` or `abort` after its last `append` returned (never during one).
///
/// Bytes go to a temporary file in the store's `.tmp` directory and through the verifier at
/// once; the model file's bytes also go to a second temporary file, for the checks at the end.
/// The first problem fails the session (later calls rethrow it) and releases everything it
/// holds: its temporary files and their descriptors, its version reservation and its slot
/// among the store's ``SnapshotStore/Configuration/maxConcurrentIngests``. Dropping an
/// unfinished session releases them too.
public final class IngestSession {
    let store: SnapshotStore
    let request: IngestRequest
    let tempPath: String
    private var file: PosixFile?
    private let spool: ModelSpool
    private let reader: ArchiveReader
    private var failure: SnapshotError?
    private var finished = false
    private var checkedManifest = false
    /// Set by ``verify()``: every check passed; what is left is the commit.
    private var verified: VerifiedArchive?
    /// The `name@version` this upload holds in the store's reservations from its manifest to
    /// its commit, so that a concurrent draft is not given the same version.
    private var held: SnapshotID?
    /// Whether this session still holds a slot among the store's concurrent uploads.
    private var holdsSlot = false
    /// Bytes received so far.
    public private(set) var bytesReceived: UInt64 = 0

    init(store: SnapshotStore, request: IngestRequest) throws(SnapshotError) {
        self.store = store
        self.request = request
        if let n = request.expectedName { try SnapshotNaming.validateModelName(n) }
        if let v = request.expectedVersion { try SnapshotNaming.validateVersion(v, of: request.expectedName) }
        let limit = store.configuration.maxArchiveBytes
        if let declared = request.declaredLength, declared > limit {
            throw SnapshotError(.tooLarge, "the upload declares \(ByteSize.text(declared)); the largest archive this node accepts is \(ByteSize.text(limit)) (from its `max_content_bytes` setting)")
        }
        var policy = store.policy
        policy.expectedDigest = request.expectedDigest
        tempPath = store.tempDirectory + "/" + UUID().uuidString + ".kaa.tmp"
        let spool = ModelSpool(path: tempPath + ".model")
        self.spool = spool
        reader = try ArchiveReader(policy: policy) { (event) throws(SnapshotError) in try spool.observe(event) }
        try store.shared.acquireIngestSlot(limit: store.configuration.maxConcurrentIngests)
        holdsSlot = true
        do {
            file = try PosixFile.createExclusive(tempPath)
        } catch {
            releaseAll()
            throw error
        }
    }

    deinit {
        if !finished { releaseAll() }
    }

    /// Closes and removes the temporary files, ends the reservation and frees the slot; safe
    /// to call more than once.
    private func releaseAll() {
        file?.close()
        file = nil
        PosixFile.unlinkIfPresent(tempPath)
        spool.discard()
        if let held {
            store.shared.unreserve(held.name, held.version)
            self.held = nil
        }
        if holdsSlot {
            holdsSlot = false
            store.shared.releaseIngestSlot()
        }
    }

    private func fail(_ e: SnapshotError) -> SnapshotError {
        failure = e
        finished = true
        releaseAll()
        store.logger.info("snapshot upload refused", metadata: ["error": "\(e.message)", "error.code": "\(e.code)"])
        return e
    }

    /// Takes the next piece of the upload.
    public func append(_ bytes: UnsafeRawBufferPointer) throws(SnapshotError) {
        if let failure { throw failure }
        precondition(!finished, "append after finish")
        do throws(SnapshotError) {
            bytesReceived += UInt64(bytes.count)
            if let declared = request.declaredLength, bytesReceived > declared {
                throw SnapshotError(.malformedArchive, "upload is longer than its declared \(declared) bytes")
            }
            let limit = store.configuration.maxArchiveBytes
            if bytesReceived > limit {
                throw SnapshotError(.tooLarge, "the upload is longer than \(ByteSize.text(limit)), the largest archive this node accepts (from its `max_content_bytes` setting)")
            }
            guard let file else { throw SnapshotError(.io, "upload's temporary file is closed") }
            try file.write(bytes)
            try reader.feed(bytes)
            if !checkedManifest, let m = reader.manifest, let d = reader.digest {
                checkedManifest = true
                try checkEarly(m, d)
            }
        } catch {
            throw fail(error)
        }
    }

    public func append(_ bytes: [UInt8]) throws(SnapshotError) {
        try withRawBytes(bytes) { (b) throws(SnapshotError) in try append(b) }
    }

    public func append(_ data: Data) throws(SnapshotError) { try append(Array(data)) }

    /// Refuses, as soon as the manifest is read, what the rest of the bytes cannot fix.
    private func checkEarly(_ m: SnapshotManifest, _ d: SnapshotDigest) throws(SnapshotError) {
        if let n = request.expectedName, n != m.name {
            throw SnapshotError(.invalidManifest, "upload addressed to model `\(n)` holds a snapshot of `\(m.name)`")
        }
        if let check = request.manifestCheck { try check(m) }
        if m.isDraft {
            if !store.configuration.trustedKeys.isEmpty {
                throw SnapshotError(.signatureMissing, "snapshot \(m.name) is a draft (no version), and this node requires signed snapshots; a signature covers the version, so build it with `--version` and `--sign`")
            }
            return
        }
        if let v = request.expectedVersion, v != m.version {
            throw SnapshotError(.invalidManifest, "upload addressed to \(m.name)@\(v) holds \(m.name)@\(m.version)")
        }
        let id = try SnapshotID(name: m.name, version: m.version)
        if let existing = try store.record(id), existing.digest != d {
            throw SnapshotError(.conflict, "\(id) is already stored with digest \(existing.digest); this archive has \(d). Snapshots are immutable: publish it as a new version")
        }
        // From here to its commit the version is taken: a draft arriving meanwhile gets the
        // one after it. (Two uploads of the same version may hold it at once; the commit lets
        // one store it, and the other is already present or a conflict.)
        store.shared.hold(id.name, id.version)
        held = id
    }

    /// Checks the model file as a whole: it decodes as ONNX and, without a pipeline, its
    /// graph's inputs and outputs are the manifest's signature; then the request's own check.
    /// Reads the spooled model through a mapping, so the store itself allocates nothing for it.
    private func checkModel(_ m: SnapshotManifest) throws(SnapshotError) {
        let id = m.isDraft ? "snapshot \(m.name) (draft)" : "snapshot \(m.name)@\(m.version)"
        guard let path = spool.completedPath else {
            throw SnapshotError(.invalidManifest, "\(id) has no model file `\(m.model)` in its archive")
        }
        let map = try MappedFile(path: path)
        let graph: SnapshotManifest.ModelSignature
        do { graph = try ONNXSignatureReader.read(bytes: map.bytes) } catch {
            throw SnapshotError(.invalidModel, "\(id): model file `\(m.model)` is not a usable ONNX model: \(error.message)")
        }
        if m.pipeline == nil, let difference = m.signature.firstDifference(from: graph) {
            throw SnapshotError(.invalidManifest, "\(id): the manifest's signature does not match model `\(m.model)`: \(difference); rebuild the snapshot with `kaa snapshot build`, which reads the signature from the model")
        }
        if let check = request.modelCheck { try check(m, map.bytes) }
    }

    /// Removes a verified upload that this node streamed on to the nodes that hold it instead
    /// of storing it (``verify()``): everything it wrote goes, quietly, as with ``abort()``.
    public func discardVerified() {
        guard !finished, verified != nil else { return abort() }
        finished = true
        releaseAll()
    }

    /// The upload was cut off: removes everything it wrote. MUST NOT run during an `append`.
    public func abort() {
        guard !finished else { return }
        finished = true
        failure = SnapshotError(.truncated, "upload aborted after \(bytesReceived) bytes")
        releaseAll()
        store.logger.info("snapshot upload aborted", metadata: ["upload.bytes": "\(bytesReceived)"])
    }

    /// Runs every check ``finish()`` runs and stores nothing: the verified archive stays in its
    /// temporary file (``verifiedPath``) until ``finish()`` commits it or ``abort()`` removes it.
    /// A node that is not to hold an upload verifies it this way, then streams it on to the
    /// nodes that are. Calling it again returns the same verification.
    public func verify() throws(SnapshotError) -> VerifiedArchive {
        if let failure { throw failure }
        precondition(!finished, "verify after finish")
        if let verified { return verified }
        do throws(SnapshotError) {
            if let declared = request.declaredLength, bytesReceived < declared {
                throw SnapshotError(.truncated, "upload was cut off after \(bytesReceived) of its declared \(declared) bytes")
            }
            let verified = try reader.finish()
            if !checkedManifest { try checkEarly(verified.manifest, verified.digest) }
            try checkModel(verified.manifest)
            spool.discard()
            self.verified = verified
            return verified
        } catch {
            throw fail(error)
        }
    }

    /// The verified archive's temporary file, between ``verify()`` and ``finish()`` or ``abort()``.
    public var verifiedPath: String? { verified != nil && !finished ? tempPath : nil }

    /// Completes the upload: final checks (unless ``verify()`` made them), then the atomic commit.
    public func finish() throws(SnapshotError) -> IngestResult {
        if let failure { throw failure }
        precondition(!finished, "finish twice")
        let verified = try verify()
        do throws(SnapshotError) {
            guard let file else { throw SnapshotError(.io, "upload's temporary file is closed") }
            try file.sync()
            file.close()
            self.file = nil
            let result: IngestResult
            if verified.manifest.isDraft {
                result = try commitDraft(verified)
            } else {
                result = try store.commit(temp: tempPath, verified: verified, assigned: false)
            }
            finished = true
            releaseAll()
            return result
        } catch {
            throw fail(error)
        }
    }

    private func commitDraft(_ draft: VerifiedArchive) throws(SnapshotError) -> IngestResult {
        if draft.signature != nil {
            throw SnapshotError(.invalidManifest, "snapshot \(draft.manifest.name) is a signed draft: its signature covers version 0 and would not survive assigning a version; build it with `--version`")
        }
        let name = draft.manifest.name
        // Chosen under the commit lock: a concurrent upload of an explicit version has either
        // committed (its row is read here) or still holds its version (skipped here).
        let version = try store.shared.withCommitLock { () throws(SnapshotError) -> Int in
            if let v = request.expectedVersion {
                guard store.shared.reserve(name, exactly: v) else {
                    throw SnapshotError(.conflict, "\(name)@\(v) is being ingested by another upload right now")
                }
                return v
            }
            let stored = try store.list(name: name).last?.id.version ?? 0
            return try store.shared.reserveNext(name, after: stored)
        }
        defer { store.shared.unreserve(name, version) }
        let assignedPath = tempPath + ".v\(version)"
        do {
            let verified = try SnapshotStore.assignVersion(source: tempPath, destination: assignedPath, version: version)
            PosixFile.unlinkIfPresent(tempPath)
            return try store.commit(temp: assignedPath, verified: verified, assigned: true)
        } catch {
            PosixFile.unlinkIfPresent(assignedPath)
            throw error
        }
    }
}

/// Copies the model file's bytes out of an upload as they stream past, into a temporary file
/// beside the upload's, for the checks that need the whole model once it has verified. Holds a
/// descriptor only while the model file streams.
final class ModelSpool {
    let path: String
    private var model: String?
    private var file: PosixFile?
    private var complete = false

    init(path: String) { self.path = path }

    deinit { discard() }

    /// The spooled model's path once all of it was written.
    var completedPath: String? { complete ? path : nil }

    func observe(_ event: ArchiveReader.Event) throws(SnapshotError) {
        switch event {
        case .manifest(let m, _, _):
            model = m.model
        case .fileStart(let f) where f.path == model:
            file = try PosixFile.createExclusive(path, mode: 0o600)
        case .fileData(let bytes):
            try file?.write(bytes)
        case .fileEnd(let f) where f.path == model:
            file?.close()
            file = nil
            complete = true
        case .fileStart, .fileEnd:
            break
        }
    }

    /// Closes and removes the spooled file; safe to call more than once.
    func discard() {
        file?.close()
        file = nil
        complete = false
        PosixFile.unlinkIfPresent(path)
    }
}
