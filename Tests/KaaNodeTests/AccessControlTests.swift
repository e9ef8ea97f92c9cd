import Foundation
import Glibc
import KaaCore
import KaaIO
@testable import KaaNode
import KaaTestSupport
import Testing

/// Bearer tokens with scopes on the control API: the policy in-process, then a live node and
/// the kaa commands that send tokens.
@Suite struct AccessControlTests {
    @Test func eachRouteNeedsItsScope() {
        func scope(_ method: HTTPMethod, _ target: String, infer: Bool = false) -> String {
            AccessPolicy.requiredScope(method: method, target: target, requireInferToken: infer)?.rawValue ?? "open"
        }
        #expect(scope(.get, "/v2/health/ready") == "open")
        #expect(scope(.get, "/v2") == "open")
        #expect(scope(.post, "/v2/models/iris/infer") == "open")
        #expect(scope(.post, "/v2/models/iris/infer", infer: true) == "infer")
        #expect(scope(.get, "/v2/models/iris", infer: true) == "infer")
        #expect(scope(.post, "/v2/repository/index") == "read")
        #expect(scope(.post, "/v2/repository/models/iris/unload") == "admin")
        #expect(scope(.get, "/metrics") == "read")
        #expect(scope(.get, "/kaa/v1/snapshots?name=iris") == "read")
        #expect(scope(.get, "/kaa/v1/members") == "read")
        #expect(scope(.put, "/kaa/v1/snapshots/iris") == "publish")
        #expect(scope(.put, "/kaa/v1/snapshots/iris/3") == "publish")
        #expect(scope(.put, "/kaa/v1/models/iris/aliases/stable") == "admin")
        #expect(scope(.delete, "/kaa/v1/models/iris/aliases/stable") == "admin")
        #expect(scope(.put, "/kaa/v1/snapshotsx") == "admin")
        // The dashboard: its page, script and style are open (a browser cannot send a token with
        // the address it opens; they hold no cluster data); every route it reads needs `read`.
        #expect(scope(.get, "/ui") == "open")
        #expect(scope(.get, "/ui/dashboard.js") == "open")
        #expect(scope(.head, "/ui/dashboard.css") == "open")
        #expect(scope(.post, "/ui") == "admin")
        #expect(scope(.get, "/uix") == "open", "not the dashboard: no route, a 404")
        #expect(scope(.get, "/kaa/v1/stats") == "read")
        #expect(scope(.get, "/kaa/v1/stats/cluster?models=10") == "read")
        #expect(scope(.get, "/kaa/v1/placement") == "read")
        #expect(scope(.get, "/kaa/v1/deadletters/01ABC") == "read")
    }

    @Test func tokensAreCheckedByTheirHashAndScope() throws {
        let publisher = AccessToken.generate(), admin = AccessToken.generate(), stranger = AccessToken.generate()
        #expect(publisher.hasPrefix("kaa_") && publisher != admin)
        let text = "# tokens\n\(AccessToken.line(for: publisher, scopes: [.publish, .read], name: "ci"))\n\n\(AccessToken.line(for: admin, scopes: [.admin], name: "ops"))\n"
        #expect(!text.contains(publisher), "the file holds hashes, not tokens")
        let policy = AccessPolicy(tokens: try TokenTable(fileText: text, source: "t"), requireInferToken: false)
        func status(_ method: HTTPMethod, _ target: String, _ token: String?) -> Int {
            var request = HTTPRequest(method: method, target: target)
            if let token { request.headers.add("Authorization", "Bearer \(token)") }
            return policy.check(request)?.status.code ?? 200
        }
        #expect(status(.put, "/kaa/v1/snapshots/iris", nil) == 401)
        #expect(status(.put, "/kaa/v1/snapshots/iris", stranger) == 401)
        #expect(status(.put, "/kaa/v1/snapshots/iris", publisher) == 200)
        #expect(status(.put, "/kaa/v1/models/iris/aliases/stable", publisher) == 403)
        #expect(status(.put, "/kaa/v1/models/iris/aliases/stable", admin) == 200)
        #expect(status(.get, "/metrics", admin) == 200, "admin holds every scope")
        #expect(status(.post, "/v2/models/iris/infer", nil) == 200)
        let refusal = try #require(policy.check({
            var r = HTTPRequest(method: .delete, target: "/kaa/v1/models/iris/aliases/x")
            r.headers.add("authorization", "bearer \(publisher)")
            return r
        }()))
        #expect(String(decoding: refusal.body, as: UTF8.self).contains("token `ci` lacks scope `admin`, which this call needs; its scopes: publish, read"))
    }

    @Test(arguments: [
        ("abc read\n", "is not the 64-digit hex SHA-256 of a token"),
        ("\(String(repeating: "a", count: 64)) write\n", "unknown scope `write`"),
        ("\(String(repeating: "a", count: 64)) read x y\n", "expected `<sha256 hex> <scopes> [name]`"),
        ("\(String(repeating: "a", count: 64)) read\n\(String(repeating: "a", count: 64)) admin\n", "the same token is listed twice"),
    ])
    func badTokensFilesNameTheLine(text: String, message: String) {
        #expect { _ = try TokenTable(fileText: text, source: "tokens") } throws: { "\($0)".contains(message) }
    }

    @Test func aNodeWithTokensRefusesAndAcceptsAsTheScopesSay() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let tokens = dir.path + "/tokens"
        for (scope, file) in [("publish", "pub.token"), ("read", "read.token"), ("admin", "admin.token"), ("infer", "infer.token")] {
            let made = try KaaProcess.run(["tokens", "create", "--scope", scope, "--out", dir.path + "/" + file, "--append-to", tokens])
            #expect(made.0 == 0, "\(made.2)")
        }
        let (node, port) = try NodeProcessTests.startNode(dir, extra: ["--tokens-file", tokens, "--require-infer-token", "true"])
        defer { node.signal(SIGTERM); node.wait() }
        let archive = dir.path + "/iris.kaa"
        #expect(try KaaProcess.run(["snapshot", "build", "--model", "\(ServingTests.repo)/snapshots/iris-logreg/model.onnx",
                                    "--name", "iris", "--version", "1", "--out", archive]).0 == 0)
        let url = "http://127.0.0.1:\(port)"
        // Without a token, and with one that lacks the scope: refused, saying which scope is needed.
        let anonymous = try KaaProcess.run(["publish", archive, "--to", url])
        #expect(anonymous.0 != 0)
        #expect(anonymous.2.contains("this call needs a token with scope `publish`"), "\(anonymous.2)")
        let reader = try KaaProcess.run(["publish", archive, "--to", url, "--token-file", dir.path + "/read.token"])
        #expect(reader.2.contains("lacks scope `publish`"), "\(reader.2)")
        // With the publish token, from the flag or the environment.
        #expect(try KaaProcess.run(["publish", archive, "--to", url, "--token-file", dir.path + "/pub.token"]).0 == 0)
        let token = try String(contentsOfFile: dir.path + "/admin.token", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let alias = try KaaProcess.run(["alias", "set", "iris", "stable", "1", "--to", url], environment: ["KAA_TOKEN": token])
        #expect(alias.0 == 0, "\(alias.2)")
        let members = try KaaProcess.run(["members", "--to", url], environment: ["KAA_TOKEN_FILE": dir.path + "/read.token"])
        #expect(members.0 == 0, "\(members.2)")
        // Inference needs the infer scope here; health stays open.
        let c = try RawSocket(port: port)
        let body = #"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}"#
        let open = try ServingTests.post(c, "/v2/models/iris/infer", body)
        #expect(open.status == 401)
        #expect(open.headers["www-authenticate"] == "Bearer")
        let inferToken = try String(contentsOfFile: dir.path + "/infer.token", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try ServingTests.post(c, "/v2/models/iris/infer", body, headers: "Authorization: Bearer \(inferToken)\r\n").status == 200)
        try c.send("GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(try c.readResponse().status == 200)
    }
}
