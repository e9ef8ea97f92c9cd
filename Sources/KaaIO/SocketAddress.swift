internal import CLibUV
import Glibc
public import KaaCore

/// A resolved IPv4 or IPv6 socket address.
public struct SocketAddress: Sendable, Hashable, CustomStringConvertible {
    var storage: sockaddr_storage

    /// Resolves `address`: numeric hosts directly, names through the system resolver
    /// (`/etc/hosts`, DNS). Blocks while resolving a name: call it at start-up or off the loop.
    public init(resolving address: HostPort) throws(IOError) {
        storage = sockaddr_storage()
        let host = address.host == "localhost" ? "127.0.0.1" : address.host
        let port = Int32(address.port)
        let rc4 = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { uv_ip4_addr(host, port, $0) }
        }
        if rc4 == 0 { return }
        let rc6 = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { uv_ip6_addr(host, port, $0) }
        }
        if rc6 == 0 { return }
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &result)
        guard rc == 0, let first = result else {
            throw IOError(.badAddress, "cannot resolve host `\(address.host)`: \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(result) }
        withUnsafeMutableBytes(of: &storage) { dst in
            dst.copyMemory(from: UnsafeRawBufferPointer(start: first.pointee.ai_addr, count: Int(first.pointee.ai_addrlen)))
        }
    }

    init(storage: sockaddr_storage) { self.storage = storage }

    /// Reads an address with a `getsockname`/`getpeername`-shaped libuv call; nil on failure.
    static func read(_ call: (UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<Int32>) -> Int32) -> SocketAddress? {
        var storage = sockaddr_storage()
        var length = Int32(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { call($0, &length) }
        }
        return rc == 0 ? SocketAddress(storage: storage) : nil
    }

    public var port: UInt16 {
        withUnsafeBytes(of: storage) { raw in
            let family = raw.load(as: sockaddr.self).sa_family
            if family == sa_family_t(AF_INET6) {
                return UInt16(bigEndian: raw.load(as: sockaddr_in6.self).sin6_port)
            }
            return UInt16(bigEndian: raw.load(as: sockaddr_in.self).sin_port)
        }
    }

    public var host: String {
        var buffer = [CChar](repeating: 0, count: 64)
        withUnsafeBytes(of: storage) { raw in
            let family = raw.load(as: sockaddr.self).sa_family
            raw.withMemoryRebound(to: sockaddr.self) { sa in
                if family == sa_family_t(AF_INET6) {
                    sa.baseAddress!.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) {
                        _ = uv_ip6_name($0, &buffer, buffer.count)
                    }
                } else {
                    sa.baseAddress!.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                        _ = uv_ip4_name($0, &buffer, buffer.count)
                    }
                }
            }
        }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public var hostPort: HostPort { HostPort(host: host, port: port) }
    public var description: String { hostPort.description }

    public static func == (a: SocketAddress, b: SocketAddress) -> Bool { a.hostPort == b.hostPort }
    public func hash(into hasher: inout Hasher) { hasher.combine(hostPort) }

    func withSockAddr<R>(_ body: (UnsafePointer<sockaddr>) -> R) -> R {
        withUnsafeBytes(of: storage) { body($0.baseAddress!.assumingMemoryBound(to: sockaddr.self)) }
    }
}
