/// The byte layout inside the LZ4 frame (`docs/snapshot-format.md` is the reference):
///
/// ```
/// header  16 bytes: "KAASNAP\n", u16 format version, u16 flags (0), u32 reserved (0)
/// entry   16 bytes: u8 kind, u8 reserved (0), u16 name length, u32 reserved (0), u64 size
///         then the name (UTF-8), then `size` data bytes
/// ...     manifest entry first, then the files in manifest order, then at most one
///         signature entry, then the end entry (kind 0xFF, no name, size 0). Nothing after.
/// ```
/// All integers are little-endian.
enum ContainerFormat {
    static let magic: [UInt8] = Array("KAASNAP\n".utf8)
    static let headerSize = 16
    static let entryHeaderSize = 16
    static let signatureEntryName = "signature.ed25519"
    static let signatureEntrySize: UInt64 = 96

    enum Kind: UInt8 {
        case manifest = 1
        case file = 2
        case signature = 3
        case end = 0xFF
    }

    /// The container's size when `prefix` bytes (header and manifest entry) are followed by
    /// `files` as declared, a signature and the end entry: no valid container is larger.
    /// Saturates rather than overflows.
    static func maxContainerBytes(after prefix: UInt64, files: [SnapshotManifest.File]) -> UInt64 {
        var total = prefix
        func add(_ n: UInt64) {
            let (sum, overflow) = total.addingReportingOverflow(n)
            total = overflow ? .max : sum
        }
        for f in files {
            add(UInt64(entryHeaderSize + f.path.utf8.count))
            add(f.size)
        }
        add(UInt64(entryHeaderSize + signatureEntryName.utf8.count) + signatureEntrySize)
        add(UInt64(entryHeaderSize))
        return total
    }

    static func header(formatVersion: UInt16 = UInt16(SnapshotManifest.currentFormatVersion)) -> [UInt8] {
        var h = magic
        h.append(UInt8(formatVersion & 0xFF))
        h.append(UInt8(formatVersion >> 8))
        h += [0, 0, 0, 0, 0, 0]
        return h
    }

    static func entryHeader(kind: Kind, name: String, size: UInt64) -> [UInt8] {
        let n = Array(name.utf8)
        var h: [UInt8] = [kind.rawValue, 0, UInt8(n.count & 0xFF), UInt8(n.count >> 8), 0, 0, 0, 0]
        for i in 0..<8 { h.append(UInt8((size >> (8 * UInt64(i))) & 0xFF)) }
        return h + n
    }

    static func u16(_ b: [UInt8], _ at: Int) -> UInt16 { UInt16(b[at]) | UInt16(b[at + 1]) << 8 }
    static func u32(_ b: [UInt8], _ at: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { $0 | UInt32(b[at + $1]) << (8 * UInt32($1)) }
    }
    static func u64(_ b: [UInt8], _ at: Int) -> UInt64 {
        (0..<8).reduce(UInt64(0)) { $0 | UInt64(b[at + $1]) << (8 * UInt64($1)) }
    }
}

/// Writes a container through an LZ4 frame encoder.
final class ArchiveWriter {
    let encoder: LZ4FrameEncoder
    private var pendingFileBytes: UInt64 = 0

    init(encoder: LZ4FrameEncoder) throws(SnapshotError) {
        self.encoder = encoder
        try encoder.write(ContainerFormat.header())
    }

    func manifest(_ bytes: [UInt8]) throws(SnapshotError) {
        try encoder.write(ContainerFormat.entryHeader(kind: .manifest, name: SnapshotManifest.entryName, size: UInt64(bytes.count)))
        try encoder.write(bytes)
    }

    func beginFile(path: String, size: UInt64) throws(SnapshotError) {
        precondition(pendingFileBytes == 0)
        try encoder.write(ContainerFormat.entryHeader(kind: .file, name: path, size: size))
        pendingFileBytes = size
    }

    func fileData(_ bytes: UnsafeRawBufferPointer) throws(SnapshotError) {
        guard UInt64(bytes.count) <= pendingFileBytes else {
            throw SnapshotError(.io, "a file grew while it was being archived; rebuild the snapshot")
        }
        pendingFileBytes -= UInt64(bytes.count)
        try encoder.write(bytes)
    }

    func endFile() throws(SnapshotError) {
        guard pendingFileBytes == 0 else {
            throw SnapshotError(.io, "a file shrank by \(pendingFileBytes) bytes while it was being archived; rebuild the snapshot")
        }
    }

    func signature(_ sig: ArchiveSignature) throws(SnapshotError) {
        try encoder.write(ContainerFormat.entryHeader(kind: .signature, name: ContainerFormat.signatureEntryName, size: ContainerFormat.signatureEntrySize))
        try encoder.write(sig.publicKey.rawBytes + sig.signature)
    }

    func finish() throws(SnapshotError) {
        try encoder.write(ContainerFormat.entryHeader(kind: .end, name: "", size: 0))
        try encoder.finish()
    }
}
