/// An HTTP method, as sent on the request line.
public struct HTTPMethod: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public static let get = HTTPMethod(rawValue: "GET")
    public static let head = HTTPMethod(rawValue: "HEAD")
    public static let post = HTTPMethod(rawValue: "POST")
    public static let put = HTTPMethod(rawValue: "PUT")
    public static let delete = HTTPMethod(rawValue: "DELETE")
    public static let patch = HTTPMethod(rawValue: "PATCH")
    public static let options = HTTPMethod(rawValue: "OPTIONS")
    public var description: String { rawValue }
    /// Safe to send twice (RFC 9110 §9.2.2): a client may retry it on a fresh connection.
    public var isIdempotent: Bool { self != .post && self != .patch }
}

/// Header fields in arrival order; names compare case-insensitively.
public struct HTTPHeaders: Sendable, Sequence, ExpressibleByDictionaryLiteral {
    public private(set) var fields: [(name: String, value: String)] = []

    public init() {}
    public init(dictionaryLiteral elements: (String, String)...) {
        fields = elements.map { (name: $0.0, value: $0.1) }
    }

    /// The first value of `name`, if present.
    public subscript(name: String) -> String? {
        for field in fields where HTTPHeaders.sameName(field.name, name) { return field.value }
        return nil
    }

    /// Header names compare case-insensitively (ASCII), without making lowercased copies.
    static func sameName(_ a: String, _ b: String) -> Bool {
        var a = a, b = b
        return a.withUTF8 { x in
            b.withUTF8 { y in
                guard x.count == y.count else { return false }
                for i in 0..<x.count where x[i] != y[i] {
                    let p = x[i] | 0x20, q = y[i] | 0x20
                    guard p == q, p >= UInt8(ascii: "a"), p <= UInt8(ascii: "z") else { return false }
                }
                return true
            }
        }
    }

    public mutating func add(_ name: String, _ value: String) { fields.append((name, value)) }

    /// Makes field `index` (an existing one, or the next) the UTF-8 `name` and `value`,
    /// keeping the strings already there when they hold the same bytes: a connection parses
    /// each request's headers over the previous request's, and a client's repeated headers
    /// then cost no new strings.
    mutating func setField(_ index: Int, name: [UInt8], value: [UInt8]) {
        guard index < fields.count else {
            fields.append((String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
            return
        }
        if !HTTPHeaders.holds(fields[index].name, name) { fields[index].name = String(decoding: name, as: UTF8.self) }
        if !HTTPHeaders.holds(fields[index].value, value) { fields[index].value = String(decoding: value, as: UTF8.self) }
    }

    /// Drops the fields from `count` on.
    mutating func truncate(to count: Int) {
        if count < fields.count { fields.removeSubrange(count...) }
    }

    /// Whether `text` is exactly the UTF-8 `bytes`.
    static func holds(_ text: String, _ bytes: [UInt8]) -> Bool {
        text.utf8.withContiguousStorageIfAvailable { $0.elementsEqual(bytes) }
            ?? text.utf8.elementsEqual(bytes)
    }

    /// Replaces every value of `name` with `value`.
    public mutating func set(_ name: String, _ value: String) {
        remove(name)
        fields.append((name, value))
    }

    public mutating func remove(_ name: String) {
        fields.removeAll { HTTPHeaders.sameName($0.name, name) }
    }

    public func makeIterator() -> IndexingIterator<[(name: String, value: String)]> { fields.makeIterator() }
    public var isEmpty: Bool { fields.isEmpty }
}

/// An HTTP status code and its reason phrase.
public struct HTTPStatus: Hashable, Sendable, CustomStringConvertible {
    public var code: Int
    public var reason: String
    public init(_ code: Int, _ reason: String) {
        self.code = code
        self.reason = reason
    }
    public init(code: Int) { self.init(code, HTTPStatus.reasons[code] ?? "Status \(code)") }
    public var description: String { "\(code) \(reason)" }

    public static let `continue` = HTTPStatus(100, "Continue")
    public static let ok = HTTPStatus(200, "OK")
    public static let created = HTTPStatus(201, "Created")
    public static let noContent = HTTPStatus(204, "No Content")
    public static let badRequest = HTTPStatus(400, "Bad Request")
    public static let notFound = HTTPStatus(404, "Not Found")
    public static let methodNotAllowed = HTTPStatus(405, "Method Not Allowed")
    public static let requestTimeout = HTTPStatus(408, "Request Timeout")
    public static let conflict = HTTPStatus(409, "Conflict")
    public static let contentTooLarge = HTTPStatus(413, "Content Too Large")
    public static let expectationFailed = HTTPStatus(417, "Expectation Failed")
    public static let tooManyRequests = HTTPStatus(429, "Too Many Requests")
    public static let headerFieldsTooLarge = HTTPStatus(431, "Request Header Fields Too Large")
    public static let internalServerError = HTTPStatus(500, "Internal Server Error")
    public static let notImplemented = HTTPStatus(501, "Not Implemented")
    public static let serviceUnavailable = HTTPStatus(503, "Service Unavailable")
    public static let gatewayTimeout = HTTPStatus(504, "Gateway Timeout")
    public static let badGateway = HTTPStatus(502, "Bad Gateway")
    public static let versionNotSupported = HTTPStatus(505, "HTTP Version Not Supported")

    static let reasons: [Int: String] = Dictionary(uniqueKeysWithValues: [
        HTTPStatus.continue, .ok, .created, .noContent, .badRequest, .notFound, .methodNotAllowed,
        .requestTimeout, .conflict, .contentTooLarge, .expectationFailed, .tooManyRequests,
        .headerFieldsTooLarge, .internalServerError, .notImplemented, .serviceUnavailable,
        .gatewayTimeout, .versionNotSupported,
    ].map { ($0.code, $0.reason) } + [(202, "Accepted"), (401, "Unauthorized"), (403, "Forbidden"),
                                      (411, "Length Required"), (502, "Bad Gateway")])
}

/// A complete request as the server hands it to a handler.
public struct HTTPRequest: Sendable {
    public var method: HTTPMethod
    /// The request target as sent (`/v2/models/iris/infer?x=1`).
    public var target: String
    /// The target's path, percent-encoding left as sent.
    public var path: Substring {
        guard let mark = target.utf8.firstIndex(of: UInt8(ascii: "?")) else { return target[...] }
        return target[..<mark]
    }
    public var headers: HTTPHeaders
    public var body: [UInt8]
    /// Values the router matched for `{name}` segments, percent-decoded.
    public var pathParameters: [String: String] = [:]
    /// The peer's address, when known.
    public var remoteAddress: SocketAddress?

    public init(method: HTTPMethod, target: String, headers: HTTPHeaders = [:], body: [UInt8] = []) {
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
    }

    /// Query items of the target, percent-decoded (`?name=iris&limit=5`).
    public var query: [String: String] {
        guard let mark = target.firstIndex(of: "?") else { return [:] }
        var items: [String: String] = [:]
        for pair in target[target.index(after: mark)...].split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = percentDecode(parts[0]) ?? String(parts[0])
            items[key] = parts.count > 1 ? (percentDecode(parts[1]) ?? String(parts[1])) : ""
        }
        return items
    }
}

/// A response to write: status, headers and the whole body.
public struct HTTPResponse: Sendable {
    public var status: HTTPStatus
    public var headers: HTTPHeaders
    public var body: [UInt8]

    public init(status: HTTPStatus = .ok, headers: HTTPHeaders = [:], body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// A JSON body (already encoded) with its content type.
    public static func json(_ status: HTTPStatus = .ok, _ body: [UInt8]) -> HTTPResponse {
        HTTPResponse(status: status, headers: ["content-type": "application/json"], body: body)
    }

    /// `{"error": message}`, the error shape of every Kaa endpoint.
    public static func error(_ status: HTTPStatus, _ message: String) -> HTTPResponse {
        .json(status, Array("{\"error\":\(jsonQuoted(message))}".utf8))
    }
}

/// `text` as a JSON string literal.
public func jsonQuoted(_ text: String) -> String {
    var out = "\""
    out.reserveCapacity(text.utf8.count + 2)
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where scalar.value < 0x20:
            let hex = String(scalar.value, radix: 16)
            out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out + "\""
}

/// Decodes `%XX` escapes in UTF-8 `bytes`; `nil` when an escape is malformed or the result is
/// not UTF-8.
func percentDecode(_ bytes: UnsafeBufferPointer<UInt8>) -> String? {
    guard bytes.contains(UInt8(ascii: "%")) else { return String(validating: bytes, as: UTF8.self) }
    var decoded: [UInt8] = []
    decoded.reserveCapacity(bytes.count)
    var i = 0
    while i < bytes.count {
        if bytes[i] == UInt8(ascii: "%") {
            guard i + 2 < bytes.count, let h = hexValue(bytes[i + 1]), let l = hexValue(bytes[i + 2]) else { return nil }
            decoded.append(h << 4 | l)
            i += 3
        } else {
            decoded.append(bytes[i])
            i += 1
        }
    }
    return String(validating: decoded, as: UTF8.self)
}

/// Decodes `%XX` escapes; `nil` when an escape is malformed or the result is not UTF-8.
public func percentDecode(_ text: Substring) -> String? {
    var text = text
    return text.withUTF8 { percentDecode($0) }
}

private func hexValue(_ c: UInt8) -> UInt8? {
    switch c {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
    default: nil
    }
}
