public import Foundation
import Glibc

/// A `kaa` process started by a test and stopped by it, by process id.
///
/// The child's stdout and stderr go to files, not pipes: a pipe watched through a dispatch
/// source can outlive its muxnote when a process spawned concurrently inherits the descriptor,
/// which crashes libdispatch's event loop; a chatty child can also block on a full pipe.
// SAFETY: every stored property is immutable after init; the output lives in files.
public final class KaaProcess: @unchecked Sendable {
    public let process: Process
    private let stdoutPath: String
    private let stderrPath: String

    /// The `kaa` binary next to the test bundle (`.build/<config>/kaa`).
    public static var binary: URL {
        var url = Bundle.main.bundleURL
        for _ in 0..<4 {
            let candidate = url.appendingPathComponent("kaa")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
            url.deleteLastPathComponent()
        }
        let build = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../.build/debug/kaa").standardized
        return build
    }

    /// Starts `kaa` with `arguments` (in `directory` when given); stdout and stderr are collected.
    public init(_ arguments: [String], environment: [String: String] = [:], directory: String? = nil) throws {
        let stem = NSTemporaryDirectory() + "kaa-process-\(getpid())-\(UUID().uuidString.prefix(8))"
        stdoutPath = stem + ".out"
        stderrPath = stem + ".err"
        for path in [stdoutPath, stderrPath] where !FileManager.default.createFile(atPath: path, contents: nil) {
            throw RawSocketError("cannot create \(path)")
        }
        let out = try FileHandle(forWritingTo: URL(fileURLWithPath: stdoutPath))
        let err = try FileHandle(forWritingTo: URL(fileURLWithPath: stderrPath))
        defer {
            try? out.close()
            try? err.close()
        }
        process = Process()
        process.executableURL = KaaProcess.binary
        process.arguments = arguments
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        process.environment = env
        process.standardOutput = out
        process.standardError = err
        try process.run()
    }

    public var pid: Int32 { process.processIdentifier }
    public var stderr: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }
    public var stdout: String { (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "" }

    /// Waits until stderr matches `pattern` (a regex); returns the first capture group.
    public func waitForLog(_ pattern: String, timeout: Double = 20) throws -> String {
        let regex = try NSRegularExpression(pattern: pattern)
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let text = stderr
            if let m = regex.firstMatch(in: text, range: NSRange(text.startIndex..., in: text)) {
                if m.numberOfRanges > 1, let r = Range(m.range(at: 1), in: text) { return String(text[r]) }
                return ""
            }
            if !process.isRunning { break }
            usleep(20_000)
        }
        throw RawSocketError("no log line matching /\(pattern)/ within \(timeout)s; stderr:\n\(stderr)")
    }

    /// Sends `signal` to the process by its pid.
    public func signal(_ signal: Int32) { kill(pid, signal) }

    /// Waits for exit (SIGKILL after `timeout`); returns the exit status.
    @discardableResult
    public func wait(timeout: Double = 20) -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning {
            kill(pid, SIGKILL)
        }
        process.waitUntilExit()
        return process.terminationStatus
    }

    deinit {
        if process.isRunning {
            kill(pid, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: stdoutPath)
        try? FileManager.default.removeItem(atPath: stderrPath)
    }

    /// What a finished `kaa` run left: its exit status and output.
    public typealias Result = (status: Int32, stdout: String, stderr: String)

    /// Runs `kaa` to completion (in `directory` when given) and returns its status and output.
    public static func run(_ arguments: [String], environment: [String: String] = [:], in directory: String? = nil,
                           timeout: Double = 120) throws -> Result {
        let p = try KaaProcess(arguments, environment: environment, directory: directory)
        let status = p.wait(timeout: timeout)
        return (status, p.stdout, p.stderr)
    }
}

/// A fresh temporary directory, removed by `remove()`.
public struct TemporaryDirectory {
    public let path: String
    public init(_ prefix: String = "kaa-test") {
        path = NSTemporaryDirectory() + "\(prefix)-\(getpid())-\(UUID().uuidString.prefix(8))"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    public func remove() { try? FileManager.default.removeItem(atPath: path) }
}
