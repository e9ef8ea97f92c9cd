import CLZ4

/// Streams bytes into one LZ4 frame (content and block checksums on, 4 MiB linked blocks), so
/// the stock `lz4 -d` reads the result. Compressed output goes to `sink` as it is produced.
///
/// The compression context is allocated in `init` and freed in `deinit`; the encoder MUST be
/// used from one thread at a time.
final class LZ4FrameEncoder {
    private var ctx: OpaquePointer?
    private var prefs: LZ4F_preferences_t
    private let chunkSize: Int
    private let out: UnsafeMutableRawBufferPointer
    private let sink: (UnsafeRawBufferPointer) throws(SnapshotError) -> Void
    private var started = false
    private(set) var finished = false
    /// Uncompressed bytes consumed so far.
    private(set) var bytesIn: UInt64 = 0

    init(chunkSize: Int = 1 << 20, sink: @escaping (UnsafeRawBufferPointer) throws(SnapshotError) -> Void) throws(SnapshotError) {
        var c: OpaquePointer?
        let r = LZ4F_createCompressionContext(&c, UInt32(LZ4F_VERSION))
        guard LZ4F_isError(r) == 0, let c else {
            throw SnapshotError(.io, "cannot create an LZ4 compression context: \(LZ4Errors.name(r))")
        }
        ctx = c
        var p = LZ4F_preferences_t()
        p.frameInfo.blockSizeID = LZ4F_max4MB
        p.frameInfo.blockMode = LZ4F_blockLinked
        p.frameInfo.contentChecksumFlag = LZ4F_contentChecksumEnabled
        p.frameInfo.blockChecksumFlag = LZ4F_blockChecksumEnabled
        p.compressionLevel = 0
        prefs = p
        self.chunkSize = chunkSize
        let bound = max(LZ4F_compressBound(chunkSize, &p), LZ4F_HEADER_SIZE_MAX_CONST) + 64
        out = .allocate(byteCount: bound, alignment: 16)
        self.sink = sink
    }

    deinit {
        if let ctx { LZ4F_freeCompressionContext(ctx) }
        out.deallocate()
    }

    private func check(_ r: Int, _ what: String) throws(SnapshotError) -> Int {
        if LZ4F_isError(r) != 0 { throw SnapshotError(.io, "LZ4 \(what) failed: \(LZ4Errors.name(r))") }
        return r
    }

    private func begin() throws(SnapshotError) {
        started = true
        let n = try check(LZ4F_compressBegin(ctx, out.baseAddress, out.count, &prefs), "frame header")
        try sink(UnsafeRawBufferPointer(rebasing: out[0..<n]))
    }

    /// Compresses `bytes` (any length) and hands the compressed output to the sink.
    func write(_ bytes: UnsafeRawBufferPointer) throws(SnapshotError) {
        precondition(!finished, "write after finish")
        if !started { try begin() }
        var offset = 0
        while offset < bytes.count {
            let n = min(chunkSize, bytes.count - offset)
            let w = try check(LZ4F_compressUpdate(ctx, out.baseAddress, out.count, bytes.baseAddress! + offset, n, nil), "compression")
            if w > 0 { try sink(UnsafeRawBufferPointer(rebasing: out[0..<w])) }
            offset += n
        }
        bytesIn += UInt64(bytes.count)
    }

    func write(_ bytes: [UInt8]) throws(SnapshotError) {
        try withRawBytes(bytes) { (b) throws(SnapshotError) in try write(b) }
    }

    /// Flushes the last block, the end mark and the content checksum.
    func finish() throws(SnapshotError) {
        precondition(!finished, "finish twice")
        if !started { try begin() }
        let w = try check(LZ4F_compressEnd(ctx, out.baseAddress, out.count, nil), "frame end")
        if w > 0 { try sink(UnsafeRawBufferPointer(rebasing: out[0..<w])) }
        finished = true
    }
}

/// Decodes exactly one LZ4 frame fed in arbitrary pieces; decompressed output goes to the
/// caller's closure in pieces of at most 1 MiB. Bytes after the frame's end are refused.
final class LZ4FrameDecoder {
    private var ctx: OpaquePointer?
    private let out: UnsafeMutableRawBufferPointer
    /// Whether the frame's end (and its content checksum) has been read and checked.
    private(set) var frameComplete = false
    /// Compressed bytes consumed so far.
    private(set) var bytesIn: UInt64 = 0

    init(outputChunk: Int = 1 << 20) throws(SnapshotError) {
        var c: OpaquePointer?
        let r = LZ4F_createDecompressionContext(&c, UInt32(LZ4F_VERSION))
        guard LZ4F_isError(r) == 0, let c else {
            throw SnapshotError(.io, "cannot create an LZ4 decompression context: \(LZ4Errors.name(r))")
        }
        ctx = c
        out = .allocate(byteCount: outputChunk, alignment: 16)
    }

    deinit {
        if let ctx { LZ4F_freeDecompressionContext(ctx) }
        out.deallocate()
    }

    func feed(
        _ src: UnsafeRawBufferPointer,
        _ sink: (UnsafeRawBufferPointer) throws(SnapshotError) -> Void
    ) throws(SnapshotError) {
        var offset = 0
        var outputFull = false
        while offset < src.count || outputFull {
            if frameComplete {
                throw SnapshotError(.malformedArchive, "archive has \(src.count - offset) unexpected byte(s) after the end of its LZ4 frame (at compressed offset \(bytesIn))")
            }
            var dstSize = out.count
            var srcSize = src.count - offset
            let r = LZ4F_decompress(ctx, out.baseAddress, &dstSize, src.baseAddress.map { $0 + offset }, &srcSize, nil)
            if LZ4F_isError(r) != 0 {
                throw SnapshotError(.malformedArchive, "archive is not a valid LZ4 frame near compressed offset \(bytesIn + UInt64(srcSize)): \(LZ4Errors.name(r)) (corrupted or not a .kaa file)")
            }
            offset += srcSize
            bytesIn += UInt64(srcSize)
            outputFull = dstSize == out.count
            if dstSize > 0 { try sink(UnsafeRawBufferPointer(rebasing: out[0..<dstSize])) }
            if r == 0 {
                frameComplete = true
                outputFull = false
            }
            if srcSize == 0 && dstSize == 0 { break }
        }
    }
}

enum LZ4Errors {
    static func name(_ code: Int) -> String { String(cString: LZ4F_getErrorName(code)) }
}

/// `LZ4F_HEADER_SIZE_MAX` (19) as a Swift constant.
private let LZ4F_HEADER_SIZE_MAX_CONST = 19

/// Calls `body` with the bytes of `array`, keeping `body`'s typed error.
func withRawBytes<T>(_ array: [UInt8], _ body: (UnsafeRawBufferPointer) throws(SnapshotError) -> T) throws(SnapshotError) -> T {
    let result: Result<T, SnapshotError> = array.withUnsafeBytes { b in
        do throws(SnapshotError) { return .success(try body(b)) } catch { return .failure(error) }
    }
    return try result.get()
}
