import Foundation
import Hummingbird
import Logging
import Metrics
import Prometheus
import SagaEngine
import ServiceLifecycle

/// Health and Prometheus metrics over HTTP for every daemon (`GET /health`, `GET /metrics`) on
/// SAGA_HTTP_HOST:SAGA_OPS_PORT. It is auxiliary: when its port cannot be bound, it logs an error and the
/// daemon keeps running.
struct OpsServer: Service {
    /// A named readiness check: nil when healthy, else what is wrong.
    struct Check: Sendable {
        var name: String
        var run: @Sendable () async -> String?
    }

    static let registry = PrometheusCollectorRegistry()

    /// Routes swift-metrics to the Prometheus registry; once per process, before any metric is created.
    static func bootstrapMetrics() {
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
    }

    let host: String
    let port: Int
    let checks: [Check]
    let logger: Logger

    /// A check that the database behind `database` answers.
    static func database(_ name: String, _ database: ServiceDatabase, logger: Logger) -> Check {
        Check(name: "database:\(name)") {
            do {
                var configuration = database.configuration
                configuration.connectTimeoutSeconds = 2
                let connection = try await PostgresConnection.connect(configuration, logger: logger)
                defer { Task { await connection.close() } }
                try await connection.query("SELECT 1")
                return nil
            } catch {
                return "\(error)"
            }
        }
    }

    func run() async throws {
        let router = Router()
        let checks = self.checks
        router.get("/health") { _, _ -> Response in
            var results: [String: JSONValue] = [:]
            var healthy = true
            for check in checks {
                let problem = await check.run()
                healthy = healthy && problem == nil
                results[check.name] = .string(problem ?? "ok")
            }
            let body = JSONValue.object(["status": .string(healthy ? "ok" : "unavailable"), "checks": .object(results)])
            return Response(
                status: healthy ? .ok : .serviceUnavailable, headers: [.contentType: "application/json"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: body.serialized())))
        }
        router.get("/metrics") { _, _ -> Response in
            Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: Self.registry.emitToBuffer())))
        }
        let app = Application(
            router: router, configuration: .init(address: .hostname(host, port: port), serverName: "saga-ops"),
            onServerRunning: { [logger] channel in
                logger.info(
                    "health and metrics", metadata: ["address": "\(host):\(channel.localAddress?.port ?? port)"])
            },
            logger: logger)
        do {
            try await app.run()
        } catch {
            logger.error(
                "health and metrics server not started (set SAGA_OPS_PORT to a free port)",
                metadata: ["address": "\(host):\(port)", "error": "\(error)"])
            try? await gracefulShutdown()
        }
    }
}
