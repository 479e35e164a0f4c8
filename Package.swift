// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "uvproxyd",
    products: [
        .executable(name: "uvproxyd", targets: ["uvproxyd"]),
        .library(name: "UVProxy", targets: ["UVProxy", "UVProxyWaker"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.0"),
        // The config file (YAML) and UVPROXYD_* variables; package traits need tools 6.1.
        .package(url: "https://github.com/apple/swift-configuration", from: "1.4.0", traits: ["YAML"]),
        // swift-configuration parses with Yams; used directly to list the file's keys (unknown ones are errors).
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
    ],
    targets: [
        // libuv (found with pkg-config), http_parser (Debian ships no .pc; the module map links it)
        // and OpenSSL's libcrypto (SHA-1 and base64 for the WebSocket handshake; linked by the module map).
        .systemLibrary(
            name: "CUV",
            pkgConfig: "libuv",
            providers: [.apt(["libuv1-dev", "libhttp-parser-dev", "libssl-dev"])]
        ),
        .target(
            name: "UVProxy",
            dependencies: [
                "CUV",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            // The web client (Sources/UVProxy/Web/WebAssets.swift): compiled into the binary as
            // `PackageResources.index_html`, `.client_js` and `.client_css` ([UInt8]), no bundle;
            // and the API's OpenAPI document, `.openapi_yaml` (Web/openapi.yaml is a symlink to
            // docs/openapi.yaml, where client authors look for it).
            resources: [
                .embedInCode("Web/index.html"),
                .embedInCode("Web/client.js"),
                .embedInCode("Web/client.css"),
                .embedInCode("Web/openapi.yaml"),
            ],
            swiftSettings: [
                // UVProxy runs on one thread by design (one libuv loop; the only entry from
                // elsewhere is UVProxyWaker's LoopWaker, built without these flags, and used by
                // tests only). So, in release builds:
                // no dynamic exclusivity checks, and non-atomic reference counting, which
                // together take ~10% off the CPU a poll costs (docs/BENCHMARKS.md).
                .unsafeFlags(["-enforce-exclusivity=unchecked", "-Xfrontend", "-assume-single-threaded"],
                             .when(configuration: .release)),
            ]
        ),
        // LoopWaker: wakes the loop from other threads, so its reference counting must be
        // atomic: kept out of UVProxy, which is built -assume-single-threaded (docs/DESIGN.md).
        .target(
            name: "UVProxyWaker",
            dependencies: ["UVProxy", "CUV"]
        ),
        // Reads flags, UVPROXYD_* and the config file into a ProxyConfig. Separate from UVProxy,
        // which is built for one thread (-assume-single-threaded); this runs synchronously on the
        // loop thread at start-up and on SIGHUP, and starts no threads or tasks.
        .target(
            name: "UVProxyConfig",
            dependencies: [
                "UVProxy",
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        .executableTarget(
            name: "uvproxyd",
            dependencies: [
                "UVProxy",
                "UVProxyConfig",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "UVProxyTests",
            dependencies: ["UVProxy", "UVProxyWaker", "UVProxyConfig", "CUV"]
        ),
    ]
)

// Fuzz targets (Fuzz/, docs/RELIABILITY.md): built only by scripts/fuzz, which sets UVPROXYD_FUZZ=1
// and passes -sanitize=fuzzer (they need libFuzzer's runtime to link); a plain `swift build`
// never sees them.
if Context.environment["UVPROXYD_FUZZ"] == "1" {
    package.targets += [
        .target(name: "FuzzSupport", dependencies: ["UVProxy"], path: "Fuzz/Sources/FuzzSupport"),
    ] + ["FuzzHTTP", "FuzzTelnet", "FuzzParameters", "FuzzText", "FuzzProxyProtocol", "FuzzWebSocket"].map { name in
        .executableTarget(name: name, dependencies: ["UVProxy", "FuzzSupport", "CUV"], path: "Fuzz/Sources/\(name)")
    }
}
