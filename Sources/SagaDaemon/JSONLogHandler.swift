import Foundation
import Logging
import SagaEngine

/// One JSON object per line on stderr: time, level, logger, message and metadata. For daemons in containers.
public struct JSONLogHandler: LogHandler {
    /// The logger's label, written as `logger`.
    public var label: String
    /// The lowest level it writes.
    public var logLevel: Logger.Level = .info
    /// Metadata written with every line (an event's own wins).
    public var metadata: Logger.Metadata = [:]

    /// A handler for the logger labelled `label`, at level info.
    public init(label: String) { self.label = label }

    /// One item of ``metadata``.
    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// Writes `event` as one JSON line to stderr.
    public func log(event: LogEvent) {
        var object: [String: JSONValue] = [
            "time": .string(Timestamp.format(Date())), "level": .string(event.level.rawValue),
            "logger": .string(label), "message": .string(event.message.description),
        ]
        for (k, v) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { _, new in new }) {
            object[k] = Self.json(v)
        }
        var line = JSONValue.object(object).serialized()
        line.append(UInt8(ascii: "\n"))
        FileHandle.standardError.write(Data(line))
    }

    private static func json(_ value: Logger.Metadata.Value) -> JSONValue {
        switch value {
        case .string(let s): return .string(s)
        case .stringConvertible(let c): return .string(c.description)
        case .array(let a): return .array(a.map(json))
        case .dictionary(let d): return .object(d.mapValues(json))
        }
    }
}

/// Logging of a daemon process.
public enum LogSetup {
    /// Sets up logging once per process from `SAGA_LOG_FORMAT` (json|text, default json) and `SAGA_LOG_LEVEL`.
    /// - Throws: ``ConfigurationError`` naming the variable when its value is not understood.
    public static func bootstrap() throws(ConfigurationError) {
        let env = ProcessInfo.processInfo.environment
        let levelName = env["SAGA_LOG_LEVEL"] ?? "info"
        guard let level = Logger.Level(rawValue: levelName) else {
            throw ConfigurationError(
                "SAGA_LOG_LEVEL='\(levelName)': expected one of trace, debug, info, notice, warning, error, critical")
        }
        let format = env["SAGA_LOG_FORMAT"] ?? "json"
        guard format == "json" || format == "text" else {
            throw ConfigurationError("SAGA_LOG_FORMAT='\(format)': expected json or text")
        }
        LoggingSystem.bootstrap { label in
            var handler: any LogHandler =
                format == "json" ? JSONLogHandler(label: label) : StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }
}
