import Foundation
import Logging
import OTel
import ServiceLifecycle
import Tracing

/// Distributed tracing for the daemons: off unless an OTLP endpoint is configured, then spans are exported
/// over OTLP/HTTP by swift-otel (the standard OTEL_* variables apply: OTEL_SERVICE_NAME,
/// OTEL_EXPORTER_OTLP_HEADERS, OTEL_TRACES_SAMPLER, ...). Trace context travels in every event either way.
public enum Telemetry {
    /// The variables that turn the exporter on.
    public static let endpointVariables = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]

    /// Bootstraps the tracer when configured and returns the service that exports its spans (run it first in
    /// the daemon's service group, so it stops last and flushes what the others traced); nil when off.
    /// - Throws: `ConfigurationError` naming the variable when the OTLP settings are unusable.
    public static func bootstrapTracing(
        serviceName: String, logger: Logger, env: [String: String] = ProcessInfo.processInfo.environment
    )
        throws(ConfigurationError) -> (any Service)?
    {
        guard let configuration = try configuration(serviceName: serviceName, logger: logger, env: env) else {
            return nil
        }
        do {
            let backend = try OTel.makeTracingBackend(configuration: configuration)
            InstrumentationSystem.bootstrap(backend.factory)
            logger.info("tracing: exporting spans over OTLP/HTTP", metadata: ["service": .string(serviceName)])
            return backend.service
        } catch {
            throw ConfigurationError("OTLP tracing: \(error)")
        }
    }

    /// The swift-otel configuration for traces only (metrics go to /metrics, logs to stderr), or nil when no
    /// endpoint is set or OTEL_SDK_DISABLED / OTEL_TRACES_EXPORTER=none turn tracing off.
    static func configuration(serviceName: String, logger: Logger, env: [String: String]) throws(ConfigurationError)
        -> OTel.Configuration?
    {
        for name in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
            if let value = env[name], !value.isEmpty, value != "http/protobuf", value != "http/json" {
                throw ConfigurationError(
                    "\(name)='\(value)': expected http/protobuf or http/json (this build exports OTLP over HTTP)")
            }
        }
        if let exporter = env["OTEL_TRACES_EXPORTER"], !exporter.isEmpty, exporter != "otlp", exporter != "none" {
            throw ConfigurationError("OTEL_TRACES_EXPORTER='\(exporter)': expected otlp or none")
        }
        let endpoints = endpointVariables.compactMap { name in env[name].flatMap { $0.isEmpty ? nil : (name, $0) } }
        guard !endpoints.isEmpty else { return nil }
        if env["OTEL_SDK_DISABLED"]?.lowercased() == "true" || env["OTEL_TRACES_EXPORTER"] == "none" { return nil }
        for (name, value) in endpoints {
            guard let url = URL(string: value), url.scheme == "http" || url.scheme == "https", url.host != nil else {
                throw ConfigurationError("\(name)='\(value)': expected an http:// or https:// URL")
            }
        }
        var configuration = OTel.Configuration.default
        configuration.serviceName = serviceName
        configuration.logs.enabled = false
        configuration.metrics.enabled = false
        configuration.traces.enabled = true
        configuration.diagnosticLogger = .custom(logger)
        return configuration
    }
}
