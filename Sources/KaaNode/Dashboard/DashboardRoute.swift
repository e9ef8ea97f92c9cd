import KaaIO

/// `GET /ui`: the cluster dashboard, one page with its script and style compiled into the
/// binary (`/ui/dashboard.js`, `/ui/dashboard.css`; no other origin is contacted). The page
/// holds no data of its own: in the browser it polls this node's read routes —
/// `/kaa/v1/members`, `/kaa/v1/placement`, `/kaa/v1/stats/cluster` — every two seconds, with
/// the bearer token it was given (`/ui#token=...`, or typed into it; kept in the tab's
/// sessionStorage) when the node has a tokens file.
struct DashboardRoute: Sendable {
    static let assets: [(path: String, type: String, body: String)] = [
        ("/ui", "text/html; charset=utf-8", DashboardAssets.html),
        ("/ui/dashboard.js", "text/javascript; charset=utf-8", DashboardAssets.script),
        ("/ui/dashboard.css", "text/css; charset=utf-8", DashboardAssets.style),
    ]

    /// The answer for one asset: the bytes, and headers that keep the page to its own origin.
    static func response(type: String, body: [UInt8]) -> HTTPResponse {
        var headers = HTTPHeaders()
        headers.add("content-type", type)
        headers.add("cache-control", "no-cache")
        headers.add("x-content-type-options", "nosniff")
        headers.add("referrer-policy", "no-referrer")
        headers.add("x-frame-options", "DENY")
        headers.add("content-security-policy",
                    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
        return HTTPResponse(status: .ok, headers: headers, body: body)
    }

    func add(to router: inout HTTPRouter) {
        for asset in DashboardRoute.assets {
            let answer = DashboardRoute.response(type: asset.type, body: Array(asset.body.utf8))
            router.add(.get, asset.path) { _, responder in responder.respond(answer) }
        }
    }
}
