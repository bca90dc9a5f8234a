// swift-tools-version: 6.2
// A participant written as a team outside this repository would write it: it depends on the saga engine's
// library products only, here by path (an outside team writes `.package(url: "…", from: "…")` instead).
import Foundation
import PackageDescription

// A path dependency's identity is its directory's name (`main`, `saga`, whatever the checkout is called), and
// `.product(name:package:)` names it by that identity.
let engineDirectory = URL(fileURLWithPath: Context.packageDirectory).appendingPathComponent("../..").standardized
let engine = engineDirectory.lastPathComponent

let strict: [SwiftSetting] = [.treatAllWarnings(as: .error)]

let package = Package(
    name: "Shipping",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "shipping", targets: ["shipping"]),
        .library(name: "Shipping", targets: ["Shipping"]),
    ],
    dependencies: [
        .package(path: engineDirectory.path),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        // The participant: its event, its table, its handler, its part of the saga, its schemas.
        .target(
            name: "Shipping",
            dependencies: [.product(name: "SagaEngine", package: engine)],
            swiftSettings: strict),
        // Its daemon: a few lines over the daemon kit.
        .executableTarget(
            name: "shipping",
            dependencies: ["Shipping", .product(name: "SagaDaemon", package: engine)],
            swiftSettings: strict),
        // The rest of the choreography (orders, inventory, billing) runs in-process beside it, on a mock
        // Kafka cluster and the local PostgreSQL.
        .testTarget(
            name: "ShippingTests",
            dependencies: [
                "Shipping",
                .product(name: "SagaEngine", package: engine),
                .product(name: "SagaDaemon", package: engine),
                .product(name: "SagaOperations", package: engine),
                .product(name: "SagaServices", package: engine),
                .product(name: "SagaKafka", package: engine),
                .product(name: "SagaTestSupport", package: engine),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
    ]
)
