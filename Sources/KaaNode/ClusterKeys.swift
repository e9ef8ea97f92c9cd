import Foundation
import Glibc
public import KaaCluster

/// The cluster key file: one base64 AES key per line (16, 24 or 32 bytes), the first the
/// primary (it encrypts), the others accepted while keys rotate; `#` starts a comment.
public enum ClusterKeyFile {
    /// Reads the keyring from `path`.
    public static func load(_ path: String) throws -> Keyring {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw ConfigError("cannot read cluster key file \(path): \(error.localizedDescription)")
        }
        var keys: [[UInt8]] = []
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first?
                .trimmingCharacters(in: .whitespaces) ?? ""
            guard !line.isEmpty else { continue }
            guard let data = Data(base64Encoded: line), [16, 24, 32].contains(data.count) else {
                throw ConfigError("cluster key file \(path), line \(n + 1): not a base64 AES key of 16, 24 or 32 bytes; make one with `kaa keys cluster --out FILE`")
            }
            keys.append(Array(data))
        }
        guard let primary = keys.first else {
            throw ConfigError("cluster key file \(path) holds no key; make one with `kaa keys cluster --out FILE`")
        }
        do { return try Keyring(primary: primary, others: Array(keys.dropFirst())) } catch {
            throw ConfigError("cluster key file \(path): \(error)")
        }
    }

    /// A new file text with one fresh 32-byte key.
    public static func generate() -> String {
        var rng = SystemRandomNumberGenerator()
        let key = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
        return "# Kaa cluster key: every node of the cluster needs this file. First line: the key in use.\n"
            + Data(key).base64EncodedString() + "\n"
    }

    /// Writes a new key file at `path` (mode 0600); refuses to overwrite.
    public static func create(_ path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw ConfigError("cannot create cluster key file \(path): \(String(cString: strerror(errno)))")
        }
        let bytes = Array(generate().utf8)
        let ok = write(fd, bytes, bytes.count) == bytes.count && fsync(fd) == 0
        close(fd)
        guard ok else { throw ConfigError("cannot write cluster key file \(path)") }
    }
}
