// swift-tools-version:6.1
import PackageDescription

/// Strict settings shared by every Swift target (STYLE.md, "Concurrency").
let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "kaa",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "kaa", targets: ["kaa"]),
        // For Benchmarks/ (a separate package) and for embedding the engine.
        .library(name: "KaaEngine", targets: ["KaaEngine"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
    ],
    targets: [
        // C libraries from Debian, as system-library targets. Only KaaIO imports CLibUV and
        // CHTTPParser; only KaaSnapshot imports CLZ4.
        .systemLibrary(name: "CLibUV", pkgConfig: "libuv", providers: [.apt(["libuv1-dev"])]),
        .systemLibrary(name: "CHTTPParser", providers: [.apt(["libhttp-parser-dev"])]),
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        // Only KaaEngine imports COpenBLAS (large matrix products).
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-serial-dev"])]),

        .target(name: "KaaCore", swiftSettings: strict),
        .target(
            name: "KaaEngine",
            dependencies: [
                "KaaCore",
                "COpenBLAS",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "kaa",
            dependencies: [
                "KaaCore",
                "KaaEngine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),

        .testTarget(name: "KaaCoreTests", dependencies: ["KaaCore"], swiftSettings: strict),
        .testTarget(
            name: "KaaEngineTests",
            dependencies: [
                "KaaEngine",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            exclude: ["Fixtures"],
            swiftSettings: strict),
    ]
)
