import ArgumentParser
import Foundation
import KaaCore
import KaaNode
import Logging

extension Kaa {
    /// `kaa node`: runs one node until SIGTERM or SIGINT.
    struct NodeCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "node",
            abstract: "Run a Kaa node until SIGTERM or SIGINT.",
            discussion: """
            Every setting comes, strongest first, from its flag, its environment variable \
            (KAA_ and the key in capitals, e.g. KAA_HTTP_ADDR), the YAML file given by --config \
            (keys as in `data_dir: /var/lib/kaa`; cluster/node.yaml documents each), or its default.

            A browser pointed at http://HTTP_ADDR/ui shows the cluster as this node sees it: members, \
            models and their holders, replication, dead letters, calls and latency per node and per \
            model, updated every two seconds. With tokens_file set, the page asks for a token with the \
            read scope (or takes one from /ui#token=...).

            SETTINGS:
            \(NodeConfig.settingsHelp)
            """)

        @Option(help: "YAML config file of settings (see SETTINGS below).")
        var config: String?

        @Argument(parsing: .allUnrecognized, help: ArgumentHelp("Settings, as --key value (see SETTINGS below).", valueName: "settings"))
        var settings: [String] = []

        func run() throws {
            let nodeConfig: NodeConfig
            do {
                nodeConfig = try NodeConfig.load(file: config, environment: ProcessInfo.processInfo.environment,
                                                 flags: try NodeConfig.flagValues(settings))
            } catch {
                throw ValidationError(error.description)
            }
            let level = Logger.Level(rawValue: nodeConfig.logLevel) ?? .info
            LoggingSystem.bootstrap { KaaLogHandler(label: $0, level: level) }
            let logger = Logger(label: "kaa.node")
            let node: Node
            do {
                node = try Node(config: nodeConfig, logger: logger)
                try node.start()
            } catch {
                logger.critical("cannot start node: \(error)")
                throw ExitCode(1)
            }
            node.waitUntilStopped()
        }
    }
}
