import ArgumentParser
import Foundation
import KaaIO

/// `kaa placement`: where each snapshot lives, as one node's placement table says.
struct PlacementCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "placement",
        abstract: "Show each snapshot's holders and their copies' states, as a node's placement table says.")

    @OptionGroup var node: NodeTarget
    @Flag(name: .customLong("under-replicated"), help: "Only snapshots with fewer ready holders than the replication factor.")
    var underReplicated = false
    @Option(name: .customLong("holders-of"), help: "Print the HTTP addresses of the ready holders of NAME or NAME@VERSION (the newest version when none is given), one per line.")
    var holdersOf: String?
    @Flag(help: "Print the node's JSON for scripts.") var json = false

    func run() async throws {
        let target = "/kaa/v1/placement" + (underReplicated ? "?under_replicated=true" : "")
        let response = try await send(HTTPRequest(method: .get, target: target), node)
        if json {
            print(response.text)
            return
        }
        guard let object = response.json, let snapshots = object["snapshots"] as? [[String: Any]] else {
            throw CommandFailure("the node's answer has no placement table")
        }
        if let holdersOf {
            let parts = holdersOf.split(separator: "@", maxSplits: 1).map(String.init)
            let matching = snapshots.filter { ($0["name"] as? String) == parts[0] && (parts.count == 1 || "\($0["version"] as? Int ?? -1)" == parts[1]) }
            guard let newest = matching.max(by: { ($0["version"] as? Int ?? 0) < ($1["version"] as? Int ?? 0) }) else {
                throw CommandFailure("the cluster has no snapshot \(holdersOf)")
            }
            let ready = (newest["holders"] as? [[String: Any]] ?? []).filter { $0["state"] as? String == "ready" }
            guard !ready.isEmpty else { throw CommandFailure("\(holdersOf) has no ready holder now") }
            for holder in ready { print("http://\(holder["http_addr"] as? String ?? "?")") }
            return
        }
        var rows = [["SNAPSHOT", "HOLDERS", "READY", "OTHER COPIES"]]
        for s in snapshots {
            let holders = (s["holders"] as? [[String: Any]] ?? []).map { "\($0["name"] as? String ?? "?") (\($0["state"] as? String ?? "?"))" }
            let others = (s["others"] as? [[String: Any]] ?? []).map { "\($0["name"] as? String ?? "?") (\($0["state"] as? String ?? "?"))" }
            rows.append(["\(s["name"] as? String ?? "?")@\(s["version"] as? Int ?? 0)", holders.joined(separator: ", "),
                         "\(s["ready"] as? Int ?? 0)/\(object["replication"] as? Int ?? 0)", others.isEmpty ? "-" : others.joined(separator: ", ")])
        }
        print(Table.rows(rows))
        let total = object["snapshots_total"] as? Int ?? 0, under = object["under_replicated"] as? Int ?? 0
        let digest = (object["digest"] as? String ?? "").prefix(12)
        print("\(total) snapshots, \(under) under-replicated; table \(digest), "
              + ((object["digests_agree"] as? Bool ?? false) ? "the same on every live node" : "not yet the same on every live node"))
    }
}
