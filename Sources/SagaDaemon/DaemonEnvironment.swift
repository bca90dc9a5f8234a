import Foundation
import SagaEngine

/// A daemon's configuration from the environment, with the local stack (`.saga/dev.json`, `.saga/broker`) as the
/// fallback. Every variable is listed in the README with its default; a bad value is a ``ConfigurationError``
/// naming the variable.
public struct DaemonEnvironment: Sendable {
    /// The Kafka bootstrap servers (`SAGA_KAFKA_BOOTSTRAP`, else the local stack's); nil when none is known.
    public var kafkaBootstrap: String?
    /// Extra librdkafka properties (`SAGA_KAFKA_PROPERTIES`).
    public var kafkaProperties: [String: String]
    /// The database of every participant without one of its own (`SAGA_DATABASE_URL`).
    public var databaseURL: String
    /// A participant's (or the tracker's) own database, by name (`SAGA_<NAME>_DATABASE_URL`).
    public var serviceDatabaseURLs: [String: String]
    /// The prefix of every topic name and schema name (`SAGA_TOPIC_PREFIX`).
    public var topicPrefix: String
    /// The address the HTTP servers bind (`SAGA_HTTP_HOST`).
    public var httpHost: String
    /// The ops server's port: health, readiness, metrics (`SAGA_OPS_PORT`).
    public var opsPort: Int
    /// Most events a worker handles in one transaction (`SAGA_WORKER_BATCH_SIZE`).
    public var workerBatchSize: Int
    /// Most outbox rows a relay publishes in one batch (`SAGA_RELAY_BATCH_SIZE`).
    public var relayBatchSize: Int
    /// Most outbox shards one relay instance takes (`SAGA_RELAY_MAX_SHARDS`).
    public var relayMaxShards: Int
    /// How often a relay vacuums its outbox table while it deletes rows (`SAGA_RELAY_VACUUM_INTERVAL`, `0s`: never,
    /// autovacuum only); see `RelayConfiguration.vacuumInterval`.
    public var relayVacuumInterval: Duration? = .seconds(1)
    /// How long a worker keeps inbox rows (`SAGA_INBOX_RETENTION`).
    public var inboxRetention: Duration
    /// librdkafka's `fetch.wait.max.ms` (`SAGA_KAFKA_FETCH_WAIT_MAX_MS`).
    public var fetchWaitMaxMs: Int
    /// How often the readiness checks run (`SAGA_HEALTH_INTERVAL`).
    public var healthInterval: Duration
    /// How long one readiness check may take (`SAGA_HEALTH_TIMEOUT`).
    public var healthTimeout: Duration
    /// `statement_timeout` of every daemon's database sessions (`SAGA_STATEMENT_TIMEOUT`); nil keeps the server's.
    public var statementTimeout: Duration? = nil
    /// `lock_timeout` of every daemon's database sessions (`SAGA_LOCK_TIMEOUT`); nil keeps the server's.
    public var lockTimeout: Duration? = nil
    /// `group.instance.id` of the worker's and the tracker's consumer (SAGA_KAFKA_GROUP_INSTANCE_ID, `{hostname}`
    /// expanded); nil: dynamic members.
    public var groupInstanceId: String? = nil
    /// Partitions of each topic a daemon creates because it is missing (`SAGA_TOPIC_PARTITIONS`, default 8).
    public var topicPartitions: Int32 = 8
    /// Replication factor of each topic a daemon creates (`SAGA_TOPIC_REPLICATION_FACTOR`); nil: the broker's
    /// `default.replication.factor`.
    public var topicReplicationFactor: Int16? = nil
    /// The broker is the embedded one (librdkafka's mock cluster: `saga dev`, `saga broker`, or
    /// `SAGA_KAFKA_EMBEDDED=1`), which answers no CreateTopics and creates a topic on first use instead.
    public var kafkaEmbedded = false

    /// The database when neither `SAGA_DATABASE_URL` nor the local stack names one: the checkout's local server.
    public static let defaultDatabaseURL = "postgresql://postgres@127.0.0.1:55432/saga"

    /// `fetch.wait.max.ms` against the embedded broker: each hop of a saga waits up to this long for its fetch.
    /// 1 ms, measured on the 2-core VM (2026-12-01): the broker's produce → consume p50 1.3 ms against 2.3–2.5 ms
    /// with 2 ms, a lone saga's p50 2–4 ms lower in both layouts (10 ms made hops ~3× slower). It costs `saga dev`
    /// ~20–25 % of a core while idle against ~15 % with 2 ms, and the closed loop ran ~10 % slower in pairs: set
    /// `SAGA_KAFKA_FETCH_WAIT_MAX_MS=2` to prefer throughput.
    public static let embeddedFetchWaitMaxMs = 1

    /// Where `saga broker` writes its bootstrap servers by default (it removes the file when it stops).
    public static let brokerFilePath = ".saga/broker"

    /// Reads the environment.
    /// - Parameters:
    ///   - env: the variables to read (the process's environment).
    ///   - databases: the participants (or "tracker") whose own `SAGA_<NAME>_DATABASE_URL` to read.
    ///   - devFile: the local stack `saga dev` runs, if any: its broker and database are the fallback.
    ///   - brokerFile: the bootstrap servers of a running `saga broker`, if any: the fallback broker.
    /// - Throws: ``ConfigurationError`` naming the variable and what is wrong with it.
    public static func load(
        _ env: [String: String] = ProcessInfo.processInfo.environment, databases: [String],
        devFile: DevStackFile? = DevStackFile.read(), brokerFile: String? = DaemonEnvironment.readBrokerFile()
    ) throws(ConfigurationError) -> DaemonEnvironment {
        func int(_ name: String, _ fallback: Int, _ range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
            try integer(name, in: env, default: fallback, range)
        }
        func duration(_ name: String, _ fallback: Duration, positive: Bool = false) throws(ConfigurationError)
            -> Duration
        {
            guard let raw = env[name], !raw.isEmpty else { return fallback }
            guard let d = DurationParser.parse(raw), !positive || d > .zero else {
                throw ConfigurationError("\(name)='\(raw)': expected a duration such as 90s, 15m, 2h or 7d")
            }
            return d
        }
        var urls: [String: String] = [:]
        for service in databases {
            let name = databaseVariable(service)
            if let u = env[name], !u.isEmpty { urls[service] = try databaseURL(name, u) }
        }
        if let raw = env["SAGA_DATABASE_URL"], !raw.isEmpty { _ = try databaseURL("SAGA_DATABASE_URL", raw) }
        if let raw = env["SAGA_KAFKA_BOOTSTRAP"], !raw.isEmpty { try checkBootstrap(raw) }
        if let prefix = env["SAGA_TOPIC_PREFIX"],
            !prefix.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) })
        {
            throw ConfigurationError(
                "SAGA_TOPIC_PREFIX='\(prefix)': Kafka topic names allow only ASCII letters, digits, '.', '_' and '-'")
        }
        let bootstrap = env["SAGA_KAFKA_BOOTSTRAP"].flatMap { $0.isEmpty ? nil : $0 }
        // The embedded broker (librdkafka's mock cluster) answers an empty fetch only after fetch.wait.max.ms, even
        // when data arrives meanwhile; Kafka answers as soon as data arrives, so there a longer wait costs nothing.
        let embedded =
            env["SAGA_KAFKA_EMBEDDED"] == "1"
            || (bootstrap == nil && (devFile.map { $0.kafkaEmbedded == true } ?? (brokerFile != nil)))
        /// A duration that `0s` turns off (nil); `fallback` when unset (none, for a timeout).
        func durationOrNone(_ name: String, _ fallback: Duration = .zero) throws(ConfigurationError) -> Duration? {
            let d = try duration(name, fallback)
            return d > .zero ? d : nil
        }
        var loaded = DaemonEnvironment(
            kafkaBootstrap: bootstrap ?? devFile?.kafkaBootstrap ?? brokerFile,
            kafkaProperties: try parseProperties(env["SAGA_KAFKA_PROPERTIES"] ?? ""),
            databaseURL: env["SAGA_DATABASE_URL"].flatMap { $0.isEmpty ? nil : $0 } ?? devFile?.databaseURL
                ?? defaultDatabaseURL,
            serviceDatabaseURLs: urls,
            topicPrefix: env["SAGA_TOPIC_PREFIX"] ?? "",
            httpHost: env["SAGA_HTTP_HOST"].flatMap { $0.isEmpty ? nil : $0 } ?? "127.0.0.1",
            opsPort: try int("SAGA_OPS_PORT", 9090, 0...65535),
            workerBatchSize: try int("SAGA_WORKER_BATCH_SIZE", 200, 1...10_000),
            relayBatchSize: try int("SAGA_RELAY_BATCH_SIZE", 250, 1...10_000),
            relayMaxShards: try int(
                "SAGA_RELAY_MAX_SHARDS", EngineMigrations.shardCount, 1...EngineMigrations.shardCount),
            inboxRetention: try duration("SAGA_INBOX_RETENTION", .seconds(7 * 86400)),
            fetchWaitMaxMs: try int(
                "SAGA_KAFKA_FETCH_WAIT_MAX_MS", embedded ? embeddedFetchWaitMaxMs : 10, 1...10_000),
            healthInterval: try duration("SAGA_HEALTH_INTERVAL", .seconds(2), positive: true),
            healthTimeout: try duration("SAGA_HEALTH_TIMEOUT", .seconds(2), positive: true))
        loaded.statementTimeout = try durationOrNone("SAGA_STATEMENT_TIMEOUT")
        loaded.lockTimeout = try durationOrNone("SAGA_LOCK_TIMEOUT")
        loaded.relayVacuumInterval = try durationOrNone("SAGA_RELAY_VACUUM_INTERVAL", .seconds(1))
        loaded.groupInstanceId = try groupInstanceId(env["SAGA_KAFKA_GROUP_INSTANCE_ID"] ?? "")
        loaded.topicPartitions = Int32(try int("SAGA_TOPIC_PARTITIONS", 8, 1...10_000))
        if let raw = env["SAGA_TOPIC_REPLICATION_FACTOR"], !raw.isEmpty {
            loaded.topicReplicationFactor = Int16(try int("SAGA_TOPIC_REPLICATION_FACTOR", 1, 1...32))
        }
        loaded.kafkaEmbedded = embedded
        return loaded
    }

    /// The whole number in variable `name` of `env`, `fallback` when it is unset or empty.
    /// - Throws: ``ConfigurationError`` naming `name` when it is not a whole number in `range`.
    public static func integer(
        _ name: String, in env: [String: String], default fallback: Int, _ range: ClosedRange<Int>
    ) throws(ConfigurationError) -> Int {
        guard let raw = env[name], !raw.isEmpty else { return fallback }
        guard let v = Int(raw), range.contains(v) else {
            throw ConfigurationError(
                "\(name)='\(raw)': expected a whole number in \(range.lowerBound)...\(range.upperBound)")
        }
        return v
    }

    /// The variable naming the own database of participant `name`: `SAGA_<NAME>_DATABASE_URL`, upper-cased,
    /// with every character other than a letter or digit as `_`.
    public static func databaseVariable(_ name: String) -> String {
        "SAGA_\(String(name.uppercased().map { $0.isASCII && ($0.isLetter || $0.isNumber) ? $0 : "_" }))_DATABASE_URL"
    }

    /// `raw` when it is a PostgreSQL URL (libpq checks the rest when it connects: several hosts, a Unix
    /// socket directory, parameters). - Throws: naming `name`; the value is not printed, as it may hold a
    /// password in a form that cannot be masked.
    public static func databaseURL(_ name: String, _ raw: String) throws(ConfigurationError) -> String {
        guard raw.hasPrefix("postgresql://") || raw.hasPrefix("postgres://") else {
            throw ConfigurationError(
                "\(name): expected a URL such as postgresql://user:password@host:5432/database "
                    + "(it does not start with postgresql://)")
        }
        return raw
    }

    /// SAGA_KAFKA_GROUP_INSTANCE_ID with `{hostname}` replaced by this host's name (a container's hostname stays
    /// the same across restarts by its restart policy); nil when unset or empty. Kafka accepts up to 249 ASCII
    /// letters, digits, '.', '_' and '-' (not "." or ".."). - Throws: naming the variable.
    public static func groupInstanceId(
        _ raw: String, hostname: String = ProcessInfo.processInfo.hostName
    ) throws(ConfigurationError) -> String? {
        guard !raw.isEmpty else { return nil }
        let id = raw.replacingOccurrences(of: "{hostname}", with: hostname)
        guard id.count <= 249, id != ".", id != "..",
            id.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) })
        else {
            throw ConfigurationError(
                "SAGA_KAFKA_GROUP_INSTANCE_ID='\(raw)' (\(id.count) characters once expanded): expected up to 249 "
                    + "ASCII letters, digits, '.', '_' and '-', e.g. inventory-1 or {hostname}")
        }
        return id
    }

    /// Checks `host[:port][,host[:port]...]` (librdkafka's default port is 9092). - Throws: naming
    /// SAGA_KAFKA_BOOTSTRAP.
    public static func checkBootstrap(_ raw: String) throws(ConfigurationError) {
        let entries = raw.split(separator: ",").map {
            $0.trimmingCharacters(in: .whitespaces).replacingOccurrences(of: "PLAINTEXT://", with: "")
                .replacingOccurrences(of: "SSL://", with: "")
        }.filter { !$0.isEmpty }
        for entry in entries {
            let hostAndPort =
                entry.hasPrefix("[") ? String(entry[(entry.firstIndex(of: "]") ?? entry.startIndex)...]) : entry
            let portText = hostAndPort.contains(":") ? hostAndPort.split(separator: ":").last.map(String.init) : "9092"
            guard !entry.hasPrefix(":"), let portText, let port = Int(portText), (1...65535).contains(port) else {
                throw ConfigurationError(
                    "SAGA_KAFKA_BOOTSTRAP='\(raw)': expected host[:port][,host[:port]...], e.g. kafka:9092")
            }
        }
        if entries.isEmpty {
            throw ConfigurationError("SAGA_KAFKA_BOOTSTRAP='\(raw)': expected host[:port][,host[:port]...]")
        }
    }

    /// Every SAGA_* variable ``load(_:databases:devFile:brokerFile:)`` and the daemon's logging read, with the
    /// own databases of `databases`.
    public static func knownVariables(databases: [String]) -> Set<String> {
        Set(databases.map(databaseVariable)).union([
            "SAGA_KAFKA_BOOTSTRAP", "SAGA_KAFKA_PROPERTIES", "SAGA_KAFKA_FETCH_WAIT_MAX_MS", "SAGA_KAFKA_EMBEDDED",
            "SAGA_KAFKA_GROUP_INSTANCE_ID", "SAGA_DATABASE_URL", "SAGA_TOPIC_PREFIX", "SAGA_HTTP_HOST", "SAGA_OPS_PORT",
            "SAGA_WORKER_BATCH_SIZE",
            "SAGA_RELAY_BATCH_SIZE", "SAGA_RELAY_MAX_SHARDS", "SAGA_RELAY_VACUUM_INTERVAL", "SAGA_INBOX_RETENTION",
            "SAGA_LOG_FORMAT",
            "SAGA_LOG_LEVEL", "SAGA_HEALTH_INTERVAL", "SAGA_HEALTH_TIMEOUT", "SAGA_STATEMENT_TIMEOUT",
            "SAGA_LOCK_TIMEOUT", "SAGA_TOPIC_PARTITIONS", "SAGA_TOPIC_REPLICATION_FACTOR",
        ])
    }

    /// SAGA_* variables set in `env` that are not in `known`: most likely misspelt.
    public static func unknownVariables(_ env: [String: String], known: Set<String>) -> [String] {
        env.keys.filter { $0.hasPrefix("SAGA_") && !known.contains($0) }.sorted()
    }

    /// The bootstrap servers a running `saga broker` wrote to `.saga/broker`, if any.
    public static func readBrokerFile(_ path: String = brokerFilePath) -> String? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        let servers = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return servers.isEmpty ? nil : servers
    }

    /// `key=value` pairs separated by `;` or newlines, passed to librdkafka as they are.
    /// - Throws: ``ConfigurationError`` naming SAGA_KAFKA_PROPERTIES for an item that is not `key=value`.
    public static func parseProperties(_ raw: String) throws(ConfigurationError) -> [String: String] {
        var out: [String: String] = [:]
        for item in raw.split(whereSeparator: { $0 == ";" || $0 == "\n" }) {
            let trimmed = item.trimmingCharacters(in: .whitespaces)
            guard !trimmed.isEmpty else { continue }
            guard let eq = trimmed.firstIndex(of: "="), eq != trimmed.startIndex else {
                throw ConfigurationError("SAGA_KAFKA_PROPERTIES: '\(trimmed)' is not key=value")
            }
            out[String(trimmed[..<eq])] = String(trimmed[trimmed.index(after: eq)...])
        }
        return out
    }

    /// The Kafka settings. - Throws: when no broker is configured and no local stack runs.
    public func kafka() throws(ConfigurationError) -> KafkaSettings {
        guard let kafkaBootstrap else {
            throw ConfigurationError(
                "no Kafka broker: set SAGA_KAFKA_BOOTSTRAP, or start the local stack with `saga dev` (or `saga broker`)"
            )
        }
        return KafkaSettings(
            bootstrapServers: kafkaBootstrap, properties: kafkaProperties, fetchWaitMaxMs: fetchWaitMaxMs)
    }

    /// Topic names under ``topicPrefix``.
    public var topics: TopicNaming { TopicNaming(prefix: topicPrefix) }

    /// A participant's database (or the tracker's): its own schema, named as the participant (after the
    /// topic prefix), in `SAGA_<NAME>_DATABASE_URL` or `SAGA_DATABASE_URL`.
    public func database(_ service: String) -> ServiceDatabase {
        var database = ServiceDatabase(
            url: serviceDatabaseURLs[service] ?? databaseURL,
            schema: topicPrefix.isEmpty
                ? service : sanitized(topicPrefix) + service)
        database.statementTimeout = statementTimeout
        database.lockTimeout = lockTimeout
        database.registry = registry
        return database
    }

    /// The participant registry's schema, on every participant's database: `saga_registry`, after the topic
    /// prefix like the participants' schemas.
    public var registrySchema: String {
        topicPrefix.isEmpty
            ? ParticipantRegistry.defaultSchema : sanitized(topicPrefix) + ParticipantRegistry.defaultSchema
    }

    /// The participant registry (on `SAGA_DATABASE_URL`, like the tracker's read model).
    public var registry: ParticipantRegistry { ParticipantRegistry(url: databaseURL, schema: registrySchema) }

    private func sanitized(_ prefix: String) -> String {
        String(prefix.lowercased().map { $0.isLetter || $0.isNumber ? $0 : "_" })
    }
}

/// A configuration value that cannot be used; the description names the variable and what is wrong.
public struct ConfigurationError: Error, CustomStringConvertible {
    /// What is wrong, naming the variable.
    public var description: String
    /// An error saying `description`.
    public init(_ description: String) { self.description = description }
}

/// Durations as the variables spell them: `90s`, `15m`, `2h`, `7d`, `500ms`.
public enum DurationParser {
    /// The duration, or nil when `raw` is not a whole number followed by ms, s, m, h or d.
    public static func parse(_ raw: String) -> Duration? {
        let units: [(String, Int64)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)]
        for (suffix, ms) in units where raw.hasSuffix(suffix) {
            let number = raw.dropLast(suffix.count)
            if suffix == "s" && number.hasSuffix("m") { continue }
            guard let n = Int64(number), n >= 0 else { return nil }
            return .milliseconds(n * ms)
        }
        return nil
    }
}

/// `.saga/dev.json`: where `saga dev` says the local stack is, so other commands and daemons need no
/// configuration.
public struct DevStackFile: Codable, Sendable {
    /// The orders HTTP API's base URL.
    public var http: String
    /// The local broker's bootstrap servers.
    public var kafkaBootstrap: String
    /// `kafkaBootstrap` is `saga dev`'s own embedded broker (absent in files of older versions).
    public var kafkaEmbedded: Bool?
    /// The local PostgreSQL.
    public var databaseURL: String
    /// Participant → its schema.
    public var schemas: [String: String]
    /// The `saga dev` process.
    public var pid: Int32
    /// The ops server's base URL (health, metrics, `POST /participants/{name}/pause|resume`); absent in files of
    /// older versions, and when it listens on a port chosen at random (SAGA_OPS_PORT=0).
    public var ops: String?

    /// Where `saga dev` writes it, relative to the working directory.
    public static let path = ".saga/dev.json"

    /// The file's contents, as `saga dev` writes them.
    public init(
        http: String, kafkaBootstrap: String, kafkaEmbedded: Bool?, databaseURL: String, schemas: [String: String],
        pid: Int32, ops: String? = nil
    ) {
        self.ops = ops
        self.http = http
        self.kafkaBootstrap = kafkaBootstrap
        self.kafkaEmbedded = kafkaEmbedded
        self.databaseURL = databaseURL
        self.schemas = schemas
        self.pid = pid
    }

    /// The file, when present and its process is still alive.
    public static func read(from path: String = DevStackFile.path) -> DevStackFile? {
        guard let data = FileManager.default.contents(atPath: path),
            let file = try? JSONDecoder().decode(DevStackFile.self, from: data), kill(file.pid, 0) == 0
        else { return nil }
        return file
    }

    /// Writes it (creating the directory). - Throws: when the file cannot be written.
    public func write(to path: String = DevStackFile.path) throws {
        try FileManager.default.createDirectory(
            atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try encoder.encode(self).write(to: URL(fileURLWithPath: path))
    }
}
