import Crypto
import Foundation

/// What a verifier requires of an archive.
public struct VerificationPolicy: Sendable {
    /// When non-empty, the archive MUST carry a valid signature by one of these keys.
    public var trustedKeys: Set<PublisherPublicKey>
    /// When set, the archive's digest MUST equal it.
    public var expectedDigest: SnapshotDigest?
    /// Whether a draft (version 0) is acceptable.
    public var allowDraft: Bool
    /// The largest manifest accepted, in bytes.
    public var maxManifestBytes: Int
    /// The largest sum of file sizes accepted, in bytes.
    public var maxContentBytes: UInt64
    /// The largest model file accepted, in bytes.
    public var maxModelBytes: UInt64

    /// The defaults take what any store could have accepted (a reader of stored archives, the
    /// CLI); a store passes its own configured limits for uploads.
    public init(
        trustedKeys: Set<PublisherPublicKey> = [], expectedDigest: SnapshotDigest? = nil, allowDraft: Bool = true,
        maxManifestBytes: Int = 16 << 20, maxContentBytes: UInt64 = 64 << 30, maxModelBytes: UInt64 = .max
    ) {
        self.trustedKeys = trustedKeys
        self.expectedDigest = expectedDigest
        self.allowDraft = allowDraft
        self.maxManifestBytes = maxManifestBytes
        self.maxContentBytes = maxContentBytes
        self.maxModelBytes = maxModelBytes
    }
}

/// An archive whose every byte has been checked.
public struct VerifiedArchive: Sendable {
    public var manifest: SnapshotManifest
    /// The manifest's exact bytes as stored.
    public var manifestBytes: [UInt8]
    public var digest: SnapshotDigest
    public var signature: ArchiveSignature?
    /// Size of the compressed archive, in bytes.
    public var archiveBytes: UInt64
    /// Size of the uncompressed container, in bytes.
    public var containerBytes: UInt64

    /// The key that signed, when the signature was present (it always verified).
    public var signerKeyID: String? { signature?.publicKey.keyID }
}

/// Streams a `.kaa` archive through LZ4 decoding, the container parser and SHA-256, checking
/// everything as it goes; optionally hands each entry's bytes to an observer (extraction,
/// rewriting). Feed compressed bytes in any pieces with ``feed(_:)``, then call ``finish()``.
///
/// Memory is bounded by the decoder's buffers and the manifest, never the archive. After the
/// first error every further call rethrows it.
final class ArchiveReader {
    enum Event {
        case manifest(SnapshotManifest, bytes: [UInt8], digest: SnapshotDigest)
        case fileStart(SnapshotManifest.File)
        case fileData(UnsafeRawBufferPointer)
        case fileEnd(SnapshotManifest.File)
    }

    private enum State {
        case header
        case entryHeader
        case entryName(kind: ContainerFormat.Kind, nameLength: Int, size: UInt64)
        case manifestData(size: Int)
        case fileData(SnapshotManifest.File, remaining: UInt64)
        case signatureData
        case done
    }

    let policy: VerificationPolicy
    private let observer: ((Event) throws(SnapshotError) -> Void)?
    private let decoder: LZ4FrameDecoder
    private var state = State.header
    private var pending: [UInt8] = []
    private var containerBytes: UInt64 = 0
    private var entryIndex = 0
    private(set) var manifest: SnapshotManifest?
    private var manifestBytes: [UInt8] = []
    private(set) var digest: SnapshotDigest?
    private var nextFile = 0
    /// The position of each of the manifest's files in `files`, to name a misplaced entry.
    private var fileIndex: [String: Int] = [:]
    /// The most uncompressed bytes the container can hold, once the manifest is known: its
    /// entries exactly as declared. Decoding stops at the first byte beyond it.
    private var containerLimit = UInt64.max
    private var fileHash = SHA256()
    private var signature: ArchiveSignature?
    private var failure: SnapshotError?

    init(policy: VerificationPolicy, observer: ((Event) throws(SnapshotError) -> Void)? = nil) throws(SnapshotError) {
        self.policy = policy
        self.observer = observer
        decoder = try LZ4FrameDecoder()
    }

    /// Compressed bytes consumed so far.
    var compressedBytes: UInt64 { decoder.bytesIn }
    /// Decompressed (container) bytes consumed so far.
    var uncompressedBytes: UInt64 { containerBytes }

    /// Feeds the next piece of the compressed archive.
    func feed(_ compressed: UnsafeRawBufferPointer) throws(SnapshotError) {
        if let failure { throw failure }
        do {
            try decoder.feed(compressed) { (bytes) throws(SnapshotError) in try self.consume(bytes) }
        } catch {
            failure = error
            throw error
        }
    }

    /// Checks that the archive was complete and returns what was verified.
    func finish() throws(SnapshotError) -> VerifiedArchive {
        if let failure { throw failure }
        do {
            return try finishChecks()
        } catch {
            failure = error
            throw error
        }
    }

    private func finishChecks() throws(SnapshotError) -> VerifiedArchive {
        if decoder.bytesIn == 0 {
            throw SnapshotError(.truncated, "archive is empty (0 bytes)")
        }
        switch state {
        case .done: break
        case .fileData(let f, let remaining):
            throw SnapshotError(.truncated, "archive is truncated: it ends inside file `\(f.path)` after \(f.size - remaining) of its \(f.size) declared bytes")
        case .manifestData(let size):
            throw SnapshotError(.truncated, "archive is truncated: it ends inside the manifest after \(pending.count) of \(size) bytes")
        default:
            throw SnapshotError(.truncated, "archive is truncated after \(containerBytes) uncompressed bytes (\(decoder.bytesIn) compressed); \(describeMissing())")
        }
        guard decoder.frameComplete else {
            throw SnapshotError(.truncated, "archive is truncated: its LZ4 frame has no end mark and content checksum")
        }
        guard let manifest, let digest else { throw SnapshotError(.truncated, "archive has no manifest") }
        if let signature {
            guard signature.publicKey.isValidSignature(signature.signature, of: digest) else {
                throw SnapshotError(.signatureInvalid, "signature by \(signature.publicKey.keyID) does not match snapshot \(manifest.name)@\(manifest.version) (\(digest)); the archive was altered or signed for other content")
            }
            if !policy.trustedKeys.isEmpty && !policy.trustedKeys.contains(signature.publicKey) {
                throw SnapshotError(.signatureInvalid, "snapshot is signed by \(signature.publicKey.keyID), which is not a trusted publisher key here (trusted: \(policy.trustedKeys.map(\.keyID).sorted().joined(separator: ", ")))")
            }
        } else if !policy.trustedKeys.isEmpty {
            throw SnapshotError(.signatureMissing, "snapshot \(manifest.name)@\(manifest.version) is not signed, and this node requires a signature by a trusted key; sign it with `kaa snapshot build --sign KEY`")
        }
        return VerifiedArchive(manifest: manifest, manifestBytes: manifestBytes, digest: digest, signature: signature,
                               archiveBytes: decoder.bytesIn, containerBytes: containerBytes)
    }

    private func describeMissing() -> String {
        guard let manifest else { return "the manifest is missing" }
        if nextFile < manifest.files.count { return "file `\(manifest.files[nextFile].path)` and the end entry are missing" }
        return "the end entry is missing"
    }

    /// Takes `n` bytes into `pending` from `bytes` at `offset`; true when `pending` holds `n`.
    private func gather(_ n: Int, _ bytes: UnsafeRawBufferPointer, _ offset: inout Int) -> Bool {
        let take = min(n - pending.count, bytes.count - offset)
        if take > 0 {
            pending.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + take)]))
            offset += take
        }
        return pending.count == n
    }

    private func malformed(_ m: String) -> SnapshotError {
        SnapshotError(.malformedArchive, "archive is malformed at uncompressed offset \(containerBytes): \(m)")
    }

    private func consume(_ bytes: UnsafeRawBufferPointer) throws(SnapshotError) {
        var offset = 0
        while offset < bytes.count {
            let before = offset
            switch state {
            case .header:
                guard gather(ContainerFormat.headerSize, bytes, &offset) else { break }
                let h = pending
                pending.removeAll(keepingCapacity: true)
                guard Array(h[0..<8]) == ContainerFormat.magic else {
                    throw malformed("the container does not start with `KAASNAP`; this is not a Kaa snapshot")
                }
                let version = Int(ContainerFormat.u16(h, 8))
                guard version >= 1 && version <= SnapshotManifest.currentFormatVersion else {
                    throw SnapshotError(.malformedArchive, "archive has container format version \(version); this Kaa reads 1...\(SnapshotManifest.currentFormatVersion) (upgrade the node)")
                }
                guard ContainerFormat.u16(h, 10) == 0, ContainerFormat.u32(h, 12) == 0 else {
                    throw malformed("header flags or reserved bytes are not zero")
                }
                state = .entryHeader
            case .entryHeader:
                guard gather(ContainerFormat.entryHeaderSize, bytes, &offset) else { break }
                let h = pending
                pending.removeAll(keepingCapacity: true)
                try beginEntry(h)
            case .entryName(let kind, let nameLength, let size):
                guard gather(nameLength, bytes, &offset) else { break }
                let nameBytes = pending
                pending.removeAll(keepingCapacity: true)
                guard let name = String(validating: nameBytes, as: UTF8.self) else {
                    throw SnapshotError(.invalidEntry, "entry \(entryIndex) has a name that is not valid UTF-8")
                }
                try startEntry(kind: kind, name: name, size: size)
            case .manifestData(let size):
                guard gather(size, bytes, &offset) else { break }
                manifestBytes = pending
                pending = []
                try manifestComplete()
            case .fileData(let f, let remaining):
                let take = Int(min(remaining, UInt64(bytes.count - offset)))
                let piece = UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + take)])
                fileHash.update(bufferPointer: piece)
                try observer?(.fileData(piece))
                offset += take
                let left = remaining - UInt64(take)
                if left == 0 {
                    let got = Hex.encode(fileHash.finalize())
                    guard got == f.sha256 else {
                        throw SnapshotError(.digestMismatch, "file `\(f.path)` has SHA-256 \(got) but the manifest says \(f.sha256); the archive is corrupted")
                    }
                    try observer?(.fileEnd(f))
                    state = .entryHeader
                } else {
                    state = .fileData(f, remaining: left)
                }
            case .signatureData:
                guard gather(Int(ContainerFormat.signatureEntrySize), bytes, &offset) else { break }
                let s = pending
                pending = []
                let key: PublisherPublicKey
                do { key = try PublisherPublicKey(rawBytes: Array(s[0..<32])) } catch {
                    throw SnapshotError(.signatureInvalid, "the signature entry holds an invalid public key")
                }
                signature = ArchiveSignature(publicKey: key, signature: Array(s[32..<96]))
                state = .entryHeader
            case .done:
                throw malformed("\(bytes.count - offset) byte(s) follow the end entry")
            }
            containerBytes += UInt64(offset - before)
            if containerBytes > containerLimit {
                throw malformed("the container holds more than the \(containerLimit) bytes its manifest declares")
            }
        }
    }

    private func beginEntry(_ h: [UInt8]) throws(SnapshotError) {
        guard let kind = ContainerFormat.Kind(rawValue: h[0]) else {
            throw malformed("entry \(entryIndex) has unknown kind \(h[0])")
        }
        guard h[1] == 0, ContainerFormat.u32(h, 4) == 0 else {
            throw malformed("entry \(entryIndex) has non-zero reserved bytes")
        }
        let nameLength = Int(ContainerFormat.u16(h, 2))
        let size = ContainerFormat.u64(h, 8)
        if kind == .end {
            guard nameLength == 0, size == 0 else { throw malformed("the end entry has a name or a size") }
            guard let manifest else { throw malformed("the archive ends before its manifest") }
            guard nextFile == manifest.files.count else {
                let missing = manifest.files[nextFile...].map(\.path).joined(separator: ", ")
                throw SnapshotError(.invalidManifest, "manifest lists file(s) missing from the archive: \(missing)")
            }
            state = .done
            entryIndex += 1
            return
        }
        guard nameLength > 0 else { throw SnapshotError(.invalidEntry, "entry \(entryIndex) has an empty name") }
        guard nameLength <= EntryPath.maxLength else {
            throw SnapshotError(.invalidEntry, "entry \(entryIndex) has a \(nameLength)-byte name; the limit is \(EntryPath.maxLength)")
        }
        state = .entryName(kind: kind, nameLength: nameLength, size: size)
    }

    private func startEntry(kind: ContainerFormat.Kind, name: String, size: UInt64) throws(SnapshotError) {
        defer { entryIndex += 1 }
        switch kind {
        case .manifest:
            guard entryIndex == 0 else { throw SnapshotError(.invalidEntry, "duplicate manifest entry (entry \(entryIndex))") }
            guard name == SnapshotManifest.entryName else {
                throw SnapshotError(.invalidEntry, "the manifest entry is named `\(name)`, not `\(SnapshotManifest.entryName)`")
            }
            guard size > 0 else { throw SnapshotError(.invalidManifest, "the manifest is empty (0 bytes)") }
            guard size <= UInt64(policy.maxManifestBytes) else {
                throw SnapshotError(.tooLarge, "the manifest declares \(size) bytes; the limit is \(policy.maxManifestBytes)")
            }
            state = .manifestData(size: Int(size))
        case .file:
            guard let manifest else {
                throw SnapshotError(.invalidEntry, "entry `\(name)` comes before the manifest; the manifest must be the first entry")
            }
            try EntryPath.validate(name)
            guard signature == nil else { throw SnapshotError(.invalidEntry, "file entry `\(name)` follows the signature") }
            let listed = fileIndex[name]
            if let listed, listed < nextFile {
                throw SnapshotError(.invalidEntry, "duplicate entry `\(name)`")
            }
            if name == SnapshotManifest.entryName { throw SnapshotError(.invalidEntry, "duplicate entry `\(name)`") }
            guard nextFile < manifest.files.count else {
                throw SnapshotError(.invalidEntry, "entry `\(name)` is not listed in the manifest")
            }
            let f = manifest.files[nextFile]
            guard f.path == name else {
                if listed != nil {
                    throw SnapshotError(.invalidEntry, "entry `\(name)` is out of order: the manifest lists `\(f.path)` next")
                }
                throw SnapshotError(.invalidEntry, "entry `\(name)` is not listed in the manifest")
            }
            guard size > 0 else { throw SnapshotError(.invalidEntry, "entry `\(name)` is a 0-byte file; empty files are refused") }
            guard size == f.size else {
                throw SnapshotError(.invalidEntry, "entry `\(name)` declares \(size) bytes but the manifest says \(f.size)")
            }
            nextFile += 1
            fileHash = SHA256()
            try observer?(.fileStart(f))
            state = .fileData(f, remaining: size)
        case .signature:
            guard manifest != nil else { throw SnapshotError(.invalidEntry, "the signature comes before the manifest") }
            guard signature == nil else { throw SnapshotError(.invalidEntry, "duplicate entry `\(name)` (a second signature)") }
            guard name == ContainerFormat.signatureEntryName, size == ContainerFormat.signatureEntrySize else {
                throw SnapshotError(.invalidEntry, "signature entry `\(name)` of \(size) bytes; expected `\(ContainerFormat.signatureEntryName)` of \(ContainerFormat.signatureEntrySize) bytes")
            }
            state = .signatureData
        case .end:
            preconditionFailure("handled in beginEntry")
        }
    }

    private func manifestComplete() throws(SnapshotError) {
        let m = try SnapshotManifest.decode(manifestBytes)
        let d = SnapshotDigest(SHA256.hash(data: manifestBytes))
        if let expected = policy.expectedDigest, expected != d {
            throw SnapshotError(.digestMismatch, "snapshot \(m.name)@\(m.version) has digest \(d), not the expected \(expected)")
        }
        if m.isDraft && !policy.allowDraft {
            throw SnapshotError(.invalidManifest, "snapshot \(m.name) is a draft (version 0); give it a version")
        }
        // Limits from the declared sizes, before a byte of any file is decompressed; a file's
        // entry must then declare the same size and hold exactly that many bytes.
        let id = m.isDraft ? "snapshot \(m.name) (draft)" : "snapshot \(m.name)@\(m.version)"
        if let model = m.modelFile, model.size > policy.maxModelBytes {
            throw SnapshotError(.tooLarge, "\(id) declares model file `\(model.path)` of \(ByteSize.text(model.size)); the limit here is \(ByteSize.text(policy.maxModelBytes)) (a node's `max_model_bytes` setting; raise it to accept larger models)")
        }
        guard m.totalFileBytes <= policy.maxContentBytes else {
            throw SnapshotError(.tooLarge, "\(id) declares \(ByteSize.text(m.totalFileBytes)) of files; the limit here is \(ByteSize.text(policy.maxContentBytes)) (a node's `max_content_bytes` setting; raise it to accept larger snapshots)")
        }
        fileIndex = Dictionary(m.files.enumerated().map { ($1.path, $0) }, uniquingKeysWith: { a, _ in a })
        let prefix = ContainerFormat.headerSize + ContainerFormat.entryHeaderSize + SnapshotManifest.entryName.utf8.count + manifestBytes.count
        containerLimit = ContainerFormat.maxContainerBytes(after: UInt64(prefix), files: m.files)
        manifest = m
        digest = d
        try observer?(.manifest(m, bytes: manifestBytes, digest: d))
        state = .entryHeader
    }
}

/// Reading, verifying and extracting `.kaa` files.
public enum SnapshotArchive {
    /// Verifies the archive at `path` completely (LZ4 frame, layout, every file's SHA-256, the
    /// digest and, per `policy`, the signature), streaming it in 1 MiB reads.
    public static func verify(path: String, policy: VerificationPolicy = .init()) throws(SnapshotError) -> VerifiedArchive {
        let reader = try ArchiveReader(policy: policy)
        try PosixFile.forEachChunk(of: path) { (chunk) throws(SnapshotError) in try reader.feed(chunk) }
        return try reader.finish()
    }

    /// Verifies the archive at `path` and writes its files under `directory` (created; it MUST
    /// not exist yet). Files appear only after the whole archive verified: they are written into
    /// a temporary sibling directory that is renamed into place at the end.
    public static func extract(path: String, to directory: String, policy: VerificationPolicy = .init()) throws(SnapshotError) -> VerifiedArchive {
        guard !PosixFile.exists(directory) else {
            throw SnapshotError(.io, "`\(directory)` already exists; extract into a new directory")
        }
        let staging = directory + ".partial-\(UInt64.random(in: 0...UInt64.max))"
        try PosixFile.makeDirectories(staging)
        var current: PosixFile?
        let reader = try ArchiveReader(policy: policy) { (event) throws(SnapshotError) in
            switch event {
            case .manifest: break
            case .fileStart(let f):
                let full = staging + "/" + f.path
                if let slash = full.lastIndex(of: "/") { try PosixFile.makeDirectories(String(full[..<slash])) }
                current = try PosixFile.createExclusive(full)
            case .fileData(let bytes): try current?.write(bytes)
            case .fileEnd:
                try current?.sync()
                current?.close()
                current = nil
            }
        }
        do {
            try PosixFile.forEachChunk(of: path) { (chunk) throws(SnapshotError) in try reader.feed(chunk) }
            let verified = try reader.finish()
            try PosixFile.rename(staging, directory)
            return verified
        } catch {
            current?.close()
            removeTree(staging)
            throw error
        }
    }

    /// Verifies the archive at `path` and returns it with its files' bytes, keyed by entry name
    /// (for a loader that needs the model in memory anyway). Nothing is returned unless the whole
    /// archive verified.
    ///
    /// A file's declared size is trusted for reserving memory only as far as the archive could
    /// hold it: LZ4 expands at most 255-fold, so a 4 KB archive declaring a 1 TiB file reserves
    /// about 1 MiB, and fails as truncated, rather than asking for a terabyte.
    /// `keeping` chooses the files whose bytes are returned (all by default); every file is
    /// verified either way.
    public static func loadFiles(path: String, policy: VerificationPolicy = .init(),
                                 keeping: @escaping (SnapshotManifest.File) -> Bool = { _ in true }) throws(SnapshotError) -> (archive: VerifiedArchive, files: [String: [UInt8]]) {
        try loadFiles(path: path, policy: policy, keepingIn: { _, file in keeping(file) })
    }

    /// ``loadFiles(path:policy:keeping:)`` where the choice of files may depend on the
    /// manifest (read, and verified against the digest, before the first file).
    public static func loadFiles(path: String, policy: VerificationPolicy = .init(),
                                 keepingIn keeping: @escaping (SnapshotManifest, SnapshotManifest.File) -> Bool) throws(SnapshotError) -> (archive: VerifiedArchive, files: [String: [UInt8]]) {
        var files: [String: [UInt8]] = [:]
        var manifest: SnapshotManifest?
        var current: [UInt8] = []
        var keep = false
        let (expanded, overflow) = (PosixFile.size(path) ?? 0).multipliedReportingOverflow(by: 256)
        let plausible = overflow ? UInt64.max : expanded
        let reader = try ArchiveReader(policy: policy) { (event) throws(SnapshotError) in
            switch event {
            case .manifest(let m, _, _): manifest = m
            case .fileStart(let f):
                current = []
                keep = manifest.map { keeping($0, f) } ?? false
                if keep { current.reserveCapacity(Int(clamping: min(f.size, plausible))) }
            case .fileData(let bytes): if keep { current.append(contentsOf: bytes) }
            case .fileEnd(let f):
                if keep { files[f.path] = current }
                current = []
            }
        }
        try PosixFile.forEachChunk(of: path) { (chunk) throws(SnapshotError) in try reader.feed(chunk) }
        return (try reader.finish(), files)
    }

    static func removeTree(_ path: String) {
        try? FileManager.default.removeItem(atPath: path)
    }
}
