import ArgumentParser
import Foundation
import KaaCore
import KaaIO

/// `kaa deadletters list|show|replay|delete|purge`.
struct DeadLettersCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "deadletters",
        abstract: "Inspect and replay the calls the cluster accepted and could not answer.",
        subcommands: [List.self, Show.self, Replay.self, Delete.self, Purge.self])

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
            abstract: "Run dead letters again (by id, or those a filter selects), each at most once cluster-wide; one replayed before prints the result it kept.")
        @Argument(help: "The dead letters' ids (or give a filter).") var ids: [String] = []
        @Option(help: "Filter: this model's dead letters.") var model: String?
        @Option(help: "Filter: this reason's.") var reason: String?
        @Option(help: "Filter: written at or after this time (milliseconds since the epoch).") var since: Int64?
        @Option(help: "Replays a second, for a filter.") var rate: Double = 50
        @Flag(help: "Send each to the version its alias (or name) resolves to now, not the one it resolved to then.") var current = false
        @OptionGroup var node: NodeTarget

        func validate() throws {
            if ids.isEmpty && model == nil && reason == nil && since == nil {
                throw ValidationError("give ids, or a filter: --model, --reason or --since (--since 0 for every dead letter)")
            }
            if !ids.isEmpty && (model != nil || reason != nil || since != nil) { throw ValidationError("give ids or a filter, not both") }
        }

        func run() async throws {
            var results: [[String: Any]] = []
            if ids.isEmpty {
                var ask: [String: Any] = ["to": current ? "current" : "same", "rate": rate]
                if let model { ask["model"] = model }
                if let reason { ask["reason"] = reason }
                if let since { ask["since"] = since }
                let body = try JSONSerialization.data(withJSONObject: ask)
                let r = try await send(HTTPRequest(method: .post, target: "/kaa/v1/deadletters/replay", body: Array(body)), node)
                results = r.json?["results"] as? [[String: Any]] ?? []
                if results.isEmpty { print("no dead letters to replay") }
            } else {
                for id in ids {
                    let r = try await send(HTTPRequest(method: .post, target: "/kaa/v1/deadletters/\(id)/replay" + (current ? "?to=current" : "")), node)
                    var item = r.json ?? [:]
                    item["id"] = id
                    results.append(item)
                }
            }
            var failed = 0
            for item in results {
                let status = item["status"] as? Int ?? 0
                if !(200..<300).contains(status) { failed += 1 }
                let how = (item["ran_now"] as? Bool) == true ? "ran now" : item["error"] as? String ?? "replayed before, by \(item["by"] as? String ?? "?")"
                print("\(item["id"] as? String ?? "?")\tHTTP \(status)\t\(how)")
            }
            if failed > 0 { throw CommandFailure("\(failed) of \(results.count) replays did not succeed") }
        }
    }

    struct Purge: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete the dead letters a filter selects, on every live node.")
        @Option(help: "This model's.") var model: String?
        @Option(help: "This reason's.") var reason: String?
        @Option(help: "Written before this time (RFC 3339, or milliseconds since the epoch).") var before: String?
        @OptionGroup var node: NodeTarget

        func validate() throws {
            if model == nil && reason == nil && before == nil { throw ValidationError("give a filter: --model, --reason or --before") }
        }

        func run() async throws {
            let target = "/kaa/v1/deadletters" + DeadLettersCommand.query([("model", model), ("reason", reason), ("before", before)])
            let r = try await send(HTTPRequest(method: .delete, target: target), node)
            print("purged \(r.json?["purged"] as? Int ?? 0)")
            if let unreachable = r.json?["unreachable"] as? [String] { print("not purged (unreachable): \(unreachable.joined(separator: ", "))") }
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
