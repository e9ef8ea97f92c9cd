/// Maps method + path to handlers; `{name}` segments match one path segment and arrive
/// percent-decoded in ``HTTPRequest/pathParameters``.
///
/// Unknown paths get 404, known paths with another method 405 with an `allow` header.
public struct HTTPRouter: Sendable {
    private struct Route: Sendable {
        var method: HTTPMethod
        var segments: [Segment]
        var handler: HTTPServer.Handler
    }

    private enum Segment: Sendable, Equatable {
        case literal([UInt8])
        case parameter(String)
    }

    /// Every route, in the order added.
    private var routes: [Route] = []
    /// Routes without parameters by exact path: one hash lookup on the hot path.
    private var exact: [String: [Int]] = [:]

    public init() {}

    /// Adds a route; `pattern` is a path like `/v2/models/{name}/versions/{version}/infer`.
    public mutating func add(_ method: HTTPMethod, _ pattern: String, _ handler: @escaping HTTPServer.Handler) {
        let segments = pattern.split(separator: "/", omittingEmptySubsequences: true).map { part -> Segment in
            if part.hasPrefix("{") && part.hasSuffix("}") { return .parameter(String(part.dropFirst().dropLast())) }
            return .literal(Array(part.utf8))
        }
        routes.append(Route(method: method, segments: segments, handler: handler))
        if !segments.contains(where: { if case .parameter = $0 { true } else { false } }) {
            let key = "/" + segments.map { if case .literal(let l) = $0 { String(decoding: l, as: UTF8.self) } else { "" } }
                .joined(separator: "/")
            exact[key, default: []].append(routes.count - 1)
        }
    }

    /// Routes `request` to its handler (or answers 404/405/400 itself).
    public func handle(_ request: HTTPRequest, _ responder: HTTPResponder) {
        let path = request.path
        var allowed: [HTTPMethod] = []
        if let candidates = exact[String(path)] {
            for index in candidates {
                let route = routes[index]
                if route.method == request.method || (request.method == .head && route.method == .get) {
                    route.handler(request, responder)
                    return
                }
                allowed.append(route.method)
            }
        }
        let utf8 = Array(path.utf8)
        var parts: [Range<Int>] = []
        var i = 0
        while i < utf8.count {
            if utf8[i] == UInt8(ascii: "/") { i += 1; continue }
            let start = i
            while i < utf8.count && utf8[i] != UInt8(ascii: "/") { i += 1 }
            parts.append(start..<i)
        }
        for route in routes where route.segments.count == parts.count {
            guard case .parameter = route.segments.first(where: { if case .parameter = $0 { true } else { false } }) else {
                continue // exact routes were tried above
            }
            var parameters: [String: String] = [:]
            var matched = true
            for (segment, range) in zip(route.segments, parts) {
                switch segment {
                case .literal(let literal):
                    if !literal.elementsEqual(utf8[range]) { matched = false }
                case .parameter(let name):
                    let raw = String(decoding: utf8[range], as: UTF8.self)
                    guard let decoded = percentDecode(Substring(raw)) else {
                        responder.respond(.error(.badRequest, "path segment `\(raw)` has a malformed %-escape"))
                        return
                    }
                    parameters[name] = decoded
                }
                if !matched { break }
            }
            guard matched else { continue }
            guard route.method == request.method || (request.method == .head && route.method == .get) else {
                allowed.append(route.method)
                continue
            }
            var routed = request
            routed.pathParameters = parameters
            route.handler(routed, responder)
            return
        }
        if allowed.isEmpty {
            responder.respond(.error(.notFound, "no route for \(request.method) \(path)"))
        } else {
            let list = allowed.map(\.rawValue).joined(separator: ", ")
            var response = HTTPResponse.error(.methodNotAllowed, "\(request.method) is not allowed on \(path); allowed: \(list)")
            response.headers.add("allow", list)
            responder.respond(response)
        }
    }
}
