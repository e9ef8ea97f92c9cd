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
            (keys as in `data_dir: /var/lib/kaa`), or its default.
            """)

        @Option(help: "YAML config file (keys: \(NodeConfig.keys.map(\.name).joined(separator: ", "))).")
        var config: String?
        @Option(help: "Directory for the node's store, catalog and state (default ./kaa-data).")
        var dataDir: String?
        @Option(help: "HOST:PORT for the HTTP API (default 127.0.0.1:7070).")
        var httpAddr: String?
        @Option(help: "HOST:PORT for the peer plane (default 127.0.0.1:7946).")
        var peerAddr: String?
        @Option(help: "trace, debug, info, notice, warning, error or critical (default info).")
        var logLevel: String?
        @Option(help: "Open HTTP connections before new ones get 503 (default 10000).")
        var maxConnections: String?
        @Option(help: "Request line + header bytes before 431 (default 16384).")
        var maxHeaderBytes: String?
        @Option(help: "Request body bytes before 413 (default 16777216).")
        var maxBodyBytes: String?
        @Option(help: "Time to receive a request's headers, e.g. 10s (default 10s).")
        var headerTimeout: String?
        @Option(help: "Time to receive a request's body after its headers (default 60s).")
        var bodyTimeout: String?
        @Option(help: "Idle keep-alive connections close after this (default 75s).")
        var idleTimeout: String?
        @Option(help: "Time in-flight requests get to finish on SIGTERM (default 10s).")
        var shutdownGrace: String?
        @Option(help: "Comma-separated publisher public key files; snapshots must then be signed by one.")
        var trustedKeys: String?
        @Option(help: "Versions kept per model besides aliased ones (default 5).")
        var retainVersions: String?
        @Option(help: "Comma-separated peer addresses (HOST:PORT) of nodes to join through.")
        var seeds: String?
        @Option(help: "The name operators see (default: the host name).")
        var nodeName: String?
        @Option(help: "Failure domain (rack, room, zone) for placement.")
        var zone: String?
        @Option(help: "Host other nodes reach this one at, when --peer-addr binds 0.0.0.0.")
        var advertiseHost: String?
        @Option(help: "AES key file for gossip (default <data-dir>/cluster.key, created if absent).")
        var clusterKeyFile: String?
        @Option(help: "true to gossip unencrypted (trusted networks and tests only).")
        var gossipPlaintext: String?
        @Option(help: "Bytes loaded models may hold before LRU eviction, e.g. 2GiB (default 2GiB).")
        var memoryBudget: String?
        @Option(help: "Calls of one model running at once on the worker pool (default: cores).")
        var modelConcurrency: String?
        @Option(help: "Calls of one model waiting to start before 429 (default 64).")
        var modelQueue: String?
        @Option(help: "Deadline of a call without a Kaa-Deadline-Ms header, e.g. 10s (default 10s).")
        var defaultDeadline: String?
        @Option(help: "Comma-separated models (name or name@version) loaded at start and never evicted.")
        var pinnedModels: String?
        @Option(help: "Models whose calls measure under this run on the event loop itself, e.g. 100us (0: never).")
        var inlineThreshold: String?

        var flagValues: [String: String] {
            let pairs: [(String, String?)] = [
                ("data_dir", dataDir), ("http_addr", httpAddr), ("peer_addr", peerAddr), ("log_level", logLevel),
                ("max_connections", maxConnections), ("max_header_bytes", maxHeaderBytes),
                ("max_body_bytes", maxBodyBytes), ("header_timeout", headerTimeout), ("body_timeout", bodyTimeout),
                ("idle_timeout", idleTimeout), ("shutdown_grace", shutdownGrace), ("trusted_keys", trustedKeys),
                ("retain_versions", retainVersions), ("seeds", seeds), ("node_name", nodeName), ("zone", zone),
                ("advertise_host", advertiseHost), ("cluster_key_file", clusterKeyFile),
                ("gossip_plaintext", gossipPlaintext), ("memory_budget", memoryBudget),
                ("model_concurrency", modelConcurrency), ("model_queue", modelQueue),
                ("default_deadline", defaultDeadline), ("pinned_models", pinnedModels),
                ("inline_threshold", inlineThreshold),
            ]
            return Dictionary(uniqueKeysWithValues: pairs.compactMap { k, v in v.map { (k, $0) } })
        }

        func run() throws {
            let nodeConfig: NodeConfig
            do {
                nodeConfig = try NodeConfig.load(file: config, environment: ProcessInfo.processInfo.environment,
                                                 flags: flagValues)
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
