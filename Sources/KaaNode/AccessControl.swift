import Crypto
import Foundation
import KaaCore
public import KaaIO

/// What a bearer token allows on a node's HTTP API.
public enum AccessScope: String, CaseIterable, Sendable, Comparable {
    /// Listings, metadata of the cluster, metrics: `GET /kaa/v1/...` (members, placement, stats,
    /// dead letters), `/metrics`, the repository index: all the dashboard (`/ui`) shows.
    case read
    /// Uploading snapshots: `PUT /kaa/v1/snapshots/...`.
    case publish
    /// Everything else that changes state: aliases, loads and unloads, deletes, dead letters,
    /// members. An admin token holds every scope.
    case admin
    /// Inference, when the node requires a token for it (`require_infer_token`).
    case infer

    public static func < (a: AccessScope, b: AccessScope) -> Bool { a.rawValue < b.rawValue }

    /// Reads `publish,read`; names what is wrong otherwise.
    public static func parseList(_ text: String) throws(ConfigError) -> Set<AccessScope> {
        var scopes = Set<AccessScope>()
        for item in text.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !item.isEmpty {
            guard let scope = AccessScope(rawValue: item) else {
                throw ConfigError("unknown scope `\(item)`; scopes are \(AccessScope.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            scopes.insert(scope)
        }
        guard !scopes.isEmpty else { throw ConfigError("no scope given; scopes are \(AccessScope.allCases.map(\.rawValue).joined(separator: ", "))") }
        return scopes
    }
}

/// Bearer tokens: made by `kaa tokens create`, of which a node keeps only the SHA-256 hashes.
public enum AccessToken {
    /// A new token: `kaa_` and 32 random bytes in base64url.
    public static func generate() -> String {
        var rng = SystemRandomNumberGenerator()
        let bytes = (0..<32).map { _ in UInt8.random(in: .min ... .max, using: &rng) }
        let text = Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
        return "kaa_" + text
    }

    /// The lowercase hex SHA-256 of the token's text: what a tokens file holds.
    public static func hash(_ token: String) -> String {
        SHA256.hash(data: Array(token.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    /// The tokens-file line for a token: `<sha256 hex> <scopes> <name>`.
    public static func line(for token: String, scopes: Set<AccessScope>, name: String) -> String {
        "\(hash(token)) \(scopes.sorted().map(\.rawValue).joined(separator: ",")) \(name)"
    }
}

/// A node's tokens file: one token per line, `<sha256 hex of the token> <scopes> [name]`;
/// blank lines and `#` comments are skipped.
public struct TokenTable: Sendable {
    struct Entry: Sendable {
        var name: String
        var scopes: Set<AccessScope>
    }

    private var byHash: [String: Entry] = [:]

    public var count: Int { byHash.count }

    public init(fileText: String, source: String) throws(ConfigError) {
        for (n, raw) in fileText.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            let at = "\(source) line \(n + 1)"
            guard fields.count == 2 || fields.count == 3 else {
                throw ConfigError("\(at): expected `<sha256 hex> <scopes> [name]`, as `kaa tokens create` prints it")
            }
            let hash = String(fields[0]).lowercased()
            guard hash.utf8.count == 64, hash.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }) else {
                throw ConfigError("\(at): `\(fields[0].prefix(80))` is not the 64-digit hex SHA-256 of a token")
            }
            let scopes: Set<AccessScope>
            do { scopes = try AccessScope.parseList(String(fields[1])) } catch { throw ConfigError("\(at): \(error.description)") }
            guard byHash[hash] == nil else { throw ConfigError("\(at): the same token is listed twice") }
            byHash[hash] = Entry(name: fields.count == 3 ? String(fields[2]) : "line \(n + 1)", scopes: scopes)
        }
    }

    /// The entry of a presented token, nil when the node does not know it.
    func entry(forToken token: String) -> Entry? { byHash[AccessToken.hash(token)] }
}

/// Which scope each HTTP route needs, and the check of a request's bearer token against it.
/// With no tokens configured every route is open.
public struct AccessPolicy: Sendable {
    let tokens: TokenTable
    /// Whether inference and model metadata need a token with scope `infer` (else they are open).
    let requireInferToken: Bool

    public init(tokens: TokenTable, requireInferToken: Bool) {
        self.tokens = tokens
        self.requireInferToken = requireInferToken
    }

    /// The scope a request needs, nil when it is open to anyone.
    ///
    /// The dashboard's page and its script and style (`GET /ui`, `/ui/...`) are open: a browser
    /// cannot attach a bearer token to the address it is sent to, and they hold nothing of the
    /// cluster's (they are the same bytes in every `kaa` binary). Every figure the page shows
    /// comes from a `read` route, called with the token the page was given.
    static func requiredScope(method: HTTPMethod, target: String, requireInferToken: Bool) -> AccessScope? {
        let path = target.utf8.firstIndex(of: UInt8(ascii: "?")).map { String(target[..<$0]) } ?? target
        if path == "/ui" || path.hasPrefix("/ui/") { return method == .get || method == .head ? nil : .admin }
        if path.hasPrefix("/v2/models/") { return requireInferToken ? .infer : nil }
        if path.hasPrefix("/v2/health/") || path == "/v2" { return nil }
        if path == "/v2/repository/index" { return .read }
        if path.hasPrefix("/v2/repository/") { return .admin }
        if path == "/metrics" { return .read }
        if path.hasPrefix("/kaa/") {
            if method == .get || method == .head { return .read }
            if method == .put && (path == "/kaa/v1/snapshots" || path.hasPrefix("/kaa/v1/snapshots/")) { return .publish }
            return .admin
        }
        return nil
    }

    /// The refusal for `request` (401 without a known token, 403 without the scope), nil when allowed.
    public func check(_ request: HTTPRequest) -> HTTPResponse? {
        guard let scope = AccessPolicy.requiredScope(method: request.method, target: request.target,
                                                     requireInferToken: requireInferToken) else { return nil }
        guard let header = request.headers["authorization"], header.utf8.count > 7,
              header.prefix(7).lowercased() == "bearer " else {
            return AccessPolicy.unauthorized("this call needs a token with scope `\(scope.rawValue)`; send `Authorization: Bearer <token>` (the kaa commands take --token-file FILE or KAA_TOKEN)")
        }
        let token = header.dropFirst(7).trimmingCharacters(in: .whitespaces)
        guard let entry = tokens.entry(forToken: token) else {
            return AccessPolicy.unauthorized("the token is not one this node knows; check --tokens-file on the node and the token you send")
        }
        guard entry.scopes.contains(scope) || entry.scopes.contains(.admin) else {
            return .error(HTTPStatus(403, "Forbidden"),
                          "token `\(entry.name)` lacks scope `\(scope.rawValue)`, which this call needs; its scopes: \(entry.scopes.sorted().map(\.rawValue).joined(separator: ", "))")
        }
        return nil
    }

    /// The name of the token `request` carries, when it is one this node knows.
    func tokenName(_ request: HTTPRequest) -> String? {
        guard let header = request.headers["authorization"], header.utf8.count > 7,
              header.prefix(7).lowercased() == "bearer " else { return nil }
        return tokens.entry(forToken: header.dropFirst(7).trimmingCharacters(in: .whitespaces))?.name
    }

    private static func unauthorized(_ message: String) -> HTTPResponse {
        var response = HTTPResponse.error(HTTPStatus(401, "Unauthorized"), message)
        response.headers.add("www-authenticate", "Bearer")
        return response
    }
}
