import ArgumentParser
import Foundation
import KaaNode

/// `kaa tokens create`: bearer tokens for a node's control API.
struct TokensCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokens",
        abstract: "Make bearer tokens for the nodes' control API.",
        discussion: """
        A node started with --tokens-file FILE accepts the tokens FILE lists, by their SHA-256 \
        (the node never stores a token itself). Scopes: read (listings, metrics), publish \
        (snapshot uploads), admin (aliases, loads and unloads, everything; implies the others), \
        infer (inference, when the node runs with --require-infer-token true).
        """,
        subcommands: [Create.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a new token to a file (mode 0600) and its line for the nodes' tokens file.")
        @Option(help: "Comma-separated scopes: read, publish, admin, infer.") var scope: String
        @Option(help: "The file to write the token to; give it to the commands with --token-file.") var out: String
        @Option(help: "A name for the token, shown in refusals and logs (default: the file's name).") var name: String?
        @Option(help: "Append the token's line to this tokens file (created if absent) instead of printing it.")
        var appendTo: String?
        @Flag(help: "Overwrite an existing token file.") var force = false

        func run() throws {
            let scopes: Set<AccessScope>
            do { scopes = try AccessScope.parseList(scope) } catch { throw ValidationError("--scope: \(error.description)") }
            let label = name ?? (out as NSString).lastPathComponent
            guard !label.isEmpty, !label.contains(where: \.isWhitespace) else {
                throw ValidationError("--name must be one word")
            }
            if FileManager.default.fileExists(atPath: out) && !force {
                throw ValidationError("`\(out)` already exists; choose another --out or pass --force")
            }
            let token = AccessToken.generate()
            guard FileManager.default.createFile(atPath: out, contents: Data((token + "\n").utf8), attributes: [.posixPermissions: 0o600]) else {
                throw ValidationError("cannot write `\(out)`")
            }
            try? FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: out)
            let line = AccessToken.line(for: token, scopes: scopes, name: label)
            if let appendTo {
                let existing = (try? String(contentsOfFile: appendTo, encoding: .utf8)) ?? ""
                let text = existing + (existing.isEmpty || existing.hasSuffix("\n") ? "" : "\n") + line + "\n"
                do { try text.write(toFile: appendTo, atomically: true, encoding: .utf8) } catch {
                    throw ValidationError("cannot write `\(appendTo)`: \(error.localizedDescription)")
                }
                print("wrote token \(out) (keep it secret); added `\(label)` (\(scopes.sorted().map(\.rawValue).joined(separator: ","))) to \(appendTo)")
            } else {
                print("wrote token \(out) (keep it secret); add this line to each node's tokens file:")
                print(line)
            }
        }
    }
}
