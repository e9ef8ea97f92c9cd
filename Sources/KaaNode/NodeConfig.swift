import Foundation
public import KaaCore
public import KaaIO
import Yams

/// Everything a node is configured with. Sources, weakest first: defaults, the YAML file
/// (`--config`), environment variables (`KAA_<KEY>`), command-line flags (`--<key>`).
public struct NodeConfig: Sendable {
    public var dataDir = "./kaa-data"
    public var httpAddr = HostPort(host: "127.0.0.1", port: 7070)
    public var peerAddr = HostPort(host: "127.0.0.1", port: 7946)
    public var logLevel = "info"
    public var http = HTTPServer.Configuration()
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    public var shutdownGrace: Duration = .seconds(10)
    /// Public key files of trusted publishers; when any are given, unsigned or wrongly signed
    /// snapshots are refused.
    public var trustedKeys: [String] = []
    /// Versions kept per model, besides every version an alias points at.
    public var retainVersions = 5
    /// Peer addresses of nodes to join through; empty for the first node of a cluster.
    public var seeds: [HostPort] = []
    /// The name operators see (default: the host name).
    public var nodeName = ProcessInfo.processInfo.hostName
    /// Failure domain (rack, room, zone) for placement; may be empty.
    public var zone = ""
    /// The host other nodes reach this one at, when `peer_addr` binds a wildcard address.
    public var advertiseHost: String?
    /// The cluster key file (default `<data_dir>/cluster.key`, created on first start).
    public var clusterKeyFile: String?
    /// Gossip without encryption: only when explicitly asked for.
    public var gossipPlaintext = false
    /// Model loading, eviction and admission.
    public var serving = ServingConfig()

    public init() {}

    /// One configuration key: its YAML name, environment variable and flag, and how to apply it.
    public struct Key: Sendable {
        public let name: String
        public let help: String
        let apply: @Sendable (inout NodeConfig, String) throws -> Void

        public var environmentVariable: String { "KAA_" + name.uppercased() }
        public var flag: String { "--" + name.replacingOccurrences(of: "_", with: "-") }
    }

    /// Every key, in the order `--help` and the docs list them.
    public static let keys: [Key] = [
        Key(name: "data_dir", help: "directory for the node's store, catalog and state") { c, v in c.dataDir = v },
        Key(name: "http_addr", help: "HOST:PORT for the HTTP API (inference, control, metrics)") { c, v in
            c.httpAddr = try address(v, key: "http_addr") },
        Key(name: "peer_addr", help: "HOST:PORT for the peer plane (frames between nodes)") { c, v in
            c.peerAddr = try address(v, key: "peer_addr") },
        Key(name: "log_level", help: "trace, debug, info, notice, warning, error or critical") { c, v in
            guard ["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(v) else {
                throw ConfigError("log_level `\(v)` is not one of trace, debug, info, notice, warning, error, critical")
            }
            c.logLevel = v },
        Key(name: "max_connections", help: "open HTTP connections before new ones get 503") { c, v in
            c.http.maxConnections = try integer(v, key: "max_connections", min: 1) },
        Key(name: "max_header_bytes", help: "request line + header bytes before 431") { c, v in
            c.http.maxHeaderBytes = try integer(v, key: "max_header_bytes", min: 256) },
        Key(name: "max_body_bytes", help: "request body bytes before 413") { c, v in
            c.http.maxBodyBytes = try integer(v, key: "max_body_bytes", min: 0) },
        Key(name: "header_timeout", help: "time to receive a request's headers (e.g. 10s)") { c, v in
            c.http.headerTimeout = try duration(v, key: "header_timeout") },
        Key(name: "body_timeout", help: "time to receive a request's body after its headers") { c, v in
            c.http.bodyTimeout = try duration(v, key: "body_timeout") },
        Key(name: "idle_timeout", help: "idle keep-alive connections close after this") { c, v in
            c.http.idleTimeout = try duration(v, key: "idle_timeout") },
        Key(name: "shutdown_grace", help: "time in-flight requests get to finish on SIGTERM") { c, v in
            c.shutdownGrace = try duration(v, key: "shutdown_grace") },
        Key(name: "trusted_keys", help: "comma-separated publisher public key files; snapshots must be signed by one") { c, v in
            c.trustedKeys = v.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } },
        Key(name: "retain_versions", help: "versions kept per model besides aliased ones") { c, v in
            c.retainVersions = try integer(v, key: "retain_versions", min: 1) },
        Key(name: "seeds", help: "comma-separated peer addresses of nodes to join through") { c, v in
            c.seeds = try v.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
                .map { try address($0, key: "seeds") } },
        Key(name: "node_name", help: "the name operators see (default: the host name)") { c, v in c.nodeName = v },
        Key(name: "zone", help: "failure domain (rack, room, zone) for placement") { c, v in c.zone = v },
        Key(name: "advertise_host", help: "host other nodes reach this one at, when peer_addr binds 0.0.0.0") { c, v in
            c.advertiseHost = v },
        Key(name: "cluster_key_file", help: "AES key file for gossip (default <data_dir>/cluster.key, created if absent)") { c, v in
            c.clusterKeyFile = v },
        Key(name: "memory_budget", help: "bytes loaded models may hold before LRU eviction (e.g. 2GiB, 512MiB)") { c, v in
            c.serving.memoryBudget = try byteSize(v, key: "memory_budget") },
        Key(name: "model_concurrency", help: "calls of one model running at once on the worker pool") { c, v in
            c.serving.modelConcurrency = try integer(v, key: "model_concurrency", min: 1) },
        Key(name: "model_queue", help: "calls of one model waiting to start before 429") { c, v in
            c.serving.modelQueue = try integer(v, key: "model_queue", min: 0) },
        Key(name: "default_deadline", help: "deadline of a call without a Kaa-Deadline-Ms header (e.g. 10s)") { c, v in
            c.serving.defaultDeadline = try duration(v, key: "default_deadline") },
        Key(name: "inline_threshold", help: "models whose calls measure under this run on the event loop itself (e.g. 100us; 0 never)") { c, v in
            c.serving.inlineThreshold = v == "0" ? .zero : v.hasSuffix("us") ? .microseconds(try integer(String(v.dropLast(2)), key: "inline_threshold", min: 0))
                : try duration(v, key: "inline_threshold") },
        Key(name: "pinned_models", help: "comma-separated models (name or name@version) loaded at start, never evicted") { c, v in
            c.serving.pinned = v.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } },
        Key(name: "gossip_plaintext", help: "true to gossip unencrypted (trusted networks and tests only)") { c, v in
            guard let b = Bool(v) else { throw ConfigError("gossip_plaintext `\(v)` must be true or false") }
            c.gossipPlaintext = b },
    ]

    /// Builds the configuration from a YAML file, the environment and flag values (by key name).
    public static func load(file: String?, environment: [String: String],
                            flags: [String: String]) throws(ConfigError) -> NodeConfig {
        var config = NodeConfig()
        if let file {
            let text: String
            do { text = try String(contentsOfFile: file, encoding: .utf8) } catch {
                throw ConfigError("cannot read config file \(file): \(error.localizedDescription)")
            }
            try config.apply(yaml: text, source: file)
        }
        for key in keys {
            if let value = environment[key.environmentVariable] {
                do { try key.apply(&config, value) } catch {
                    throw ConfigError("environment \(key.environmentVariable): \(error)")
                }
            }
        }
        for key in keys {
            if let value = flags[key.name] {
                do { try key.apply(&config, value) } catch { throw ConfigError("\(key.flag): \(error)") }
            }
        }
        return config
    }

    /// Applies a YAML mapping of key → scalar.
    mutating func apply(yaml text: String, source: String) throws(ConfigError) {
        let node: Yams.Node?
        do { node = try Yams.compose(yaml: text) } catch {
            throw ConfigError("config file \(source) is not valid YAML: \(error)")
        }
        guard let node else { return }
        guard let mapping = node.mapping else {
            throw ConfigError("config file \(source) must be a mapping of keys to values, like `http_addr: 127.0.0.1:7070`")
        }
        for (keyNode, valueNode) in mapping {
            let name = keyNode.string ?? "?"
            guard let key = NodeConfig.keys.first(where: { $0.name == name }) else {
                throw ConfigError("config file \(source): unknown key `\(name)`; known keys: \(NodeConfig.keys.map(\.name).joined(separator: ", "))")
            }
            guard let scalar = valueNode.scalar else {
                throw ConfigError("config file \(source): `\(name)` must be a single value")
            }
            do { try key.apply(&self, scalar.string) } catch {
                throw ConfigError("config file \(source): \(error)")
            }
        }
    }
}

/// A configuration value that could not be used, with what to write instead.
public struct ConfigError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

private func address(_ text: String, key: String) throws(ConfigError) -> HostPort {
    do { return try HostPort(parsing: text) } catch { throw ConfigError("\(key): \(error.description)") }
}

private func integer(_ text: String, key: String, min: Int) throws(ConfigError) -> Int {
    guard let value = Int(text.replacingOccurrences(of: "_", with: "")), value >= min else {
        throw ConfigError("\(key) `\(text)` must be a whole number of at least \(min)")
    }
    return value
}

/// Parses `1048576`, `512KiB`, `64MiB`, `2GiB` (also KB/MB/GB as powers of 1000).
func byteSize(_ text: String, key: String) throws(ConfigError) -> Int {
    let units: [(String, Int)] = [("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40),
                                  ("KB", 1000), ("MB", 1_000_000), ("GB", 1_000_000_000), ("B", 1)]
    for (suffix, factor) in units where text.hasSuffix(suffix) {
        if let n = Int(text.dropLast(suffix.count).trimmingCharacters(in: .whitespaces)), n >= 0 { return n * factor }
    }
    if let n = Int(text), n >= 0 { return n }
    throw ConfigError("\(key) `\(text)` is not a size; write it like 2GiB, 512MiB or 1048576")
}

/// Parses `250ms`, `10s`, `2m`, `1h`.
func duration(_ text: String, key: String) throws(ConfigError) -> Duration {
    let units: [(String, Int64)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)]
    for (suffix, ms) in units where text.hasSuffix(suffix) {
        if let n = Int64(text.dropLast(suffix.count)), n >= 0 { return .milliseconds(n * ms) }
    }
    throw ConfigError("\(key) `\(text)` is not a duration; write it like 500ms, 10s, 2m or 1h")
}
