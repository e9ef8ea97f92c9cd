public import Foundation
import Glibc

/// A `kaa` process started by a test and stopped by it, by process id.
// SAFETY: the collected output is guarded by `lock`; everything else is immutable after init.
public final class KaaProcess: @unchecked Sendable {
    public let process: Process
    private let stderrPipe = Pipe()
    private let stdoutPipe = Pipe()
    private let lock = NSLock()
    private var stderrText = ""
    private var stdoutText = ""

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

    /// Starts `kaa` with `arguments`; stdout and stderr are collected.
    public init(_ arguments: [String], environment: [String: String] = [:]) throws {
        process = Process()
        process.executableURL = KaaProcess.binary
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        process.environment = env
        process.standardError = stderrPipe
        process.standardOutput = stdoutPipe
        stderrPipe.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            guard let self, !data.isEmpty else { return }
            self.lock.withLock { self.stderrText += String(decoding: data, as: UTF8.self) }
        }
        stdoutPipe.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            guard let self, !data.isEmpty else { return }
            self.lock.withLock { self.stdoutText += String(decoding: data, as: UTF8.self) }
        }
        try process.run()
    }

    public var pid: Int32 { process.processIdentifier }
    public var stderr: String { lock.withLock { stderrText } }
    public var stdout: String { lock.withLock { stdoutText } }

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
            process.waitUntilExit()
        }
        usleep(50_000) // let the pipes drain
        return process.terminationStatus
    }

    deinit {
        if process.isRunning {
            kill(pid, SIGKILL)
            process.waitUntilExit()
        }
        stderrPipe.fileHandleForReading.readabilityHandler = nil
        stdoutPipe.fileHandleForReading.readabilityHandler = nil
    }

    /// Runs `kaa` to completion and returns (status, stdout, stderr).
    public static func run(_ arguments: [String], environment: [String: String] = [:]) throws -> (Int32, String, String) {
        let p = try KaaProcess(arguments, environment: environment)
        let status = p.wait()
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
