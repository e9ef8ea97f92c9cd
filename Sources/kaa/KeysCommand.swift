import ArgumentParser
import Foundation
import KaaNode
import KaaSnapshot

/// `kaa keys generate`.
struct KeysCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys",
        abstract: "Manage publisher signing keys and the cluster's gossip key.",
        subcommands: [Generate.self, Cluster.self])

    struct Cluster: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a new cluster key file (AES-256, mode 0600) for encrypted gossip.",
            discussion: "Give every node the same file with --cluster-key-file. To rotate: add the new key as a second line on every node, then move it to the first line, then drop the old one.")
        @Option(help: "The file to write.") var out: String

        func run() throws {
            do { try ClusterKeyFile.create(out) } catch {
                FileHandle.standardError.write(Data("error: \(error)\n".utf8))
                throw ExitCode.failure
            }
            print("wrote cluster key \(out)")
        }
    }

    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Generate an Ed25519 key pair: NAME.key (private, mode 0600) and NAME.pub.")
        @Option(help: "The path prefix NAME of the two files.") var out: String
        @Flag(help: "Overwrite existing key files.") var force = false

        func run() throws {
            try reportingErrors {
                let keyPath = out + ".key"
                let pubPath = out + ".pub"
                for p in [keyPath, pubPath] where FileManager.default.fileExists(atPath: p) && !force {
                    throw SnapshotError(.io, "`\(p)` already exists; choose another --out or pass --force")
                }
                let key = PublisherPrivateKey()
                let comment = (out as NSString).lastPathComponent
                guard FileManager.default.createFile(atPath: keyPath, contents: Data(key.fileText.utf8), attributes: [.posixPermissions: 0o600]),
                      FileManager.default.createFile(atPath: pubPath, contents: Data(key.publicKey.fileText(comment: comment).utf8)) else {
                    throw SnapshotError(.io, "cannot write `\(keyPath)` and `\(pubPath)`")
                }
                // createFile keeps an existing file's mode; make sure the private key is 0600.
                try? FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: keyPath)
                print("wrote \(keyPath) (private; keep it secret) and \(pubPath)")
                print("key id \(key.publicKey.keyID)")
            }
        }
    }
}
