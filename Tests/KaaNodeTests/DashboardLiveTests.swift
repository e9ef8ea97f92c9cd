import Foundation
import Glibc
import KaaTestSupport
import Testing

/// The dashboard (`GET /ui`) in a real browser: headless Chromium (Debian's `chromium` and
/// `chromium-driver`, installed by tools/install-deps.sh) driven by selenium from .venv-test,
/// against real nodes on loopback. The browser's checks live in `tools/dashboard-check.py`.
@Suite(.serialized) struct DashboardLiveTests {
    static let chromium = ProcessInfo.processInfo.environment["KAA_CHROMIUM"] ?? "/usr/bin/chromium"
    static let chromedriver = ProcessInfo.processInfo.environment["KAA_CHROMEDRIVER"] ?? "/usr/bin/chromedriver"
    static var browserInstalled: Bool {
        FileManager.default.isExecutableFile(atPath: chromium) && FileManager.default.isExecutableFile(atPath: chromedriver)
    }
    static let skipped = Comment(rawValue: "headless Chromium is not installed (\(chromium), \(chromedriver)): tools/install-deps.sh installs Debian's chromium and chromium-driver, as tools/test.sh does before every run")
    static let script = ServingTests.repo + "/tools/dashboard-check.py"
    /// Where the screenshot of a run is kept (under .build, which git ignores).
    static let artifacts = ServingTests.repo + "/.build/test-artifacts"
    /// The samples, named as cluster/samples.sh names them.
    static let samples = ["diabetes-gbr", "digits-mlp", "iris-logreg", "news-text", "wine-forest"]

    /// Three nodes with the samples and one model only the third (the one with a GPU) may hold.
    /// The page shows the three alive, every sample with its holders and the calls sent; then
    /// the third is SIGKILLed and the page, never reloaded, shows it dead, the GPU model's calls
    /// as dead letters (their record opens from the page) and the under-replicated count.
    @Test(.enabled(if: browserInstalled, skipped))
    func theDashboardShowsTheClusterAndANodeDying() throws {
        try #require(FileManager.default.isExecutableFile(atPath: TritonClientTests.python),
                     "no \(TritonClientTests.python): run tools/python-env.sh test (tools/test.sh does) to install selenium")
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        var cluster = try LiveCluster(in: dir)
        for sample in DashboardLiveTests.samples {
            let built = try KaaProcess.run(["snapshot", "build", "--model", "\(ServingTests.repo)/snapshots/\(sample)/model.onnx",
                                            "--pipeline", "\(ServingTests.repo)/snapshots/\(sample)/pipeline.yaml", "--name", sample,
                                            "--version", "1", "--out", "\(cluster.snapshots)/\(sample).kaa"])
            try #require(built.0 == 0, "\(built.2)")
        }
        let built = try KaaProcess.run(["snapshot", "build", "--model", "\(ServingTests.repo)/snapshots/iris-logreg/model.onnx",
                                        "--name", "iris-gpu", "--version", "1", "--requires", "gpu", "--out", "\(cluster.snapshots)/iris-gpu.kaa"])
        try #require(built.0 == 0, "\(built.2)")
        try cluster.start(["n1", "n2", "n3"], more: ["n1": ["--gpus", "0", "--zone", "a"], "n2": ["--gpus", "0", "--zone", "b"], "n3": ["--gpus", "1", "--zone", "c"]])
        defer { cluster.stop() }
        try cluster.publish()
        try #require(cluster.whenEveryNode { c in
            DashboardLiveTests.samples.allSatisfy { LiveCluster.onItsHolders(c["\($0)@1"]) } && c["iris-gpu@1"]?.ready == ["n3"]
        }, "the samples never reached two ready copies each: \(String(describing: try? cluster.table()))")

        let alias = try KaaProcess.run(["alias", "set", "iris-logreg", "stable", "1", "--to", "http://127.0.0.1:\(cluster.nodes[1].http)"])
        try #require(alias.0 == 0, "\(alias.2)")

        let n3 = cluster.nodes[2]
        let screenshot = DashboardLiveTests.artifacts + "/dashboard.png"
        try? FileManager.default.removeItem(atPath: screenshot)
        let started = Date()
        let (status, output) = try DashboardLiveTests.runCheck([
            "--mode", "cluster", "--port", "\(cluster.nodes[0].http)",
            "--nodes", cluster.nodes.map { "\($0.name)=\($0.http)" }.joined(separator: ","),
            "--models", (DashboardLiveTests.samples + ["iris-gpu"]).joined(separator: ","),
            "--traffic", (DashboardLiveTests.samples + ["iris-gpu"]).joined(separator: ","),
            "--alias", "iris-logreg:stable:1", "--kill", "\(n3.name):\(n3.process.pid)", "--dead-model", "iris-gpu", "--screenshot", screenshot,
        ], log: dir.path + "/dashboard-check.log")
        print("tools/dashboard-check.py --mode cluster (\(String(format: "%.1f", Date().timeIntervalSince(started))) s):\n\(output)")
        print("dashboard screenshot: \(screenshot)")
        #expect(status == 0, "dashboard-check.py exited \(status):\n\(output)\nn1:\n\(cluster.nodes[0].process.stderr.suffix(3000))")
        for check in ["members_alive", "models_with_holders", "rates_drawn", "alias_shown", "killed_node_dead", "dead_letter_listed", "dead_letter_record", "screenshot"] {
            #expect(output.contains("ok    \(check)"), "\(check) did not pass:\n\(output)")
        }
        #expect(FileManager.default.fileExists(atPath: screenshot))
    }

    /// A node with a tokens file: the page asks for a token, works with one typed in, and takes
    /// one from `/ui#token=...`; the routes it reads refuse calls without one.
    @Test(.enabled(if: browserInstalled, skipped))
    func theDashboardWorksWithAToken() throws {
        try #require(FileManager.default.isExecutableFile(atPath: TritonClientTests.python),
                     "no \(TritonClientTests.python): run tools/python-env.sh test (tools/test.sh does) to install selenium")
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let tokens = dir.path + "/tokens"
        let made = try KaaProcess.run(["tokens", "create", "--scope", "read", "--out", dir.path + "/read.token", "--append-to", tokens])
        try #require(made.0 == 0, "\(made.2)")
        let token = try String(contentsOfFile: dir.path + "/read.token", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let (node, port) = try NodeProcessTests.startNode(dir, extra: ["--tokens-file", tokens, "--node-name", "solo"])
        defer { node.signal(SIGTERM); node.wait() }
        let (status, output) = try DashboardLiveTests.runCheck(["--mode", "token", "--port", "\(port)", "--token", token, "--node", "solo"],
                                                               log: dir.path + "/dashboard-check.log")
        print("tools/dashboard-check.py --mode token:\n\(output)")
        #expect(status == 0, "dashboard-check.py exited \(status):\n\(output)\nnode:\n\(node.stderr.suffix(3000))")
        for check in ["asks_for_token", "token_typed_in", "token_from_fragment"] {
            #expect(output.contains("ok    \(check)"), "\(check) did not pass:\n\(output)")
        }
    }

    /// Runs the check script to completion (killed by pid after `timeout` seconds); output goes
    /// through a file, so a chatty script can never block on a full pipe.
    static func runCheck(_ arguments: [String], log: String, timeout: Double = 600) throws -> (Int32, String) {
        guard FileManager.default.createFile(atPath: log, contents: nil) else { throw RawSocketError("cannot create \(log)") }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        defer { try? handle.close() }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: TritonClientTests.python)
        process.arguments = [script] + arguments
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(100_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        return (process.terminationReason == .uncaughtSignal ? -1 : process.terminationStatus, output)
    }
}
