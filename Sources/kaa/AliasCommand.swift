import ArgumentParser
import Foundation
import KaaCore
import KaaIO

/// `kaa alias set|list|remove`.
struct AliasCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "alias",
        abstract: "Point a model's aliases (stable, canary, ...) at versions.",
        subcommands: [Set.self, List.self, Remove.self])

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Point NAME's ALIAS at VERSION.")
        @Argument(help: "The model name.") var name: String
        @Argument(help: "The alias ([a-z][a-z0-9-]*).") var alias: String
        @Argument(help: "The version it points at.") var version: Int
        @Flag(help: "Move `stable` even when the version's quality gate fails against the current one (the node logs who did).")
        var force = false
        @OptionGroup var node: NodeTarget

        func run() async throws {
            let r = try await send(HTTPRequest(method: .put, target: "/kaa/v1/models/\(name)/aliases/\(alias)" + (force ? "?force=true" : ""),
                                               body: Array("\(version)".utf8)), node)
            print("\(name)@\(alias) -> \(r.json?["version"] as? Int ?? version)")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List NAME's aliases.")
        @Argument(help: "The model name.") var name: String
        @OptionGroup var node: NodeTarget

        func run() async throws {
            let r = try await send(HTTPRequest(method: .get, target: "/kaa/v1/models/\(name)/aliases"), node)
            let aliases = (r.json?["aliases"] as? [String: Int]) ?? [:]
            if aliases.isEmpty { print("\(name) has no aliases (latest is implicit)") }
            for alias in aliases.keys.sorted() { print("\(alias)\t\(aliases[alias]!)") }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove NAME's ALIAS.")
        @Argument(help: "The model name.") var name: String
        @Argument(help: "The alias.") var alias: String
        @OptionGroup var node: NodeTarget

        func run() async throws {
            _ = try await send(HTTPRequest(method: .delete, target: "/kaa/v1/models/\(name)/aliases/\(alias)"), node)
            print("removed \(name)@\(alias)")
        }
    }
}

/// Sends one request to the node; a non-2xx answer becomes a `CommandFailure` with its message.
func send(_ request: HTTPRequest, _ node: NodeTarget) async throws -> HTTPClientResponse {
    var request = request
    try node.authorize(&request)
    let client = HTTPClient()
    defer { client.shutdown() }
    let response: HTTPClientResponse
    do { response = try await client.execute(request, to: try node.address, deadline: node.deadline) } catch let error as HTTPClientError {
        throw CommandFailure(error.message)
    }
    guard (200..<300).contains(response.status) else {
        throw CommandFailure("\(response.errorMessage) (HTTP \(response.status))")
    }
    return response
}
