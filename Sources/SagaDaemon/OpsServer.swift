import Foundation
import Hummingbird
import Logging
import Metrics
import Prometheus
import SagaEngine
import ServiceLifecycle

/// Health and Prometheus metrics over HTTP for every daemon, on SAGA_HTTP_HOST:SAGA_OPS_PORT:
/// - `GET /health/live`: 200 while the process serves requests;
/// - `GET /health/ready` (and `/health`): 200 while every dependency answers, else 503; the JSON body names
///   each check (`database:<service>`, `kafka`) with "ok" or what is wrong;
/// - `GET /metrics`: Prometheus text format;
/// - `POST /participants/{name}/pause` and `POST /participants/{name}/resume`: pause (`Worker.pause(waitingAtMost:)`)
///   or resume the worker of participant `name` running in this process. 204 once done; 202 when a pause is in force
///   but a batch was still in flight after ``pauseWait``; 404 (JSON `error`) for a participant whose worker does not
///   run here.
///
/// It is auxiliary: when its port cannot be bound, it logs an error and the daemon keeps running.
public struct OpsServer: Service {
    /// The registry every metric of the process goes to (after ``bootstrapMetrics()``), served at `/metrics`.
    public static let registry = PrometheusCollectorRegistry()

    /// Routes swift-metrics to the Prometheus registry; once per process, before any metric is created.
    public static func bootstrapMetrics() {
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
    }

    /// The address it binds.
    public let host: String
    /// The port it binds (0: any free one).
    public let port: Int
    /// The readiness checks it runs and reports.
    public let health: HealthMonitor
    /// Where it logs its address, and a port it cannot bind.
    public let logger: Logger
    /// The workers that `/participants/{name}/pause|resume` control, by participant name.
    public let workers: [String: Worker]
    /// How long a pause request waits for the batch in flight before it answers 202.
    public var pauseWait: Duration = .seconds(10)

    /// A server on `host:port` (0 for any free port) reporting `health`, controlling `workers` (the workers of
    /// this process).
    public init(host: String, port: Int, health: HealthMonitor, workers: [Worker] = [], logger: Logger) {
        self.host = host
        self.port = port
        self.health = health
        self.workers = Dictionary(workers.map { ($0.configuration.name, $0) }, uniquingKeysWith: { a, _ in a })
        self.logger = logger
    }

    /// Serves until graceful shutdown; runs the health checks meanwhile.
    public func run() async throws {
        let router = Router()
        let health = self.health
        router.get("/health/live") { _, _ -> Response in
            Self.json(.ok, .object(["status": .string("ok")]))
        }
        let ready: @Sendable (Request, BasicRequestContext) async -> Response = { _, _ in
            let report = health.report
            return Self.json(
                report.ready ? .ok : .serviceUnavailable,
                .object([
                    "status": .string(report.ready ? "ok" : "unavailable"),
                    "checks": .object(report.checks.mapValues { .string($0) }),
                ]))
        }
        router.get("/health/ready", use: ready)
        router.get("/health", use: ready)
        router.get("/metrics") { _, _ -> Response in
            Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: Self.registry.emitToBuffer())))
        }
        let workers = self.workers
        let pauseWait = self.pauseWait
        for action in ["pause", "resume"] {
            router.post("/participants/:name/\(action)") { [logger] _, context -> Response in
                guard let name = context.parameters.get("name"), let worker = workers[name] else {
                    let known = workers.keys.sorted().joined(separator: ", ")
                    return Self.json(
                        .notFound,
                        .object([
                            "error": .string(
                                "no worker of participant '\(context.parameters.get("name") ?? "")' runs here"
                                    + (known.isEmpty ? "" : " (it runs: \(known))"))
                        ]))
                }
                logger.notice("operator request", metadata: ["participant": .string(name), "action": .string(action)])
                if action == "resume" {
                    await worker.resume()
                    return Response(status: .noContent)
                }
                guard await worker.pause(waitingAtMost: pauseWait) else {
                    return Self.json(
                        .accepted,
                        .object([
                            "status": .string("pausing"),
                            "detail": .string("paused; a batch or deadline firing still in flight finishes first"),
                        ]))
                }
                return Response(status: .noContent)
            }
        }
        let app = Application(
            router: router, configuration: .init(address: .hostname(host, port: port), serverName: "saga-ops"),
            onServerRunning: { [logger] channel in
                logger.info(
                    "health and metrics", metadata: ["address": "\(host):\(channel.localAddress?.port ?? port)"])
            },
            logger: logger)
        do {
            try await withThrowingDiscardingTaskGroup { group in
                group.addTask { try await health.run() }
                group.addTask { try await app.run() }
            }
        } catch {
            logger.error(
                "health and metrics server not started (set SAGA_OPS_PORT to a free port)",
                metadata: ["address": "\(host):\(port)", "error": "\(error)"])
            try? await gracefulShutdown()
        }
    }

    private static func json(_ status: HTTPResponse.Status, _ body: JSONValue) -> Response {
        Response(
            status: status, headers: [.contentType: "application/json"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: body.serialized())))
    }
}
