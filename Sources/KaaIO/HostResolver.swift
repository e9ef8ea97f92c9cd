internal import CLibUV
import Glibc
public import KaaCore

/// Resolves host names without blocking the loop: numeric addresses at once, names through
/// libuv's `uv_getaddrinfo` (on its thread pool), with answers cached for `positiveTTL` and
/// failures for `negativeTTL`, so a peer whose name does not resolve is not asked about on
/// every packet. Loop-confined.
public final class HostResolver {
    private struct Entry {
        var result: Result<SocketAddress, IOError>
        var expires: UInt64
    }

    public let loop: EventLoop
    private let positiveTTL: UInt64
    private let negativeTTL: UInt64
    /// At most this many names are cached; past it the cache is emptied (names are few in a
    /// cluster, so this only bounds what a flood of made-up names could make it hold).
    private let capacity: Int
    private var cache: [HostPort: Entry] = [:]
    private var waiting: [HostPort: [(Result<SocketAddress, IOError>) -> Void]] = [:]
    /// Lookups in flight (for tests and shutdown accounting).
    public private(set) var inFlight = 0

    public init(loop: EventLoop, positiveTTL: Duration = .seconds(60), negativeTTL: Duration = .seconds(5), capacity: Int = 4096) {
        self.loop = loop
        self.positiveTTL = positiveTTL.millisecondsRoundedUp * 1_000_000
        self.negativeTTL = negativeTTL.millisecondsRoundedUp * 1_000_000
        self.capacity = capacity
    }

    /// A numeric address (`127.0.0.1`, `::1`, `localhost`), or nil when `address` names a host.
    public static func numeric(_ address: HostPort) -> SocketAddress? {
        var storage = sockaddr_storage()
        let host = address.host == "localhost" ? "127.0.0.1" : address.host
        let port = Int32(address.port)
        let v4 = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { uv_ip4_addr(host, port, $0) }
        }
        if v4 == 0 { return SocketAddress(storage: storage) }
        let v6 = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { uv_ip6_addr(host, port, $0) }
        }
        return v6 == 0 ? SocketAddress(storage: storage) : nil
    }

    /// The answer for `address` when it is numeric or cached and fresh; nil when a lookup is needed.
    public func cached(_ address: HostPort) -> Result<SocketAddress, IOError>? {
        loop.assertInLoop()
        if let numeric = HostResolver.numeric(address) { return .success(numeric) }
        guard let entry = cache[address], entry.expires > loop.nowNanoseconds else { return nil }
        return entry.result
    }

    /// Resolves `address`; `done` runs on the loop, at once when the answer is known.
    public func resolve(_ address: HostPort, _ done: @escaping (Result<SocketAddress, IOError>) -> Void) {
        if let known = cached(address) { return done(known) }
        if waiting[address] != nil {
            waiting[address]!.append(done)
            return
        }
        waiting[address] = [done]
        let request = UnsafeMutablePointer<uv_getaddrinfo_t>.allocate(capacity: 1)
        request.initialize(to: uv_getaddrinfo_t())
        let context = LookupContext(resolver: self, address: address)
        request.pointee.data = Unmanaged.passRetained(context).toOpaque()
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        inFlight += 1
        let rc = uv_getaddrinfo(loop.raw, request, { request, status, result in
            let context = Unmanaged<LookupContext>.fromOpaque(request!.pointee.data).takeRetainedValue()
            request!.deinitialize(count: 1)
            request!.deallocate()
            let outcome: Result<SocketAddress, IOError>
            if status == 0, let first = result {
                var storage = sockaddr_storage()
                withUnsafeMutableBytes(of: &storage) { dst in
                    dst.copyMemory(from: UnsafeRawBufferPointer(start: first.pointee.ai_addr,
                                                                count: min(Int(first.pointee.ai_addrlen), dst.count)))
                }
                outcome = .success(SocketAddress(storage: storage))
            } else {
                outcome = .failure(IOError(.badAddress, "cannot resolve host `\(context.address.host)`: \(String(cString: uv_strerror(status)))"))
            }
            if let result { uv_freeaddrinfo(result) }
            context.resolver?.finish(context.address, outcome)
        }, address.host, String(address.port), &hints)
        if rc != 0 {
            Unmanaged<LookupContext>.fromOpaque(request.pointee.data).release()
            request.deinitialize(count: 1)
            request.deallocate()
            finish(address, .failure(IOError(.badAddress, "cannot resolve host `\(address.host)`: \(String(cString: uv_strerror(rc)))")))
        }
    }

    private func finish(_ address: HostPort, _ result: Result<SocketAddress, IOError>) {
        inFlight -= 1
        if cache.count >= capacity { cache.removeAll(keepingCapacity: true) }
        let ttl: UInt64 = switch result {
        case .success: positiveTTL
        case .failure: negativeTTL
        }
        cache[address] = Entry(result: result, expires: loop.nowNanoseconds &+ ttl)
        let callbacks = waiting.removeValue(forKey: address) ?? []
        for done in callbacks { done(result) }
    }

    /// What a lookup's C request points at; holds the resolver weakly, so a resolver dropped
    /// while a lookup runs is simply not told.
    private final class LookupContext {
        weak var resolver: HostResolver?
        let address: HostPort
        init(resolver: HostResolver, address: HostPort) {
            self.resolver = resolver
            self.address = address
        }
    }
}
