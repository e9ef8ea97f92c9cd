import ArgumentParser
import Foundation
import KaaCore
import KaaIO

/// `--to http://HOST:PORT`: the node a command talks to.
struct NodeTarget: ParsableArguments {
    @Option(name: .customLong("to"), help: "The node's HTTP address, like http://127.0.0.1:7070.")
    var url: String = ProcessInfo.processInfo.environment["KAA_NODE"] ?? "http://127.0.0.1:7070"

    @Option(help: "Seconds to wait for each answer.")
    var timeout: Double = 60

    @Option(help: "File holding the bearer token to send (kaa tokens create); default: $KAA_TOKEN, else the file $KAA_TOKEN_FILE.")
    var tokenFile: String?

    /// The bearer token to send, if any: `--token-file`, else `KAA_TOKEN`, else `KAA_TOKEN_FILE`.
    var token: String? {
        get throws {
            let environment = ProcessInfo.processInfo.environment
            guard let file = tokenFile ?? (environment["KAA_TOKEN"] == nil ? environment["KAA_TOKEN_FILE"] : nil) else {
                return environment["KAA_TOKEN"].map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
            }
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw ValidationError("cannot read the token file \(file)")
            }
            let token = text.trimmingCharacters(in: .whitespacesAndNewlines)
            guard !token.isEmpty, !token.contains(where: \.isWhitespace) else {
                throw ValidationError("the token file \(file) must hold one token, as `kaa tokens create` writes it")
            }
            return token
        }
    }

    /// Adds the bearer token, when there is one, to `request`.
    func authorize(_ request: inout HTTPRequest) throws {
        if let token = try token { request.headers.add("authorization", "Bearer \(token)") }
    }

    var address: HostPort {
        get throws {
            var text = url
            if text.hasPrefix("http://") { text.removeFirst(7) } else if text.contains("://") {
                throw ValidationError("--to \(url): only http:// addresses are supported")
            }
            if text.hasSuffix("/") { text.removeLast() }
            if !text.contains(":") || text.hasSuffix("]") { text += ":80" }
            do { return try HostPort(parsing: text) } catch { throw ValidationError("--to \(url): \(error.description)") }
        }
    }

    var deadline: Duration { .milliseconds(Int64(timeout * 1000)) }
}

/// A failure a command reports on stderr before exiting non-zero.
struct CommandFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

extension HTTPClientResponse {
    /// The `error` field of a Kaa error body, or the body itself.
    var errorMessage: String {
        if let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
           let message = object["error"] as? String { return message }
        return text.isEmpty ? "HTTP \(status)" : text
    }

    var json: [String: Any]? { try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] }
}

/// A progress bar on stderr when it is a terminal; silent otherwise.
final class ProgressBar: @unchecked Sendable {
    // SAFETY: `last` is guarded by `lock`.
    private let total: Int
    private let label: String
    private let enabled = isatty(STDERR_FILENO) != 0
    private let lock = NSLock()
    private var last = -1

    init(total: Int, label: String) {
        self.total = max(total, 1)
        self.label = label
    }

    func update(_ done: Int) {
        guard enabled else { return }
        let percent = min(100, done * 100 / total)
        let changed = lock.withLock { () -> Bool in
            defer { last = percent }
            return percent != last
        }
        guard changed else { return }
        let width = 30
        let filled = width * percent / 100
        let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
        FileHandle.standardError.write(Data("\r\(label) [\(bar)] \(percent)% \(ByteCount.format(UInt64(done)))/\(ByteCount.format(UInt64(total)))".utf8))
    }

    func finish() {
        guard enabled else { return }
        FileHandle.standardError.write(Data("\r\u{1B}[K".utf8))
    }
}
