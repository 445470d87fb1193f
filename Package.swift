// swift-tools-version:6.0
import PackageDescription

// Kernels are compiled for x86-64-v3 (Haswell: AVX2, FMA, F16C), a level every
// server CPU of the last ten years has. Never `-march=native` for a shipped binary.
let kernelSwiftFlags: [SwiftSetting] = [.unsafeFlags(["-target-cpu", "haswell", "-Ounchecked"])]
let kernelCFlags: [CSetting] = [.unsafeFlags(["-O3", "-mavx2", "-mfma", "-mf16c", "-fno-math-errno"])]

let package = Package(
    name: "Kvant",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "kvantd", targets: ["kvantd"]),
        .executable(name: "kvantctl", targets: ["kvantctl"]),
        .executable(name: "kvant-eval", targets: ["kvant-eval"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.4.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.0.0"),
    ],
    targets: [
        // Shared vocabulary: KVCacheDType, errors with stable reasons.
        .target(name: "KvantCore"),
        // CPU math in C where intrinsics matter (quantized dot products, int8 attention).
        .target(name: "CKernels", cSettings: kernelCFlags),
        .target(name: "Kernels", dependencies: ["KvantCore", "CKernels"], swiftSettings: kernelSwiftFlags),
        .target(name: "ModelFormats", dependencies: ["KvantCore"]),
        .target(name: "Tokenizers", dependencies: ["KvantCore", "ModelFormats"]),
        .target(name: "KVCache", dependencies: ["KvantCore", "CKernels"], swiftSettings: kernelSwiftFlags),
        .target(name: "Executor",
                dependencies: ["KvantCore", "Kernels", "CKernels", "ModelFormats", "Tokenizers", "KVCache"],
                swiftSettings: kernelSwiftFlags),
        // Chat templates: a Jinja2 subset rendering as transformers' apply_chat_template does.
        .target(name: "ChatTemplates"),
        // Wire types only: the client links this and never the engine.
        .target(name: "ControlProtocol", dependencies: ["KvantCore"]),
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd",
                       providers: [.apt(["libsystemd-dev"])]),
        // The daemon: engine, control server, systemd, configuration, and the backend protocols. It never
        // sees executor types: the adapter lives in KvantExecutorBackend (the compiler keeps the boundary).
        .target(name: "KvantDaemon", dependencies: [
            "KvantCore", "ControlProtocol", "CSystemd",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "TOMLKit", package: "TOMLKit"),
            .product(name: "CoreMetrics", package: "swift-metrics"),
        ]),
        // The OpenAI-compatible HTTP API (data plane) and /metrics, on Hummingbird.
        .target(name: "KvantHTTP", dependencies: [
            "KvantDaemon", "ControlProtocol", "KvantCore", "ChatTemplates",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "HummingbirdCore", package: "hummingbird"),
            .product(name: "HTTPTypes", package: "swift-http-types"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "CoreMetrics", package: "swift-metrics"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The InferenceBackend over Executor/KVCache/Tokenizers/ModelFormats.
        .target(name: "KvantExecutorBackend", dependencies: [
            "KvantDaemon", "KvantCore", "ControlProtocol", "Executor", "KVCache", "Tokenizers", "ModelFormats",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "kvantd", dependencies: [
            "KvantDaemon", "KvantExecutorBackend", "KvantHTTP", "KvantCore",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "kvantctl", dependencies: [
            "ControlProtocol", "KvantCore",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // Offline evaluation: perplexity, top-1 agreement, speed (used by `make bench*`).
        .executableTarget(name: "kvant-eval", dependencies: [
            "KvantCore", "ModelFormats", "Tokenizers", "KVCache", "Executor",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: kernelSwiftFlags),

        // libFuzzer harnesses for the parsers of untrusted input (`make fuzz`: built with -sanitize=fuzzer,address
        // and -DKVANT_LIBFUZZER into .build-fuzz; a normal build gives a replay tool: kvant-fuzz NAME FILE...).
        .executableTarget(name: "kvant-fuzz", dependencies: [
            "ControlProtocol", "KVCache", "ModelFormats", "Tokenizers", "KvantCore", "KvantHTTP", "ChatTemplates",
        ]),
        // Shared by the test targets only: seeded RNG, real-model locator, offPool, TestDaemon, FakeBackend, log capture.
        .target(name: "KvantTestSupport", dependencies: [
            "KvantDaemon", "ControlProtocol", "KvantCore",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ], path: "Tests/KvantTestSupport"),
        .testTarget(name: "KvantCoreTests", dependencies: ["KvantCore"]),
        .testTarget(name: "KernelsTests", dependencies: ["Kernels", "CKernels", "KvantCore", "KvantTestSupport"], exclude: ["Fixtures"]),
        .testTarget(name: "ModelFormatsTests", dependencies: ["ModelFormats", "Kernels", "KvantCore", "KvantTestSupport"], exclude: ["Fixtures"]),
        .testTarget(name: "TokenizersTests", dependencies: ["Tokenizers", "ModelFormats", "KvantTestSupport"], exclude: ["Fixtures"]),
        .testTarget(name: "KVCacheTests", dependencies: ["KVCache", "Kernels", "KvantCore", "KvantTestSupport"]),
        .testTarget(name: "ExecutorTests", dependencies: ["Executor", "KVCache", "ModelFormats", "Tokenizers", "KvantCore", "KvantTestSupport"], exclude: ["Fixtures"]),
        .testTarget(name: "ControlProtocolTests", dependencies: ["ControlProtocol", "KvantCore"]),
        .testTarget(name: "ChatTemplatesTests", dependencies: ["ChatTemplates"], exclude: ["Fixtures"]),
        .testTarget(name: "KvantDaemonTests", dependencies: [
            "KvantDaemon", "ControlProtocol", "KvantCore", "KvantTestSupport",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        .testTarget(name: "KvantExecutorBackendTests", dependencies: [
            "KvantExecutorBackend", "KvantDaemon", "ControlProtocol", "KvantCore", "KvantTestSupport",
        ]),
        .testTarget(name: "KvantHTTPTests", dependencies: [
            "KvantHTTP", "ChatTemplates", "KvantDaemon", "ControlProtocol", "KvantCore", "KvantTestSupport",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
    ],
    swiftLanguageModes: [.v5]
)
