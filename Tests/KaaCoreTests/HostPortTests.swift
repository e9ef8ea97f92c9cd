import KaaCore
import Testing

@Suite struct HostPortTests {
    @Test func parsesIPv4AndNames() throws {
        #expect(try HostPort(parsing: "127.0.0.1:7070") == HostPort(host: "127.0.0.1", port: 7070))
        #expect(try HostPort(parsing: "node-3.lan:7946") == HostPort(host: "node-3.lan", port: 7946))
        #expect(try HostPort(parsing: ":80") == HostPort(host: "0.0.0.0", port: 80))
    }

    @Test func parsesBracketedIPv6() throws {
        let a = try HostPort(parsing: "[::1]:7070")
        #expect(a == HostPort(host: "::1", port: 7070))
        #expect(a.description == "[::1]:7070")
    }

    @Test(arguments: ["127.0.0.1", "127.0.0.1:http", "::1:80", "[::1]80", "[::1:80", "h:70000"])
    func refusesMalformed(_ text: String) {
        #expect(throws: AddressError.self) { try HostPort(parsing: text) }
    }
}
