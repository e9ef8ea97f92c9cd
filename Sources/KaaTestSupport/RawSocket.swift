import Foundation
import Glibc

/// A blocking TCP client socket for tests that must send exact, possibly malformed, bytes.
public final class RawSocket {
    public let fd: Int32

    /// Connects to `127.0.0.1:port` (or `host`); reads time out after `timeout` seconds.
    public init(port: UInt16, host: String = "127.0.0.1", timeout: Double = 5) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw RawSocketError("socket: \(String(cString: strerror(errno)))") }
        var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - Double(Int(timeout))) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        inet_pton(AF_INET, host, &addr.sin_addr)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard rc == 0 else {
            let e = errno
            Glibc.close(fd)
            throw RawSocketError("connect to \(host):\(port): \(String(cString: strerror(e)))")
        }
    }

    deinit { Glibc.close(fd) }

    public func send(_ text: String) throws { try send(Array(text.utf8)) }

    public func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw RawSocketError("send: \(String(cString: strerror(errno)))") }
            offset += n
        }
    }

    /// Reads what is available: `nil` on EOF, throws on timeout or reset.
    public func readSome() throws -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: 65536)
        var n = recv(fd, &buffer, buffer.count, 0)
        while n < 0 && errno == EINTR { n = recv(fd, &buffer, buffer.count, 0) } // a signal, not the peer
        if n == 0 { return nil }
        if n < 0 {
            let e = errno
            if e == ECONNRESET { return nil }
            throw RawSocketError(e == EAGAIN || e == EWOULDBLOCK ? "read timed out" : "recv: \(String(cString: strerror(e)))")
        }
        return Array(buffer[..<n])
    }

    /// Reads until the peer closes; returns everything read.
    public func readToEnd() throws -> [UInt8] {
        var all: [UInt8] = []
        while let chunk = try readSome() { all += chunk }
        return all
    }

    /// True when the peer has closed (EOF or reset) within the read timeout.
    public func isClosedByPeer() -> Bool {
        do {
            while let _ = try readSome() {}
            return true
        } catch {
            return false
        }
    }

    /// Reads what has arrived without waiting: `[]` when nothing has, `nil` once the peer closed.
    public func readAvailable() -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: 65536)
        let n = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
        if n == 0 { return nil }
        if n < 0 { return errno == EAGAIN || errno == EWOULDBLOCK ? [] : nil }
        return Array(buffer[..<n])
    }

    /// Sends `piece` every `interval` seconds for at most `limit` seconds, collecting what the
    /// peer answers meanwhile. Stops once the peer closes, a send fails, or `stopOnAnswer` and
    /// an answer arrived. Returns the answer and whether the peer closed (or refused more bytes).
    public func trickle(_ piece: [UInt8], every interval: Double, upTo limit: Double,
                        stopOnAnswer: Bool = false) -> (answer: [UInt8], closed: Bool) {
        var answer: [UInt8] = []
        let start = Date()
        while Date().timeIntervalSince(start) < limit {
            guard (try? send(piece)) != nil else { return (answer + drain(), true) }
            if interval > 0 { usleep(UInt32(interval * 1e6)) }
            guard let more = readAvailable() else { return (answer, true) }
            answer += more
            if stopOnAnswer && !answer.isEmpty { return (answer, false) }
        }
        return (answer, false)
    }

    /// What is still readable after a failed send (the peer's last answer before it closed).
    private func drain() -> [UInt8] {
        var all: [UInt8] = []
        while let more = readAvailable(), !more.isEmpty { all += more }
        return all
    }

    private var pending: [UInt8] = []

    /// Reads one HTTP response (head and a Content-Length body).
    public func readResponse() throws -> RawResponse {
        while true {
            if let end = pending.firstRange(of: Array("\r\n\r\n".utf8)) {
                let head = String(decoding: pending[..<end.lowerBound], as: UTF8.self)
                var lines = head.components(separatedBy: "\r\n")
                let statusLine = lines.removeFirst()
                let parts = statusLine.split(separator: " ", maxSplits: 2)
                guard parts.count >= 2, let status = Int(parts[1]) else { throw RawSocketError("bad status line: \(statusLine)") }
                var headers: [String: String] = [:]
                for line in lines {
                    guard let colon = line.firstIndex(of: ":") else { continue }
                    headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
                }
                let length = Int(headers["content-length"] ?? "0") ?? 0
                let total = end.upperBound + length
                while pending.count < total {
                    guard let more = try readSome() else { throw RawSocketError("EOF inside body") }
                    pending += more
                }
                let body = Array(pending[end.upperBound..<total])
                pending.removeFirst(total)
                return RawResponse(status: status, headers: headers, body: body)
            }
            guard let more = try readSome() else { throw RawSocketError("EOF before a complete response head") }
            pending += more
        }
    }
}

public struct RawResponse {
    public var status: Int
    public var headers: [String: String]
    public var body: [UInt8]
    public var text: String { String(decoding: body, as: UTF8.self) }
}

public struct RawSocketError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A socket that listens on 127.0.0.1 and never accepts: connects to it pile up in its backlog.
public final class SilentListener: Sendable {
    public let fd: Int32
    public let port: UInt16

    public init(backlog: Int32 = 0) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        self.fd = fd
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && listen(fd, backlog) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard ok else {
            close(fd)
            throw RawSocketError("listen: \(String(cString: strerror(errno)))")
        }
        port = UInt16(bigEndian: addr.sin_port)
    }

    /// Accepts one pending connection (blocking). Close-on-exec, as every socket here is: a
    /// process another test spawns meanwhile must not hold it open after the test closes it.
    public func acceptOne() -> Int32 {
        let accepted = accept(fd, nil, nil)
        if accepted >= 0 { _ = fcntl(accepted, F_SETFD, FD_CLOEXEC) }
        return accepted
    }

    deinit { close(fd) }
}

/// Resident set size of this process, in bytes.
public func residentBytes() -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let fields = text.split(separator: " ")
    return (Int(fields[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE)))
}

/// Open file descriptors of this process.
public func openFileDescriptors() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? 0
}
