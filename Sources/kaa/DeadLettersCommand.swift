import ArgumentParser
import Foundation
import KaaCore
import KaaIO

/// `kaa deadletters list|show|replay|delete`.
struct DeadLettersCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "deadletters",
        abstract: "Inspect and replay the calls the cluster accepted and could not answer.",
        subcommands: [List.self, Show.self, Replay.self, Delete.self])

    static func query(_ pairs: [(String, String?)]) -> String {
        let items = pairs.compactMap { key, value in
            value.map { "\(key)=\($0.addingPercentEncoding(withAllowedCharacters: .urlQueryAllowed) ?? $0)" }
        }
        return items.isEmpty ? "" : "?" + items.joined(separator: "&")
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List dead letters, cluster-wide, oldest first (a table; --json for scripts).")
        @Option(help: "Only this model's.") var model: String?
        @Option(help: "Only this reason's: deadline, no-holder, unreachable, holder-failed, shutdown.") var reason: String?
        @Option(help: "Only those written at or after this time (RFC 3339, or milliseconds since the epoch).") var since: String?
        @Option(help: "At most this many (1 to 1000).") var limit: Int = 100
        @Option(help: "The page after this id (the `next` a listing gave).") var after: String?
        @Flag(help: "Print the node's JSON.") var json = false
        @OptionGroup var node: NodeTarget

        func run() async throws {
            let target = "/kaa/v1/deadletters" + DeadLettersCommand.query([("model", model), ("reason", reason), ("since", since),
                                                                            ("limit", String(limit)), ("after", after)])
            let r = try await send(HTTPRequest(method: .get, target: target), node)
            if json { return print(r.text) }
            let letters = r.json?["dead_letters"] as? [[String: Any]] ?? []
            if letters.isEmpty { print("no dead letters") }
            let f = ISO8601DateFormatter()
            for d in letters {
                let at = (d["created_at"] as? Int).map { f.string(from: Date(timeIntervalSince1970: Double($0) / 1000)) } ?? "?"
                let state = (d["state"] as? String ?? "?") + ((d["replay_status"] as? Int).map { " (HTTP \($0))" } ?? "")
                print([d["id"] as? String ?? "?", at, d["model"] as? String ?? "?", d["reason"] as? String ?? "?", state,
                       "accepted by \(d["accepted_by"] as? String ?? "?")", d["message"] as? String ?? ""].joined(separator: "\t"))
            }
            if let next = r.json?["next"] as? String { print("more: --after \(next)") }
            if let unreachable = r.json?["unreachable"] as? [String] { print("not listed (unreachable): \(unreachable.joined(separator: ", "))") }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print one dead letter whole, its payload included (JSON; the payload in base64).")
        @Argument(help: "The dead letter's id.") var id: String
        @OptionGroup var node: NodeTarget

        func run() async throws {
            print(try await send(HTTPRequest(method: .get, target: "/kaa/v1/deadletters/\(id)"), node).text)
        }
    }

    struct Replay: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run dead letters again, each at most once cluster-wide; a replayed one prints the result it kept.")
        @Argument(help: "The dead letters' ids.") var ids: [String]
        @Flag(help: "Send each to the version its alias (or name) resolves to now, not the one it resolved to then.") var current = false
        @OptionGroup var node: NodeTarget

        func run() async throws {
            var failed = 0
            for id in ids {
                let r = try await send(HTTPRequest(method: .post, target: "/kaa/v1/deadletters/\(id)/replay" + (current ? "?to=current" : "")), node)
                let status = r.json?["status"] as? Int ?? 0
                if !(200..<300).contains(status) { failed += 1 }
                print("\(id)\tHTTP \(status)\t\((r.json?["ran_now"] as? Bool) == true ? "ran now" : "replayed before, by \(r.json?["by"] as? String ?? "?")")")
            }
            if failed > 0 { throw CommandFailure("\(failed) of \(ids.count) replays did not succeed") }
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a dead letter, on every live node that keeps it.")
        @Argument(help: "The dead letter's id.") var id: String
        @OptionGroup var node: NodeTarget

        func run() async throws {
            _ = try await send(HTTPRequest(method: .delete, target: "/kaa/v1/deadletters/\(id)"), node)
            print("deleted \(id)")
        }
    }
}
