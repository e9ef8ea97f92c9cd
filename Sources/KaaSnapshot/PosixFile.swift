#if canImport(Glibc)
import Glibc
private func sysClose(_ fd: Int32) -> Int32 { Glibc.close(fd) }
private func sysRead(_ fd: Int32, _ p: UnsafeMutableRawPointer?, _ n: Int) -> Int { Glibc.read(fd, p, n) }
private func sysWrite(_ fd: Int32, _ p: UnsafeRawPointer?, _ n: Int) -> Int { Glibc.write(fd, p, n) }
private func sysRename(_ a: String, _ b: String) -> Int32 { Glibc.rename(a, b) }
private func sysUnlink(_ a: String) -> Int32 { Glibc.unlink(a) }
#elseif canImport(Darwin)
import Darwin
private func sysClose(_ fd: Int32) -> Int32 { Darwin.close(fd) }
private func sysRead(_ fd: Int32, _ p: UnsafeMutableRawPointer?, _ n: Int) -> Int { Darwin.read(fd, p, n) }
private func sysWrite(_ fd: Int32, _ p: UnsafeRawPointer?, _ n: Int) -> Int { Darwin.write(fd, p, n) }
private func sysRename(_ a: String, _ b: String) -> Int32 { Darwin.rename(a, b) }
private func sysUnlink(_ a: String) -> Int32 { Darwin.unlink(a) }
#endif

/// A file descriptor with the few calls the store needs, their failures as ``SnapshotError``s
/// naming the path and `errno`. The caller MUST call ``close()``; `deinit` closes a forgotten
/// descriptor and asserts in debug builds.
final class PosixFile {
    let path: String
    private(set) var fd: Int32

    private init(path: String, fd: Int32) {
        self.path = path
        self.fd = fd
    }

    deinit {
        assert(fd < 0, "PosixFile \(path) was not closed")
        if fd >= 0 { _ = sysClose(fd) }
    }

    static func errnoText(_ e: Int32) -> String { String(cString: strerror(e)) }

    /// Opens an existing file for reading.
    static func openForReading(_ path: String) throws(SnapshotError) -> PosixFile {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            let e = errno
            throw SnapshotError(e == ENOENT ? .notFound : .io, "cannot open `\(path)`: \(errnoText(e))")
        }
        return PosixFile(path: path, fd: fd)
    }

    /// Creates a new file, failing if it exists.
    static func createExclusive(_ path: String, mode: mode_t = 0o644) throws(SnapshotError) -> PosixFile {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        if fd < 0 { throw SnapshotError(.io, "cannot create `\(path)`: \(errnoText(errno))") }
        return PosixFile(path: path, fd: fd)
    }

    /// Reads up to `buffer.count` bytes; 0 at end of file.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws(SnapshotError) -> Int {
        while true {
            let n = sysRead(fd, buffer.baseAddress, buffer.count)
            if n >= 0 { return n }
            if errno == EINTR { continue }
            throw SnapshotError(.io, "cannot read `\(path)`: \(PosixFile.errnoText(errno))")
        }
    }

    /// Writes all of `bytes`.
    func write(_ bytes: UnsafeRawBufferPointer) throws(SnapshotError) {
        var done = 0
        while done < bytes.count {
            let n = sysWrite(fd, bytes.baseAddress! + done, bytes.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw SnapshotError(.io, "cannot write `\(path)`: \(PosixFile.errnoText(errno))")
            }
            done += n
        }
    }

    func sync() throws(SnapshotError) {
        if fsync(fd) != 0 { throw SnapshotError(.io, "cannot fsync `\(path)`: \(PosixFile.errnoText(errno))") }
    }

    func size() throws(SnapshotError) -> UInt64 {
        var st = stat()
        if fstat(fd, &st) != 0 { throw SnapshotError(.io, "cannot stat `\(path)`: \(PosixFile.errnoText(errno))") }
        return UInt64(st.st_size)
    }

    func close() {
        if fd >= 0 { _ = sysClose(fd) }
        fd = -1
    }

    /// Reads the whole file in chunks of `chunkSize`, calling `body` with each.
    static func forEachChunk(
        of path: String, chunkSize: Int = 1 << 20,
        _ body: (UnsafeRawBufferPointer) throws(SnapshotError) -> Void
    ) throws(SnapshotError) {
        let f = try openForReading(path)
        defer { f.close() }
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 16)
        defer { buf.deallocate() }
        while true {
            let n = try f.read(into: buf)
            if n == 0 { return }
            try body(UnsafeRawBufferPointer(rebasing: buf[0..<n]))
        }
    }

    /// Fsyncs a directory so a rename or unlink in it is durable.
    static func syncDirectory(_ path: String) throws(SnapshotError) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd < 0 { throw SnapshotError(.io, "cannot open directory `\(path)`: \(errnoText(errno))") }
        defer { _ = sysClose(fd) }
        if fsync(fd) != 0 { throw SnapshotError(.io, "cannot fsync directory `\(path)`: \(errnoText(errno))") }
    }

    static func rename(_ from: String, _ to: String) throws(SnapshotError) {
        if sysRename(from, to) != 0 {
            throw SnapshotError(.io, "cannot rename `\(from)` to `\(to)`: \(errnoText(errno))")
        }
    }

    /// Removes a file; a missing file is not an error.
    static func unlinkIfPresent(_ path: String) {
        _ = sysUnlink(path)
    }

    static func exists(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0
    }

    /// The size of the file at `path`, or nil when there is none (one `stat`).
    static func size(_ path: String) -> UInt64? {
        var st = stat()
        return stat(path, &st) == 0 ? UInt64(st.st_size) : nil
    }

    /// Creates a directory and its parents (mode 0755); existing ones are fine.
    static func makeDirectories(_ path: String) throws(SnapshotError) {
        var current = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, 0o755) != 0 && errno != EEXIST {
                throw SnapshotError(.io, "cannot create directory `\(current)`: \(errnoText(errno))")
            }
        }
    }
}

/// A read-only memory mapping of a whole file, unmapped in `deinit`.
final class MappedFile {
    let path: String
    let count: Int
    private let base: UnsafeMutableRawPointer?

    init(path: String) throws(SnapshotError) {
        self.path = path
        let f = try PosixFile.openForReading(path)
        defer { f.close() }
        let size = try f.size()
        count = Int(size)
        if count == 0 {
            base = nil
            return
        }
        let p = mmap(nil, count, PROT_READ, MAP_PRIVATE, f.fd, 0)
        if p == MAP_FAILED || p == nil {
            throw SnapshotError(.io, "cannot map `\(path)`: \(PosixFile.errnoText(errno))")
        }
        base = p
    }

    deinit {
        if let base { munmap(base, count) }
    }

    /// The file's bytes, valid while `self` is alive.
    var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }
}
