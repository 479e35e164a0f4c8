// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "uvproxyd",
    products: [
        .executable(name: "uvproxyd", targets: ["uvproxyd"]),
        .library(name: "UVProxy", targets: ["UVProxy"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        // libuv (found with pkg-config) and http_parser (Debian ships no .pc; the module map links it).
        .systemLibrary(
            name: "CUV",
            pkgConfig: "libuv",
            providers: [.apt(["libuv1-dev", "libhttp-parser-dev"])]
        ),
        .target(
            name: "UVProxy",
            dependencies: [
                "CUV",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: [
                // One thread, and every access to shared state is on it: the dynamic
                // exclusivity checks cost ~3% of a poll (docs/BENCHMARKS.md) and guard nothing.
                .unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release)),
            ]
        ),
        .executableTarget(
            name: "uvproxyd",
            dependencies: [
                "UVProxy",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "UVProxyTests",
            dependencies: ["UVProxy", "CUV"]
        ),
    ]
)
