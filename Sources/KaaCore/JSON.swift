/// A parsed JSON value. Objects keep their members in order; integers that fit `Int64` and
/// have no fraction or exponent keep their exact value.
public enum JSON: Sendable, Equatable {
    case null
    case bool(Bool)
    case integer(Int64)
    case number(Double)
    case string(String)
    case array([JSON])
    case object([(key: String, value: JSON)])

    public static func == (a: JSON, b: JSON) -> Bool {
        switch (a, b) {
        case (.null, .null): true
        case (.bool(let x), .bool(let y)): x == y
        case (.integer(let x), .integer(let y)): x == y
        case (.number(let x), .number(let y)): x == y
        case (.string(let x), .string(let y)): x == y
        case (.array(let x), .array(let y)): x == y
        case (.object(let x), .object(let y)): x.count == y.count && zip(x, y).allSatisfy { $0.key == $1.key && $0.value == $1.value }
        default: false
        }
    }

    /// The member `key` of an object (the first, if repeated).
    public subscript(key: String) -> JSON? {
        guard case .object(let members) = self else { return nil }
        return members.first(where: { $0.key == key })?.value
    }

    public var string: String? { if case .string(let s) = self { s } else { nil } }
    public var array: [JSON]? { if case .array(let a) = self { a } else { nil } }
    public var bool: Bool? { if case .bool(let b) = self { b } else { nil } }
    public var isNull: Bool { if case .null = self { true } else { false } }

    /// A number as `Double` (integers converted).
    public var double: Double? {
        switch self {
        case .integer(let i): Double(i)
        case .number(let d): d
        default: nil
        }
    }

    /// An integral number as `Int64` (`3.0` counts; `3.5` does not).
    public var int64: Int64? {
        switch self {
        case .integer(let i): i
        case .number(let d): d.rounded() == d && abs(d) < 9.2e18 ? Int64(d) : nil
        default: nil
        }
    }

    /// The JSON type's name, for error messages.
    public var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "boolean"
        case .integer, .number: "number"
        case .string: "string"
        case .array: "array"
        case .object: "object"
        }
    }

    /// Parses one JSON text (RFC 8259); whitespace may surround it, nothing else may follow.
    public init(parsing bytes: some Collection<UInt8>) throws(JSONError) {
        let result: Result<JSON, JSONError> = bytes.withContiguousStorageIfAvailable { buffer in
            Result { () throws(JSONError) -> JSON in try JSON.parse(UnsafeRawBufferPointer(buffer)) }
        } ?? Array(bytes).withUnsafeBytes { raw in Result { () throws(JSONError) -> JSON in try JSON.parse(raw) } }
        self = try result.get()
    }

    public init(parsing text: String) throws(JSONError) {
        var copy = text
        let result = copy.withUTF8 { buffer in Result { () throws(JSONError) -> JSON in try JSON.parse(UnsafeRawBufferPointer(buffer)) } }
        self = try result.get()
    }

    static func parse(_ bytes: UnsafeRawBufferPointer) throws(JSONError) -> JSON {
        var reader = JSONReader(bytes: bytes)
        reader.skipWhitespace()
        let value = try reader.value(depth: 0)
        reader.skipWhitespace()
        guard reader.position == bytes.count else {
            throw reader.error("unexpected \(reader.describeCurrent()) after the JSON value")
        }
        return value
    }
}

/// Malformed JSON: what was wrong and at which byte.
public struct JSONError: Error, CustomStringConvertible, Sendable, Equatable {
    public var message: String
    public var offset: Int
    public var description: String { "malformed JSON at byte \(offset): \(message)" }
    public init(_ message: String, offset: Int) {
        self.message = message
        self.offset = offset
    }
}

/// A recursive-descent JSON reader over bytes.
struct JSONReader {
    static let maxDepth = 128
    let bytes: UnsafeRawBufferPointer
    var position = 0

    init(bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    func error(_ message: String) -> JSONError { JSONError(message, offset: position) }

    func describeCurrent() -> String {
        guard position < bytes.count else { return "end of input" }
        let c = bytes[position]
        return c >= 0x20 && c < 0x7F ? "`\(Character(Unicode.Scalar(c)))`" : "byte 0x\(String(c, radix: 16))"
    }

    mutating func skipWhitespace() {
        while position < bytes.count {
            switch bytes[position] {
            case 0x20, 0x0A, 0x0D, 0x09: position += 1
            default: return
            }
        }
    }

    mutating func value(depth: Int) throws(JSONError) -> JSON {
        guard position < bytes.count else { throw error("expected a value, found end of input") }
        switch bytes[position] {
        case UInt8(ascii: "{"): return try object(depth: depth + 1)
        case UInt8(ascii: "["): return try array(depth: depth + 1)
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
        default: throw error("expected a value, found \(describeCurrent())")
        }
    }

    private mutating func literal(_ word: StaticString) throws(JSONError) {
        let n = word.utf8CodeUnitCount
        guard position + n <= bytes.count else { throw error("expected `\(word)`") }
        for i in 0..<n where bytes[position + i] != word.utf8Start[i] { throw error("expected `\(word)`") }
        position += n
    }

    private mutating func object(depth: Int) throws(JSONError) -> JSON {
        guard depth <= JSONReader.maxDepth else { throw error("nesting deeper than \(JSONReader.maxDepth) levels") }
        position += 1
        var members: [(key: String, value: JSON)] = []
        skipWhitespace()
        if position < bytes.count && bytes[position] == UInt8(ascii: "}") {
            position += 1
            return .object(members)
        }
        while true {
            skipWhitespace()
            guard position < bytes.count, bytes[position] == UInt8(ascii: "\"") else {
                throw error("expected a member name in quotes, found \(describeCurrent())")
            }
            let key = try string()
            skipWhitespace()
            guard position < bytes.count, bytes[position] == UInt8(ascii: ":") else {
                throw error("expected `:` after member name \"\(key)\", found \(describeCurrent())")
            }
            position += 1
            skipWhitespace()
            members.append((key, try value(depth: depth)))
            skipWhitespace()
            guard position < bytes.count else { throw error("unterminated object") }
            if bytes[position] == UInt8(ascii: ",") { position += 1; continue }
            if bytes[position] == UInt8(ascii: "}") { position += 1; return .object(members) }
            throw error("expected `,` or `}` in object, found \(describeCurrent())")
        }
    }

    private mutating func array(depth: Int) throws(JSONError) -> JSON {
        guard depth <= JSONReader.maxDepth else { throw error("nesting deeper than \(JSONReader.maxDepth) levels") }
        position += 1
        var elements: [JSON] = []
        skipWhitespace()
        if position < bytes.count && bytes[position] == UInt8(ascii: "]") {
            position += 1
            return .array(elements)
        }
        while true {
            skipWhitespace()
            elements.append(try value(depth: depth))
            skipWhitespace()
            guard position < bytes.count else { throw error("unterminated array") }
            if bytes[position] == UInt8(ascii: ",") { position += 1; continue }
            if bytes[position] == UInt8(ascii: "]") { position += 1; return .array(elements) }
            throw error("expected `,` or `]` in array, found \(describeCurrent())")
        }
    }

    mutating func string() throws(JSONError) -> String {
        let start = position
        position += 1
        var scalars: [UInt8]? = nil // only when escapes force a copy
        var runStart = position
        while position < bytes.count {
            let c = bytes[position]
            if c == UInt8(ascii: "\"") {
                let tail = UnsafeRawBufferPointer(rebasing: bytes[runStart..<position])
                position += 1
                if var built = scalars {
                    built.append(contentsOf: tail)
                    guard let s = String(validating: built, as: UTF8.self) else {
                        throw JSONError("string is not valid UTF-8", offset: start)
                    }
                    return s
                }
                guard let s = String(validating: tail, as: UTF8.self) else {
                    throw JSONError("string is not valid UTF-8", offset: start)
                }
                return s
            }
            if c < 0x20 { throw error("control character in string; escape it") }
            if c == UInt8(ascii: "\\") {
                if scalars == nil { scalars = [] }
                scalars!.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[runStart..<position]))
                position += 1
                guard position < bytes.count else { throw error("unterminated escape") }
                let e = bytes[position]
                position += 1
                switch e {
                case UInt8(ascii: "\""): scalars!.append(0x22)
                case UInt8(ascii: "\\"): scalars!.append(0x5C)
                case UInt8(ascii: "/"): scalars!.append(0x2F)
                case UInt8(ascii: "b"): scalars!.append(0x08)
                case UInt8(ascii: "f"): scalars!.append(0x0C)
                case UInt8(ascii: "n"): scalars!.append(0x0A)
                case UInt8(ascii: "r"): scalars!.append(0x0D)
                case UInt8(ascii: "t"): scalars!.append(0x09)
                case UInt8(ascii: "u"):
                    var code = try hex4()
                    if (0xD800..<0xDC00).contains(code) {
                        guard position + 1 < bytes.count, bytes[position] == UInt8(ascii: "\\"),
                              bytes[position + 1] == UInt8(ascii: "u") else { throw error("lone high surrogate") }
                        position += 2
                        let low = try hex4()
                        guard (0xDC00..<0xE000).contains(low) else { throw error("invalid low surrogate") }
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    } else if (0xDC00..<0xE000).contains(code) {
                        throw error("lone low surrogate")
                    }
                    guard let scalar = Unicode.Scalar(code) else { throw error("invalid \\u escape") }
                    scalars!.append(contentsOf: String(scalar).utf8)
                default:
                    throw JSONError("invalid escape `\\\(Character(Unicode.Scalar(e)))`", offset: position - 2)
                }
                runStart = position
                continue
            }
            position += 1
        }
        throw JSONError("unterminated string", offset: start)
    }

    private mutating func hex4() throws(JSONError) -> UInt32 {
        guard position + 4 <= bytes.count else { throw error("truncated \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[position]
            let d: UInt32
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt32(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt32(c - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt32(c - UInt8(ascii: "A") + 10)
            default: throw error("invalid hex digit in \\u escape")
            }
            v = v << 4 | d
            position += 1
        }
        return v
    }

    /// Numbers: exact `Int64` when integral and in range; otherwise `Double`, with Clinger's
    /// fast path for short mantissas and the C library for the rest.
    mutating func number() throws(JSONError) -> JSON {
        let start = position
        switch JSONNumberText.scan(bytes, at: &position) {
        case .integer(let i): return .integer(i)
        case .double(let d): return .number(d)
        case .invalid(let message): throw error(message)
        case .long:
            let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<position]), as: UTF8.self)
            guard let d = Double(text), d.isFinite else { throw JSONError("number `\(text)` is out of range", offset: start) }
            return .number(d)
        }
    }
}

/// One JSON number's text, read by the rules of ``JSON``'s reader. The node's one-pass request
/// parser reads numbers with it too, so both give the same value for the same text.
public enum JSONNumberText: Equatable, Sendable {
    /// An integral number (no fraction, no exponent) within `Int64`.
    case integer(Int64)
    /// A number read exactly by Clinger's fast path (up to 19 digits, exponent within 22).
    case double(Double)
    /// A valid number whose value needs the C library's conversion (a long mantissa or a
    /// large exponent); the scanned text is the number.
    case long
    /// Not a valid number: what is wrong, where the scan stopped.
    case invalid(String)

    /// Scans the number that starts at `position` and moves `position` past its text (or to
    /// where it went wrong).
    @inlinable
    public static func scan(_ bytes: UnsafeRawBufferPointer, at position: inout Int) -> JSONNumberText {
        @inline(__always) func isDigit(_ at: Int) -> Bool { at < bytes.count && bytes[at] >= 0x30 && bytes[at] <= 0x39 }
        var negative = false
        if position < bytes.count, bytes[position] == UInt8(ascii: "-") {
            negative = true
            position += 1
        }
        guard isDigit(position) else { return .invalid("expected a digit") }
        var mantissa: UInt64 = 0
        var digits = 0
        var overflow = false
        if bytes[position] == UInt8(ascii: "0") {
            position += 1
            if isDigit(position) { return .invalid("leading zeros are not allowed in numbers") }
        } else {
            while isDigit(position) {
                if digits < 19 { mantissa = mantissa &* 10 &+ UInt64(bytes[position] - 0x30) } else { overflow = true }
                digits += 1
                position += 1
            }
        }
        var exponent = 0
        var isInteger = true
        if position < bytes.count, bytes[position] == UInt8(ascii: ".") {
            isInteger = false
            position += 1
            guard isDigit(position) else { return .invalid("expected a digit after the decimal point") }
            while isDigit(position) {
                if digits < 19 {
                    mantissa = mantissa &* 10 &+ UInt64(bytes[position] - 0x30)
                    exponent -= 1
                } else { overflow = true }
                digits += 1
                position += 1
            }
        }
        if position < bytes.count, bytes[position] == UInt8(ascii: "e") || bytes[position] == UInt8(ascii: "E") {
            isInteger = false
            position += 1
            var expNegative = false
            if position < bytes.count, bytes[position] == UInt8(ascii: "+") || bytes[position] == UInt8(ascii: "-") {
                expNegative = bytes[position] == UInt8(ascii: "-")
                position += 1
            }
            guard isDigit(position) else { return .invalid("expected a digit in the exponent") }
            var e = 0
            while isDigit(position) {
                if e < 100_000 { e = e * 10 + Int(bytes[position] - 0x30) }
                position += 1
            }
            exponent += expNegative ? -e : e
        }
        if isInteger && !overflow {
            if negative {
                if mantissa <= UInt64(Int64.max) + 1 { return .integer(mantissa == UInt64(Int64.max) + 1 ? .min : -Int64(mantissa)) }
            } else if mantissa <= UInt64(Int64.max) {
                return .integer(Int64(mantissa))
            }
        }
        // Zero needs no scaling (and `0.0` is a common feature value): skip the division.
        if mantissa == 0 && !overflow { return .double(negative ? -0.0 : 0.0) }
        guard !overflow, mantissa < (1 << 53), exponent >= -22, exponent <= 22 else { return .long }
        var d = Double(mantissa)
        if exponent < 0 { d /= powersOf10[-exponent] } else { d *= powersOf10[exponent] }
        return .double(negative ? -d : d)
    }

    /// The powers of ten that `Double` holds exactly. A literal, so the compiler lays it out
    /// statically and a scan pays no lazy-initialization check per number.
    @usableFromInline static let powersOf10: [Double] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
        1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    ]
}

/// Writes JSON text: the one writer of every Kaa JSON answer (the node's responses, `kaa
/// predict`, `kaa batch` output rows), so all of them use the same escapes and number forms.
///
/// It is on the serving path and writes millions of batch rows, so it appends in place: a
/// string without escapes is copied whole and integers are formatted without a `String`.
public struct JSONWriter {
    /// The text written so far. (Stored under another name so the small writers below can be
    /// inlined into callers in other modules: the serving path calls them per number.)
    public var bytes: [UInt8] { storage }
    @usableFromInline var storage: [UInt8] = []

    public init(capacity: Int = 256) { storage.reserveCapacity(capacity) }

    @inlinable
    public mutating func raw(_ text: StaticString) {
        text.withUTF8Buffer { storage.append(contentsOf: $0) }
    }

    /// Appends bytes that are already JSON text (a key written once and reused, say).
    public mutating func append(_ text: [UInt8]) { storage.append(contentsOf: text) }

    public mutating func string(_ s: String) {
        storage.append(0x22)
        var s = s
        s.withUTF8 { utf8 in
            var run = 0
            for i in 0..<utf8.count {
                let b = utf8[i]
                guard b == 0x22 || b == 0x5C || b < 0x20 else { continue }
                storage.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[run..<i]))
                storage.append(0x5C)
                switch b {
                case 0x22: storage.append(0x22)
                case 0x5C: storage.append(0x5C)
                case 0x0A: storage.append(UInt8(ascii: "n"))
                case 0x0D: storage.append(UInt8(ascii: "r"))
                case 0x09: storage.append(UInt8(ascii: "t"))
                default:
                    raw("u00")
                    storage.append(JSONWriter.hexDigits[Int(b >> 4)])
                    storage.append(JSONWriter.hexDigits[Int(b & 15)])
                }
                run = i + 1
            }
            storage.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[run..<utf8.count]))
        }
        storage.append(0x22)
    }

    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    @inlinable
    public mutating func integer(_ v: Int64) {
        if v < 0 { storage.append(UInt8(ascii: "-")) }
        var m = v.magnitude
        let start = storage.count
        repeat {
            storage.append(UInt8(truncatingIfNeeded: 0x30 &+ m % 10))
            m /= 10
        } while m > 0
        storage[start...].reverse()
    }

    public mutating func integer<T: BinaryInteger>(_ v: T) {
        if let small = Int64(exactly: v) { integer(small) } else { storage.append(contentsOf: String(v).utf8) }
    }

    /// Shortest text that reads back as the same value; non-finite values become `null`.
    @inlinable
    public mutating func number(_ v: Double) {
        guard v.isFinite else { return null() }
        if v == v.rounded(), abs(v) < 1e15 { return integer(Int64(v)) }
        storage.append(contentsOf: v.description.utf8)
    }

    @inlinable
    public mutating func number(_ v: Float) {
        guard v.isFinite else { return null() }
        if v == v.rounded(), abs(v) < 1e7 { return integer(Int64(v)) }
        storage.append(contentsOf: v.description.utf8)
    }

    public mutating func bool(_ v: Bool) { v ? raw("true") : raw("false") }

    @inlinable
    public mutating func null() { raw("null") }

    @inlinable
    public mutating func byte(_ b: UInt8) { storage.append(b) }

    public mutating func value(_ json: JSON) {
        switch json {
        case .null: null()
        case .bool(let b): bool(b)
        case .integer(let i): integer(i)
        case .number(let d): number(d)
        case .string(let s): string(s)
        case .array(let a):
            byte(UInt8(ascii: "["))
            for (i, v) in a.enumerated() {
                if i > 0 { byte(UInt8(ascii: ",")) }
                value(v)
            }
            byte(UInt8(ascii: "]"))
        case .object(let members):
            byte(UInt8(ascii: "{"))
            for (i, m) in members.enumerated() {
                if i > 0 { byte(UInt8(ascii: ",")) }
                string(m.key)
                byte(UInt8(ascii: ":"))
                value(m.value)
            }
            byte(UInt8(ascii: "}"))
        }
    }
}
