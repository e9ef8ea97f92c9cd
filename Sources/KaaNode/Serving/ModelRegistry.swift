import KaaSnapshot

/// The models a node serves: names, their versions and aliases, in memory (no SQLite on the
/// call path). A value type: catalog events change it, calls resolve through it.
struct ModelRegistry: Sendable {
    struct Known: Sendable {
        var versions: [Int] = []
    }

    private var models: [String: Known] = [:] {
        didSet { sortedNamesCache = nil }
    }
    /// Every model's aliases, cluster state: kept whether or not this node holds the model.
    private var aliases: [String: [String: Int]] = [:]
    /// ``sortedNames``, kept until `models` changes.
    private var sortedNamesCache: [String]?

    init(_ models: [String: Known] = [:], aliases: [String: [String: Int]] = [:]) {
        self.models = models
        self.aliases = aliases
    }

    /// Every ready snapshot and alias in `store` (one catalog read); off the loop.
    static func load(from store: SnapshotStore) throws -> ModelRegistry {
        var models: [String: Known] = [:]
        for record in try store.list() where record.state == .ready {
            models[record.id.name, default: Known()].versions.append(record.id.version)
        }
        for name in models.keys { models[name]!.versions.sort() }
        return ModelRegistry(models, aliases: try store.allAliases())
    }

    var versionCount: Int { models.values.reduce(0) { $0 + $1.versions.count } }

    func contains(_ name: String) -> Bool { models[name] != nil }
    func versions(of name: String) -> [Int] { models[name]?.versions ?? [] }

    /// Every model with its versions, by name.
    var all: [(name: String, versions: [Int])] {
        mutating get { sortedNames.map { ($0, models[$0]!.versions) } }
    }

    // MARK: catalog events

    mutating func stored(_ id: SnapshotID) {
        var known = models[id.name] ?? Known()
        if !known.versions.contains(id.version) {
            known.versions.append(id.version)
            known.versions.sort()
        }
        models[id.name] = known
    }

    mutating func removed(_ id: SnapshotID) {
        models[id.name]?.versions.removeAll { $0 == id.version }
        if models[id.name]?.versions.isEmpty == true { models[id.name] = nil }
    }

    mutating func aliasSet(name: String, alias: String, version: Int?) {
        aliases[name, default: [:]][alias] = version
        if aliases[name]?.isEmpty == true { aliases[name] = nil }
    }

    // MARK: resolution

    /// `name` alone resolves through `stable`, else the latest version; `version` is a version
    /// number or an alias.
    mutating func resolve(name: String, version: String?) throws(CallError) -> SnapshotID {
        guard let known = models[name], let latest = known.versions.last else {
            let names = sortedNames
            let sample = names.prefix(20).joined(separator: ", ") + (names.count > 20 ? ", ... (\(names.count) models)" : "")
            throw CallError(.notFound, "model `\(name)` does not exist; models: \(names.isEmpty ? "none" : sample)")
        }
        let named = aliases[name] ?? [:]
        let chosen: Int
        if let version {
            if let v = Int(version) {
                guard known.versions.contains(v) else {
                    throw CallError(.notFound, "model `\(name)` has no version \(v); versions: \(known.versions.map(String.init).joined(separator: ", "))")
                }
                chosen = v
            } else if let v = named[version] {
                chosen = v
            } else {
                throw CallError(.notFound, "model `\(name)` has no version or alias `\(version)`; versions: \(known.versions.map(String.init).joined(separator: ", ")); aliases: \(named.keys.sorted().joined(separator: ", "))")
            }
        } else {
            chosen = named["stable"] ?? latest
        }
        guard known.versions.contains(chosen) else {
            let alias = version ?? "stable"
            throw CallError(.notFound, "model `\(name)`: alias `\(alias)` is version \(chosen), which this node does not hold; versions here: \(known.versions.map(String.init).joined(separator: ", "))")
        }
        return SnapshotID(validName: name, version: chosen)
    }

    /// The names in order. Kept between calls: with 10,000 models, sorting them for every
    /// call naming an unknown model would hold the loop for milliseconds.
    private var sortedNames: [String] {
        mutating get {
            if let names = sortedNamesCache { return names }
            let names = models.keys.sorted()
            sortedNamesCache = names
            return names
        }
    }
}
