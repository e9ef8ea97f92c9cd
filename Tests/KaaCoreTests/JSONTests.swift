import KaaCore
import Testing

@Suite struct JSONTests {
    @Test func parsesEveryKindOfValue() throws {
        let json = try JSON(parsing: #" {"a": [1, -2, 3.5, -0.25e2, 1E3, true, false, null], "s": "x\"\\\/\n\u00e9\ud83d\ude00", "o": {}} "#)
        #expect(json["a"] == .array([.integer(1), .integer(-2), .number(3.5), .number(-25), .number(1000), .bool(true), .bool(false), .null]))
        #expect(json["s"]?.string == "x\"\\/\né😀")
        #expect(json["o"] == .object([]))
        #expect(json["missing"] == nil)
    }

    @Test func integersStayExactAndLargeOnesBecomeDoubles() throws {
        #expect(try JSON(parsing: "9223372036854775807") == .integer(.max))
        #expect(try JSON(parsing: "-9223372036854775808") == .integer(.min))
        #expect(try JSON(parsing: "9223372036854775808") == .number(9223372036854775808))
        #expect(try JSON(parsing: "12345678901234567890123") == .number(1.2345678901234568e22))
    }

    @Test func numbersReadBackExactlyAsTheStandardLibraryReadsThem() throws {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<5000 {
            let d = Double.random(in: -1e6...1e6, using: &rng) * (Bool.random(using: &rng) ? 1 : 1e-9)
            let f = Float(d)
            for text in [d.description, f.description, "\(Int(d))"] {
                let parsed = try JSON(parsing: text)
                #expect(parsed.double == Double(text), "\(text)")
            }
        }
        for text in ["0.1", "1e-7", "2.2250738585072014e-308", "1.7976931348623157e308", "5e-324", "0.30000000000000004"] {
            #expect(try JSON(parsing: text).double == Double(text)!, "\(text)")
        }
        // Zeros, with their sign: the scanner returns them without scaling.
        for text in ["0.0", "-0.0", "0e999", "-0.000e-5", "0.000000000000000000000000", "-0.0000000000000000000000000e3"] {
            #expect(try JSON(parsing: text).double?.bitPattern == Double(text)!.bitPattern, "\(text)")
        }
    }

    @Test(arguments: [
        ("", "malformed JSON at byte 0: expected a value, found end of input"),
        ("[1, 2", "malformed JSON at byte 5: unterminated array"),
        ("[1 2]", "malformed JSON at byte 3: expected `,` or `]` in array, found `2`"),
        ("{\"a\" 1}", "malformed JSON at byte 5: expected `:` after member name \"a\", found `1`"),
        ("{a: 1}", "malformed JSON at byte 1: expected a member name in quotes, found `a`"),
        ("01", "malformed JSON at byte 1: leading zeros are not allowed in numbers"),
        ("1.", "malformed JSON at byte 2: expected a digit after the decimal point"),
        ("\"abc", "malformed JSON at byte 0: unterminated string"),
        ("\"\\x\"", "malformed JSON at byte 1: invalid escape `\\x`"),
        ("tru", "malformed JSON at byte 0: expected `true`"),
        ("[1] x", "malformed JSON at byte 4: unexpected `x` after the JSON value"),
        ("NaN", "malformed JSON at byte 0: expected a value, found `N`"),
        ("1e999", "malformed JSON at byte 0: number `1e999` is out of range"),
    ])
    func malformedInputNamesWhatAndWhere(text: String, message: String) {
        #expect { _ = try JSON(parsing: text) } throws: { "\($0)" == message }
    }

    @Test func deepNestingIsRefusedNotACrash() {
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        #expect { _ = try JSON(parsing: deep) } throws: { "\($0)".contains("nesting deeper than 128 levels") }
    }

    @Test func seededGarbageNeverCrashes() {
        var state: UInt64 = 42
        let alphabet = Array("{}[],:\"\\0123456789.eE+-truefalsnul \n\tu".utf8)
        for _ in 0..<20_000 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            let length = Int(state >> 58)
            var bytes: [UInt8] = []
            for i in 0..<length {
                let r = (state >> UInt64(i % 48)) ^ UInt64(i &* 2654435761)
                bytes.append(r % 7 == 0 ? UInt8(truncatingIfNeeded: r) : alphabet[Int(r % UInt64(alphabet.count))])
            }
            _ = try? JSON(parsing: bytes)
        }
    }

    @Test func writerRoundTrips() throws {
        let value = JSON.object([("name", .string("a\"b\n\u{1}")), ("xs", .array([.integer(-3), .number(0.5), .null, .bool(true)]))])
        var w = JSONWriter()
        w.value(value)
        #expect(String(decoding: w.bytes, as: UTF8.self) == #"{"name":"a\"b\n\u0001","xs":[-3,0.5,null,true]}"#)
        #expect(try JSON(parsing: w.bytes) == value)
    }
}
