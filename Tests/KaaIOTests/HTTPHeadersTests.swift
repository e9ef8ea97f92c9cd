import KaaIO
import Testing

/// Header names match case-insensitively over ASCII letters only.
@Suite struct HTTPHeadersTests {
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
