@testable import KaaIO
import Testing

/// Header names match case-insensitively over ASCII letters only.
@Suite struct HTTPHeadersTests {
    /// Parsing a request over the previous one's fields keeps equal strings and replaces the rest.
    @Test func fieldsSetOverEarlierOnesHoldTheNewBytes() {
        var headers: HTTPHeaders = ["Host": "a", "Content-Type": "application/json", "X-Old": "1"]
        let before = headers
        headers.setField(0, name: Array("Host".utf8), value: Array("a".utf8))
        headers.setField(1, name: Array("Content-Type".utf8), value: Array("text/plain; charset=utf-8".utf8))
        headers.truncate(to: 2)
        headers.setField(2, name: Array("Accept".utf8), value: Array("*/*".utf8))
        #expect(headers.fields.map { "\($0.name)=\($0.value)" } == ["Host=a", "Content-Type=text/plain; charset=utf-8", "Accept=*/*"])
        // A copy taken before (a request a handler still holds) is unchanged.
        #expect(before.fields.map { "\($0.name)=\($0.value)" } == ["Host=a", "Content-Type=application/json", "X-Old=1"])
        headers.truncate(to: 0)
        #expect(headers.isEmpty)
        #expect(HTTPHeaders.holds("é", Array("é".utf8)) && !HTTPHeaders.holds("e", Array("é".utf8)))
    }

    @Test func lookupIgnoresTheCaseOfLettersOnly() {
        var headers: HTTPHeaders = ["Content-Type": "application/json", "X-a-b": "1", "Kaa-Deadline-Ms": "50"]
        #expect(headers["content-type"] == "application/json")
        #expect(headers["CONTENT-TYPE"] == "application/json")
        #expect(headers["kaa-deadline-ms"] == "50")
        #expect(headers["content-typ"] == nil)
        #expect(headers["content-types"] == nil)
        // `-` and CR differ only in bit 0x20, like `A` and `a`: they must not match.
        #expect(headers["x\ra\rb"] == nil)
        #expect(headers["x-a-b"] == "1")
        // `@` and backquote differ in 0x20 too, and are not letters.
        headers.add("a@", "2")
        #expect(headers["a`"] == nil)
        #expect(headers["A@"] == "2")
        headers.remove("CONTENT-type")
        #expect(headers["content-type"] == nil)
        #expect(headers["x-a-b"] == "1")
    }
}
