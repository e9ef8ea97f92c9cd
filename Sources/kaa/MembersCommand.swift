import ArgumentParser
import Foundation
import KaaIO

/// `kaa members`: the cluster as one node sees it.
struct MembersCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "members",
        abstract: "List the cluster's members as a node sees them.")

    @OptionGroup var node: NodeTarget
    @Flag(help: "Print the node's JSON for scripts.") var json = false

    func run() async throws {
        let response = try await send(HTTPRequest(method: .get, target: "/kaa/v1/members"), node)
        if json {
            print(response.text)
            return
        }
        guard let members = response.json?["members"] as? [[String: Any]] else {
            throw CommandFailure("the node's answer has no member list")
        }
        var rows = [["NAME", "ADDRESS", "STATUS", "INCARNATION", "ZONE", "CAPACITY", "AGE"]]
        for m in members {
            let capacity = m["capacity"] as? [String: Any] ?? [:]
            var cap = "\(capacity["cores"] as? Int ?? 0) cores, \(ByteCount.format(UInt64(capacity["memory_bytes"] as? Int ?? 0)))"
            if let gpus = capacity["gpus"] as? Int, gpus > 0 {
                cap += ", \(gpus) GPU (\(ByteCount.format(UInt64(capacity["gpu_memory_bytes"] as? Int ?? 0))))"
            }
            let name = (m["name"] as? String ?? "?") + ((m["self"] as? Bool ?? false) ? " *" : "")
            rows.append([name, m["peer_addr"] as? String ?? "?", m["status"] as? String ?? "?",
                         "\(m["incarnation"] as? Int ?? 0)", (m["zone"] as? String).flatMap { $0.isEmpty ? nil : $0 } ?? "-",
                         cap, formatAge(m["age_seconds"] as? Double ?? 0)])
        }
        print(Table.rows(rows))
    }
}

/// `42s`, `5m`, `3h`, `2d`.
func formatAge(_ seconds: Double) -> String {
    let s = Int(seconds)
    if s < 120 { return "\(s)s" }
    if s < 7200 { return "\(s / 60)m" }
    if s < 172_800 { return "\(s / 3600)h" }
    return "\(s / 86400)d"
}
