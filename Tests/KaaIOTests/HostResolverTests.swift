import Dispatch
import Foundation
import KaaCore
@testable import KaaIO
import Testing

/// Host names resolved off the loop and cached, positive and negative. Only names the machine
/// answers itself (numeric, /etc/hosts, names too long to ask about) are used: no DNS traffic.
@Suite struct HostResolverTests {
    /// Resolves on the loop and waits for the answer.
    static func resolve(_ r: LoopBound<HostResolver>, _ address: HostPort) -> Result<SocketAddress, IOError> {
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var answer: Result<SocketAddress, IOError>?
        r.loop.execute {
            r.value.resolve(address) { result in
                answer = result
                done.signal()
            }
        }
        done.wait()
        return answer!
    }

    @Test func numericAddressesAreAnsweredWithoutALookup() throws {
        let loop = EventLoop.start(name: "resolver")
        defer { loop.shutdown() }
        let r = loop.runBlocking { LoopBound(HostResolver(loop: loop), loop: loop) }
        for host in ["127.0.0.1", "localhost", "::1"] {
            let cached = loop.runBlocking { r.value.cached(HostPort(host: host, port: 80)) }
            #expect(cached != nil, "\(host)")
        }
        #expect(loop.runBlocking { r.value.cached(HostPort(host: "some-name", port: 80)) } == nil)
        #expect(loop.runBlocking { r.value.inFlight } == 0)
    }

    @Test func aNameFromTheHostsFileResolvesAndIsCached() throws {
        let hosts = (try? String(contentsOfFile: "/etc/hosts", encoding: .utf8)) ?? ""
        let names = hosts.split(separator: "\n").compactMap { line -> String? in
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 2, !fields[0].hasPrefix("#"), fields[0].hasPrefix("127.") else { return nil }
            return fields.dropFirst().map(String.init).first { $0 != "localhost" && !$0.hasPrefix("#") }
        }
        guard let name = names.first else { return } // nothing but localhost to look up here
        let loop = EventLoop.start(name: "resolver")
        defer { loop.shutdown() }
        let r = loop.runBlocking { LoopBound(HostResolver(loop: loop), loop: loop) }
        let address = HostPort(host: name, port: 7946)
        let result = HostResolverTests.resolve(r, address)
        #expect(try result.get().port == 7946)
        #expect(loop.runBlocking { r.value.cached(address) } != nil, "a resolved name is kept")
    }

    @Test func aFailureIsCachedForTheNegativeTTLAndTriedAgainAfter() throws {
        let loop = EventLoop.start(name: "resolver")
        defer { loop.shutdown() }
        let r = loop.runBlocking { LoopBound(HostResolver(loop: loop, negativeTTL: .milliseconds(100)), loop: loop) }
        // A name longer than DNS allows fails in the resolver library, without a query.
        let address = HostPort(host: String(repeating: "a", count: 300), port: 1)
        let first = HostResolverTests.resolve(r, address)
        #expect(throws: IOError.self) { try first.get() }
        #expect(loop.runBlocking { r.value.cached(address) } != nil, "the failure is remembered")
        Thread.sleep(forTimeInterval: 0.2)
        #expect(loop.runBlocking { r.value.cached(address) } == nil, "and forgotten after the negative TTL")
        #expect(loop.runBlocking { r.value.inFlight } == 0)
    }
}
