/// Maps method + path to handlers; `{name}` segments match one path segment and arrive
/// percent-decoded in ``HTTPRequest/pathParameters``.
///
/// Unknown paths get 404, known paths with another method 405 with an `allow` header.
public struct HTTPRouter: Sendable {
    private struct Route: Sendable {
        var method: HTTPMethod
        var segments: [Segment]
        var handler: HTTPServer.Handler
        var hasParameters: Bool { segments.contains { if case .parameter = $0 { true } else { false } } }
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
        if !routes[routes.count - 1].hasParameters {
            let key = "/" + segments.map { if case .literal(let l) = $0 { String(decoding: l, as: UTF8.self) } else { "" } }
                .joined(separator: "/")
            exact[key, default: []].append(routes.count - 1)
        }
    }

    /// Routes `request` to its handler (or answers 404/405/400 itself).
    public func handle(_ request: HTTPRequest, _ responder: HTTPResponder) {
        let path = request.path
        var allowed: [HTTPMethod] = []
        // A target without a query is its own path: look it up without copying it.
        if let candidates = exact[path.endIndex == request.target.endIndex ? request.target : String(path)] {
            for index in candidates {
                let route = routes[index]
                if route.method == request.method || (request.method == .head && route.method == .get) {
                    route.handler(request, responder)
                    return
                }
                allowed.append(route.method)
            }
        }
        var target = request.target
        let matched: (route: Route, parameters: [String: String])?? = target.withUTF8 { whole in
            let bytes = UnsafeBufferPointer(rebasing: whole[..<path.utf8.count])
            let count = Self.segmentCount(bytes)
            for route in routes where route.segments.count == count && route.hasParameters {
                guard let parameters = Self.match(route.segments, bytes) else { continue }
                guard route.method == request.method || (request.method == .head && route.method == .get) else {
                    allowed.append(route.method)
                    continue
                }
                // A malformed %-escape in a parameter: the route matched, the request is bad.
                guard let parameters else { return .some(nil) }
                return (route, parameters)
            }
            return nil
        }
        switch matched {
        case .some(.some(let (route, parameters))):
            var routed = request
            routed.pathParameters = parameters
            route.handler(routed, responder)
            return
        case .some(.none):
            responder.respond(.error(.badRequest, "path `\(path)` has a malformed %-escape in a parameter"))
            return
        case .none:
            break
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

    /// The number of non-empty `/`-separated segments of `path`.
    private static func segmentCount(_ path: UnsafeBufferPointer<UInt8>) -> Int {
        var count = 0, inSegment = false
        for byte in path {
            if byte == UInt8(ascii: "/") { inSegment = false } else if !inSegment { inSegment = true; count += 1 }
        }
        return count
    }

    /// Matches `path` against `segments` (of the same count): nil when a literal differs;
    /// `.some(nil)` when it matches but a parameter has a malformed %-escape; else the
    /// parameters, percent-decoded.
    private static func match(_ segments: [Segment], _ path: UnsafeBufferPointer<UInt8>) -> [String: String]?? {
        var parameters: [String: String] = [:]
        var malformed = false
        var i = 0
        for segment in segments {
            while i < path.count && path[i] == UInt8(ascii: "/") { i += 1 }
            let start = i
            while i < path.count && path[i] != UInt8(ascii: "/") { i += 1 }
            let part = UnsafeBufferPointer(rebasing: path[start..<i])
            switch segment {
            case .literal(let literal):
                guard literal.elementsEqual(part) else { return nil }
            case .parameter(let name):
                if let decoded = percentDecode(part) { parameters[name] = decoded } else { malformed = true }
            }
        }
        return malformed ? .some(nil) : parameters
    }
}
