import Foundation
public import KaaCore
public import KaaIO
import KaaEngine
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
    /// Published versions kept per model, besides every version an alias points at.
    public var retainVersions = 5
    /// Drafts (uploads without a version) kept per model, apart from published versions.
    public var retainDrafts = 5
    /// The largest model file a snapshot may hold, checked before it is decompressed.
    public var maxModelBytes = 1 << 30
    /// The largest sum of file sizes a snapshot may declare.
    public var maxContentBytes = 4 << 30
    /// Uploads taken at once; past it an upload gets 503 with Retry-After.
    public var maxConcurrentUploads = 16
    /// Peer addresses of nodes to join through; empty for the first node of a cluster.
    public var seeds: [HostPort] = []
    /// The name operators see (default: the host name).
    public var nodeName = ProcessInfo.processInfo.hostName
    /// Failure domain (rack, room, zone) for placement; may be empty.
    public var zone = ""
    /// GPUs this node offers placement: snapshots that require one go only to nodes with one.
    /// By default, the NVIDIA GPUs the driver lists under `/proc/driver/nvidia/gpus`.
    public var gpus = NodeConfig.detectedGPUs()

    /// How many GPUs the NVIDIA driver lists (0 without the driver).
    public static func detectedGPUs() -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/driver/nvidia/gpus"))?.count ?? 0
    }
    /// The host other nodes reach this one at, when `peer_addr` binds a wildcard address.
    public var advertiseHost: String?
    /// The cluster key file (default `<data_dir>/cluster.key`, created on first start).
    public var clusterKeyFile: String?
    /// Gossip without encryption: only when explicitly asked for.
    public var gossipPlaintext = false
    /// Encrypt peer-plane frames (they are authenticated with the cluster key either way).
    public var peerEncryption = true
    /// The peer listener's limits.
    public var peer = FrameServer.Configuration()
    /// Model loading, eviction and admission.
    public var serving = ServingConfig()
    /// The tokens file (`kaa tokens create` prints its lines); when set, the control API needs
    /// bearer tokens with the right scope.
    public var tokensFile: String?
    /// Whether inference needs a token with scope `infer` too (only with a tokens file).
    public var requireInferToken = false
    /// Copies of each snapshot the cluster keeps (on distinct nodes, in distinct zones when it can).
    public var replication = 2
    /// How long a dead member's copies wait before they are made again elsewhere.
    public var repairGrace: Duration = .seconds(30)
    /// Copies this node fetches at once.
    public var repairConcurrency = 4
    /// Bytes per second this node's fetches may take together; 0: unlimited.
    public var repairBandwidth = 0
    /// Moves start once every live node computed its table from the same members, or after this.
    public var placementSettle: Duration = .seconds(10)
    /// How long a publish waits for its write quorum before it answers 202 (stored, still copying).
    public var publishTimeout: Duration = .seconds(30)
    /// How long a stopping node waits for its copies to be made on other nodes before it leaves.
    public var leaveTimeout: Duration = .seconds(60)
    /// Dead letters are kept this long, and at most this many bytes of their payloads.
    public var deadLetterRetention: Duration = .seconds(7 * 86_400)
    public var deadLetterMaxBytes = 1 << 30

    public init() {}

    /// One setting, declared once: its YAML key, from which its flag (`--http-addr`) and
    /// environment variable (`KAA_HTTP_ADDR`) are derived, its help text, how it reads a value
    /// and how it shows the value it has (so `--help` shows the real default).
    public struct Key: Sendable {
        public let name: String
        public let help: String
        let apply: @Sendable (inout NodeConfig, String) throws(ConfigError) -> Void
        let show: @Sendable (NodeConfig) -> String?

        public var environmentVariable: String { "KAA_" + name.uppercased() }
        public var flag: String { "--" + name.replacingOccurrences(of: "_", with: "-") }
        /// The value this key has in `config` as it would be written, nil when unset.
        public func value(in config: NodeConfig) -> String? { show(config) }
        /// The value of a configuration with nothing set.
        public var defaultValue: String? { show(NodeConfig()) }

        init(_ name: String, _ help: String, show: @escaping @Sendable (NodeConfig) -> String?,
             apply: @escaping @Sendable (inout NodeConfig, String) throws(ConfigError) -> Void) {
            self.name = name
            self.help = help
            self.show = show
            self.apply = apply
        }

        typealias Path<T> = WritableKeyPath<NodeConfig, T> & Sendable

        static func text(_ name: String, _ help: String, _ path: any Path<String>) -> Key {
            Key(name, help, show: { $0[keyPath: path] }) { c, v throws(ConfigError) in c[keyPath: path] = v }
        }
        static func optionalText(_ name: String, _ help: String, _ path: any Path<String?>) -> Key {
            Key(name, help, show: { $0[keyPath: path] }) { c, v throws(ConfigError) in c[keyPath: path] = v }
        }
        static func address(_ name: String, _ help: String, _ path: any Path<HostPort>) -> Key {
            Key(name, help, show: { $0[keyPath: path].description }) { c, v throws(ConfigError) in
                c[keyPath: path] = try NodeConfig.address(v, key: name) }
        }
        static func integer(_ name: String, _ help: String, _ path: any Path<Int>, min: Int, max: Int = .max) -> Key {
            Key(name, help, show: { String($0[keyPath: path]) }) { c, v throws(ConfigError) in
                c[keyPath: path] = try NodeConfig.integer(v, key: name, min: min, max: max) }
        }
        static func bytes(_ name: String, _ help: String, _ path: any Path<Int>, min: Int = 0) -> Key {
            Key(name, help, show: { NodeConfig.showBytes($0[keyPath: path]) }) { c, v throws(ConfigError) in
                c[keyPath: path] = try NodeConfig.byteSize(v, key: name, min: min) }
        }
        static func duration(_ name: String, _ help: String, _ path: any Path<Duration>, allowZero: Bool = false) -> Key {
            Key(name, help, show: { NodeConfig.showDuration($0[keyPath: path]) }) { c, v throws(ConfigError) in
                c[keyPath: path] = try NodeConfig.duration(v, key: name, allowZero: allowZero) }
        }
        static func flag(_ name: String, _ help: String, _ path: any Path<Bool>) -> Key {
            Key(name, help, show: { String($0[keyPath: path]) }) { c, v throws(ConfigError) in
                guard let b = Bool(v) else { throw ConfigError("\(name) `\(v)` must be true or false") }
                c[keyPath: path] = b }
        }
        static func list(_ name: String, _ help: String, _ path: any Path<[String]>) -> Key {
            Key(name, help, show: { $0[keyPath: path].isEmpty ? nil : $0[keyPath: path].joined(separator: ",") }) { c, v throws(ConfigError) in
                c[keyPath: path] = NodeConfig.items(v) }
        }
    }

    /// Every key, in the order `--help`, `cluster/node.yaml` and the docs list them.
    public static let keys: [Key] = [
        .text("data_dir", "directory for the node's store, catalog and state", \.dataDir),
        .address("http_addr", "HOST:PORT for the HTTP API (inference, control, metrics)", \.httpAddr),
        .address("peer_addr", "HOST:PORT for the peer plane (frames between nodes)", \.peerAddr),
        Key("log_level", "trace, debug, info, notice, warning, error or critical", show: { $0.logLevel }) { c, v throws(ConfigError) in
            guard ["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(v) else {
                throw ConfigError("log_level `\(v)` is not one of trace, debug, info, notice, warning, error, critical")
            }
            c.logLevel = v },
        .text("node_name", "the name operators see, as in `kaa members`", \.nodeName),
        .text("zone", "failure domain (rack, room, zone) for placement; may be empty", \.zone),
        .integer("gpus", "GPUs offered to placement (default: those the NVIDIA driver lists)", \.gpus, min: 0, max: 64),
        Key("seeds", "peer addresses (HOST:PORT,...) to join through; none on the first node",
            show: { $0.seeds.isEmpty ? nil : $0.seeds.map(\.description).joined(separator: ",") }) { c, v throws(ConfigError) in
            var seeds: [HostPort] = []
            for item in NodeConfig.items(v) { seeds.append(try NodeConfig.address(item, key: "seeds")) }
            c.seeds = seeds },
        .optionalText("advertise_host", "host other nodes reach this one at, when peer_addr binds 0.0.0.0", \.advertiseHost),
        .optionalText("cluster_key_file", "cluster key file (unset: <data_dir>/cluster.key, made if absent)", \.clusterKeyFile),
        .flag("gossip_plaintext", "true to gossip unencrypted (trusted networks and tests only)", \.gossipPlaintext),
        .flag("peer_encryption", "encrypt peer-plane frames (authenticated by the cluster key either way)", \.peerEncryption),
        .integer("max_peer_connections", "open peer-plane connections before new ones are closed", \.peer.maxConnections, min: 1),
        .duration("peer_idle_timeout", "idle peer-plane connections close after this", \.peer.idleTimeout),
        .duration("peer_frame_timeout", "time for the handshake, a frame, or a stream's next chunk", \.peer.frameTimeout),
        .bytes("max_peer_frame_bytes", "largest peer-plane frame: a call sent on to a holder, a holdings answer",
               \.peer.maxFrameBytes, min: 1 << 20),
        .bytes("max_peer_buffered_bytes", "bytes of incoming peer frames held for all connections; past it, refused",
               \.peer.maxBufferedBytes, min: 4 << 20),

        .integer("max_connections", "open HTTP connections before new ones get 503", \.http.maxConnections, min: 1),
        .integer("max_header_bytes", "request line + header bytes before 431", \.http.maxHeaderBytes, min: 256),
        .bytes("max_body_bytes", "request body bytes before 413 (snapshot uploads excepted)", \.http.maxBodyBytes),
        .duration("header_timeout", "time to receive a request's headers", \.http.headerTimeout),
        .duration("body_timeout", "a body stalled this long fails; after it, so does one under min_body_rate", \.http.bodyTimeout),
        .bytes("min_body_rate", "bytes/s a body must average once body_timeout has passed", \.http.minBodyRate, min: 1),
        .integer("max_header_count", "header fields (and trailers) of one request before 431", \.http.maxHeaderCount, min: 8),
        .bytes("max_buffered_body_bytes", "request body bytes held for all connections together; past it 503",
               \.http.maxBufferedBodyBytes, min: 1 << 20),
        .duration("idle_timeout", "idle keep-alive connections close after this", \.http.idleTimeout),
        .duration("shutdown_grace", "time in-flight requests get to finish on SIGTERM", \.shutdownGrace, allowZero: true),

        .optionalText("tokens_file", "bearer tokens (kaa tokens create); set, the control API needs them", \.tokensFile),
        .flag("require_infer_token", "with a tokens file: inference needs a token with scope infer", \.requireInferToken),
        .list("trusted_keys", "publisher .pub files (comma-separated); snapshots must be signed by one", \.trustedKeys),
        .integer("retain_versions", "published versions kept per model besides aliased ones", \.retainVersions, min: 1),
        .integer("retain_drafts", "drafts (uploads without a version) kept per model", \.retainDrafts, min: 1),
        .bytes("max_model_bytes", "largest model file a snapshot may hold", \.maxModelBytes, min: 1),
        .bytes("max_content_bytes", "largest sum of the files of one snapshot", \.maxContentBytes, min: 1),
        .integer("max_concurrent_uploads", "snapshot uploads taken at once, copies a publish streams here from a peer included; past it 503 (a peer's copy: overloaded, sent again)", \.maxConcurrentUploads, min: 1),

        .integer("replication", "copies of each snapshot the cluster keeps, on distinct nodes", \.replication, min: 1, max: 16),
        .duration("repair_grace", "a dead member's copies are made again elsewhere after this", \.repairGrace, allowZero: true),
        .integer("repair_concurrency", "copies this node fetches at once", \.repairConcurrency, min: 1),
        .bytes("repair_bandwidth", "bytes/s this node's fetches take together (0: unlimited)", \.repairBandwidth),
        .duration("placement_settle", "moves wait until all nodes see the same members, at most this",
                  \.placementSettle, allowZero: true),
        .duration("publish_timeout", "a publish waits this long for its copies, then answers 202", \.publishTimeout),
        .duration("leave_timeout", "on SIGTERM, time to hand this node's copies over before leaving",
                  \.leaveTimeout, allowZero: true),
        .duration("dead_letter_retention", "dead letters older than this are deleted", \.deadLetterRetention),
        .bytes("dead_letter_max_bytes", "payload bytes of dead letters kept; past it the oldest go", \.deadLetterMaxBytes, min: 1),

        .bytes("memory_budget", "bytes loaded models may hold before LRU eviction", \.serving.memoryBudget),
        .list("pinned_models", "models (name or name@version, comma-separated) loaded at start, kept", \.serving.pinned),
        .integer("model_concurrency", "calls of one model running at once (default: the core count)",
                 \.serving.modelConcurrency, min: 1),
        .integer("model_queue", "calls of one model waiting to start before 429", \.serving.modelQueue, min: 0),
        .duration("default_deadline", "deadline of a call without a Kaa-Deadline-Ms header", \.serving.defaultDeadline),
        .duration("max_deadline", "longest deadline a call may ask for; a larger one is cut to it", \.serving.maxDeadline),
        .integer("max_call_rows", "rows (first dimension) of one input of a call; past it 400", \.serving.callLimits.maxRows, min: 1),
        .integer("max_call_elements", "elements of all inputs of a call together; past it 400",
                 \.serving.callLimits.maxElements, min: 1),
        .bytes("max_call_bytes", "memory one call's run may hold (intermediates, outputs); past it 400",
               \.serving.runLimits.maxBytes, min: 1),
        .duration("load_retry_after", "after a failed load, calls get 503 this long before a retry",
                  \.serving.loadRetryAfter, allowZero: true),
        .duration("inline_threshold", "calls measuring under this run on the event loop (0: never)",
                  \.serving.inlineThreshold, allowZero: true),
    ]

    /// The settings as `kaa node --help` lists them: flag, help, default, environment variable.
    public static var settingsHelp: String {
        keys.map { key in
            let shown = key.defaultValue.map { $0.isEmpty ? "empty" : $0 } ?? "unset"
            return "  \(key.flag) (\(key.environmentVariable), default \(shown))\n        \(key.help)"
        }.joined(separator: "\n")
    }

    /// Reads `--key value` and `--key=value` pairs (the flags of ``keys``) into values by key name.
    public static func flagValues(_ arguments: [String]) throws(ConfigError) -> [String: String] {
        var values: [String: String] = [:]
        var i = 0
        while i < arguments.count {
            let argument = arguments[i]
            i += 1
            guard argument.hasPrefix("--") else {
                throw ConfigError("unexpected argument `\(argument)`; settings are given as --key value (see kaa node --help)")
            }
            var flag = argument, value: String?
            if let eq = argument.firstIndex(of: "=") {
                flag = String(argument[..<eq])
                value = String(argument[argument.index(after: eq)...])
            }
            guard let key = keys.first(where: { $0.flag == flag }) else {
                let near = keys.map(\.flag).min { editDistance($0, flag) < editDistance($1, flag) }
                    .flatMap { editDistance($0, flag) <= 3 ? $0 : nil }
                throw ConfigError("unknown option \(flag)\(near.map { "; did you mean \($0)?" } ?? "") (kaa node --help lists every setting)")
            }
            if value == nil {
                guard i < arguments.count else { throw ConfigError("\(flag) needs a value") }
                value = arguments[i]
                i += 1
            }
            values[key.name] = value
        }
        return values
    }

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
        // Anchors and aliases can make a small file expand without bound; a config needs none.
        do { try YAMLSafety.check(text, what: "config files") } catch {
            throw ConfigError("config file \(source): \(error.message)")
        }
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

extension NodeConfig {
    static func address(_ text: String, key: String) throws(ConfigError) -> HostPort {
        do { return try HostPort(parsing: text) } catch { throw ConfigError("\(key): \(error.description)") }
    }

    static func items(_ text: String) -> [String] {
        text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    static func integer(_ text: String, key: String, min: Int, max: Int = .max) throws(ConfigError) -> Int {
        guard let value = Int(text.replacingOccurrences(of: "_", with: "")), value >= min, value <= max else {
            throw ConfigError("\(key) `\(text)` must be a whole number of at least \(min)\(max == .max ? "" : " and at most \(max)")")
        }
        return value
    }

    static let byteUnits: [(String, Int)] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10),
                                              ("KB", 1000), ("MB", 1_000_000), ("GB", 1_000_000_000), ("B", 1)]

    /// Parses `1048576`, `512KiB`, `64MiB`, `2GiB` (also KB/MB/GB as powers of 1000).
    static func byteSize(_ text: String, key: String, min: Int = 0) throws(ConfigError) -> Int {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        var number = Substring(trimmed), factor = 1
        for (suffix, f) in byteUnits where trimmed.hasSuffix(suffix) {
            number = trimmed.dropLast(suffix.count)
            factor = f
            break
        }
        guard let n = Int(number.trimmingCharacters(in: .whitespaces)), n >= 0 else {
            throw ConfigError("\(key) `\(text)` is not a size; write it like 2GiB, 512MiB or 1048576")
        }
        let (bytes, overflow) = n.multipliedReportingOverflow(by: factor)
        guard !overflow else { throw ConfigError("\(key) `\(text)` is too large") }
        guard bytes >= min else { throw ConfigError("\(key) `\(text)` must be at least \(showBytes(min))") }
        return bytes
    }

    /// Parses `100us`, `250ms`, `10s`, `2m`, `1h` (and `0`, where zero is allowed).
    static func duration(_ text: String, key: String, allowZero: Bool = false) throws(ConfigError) -> Duration {
        if allowZero && text == "0" { return .zero }
        let units: [(String, Int64)] = [("us", 1_000), ("ms", 1_000_000), ("s", 1_000_000_000),
                                        ("m", 60_000_000_000), ("h", 3_600_000_000_000)]
        for (suffix, ns) in units where text.hasSuffix(suffix) {
            // `ms` ends in `s` too: the longer suffixes come first.
            guard let n = Int64(text.dropLast(suffix.count)), n >= 0 else { break }
            let (total, overflow) = n.multipliedReportingOverflow(by: ns)
            guard !overflow, total <= 366 * 86_400 * 1_000_000_000 else {
                throw ConfigError("\(key) `\(text)` is longer than a year")
            }
            guard total > 0 || allowZero else { throw ConfigError("\(key) `\(text)` must be longer than zero") }
            return .nanoseconds(total)
        }
        throw ConfigError("\(key) `\(text)` is not a duration; write it like 500ms, 10s, 2m or 1h")
    }

    /// Levenshtein distance, for suggesting the setting a misspelt flag meant.
    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a.utf8), b = Array(b.utf8)
        var row = Array(0...b.count)
        for i in 1...max(1, a.count) where !a.isEmpty {
            var previous = row[0]
            row[0] = i
            for j in 1...max(1, b.count) where !b.isEmpty {
                let current = row[j]
                row[j] = min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] == b[j - 1] ? 0 : 1))
                previous = current
            }
        }
        return a.isEmpty ? b.count : row[b.count]
    }

    static func showBytes(_ n: Int) -> String {
        for (suffix, factor) in byteUnits where factor >= 1 << 10 && suffix.hasSuffix("iB") && n >= factor && n % factor == 0 {
            return "\(n / factor)\(suffix)"
        }
        return String(n)
    }

    static func showDuration(_ d: Duration) -> String {
        let ns = d.nanosecondsClamped
        if ns == 0 { return "0" }
        for (suffix, unit) in [("h", Int64(3_600_000_000_000)), ("m", 60_000_000_000), ("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000)]
        where ns % unit == 0 {
            return "\(ns / unit)\(suffix)"
        }
        return "\(ns)ns"
    }
}
