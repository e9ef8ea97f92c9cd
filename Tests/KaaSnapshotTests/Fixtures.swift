import Foundation
@testable import KaaSnapshot
import Testing
import KaaTestSupport


/// A temporary directory removed when the value is deinitialised.
final class TempDir {
    let path: String

    init() throws {
        path = NSTemporaryDirectory() + "kaa-snapshot-tests-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    func file(_ name: String) -> String { path + "/" + name }

    @discardableResult
    func write(_ name: String, _ bytes: [UInt8]) throws -> String {
        let p = file(name)
        try Data(bytes).write(to: URL(fileURLWithPath: p))
        return p
    }

    func read(_ name: String) throws -> [UInt8] { Array(try Data(contentsOf: URL(fileURLWithPath: file(name)))) }
}

/// Builds a small snapshot in `dir` and returns its path and the build result.
@discardableResult
func buildSample(
    in dir: TempDir, name: String = "iris", version: Int = 1, out: String = "iris.kaa",
    key: PublisherPrivateKey? = nil, seed: UInt8 = 1, extras: [(String, [UInt8])] = []
) throws -> (path: String, built: VerifiedArchive) {
    let model = try dir.write("model-\(seed).onnx", ONNXFixture.small(seed: seed))
    var extraFiles: [(source: String, entry: String)] = []
    for (entry, bytes) in extras {
        extraFiles.append((try dir.write("extra-" + entry.replacingOccurrences(of: "/", with: "_"), bytes), entry))
    }
    let request = SnapshotBuildRequest(
        modelPath: model, name: name, version: version, pipeline: "steps: []\n", extraFiles: extraFiles,
        labels: ["team": "search"], createdAt: Date(timeIntervalSince1970: 1_790_000_000),
        lineage: .init(parentVersion: nil, trainingData: "s3://data/iris.csv"), signingKey: key)
    let path = dir.file(out)
    let built = try SnapshotBuilder.build(request, to: path)
    return (path, built)
}

/// Decompresses a `.kaa` with the system `lz4` tool.
func lz4Decompress(_ path: String, to out: String) throws -> Int32 {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/lz4")
    p.arguments = ["-d", "-f", "-q", path, out]
    try p.run()
    p.waitUntilExit()
    return p.terminationStatus
}
