// swift-tools-version: 6.2
import PackageDescription

let strict: [SwiftSetting] = [.treatAllWarnings(as: .error)]

let package = Package(
    name: "saga",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "SagaKafka", targets: ["SagaKafka"]),
        .library(name: "SagaPostgres", targets: ["SagaPostgres"]),
        .library(name: "JSONSchema", targets: ["JSONSchema"]),
        .library(name: "SagaEngine", targets: ["SagaEngine"]),
        .library(name: "SagaOperations", targets: ["SagaOperations"]),
        .library(name: "SagaDaemon", targets: ["SagaDaemon"]),
        .library(name: "SagaServices", targets: ["SagaServices"]),
        .library(name: "SagaTestSupport", targets: ["SagaTestSupport"]),
        .executable(name: "saga", targets: ["saga"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.7.3"),
        // OTLP over HTTP only: the gRPC exporter would pull in grpc-swift for nothing.
        .package(url: "https://github.com/swift-otel/swift-otel", from: "1.6.0", traits: ["OTLPHTTP"]),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        // `swift package generate-documentation` (scripts/docs): the DocC catalogues of the library products.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // C libraries, found by pkg-config (Debian: librdkafka-dev, libpq-dev). Nothing vendored.
        .systemLibrary(
            name: "CRdKafka", pkgConfig: "rdkafka",
            providers: [.apt(["librdkafka-dev"])]),
        .systemLibrary(
            name: "CLibPQ", pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"])]),

        // Thin, safe Swift over the C libraries. They know nothing of sagas.
        .target(
            name: "SagaKafka",
            dependencies: ["CRdKafka", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict),
        .target(
            name: "SagaPostgres",
            dependencies: ["CLibPQ", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict),

        // A JSON Schema (2020-12 subset) validator, and the saga's schemas compiled in from schemas/.
        .target(name: "JSONSchema", swiftSettings: strict),
        .target(name: "SagaSchemas", dependencies: ["JSONSchema"], swiftSettings: strict),

        // The runtime: envelope, codec, schemas, outbox, inbox, worker, relay, participant definition.
        .target(
            name: "SagaEngine",
            dependencies: [
                "SagaKafka", "SagaPostgres", "JSONSchema", "SagaSchemas",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict),

        // The operator tools over the runtime: the saga tracker and its read model, the inspector, the replayer.
        .target(
            name: "SagaOperations",
            dependencies: [
                "SagaEngine", "SagaKafka", "SagaPostgres", "JSONSchema",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict),

        // The daemon kit: configuration from the environment, logging, metrics, tracing, health and the ops
        // server, graceful lifecycle, and ParticipantDaemon (a participant's main in one call).
        .target(
            name: "SagaDaemon",
            dependencies: [
                "SagaEngine", "SagaKafka",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "OTel", package: "swift-otel"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ],
            swiftSettings: strict),

        // Domain logic only: orders, inventory, billing.
        .target(
            name: "SagaServices",
            dependencies: [
                "SagaEngine", "SagaSchemas",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: strict),

        // The one executable.
        .executableTarget(
            name: "saga",
            dependencies: [
                "SagaServices", "SagaEngine", "SagaOperations", "SagaDaemon", "SagaKafka", "SagaPostgres",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
            ],
            swiftSettings: strict),

        // Helpers shared by the test targets: the local database and broker.
        .target(
            name: "SagaTestSupport",
            dependencies: ["SagaKafka", "SagaPostgres"],
            swiftSettings: strict),

        .testTarget(name: "JSONSchemaTests", dependencies: ["JSONSchema"], swiftSettings: strict),
        .testTarget(name: "SagaSchemasTests", dependencies: ["SagaSchemas", "JSONSchema"], swiftSettings: strict),
        .testTarget(
            name: "SagaKafkaTests", dependencies: ["SagaKafka", "SagaTestSupport"],
            swiftSettings: strict),
        .testTarget(
            name: "SagaPostgresTests", dependencies: ["SagaPostgres", "SagaTestSupport"],
            swiftSettings: strict),
        .testTarget(
            name: "SagaEngineTests", dependencies: ["SagaEngine", "SagaTestSupport"],
            swiftSettings: strict),
        // The executable's own logic (e.g. the benchmark's tally), through @testable import.
        .testTarget(
            name: "sagaTests",
            dependencies: [
                "saga", "SagaServices", "SagaEngine", "SagaOperations", "SagaDaemon", "SagaKafka", "SagaTestSupport",
                "SagaSchemas",
                .product(name: "Yams", package: "Yams"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
            ],
            swiftSettings: strict),
        .testTarget(
            name: "SagaDaemonTests",
            dependencies: [
                "SagaDaemon", "SagaServices", "SagaKafka", "SagaTestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict),
        .testTarget(
            name: "SagaServicesTests",
            dependencies: [
                "SagaServices", "SagaEngine", "SagaOperations", "SagaTestSupport",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: strict),
    ]
)
