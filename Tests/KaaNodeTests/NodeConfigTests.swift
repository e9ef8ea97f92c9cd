import Foundation
import KaaCore
import KaaNode
import Testing

/// Settings are declared once (`NodeConfig.keys`); flags, environment, YAML, `--help` and the
/// sample config all come from or are checked against that declaration.
@Suite struct NodeConfigTests {
    /// A file of the repository, by its path from the root.
    static func repositoryFile(_ path: String) -> String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../" + path).standardized.path
    }

    /// The sample config, and the production one the .deb installs as /etc/kaa/node.yaml.
    @Test(arguments: ["cluster/node.yaml", "cluster/node-production.yaml"])
    func theSampleConfigsDocumentEveryKeyAndOnlyKnownOnes(file: String) throws {
        let text = try String(contentsOfFile: NodeConfigTests.repositoryFile(file), encoding: .utf8)
        // Keys set (`key: value`) or shown commented out (`# key: value`).
        var documented = Set<String>()
        for line in text.split(separator: "\n") {
            var l = line.trimmingCharacters(in: .whitespaces)
            if l.hasPrefix("# ") { l = String(l.dropFirst(2)) }
            guard let colon = l.firstIndex(of: ":") else { continue }
            let key = String(l[..<colon])
            if key.allSatisfy({ $0.isLowercase || $0 == "_" }) && !key.isEmpty { documented.insert(key) }
        }
        let known = Set(NodeConfig.keys.map(\.name))
        #expect(known.subtracting(documented).sorted() == [], "\(file) does not document these keys")
        #expect(documented.subtracting(known).sorted() == [], "\(file) names keys the node does not have")
    }

    @Test func flagsAreReadInBothFormsAndUnknownOnesAreNamed() throws {
        let values = try NodeConfig.flagValues(["--http-addr", "127.0.0.1:9", "--max-call-rows=10", "--zone="])
        #expect(values == ["http_addr": "127.0.0.1:9", "max_call_rows": "10", "zone": ""])
        let config = try NodeConfig.load(file: nil, environment: [:], flags: values)
        #expect(config.serving.callLimits.maxRows == 10)
        #expect(throws: ConfigError.self) { try NodeConfig.flagValues(["--max-call-rowz", "1"]) }
        #expect { try NodeConfig.flagValues(["--max-call-rowz", "1"]) } throws: {
            "\($0)".contains("unknown option --max-call-rowz; did you mean --max-call-rows")
        }
        #expect { try NodeConfig.flagValues(["--zone"]) } throws: { "\($0)".contains("--zone needs a value") }
        #expect { try NodeConfig.flagValues(["stray"]) } throws: { "\($0)".contains("unexpected argument `stray`") }
    }

    @Test(arguments: [
        ("memory_budget", "99999999999TiB", "memory_budget `99999999999TiB` is too large"),
        ("memory_budget", "-1GiB", "memory_budget `-1GiB` is not a size"),
        ("default_deadline", "9223372036854775807h", "default_deadline `9223372036854775807h` is longer than a year"),
        ("max_deadline", "0s", "max_deadline `0s` must be longer than zero"),
        ("max_call_rows", "0", "max_call_rows `0` must be a whole number of at least 1"),
        ("max_connections", "99999999999999999999", "max_connections `99999999999999999999` must be a whole number"),
    ])
    func outOfRangeValuesAreRefusedNotOverflowed(key: String, value: String, message: String) {
        #expect { _ = try NodeConfig.load(file: nil, environment: [:], flags: [key: value]) } throws: {
            "\($0)".contains(message)
        }
    }

    @Test func valuesRoundTripThroughTheirShownForm() throws {
        // What `--help` shows as a default reads back as the same value.
        let defaults = NodeConfig()
        var flags: [String: String] = [:]
        for key in NodeConfig.keys { if let v = key.value(in: defaults), !v.isEmpty { flags[key.name] = v } }
        let reread = try NodeConfig.load(file: nil, environment: [:], flags: flags)
        for key in NodeConfig.keys { #expect(key.value(in: reread) == key.value(in: defaults), "\(key.name)") }
        let config = try NodeConfig.load(file: nil, environment: [:],
                                         flags: ["inline_threshold": "250us", "memory_budget": "3MiB", "max_deadline": "90s"])
        #expect(config.serving.inlineThreshold == .microseconds(250))
        #expect(config.serving.memoryBudget == 3 << 20)
        #expect(NodeConfig.keys.first { $0.name == "max_deadline" }?.value(in: config) == "90s")
    }
}
