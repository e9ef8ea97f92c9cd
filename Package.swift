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
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        // C libraries from Debian, as system-library targets. Only KaaIO imports CLibUV and
        // CHTTPParser; only KaaSnapshot imports CLZ4. SQLite comes through GRDB's own
        // system-library target (GRDBSQLite, libsqlite3-dev).
        .systemLibrary(name: "CLibUV", pkgConfig: "libuv", providers: [.apt(["libuv1-dev"])]),
        .systemLibrary(name: "CHTTPParser", providers: [.apt(["libhttp-parser-dev"])]),
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        // Only KaaEngine imports COpenBLAS (large matrix products).
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-serial-dev"])]),
        // Kaa's own float kernels in C: one source compiled for the baseline CPU and, through a
        // function target attribute, for AVX2+FMA, picked at run time. Only KaaEngine imports it.
        .target(name: "CKaaKernels"),

        .target(name: "KaaCore", swiftSettings: strict),
        .target(
            name: "KaaSnapshot",
            dependencies: [
                "KaaCore",
                "CLZ4",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .target(
            name: "KaaEngine",
            dependencies: [
                "KaaCore",
                "COpenBLAS",
                "CKaaKernels",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                // Pipeline specs (YAML).
                .product(name: "Yams", package: "Yams"),
            ],
            // Optimized in debug builds too: the tests check that a run allocates nothing,
            // which holds for optimized code only (unoptimized generic code boxes values).
            // A workspace is used by one run at a time, on one thread; in release builds the
            // dynamic exclusivity checks on its arrays cost more than the arithmetic of a small model.
            swiftSettings: strict + [
                .unsafeFlags(["-O"], .when(configuration: .debug)),
                .unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release)),
            ]),
        // Comparing two snapshots' predictions on the same rows, and the quality gate that runs
        // that comparison on alias moves: shared by the CLI and the node.
        .target(
            name: "KaaQuality",
            dependencies: ["KaaCore", "KaaEngine", "KaaSnapshot"],
            swiftSettings: strict),
        .target(
            name: "KaaCluster",
            dependencies: [
                "KaaCore",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strict),
        .target(
            name: "KaaClusterSimulation",
            dependencies: ["KaaCluster", "KaaCore"],
            swiftSettings: strict),
        .executableTarget(
            name: "kaa-cluster-sim",
            dependencies: ["KaaClusterSimulation", "KaaCluster", "KaaCore"],
            swiftSettings: strict),
        .target(
            name: "KaaIO",
            dependencies: [
                "KaaCore", "CLibUV", "CHTTPParser",
                .product(name: "Logging", package: "swift-log"),
                // The peer plane's handshake and record protection (HKDF, HMAC, AES-GCM).
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            // Loop-confined state is never accessed from two threads; dynamic exclusivity
            // checks cost ~3% of a small request in release builds.
            swiftSettings: strict + [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]),
        .target(
            name: "KaaNode",
            dependencies: [
                "KaaCore", "KaaIO", "KaaSnapshot", "KaaCluster", "KaaEngine", "KaaQuality",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "kaa",
            dependencies: [
                "KaaCore", "KaaIO", "KaaNode", "KaaSnapshot", "KaaCluster", "KaaEngine", "KaaQuality",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),

        // Test support: raw sockets, process control. Never linked into the product.
        .target(name: "KaaTestSupport", dependencies: ["KaaCore", "KaaIO"], swiftSettings: strict),
        // Counts the calling thread's heap allocations by interposing glibc's malloc family,
        // for the tests that check a path allocates nothing. Never linked into the product.
        .target(name: "KaaAllocationCounter"),

        .testTarget(name: "KaaCoreTests", dependencies: ["KaaCore"], swiftSettings: strict),
        .testTarget(
            name: "KaaEngineTests",
            dependencies: [
                "KaaEngine",
                "CKaaKernels",
                "KaaAllocationCounter",
                "KaaTestSupport",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            exclude: ["Fixtures"],
            swiftSettings: strict),
        .testTarget(
            name: "KaaClusterTests", dependencies: ["KaaCluster", "KaaClusterSimulation", "KaaCore"],
            swiftSettings: strict),
        .testTarget(
            name: "KaaSnapshotTests",
            dependencies: [
                "KaaSnapshot",
                "KaaEngine", // BatchCLITests compare `kaa batch` with the engine row by row
                "KaaQuality", // CompareTests check the comparison's metrics by hand
                "KaaCore",
                "KaaTestSupport",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .testTarget(
            name: "KaaIOTests",
            dependencies: ["KaaIO", "KaaTestSupport"],
            swiftSettings: strict),
        .testTarget(
            name: "KaaNodeTests",
            dependencies: [
                "KaaNode", "KaaIO", "KaaSnapshot", "KaaEngine", "KaaCluster", "KaaTestSupport",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strict),
    ]
)
