// swift-tools-version:6.1
import PackageDescription

/// Benchmarks, apart from the product's dependency graph (STYLE.md, "Benchmarks").
/// Run through tools/bench-engine.sh, which compares with onnxruntime in the same run.
let package = Package(
    name: "kaa-benchmarks",
    platforms: [.macOS(.v14)],
    dependencies: [.package(name: "kaa", path: "..")],
    targets: [
        .executableTarget(
            name: "kaa-bench",
            dependencies: [.product(name: "KaaEngine", package: "kaa")],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny"), .enableUpcomingFeature("InternalImportsByDefault")]),
    ]
)
