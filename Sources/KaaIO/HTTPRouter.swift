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
        case literal(String)
        case parameter(String)
    }

    private var routes: [Route] = []

    public init() {}

    /// Adds a route; `pattern` is a path like `/v2/models/{name}/versions/{version}/infer`.
    public mutating func add(_ method: HTTPMethod, _ pattern: String, _ handler: @escaping HTTPServer.Handler) {
        let segments = pattern.split(separator: "/", omittingEmptySubsequences: true).map { part -> Segment in
            if part.hasPrefix("{") && part.hasSuffix("}") { return .parameter(String(part.dropFirst().dropLast())) }
            return .literal(String(part))
        }
        routes.append(Route(method: method, segments: segments, handler: handler))
    }

    /// Routes `request` to its handler (or answers 404/405/400 itself).
    public func handle(_ request: HTTPRequest, _ responder: HTTPResponder) {
        let path = request.path
        var parts: [Substring] = []
        parts.reserveCapacity(8)
        for part in path.split(separator: "/", omittingEmptySubsequences: true) { parts.append(part) }
        var allowed: [HTTPMethod] = []
        for route in routes where route.segments.count == parts.count {
            var parameters: [String: String] = [:]
            var matched = true
            for (segment, part) in zip(route.segments, parts) {
                switch segment {
                case .literal(let literal):
                    if literal != part { matched = false }
                case .parameter(let name):
                    guard let decoded = percentDecode(part) else {
                        responder.respond(.error(.badRequest, "path segment `\(part)` has a malformed %-escape"))
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
            var response = HTTPResponse.error(.methodNotAllowed,
                "\(request.method) is not allowed on \(path); allowed: \(allowed.map(\.rawValue).joined(separator: ", "))")
            response.headers.add("allow", allowed.map(\.rawValue).joined(separator: ", "))
            responder.respond(response)
        }
    }
}
