import Foundation
import Glibc
import KaaSnapshot
import KaaTestSupport
import Testing

/// Real `kaa node` processes on loopback for the live tests: a cluster key and a directory of
/// snapshots to publish in the test's directory, nodes that all see each other alive, stopped
/// by the test by pid (`stop()`, in a `defer`).
struct LiveCluster {
    let dir: TemporaryDirectory
    let key: String
    /// Where the test puts the archives `publish()` sends.
    let snapshots: String
    private(set) var nodes: [GossipLiveTests.Running] = []

    /// Replication 2, and a long repair grace: a killed holder stays in the table, so what
    /// names the holders names it (as down).
    static let flags = ["--replication", "2", "--repair-grace", "120s", "--placement-settle", "3s", "--leave-timeout", "0s"]

    init(in dir: TemporaryDirectory) throws {
        self.dir = dir
        key = dir.path + "/cluster.key"
        snapshots = dir.path + "/snapshots"
        #expect(try KaaProcess.run(["keys", "cluster", "--out", key]).0 == 0)
        try FileManager.default.createDirectory(atPath: snapshots, withIntermediateDirectories: true)
    }

    /// Builds `name@version` of sample `sample`'s model into ``snapshots``, in this process.
    func build(_ sample: String, as name: String, version: Int = 1, createdAt: Double = 0, file: String? = nil) throws {
        _ = try SnapshotBuilder.build(SnapshotBuildRequest(modelPath: ServingTests.repo + "/snapshots/\(sample)/model.onnx", name: name,
                                                           version: version, createdAt: Date(timeIntervalSince1970: createdAt)),
                                      to: "\(snapshots)/\(file ?? name).kaa")
    }

    /// Starts `names` (the first is the seed of the others) with `flags` and each one's own
    /// `more`, and waits until every node sees every one alive.
    mutating func start(_ names: [String], flags: [String] = LiveCluster.flags, more: [String: [String]] = [:]) throws {
        for name in names {
            nodes.append(try GossipLiveTests.start(name, in: dir, seeds: nodes.first.map { [$0.peer] } ?? [], keyFile: key,
                                                   extra: flags + (more[name] ?? []), logLevel: "info"))
        }
        let all = nodes
        #expect(GossipLiveTests.within(30) { all.allSatisfy { GossipLiveTests.view($0.http).values.filter { $0.0 == "alive" }.count == all.count } } != nil)
    }

    /// SIGTERM to every node, then waits for each.
    func stop() {
        for n in nodes { n.process.signal(SIGTERM) }
        for n in nodes { n.process.wait(timeout: 60) }
    }

    /// `kaa publish` of every archive in ``snapshots`` to `node` (the first by default).
    func publish(to node: GossipLiveTests.Running? = nil) throws {
        let published = try KaaProcess.run(["publish", snapshots, "--to", "http://127.0.0.1:\((node ?? nodes[0]).http)", "--timeout", "60"],
                                           timeout: 300)
        try #require(published.0 == 0, "\(published.1)\(published.2)")
    }

    /// Whether a snapshot's copies are exactly on its two table holders, all ready: a publish
    /// streams to the holders the ring names, and where a load cap makes the table name another
    /// node, the copies move there after the publish has answered.
    static func onItsHolders(_ copies: (holders: [String], ready: Set<String>)?) -> Bool {
        guard let copies else { return false }
        return copies.holders.count == 2 && Set(copies.holders) == copies.ready
    }

    /// Waits up to 60 s until `condition` holds of every node's view of the copies.
    func whenEveryNode(_ condition: @escaping ([String: (holders: [String], ready: Set<String>)]) -> Bool) -> Bool {
        let all = nodes
        return GossipLiveTests.within(60) {
            all.allSatisfy { n in ReplicationLiveTests.placement(n.http).map { condition(ReplicationLiveTests.copies($0)) } ?? false }
        } != nil
    }

    /// Whether process `pid` is stopped (state `T` in `/proc/PID/stat`).
    static func isStopped(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        return stat[stat.index(after: close)...].split(separator: " ").first == "T"
    }

    /// The first node's table: each snapshot's holders and ready copies.
    func table() throws -> [String: (holders: [String], ready: Set<String>)] {
        ReplicationLiveTests.copies(try #require(ReplicationLiveTests.placement(nodes[0].http)))
    }
}
