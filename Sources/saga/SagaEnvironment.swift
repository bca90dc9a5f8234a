import Foundation
import SagaEngine

/// Configuration from the environment, with the local stack (`.saga/dev.json`) as the fallback.
/// Every variable is listed in the README with its default.
struct SagaEnvironment: Sendable {
    var kafkaBootstrap: String?
    var kafkaProperties: [String: String]
    var databaseURL: String
    var serviceDatabaseURLs: [String: String]
    var topicPrefix: String
    var httpHost: String
    var httpPort: Int
    var opsPort: Int
    var orderCreatedVersion: Int
    var workerBatchSize: Int
    var relayBatchSize: Int
    var relayMaxShards: Int
    var inboxRetention: Duration
    var fetchWaitMaxMs: Int
    var healthInterval: Duration
    var healthTimeout: Duration
    /// `statement_timeout` / `lock_timeout` of every daemon's database sessions; nil keeps the server's.
    var statementTimeout: Duration? = nil
    var lockTimeout: Duration? = nil
    /// `group.instance.id` of the worker's and the tracker's consumer (SAGA_KAFKA_GROUP_INSTANCE_ID, `{hostname}`
    /// expanded); nil: dynamic members.
    var groupInstanceId: String? = nil

    static let defaultDatabaseURL = "postgresql://postgres@127.0.0.1:55432/saga"

    /// `fetch.wait.max.ms` against the embedded broker: each hop of a saga waits up to this long for its fetch.
    /// 2 ms keeps a lone saga's hops near the broker's own round trip (10 ms made them ~3× slower) for ~10 % of a
    /// core while idle (1 ms: ~30 %), measured with `saga dev` on the 2-core VM.
    static let embeddedFetchWaitMaxMs = 2

    /// Where `saga broker` writes its bootstrap servers by default (it removes the file when it stops).
    static let brokerFilePath = ".saga/broker"

    /// Reads the environment. - Throws: `ConfigurationError` naming the variable and what is wrong with it.
    static func load(
        _ env: [String: String] = ProcessInfo.processInfo.environment, devFile: DevStackFile? = DevStackFile.read(),
        brokerFile: String? = SagaEnvironment.readBrokerFile()
    ) throws(ConfigurationError) -> SagaEnvironment {
        func int(_ name: String, _ fallback: Int, _ range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
            guard let raw = env[name], !raw.isEmpty else { return fallback }
            guard let v = Int(raw), range.contains(v) else {
                throw ConfigurationError(
                    "\(name)='\(raw)': expected a whole number in \(range.lowerBound)...\(range.upperBound)")
            }
            return v
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
        for service in ["orders", "inventory", "billing", "tracker"] {
            let name = "SAGA_\(service.uppercased())_DATABASE_URL"
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
        let version = try int("SAGA_ORDER_CREATED_VERSION", 2, 1...2)
        let bootstrap = env["SAGA_KAFKA_BOOTSTRAP"].flatMap { $0.isEmpty ? nil : $0 }
        // The embedded broker (librdkafka's mock cluster) answers an empty fetch only after fetch.wait.max.ms, even
        // when data arrives meanwhile; Kafka answers as soon as data arrives, so there a longer wait costs nothing.
        let embedded =
            env["SAGA_KAFKA_EMBEDDED"] == "1"
            || (bootstrap == nil && (devFile.map { $0.kafkaEmbedded == true } ?? (brokerFile != nil)))
        /// A timeout: unset or 0 (`0s`) for none.
        func timeout(_ name: String) throws(ConfigurationError) -> Duration? {
            let d = try duration(name, .zero)
            return d > .zero ? d : nil
        }
        var loaded = SagaEnvironment(
            kafkaBootstrap: bootstrap ?? devFile?.kafkaBootstrap ?? brokerFile,
            kafkaProperties: try parseProperties(env["SAGA_KAFKA_PROPERTIES"] ?? ""),
            databaseURL: env["SAGA_DATABASE_URL"].flatMap { $0.isEmpty ? nil : $0 } ?? devFile?.databaseURL
                ?? defaultDatabaseURL,
            serviceDatabaseURLs: urls,
            topicPrefix: env["SAGA_TOPIC_PREFIX"] ?? "",
            httpHost: env["SAGA_HTTP_HOST"].flatMap { $0.isEmpty ? nil : $0 } ?? "127.0.0.1",
            httpPort: try int("SAGA_HTTP_PORT", 8080, 0...65535),
            opsPort: try int("SAGA_OPS_PORT", 9090, 0...65535),
            orderCreatedVersion: version,
            workerBatchSize: try int("SAGA_WORKER_BATCH_SIZE", 200, 1...10_000),
            relayBatchSize: try int("SAGA_RELAY_BATCH_SIZE", 500, 1...10_000),
            relayMaxShards: try int(
                "SAGA_RELAY_MAX_SHARDS", EngineMigrations.shardCount, 1...EngineMigrations.shardCount),
            inboxRetention: try duration("SAGA_INBOX_RETENTION", .seconds(7 * 86400)),
            fetchWaitMaxMs: try int(
                "SAGA_KAFKA_FETCH_WAIT_MAX_MS", embedded ? embeddedFetchWaitMaxMs : 10, 1...10_000),
            healthInterval: try duration("SAGA_HEALTH_INTERVAL", .seconds(2), positive: true),
            healthTimeout: try duration("SAGA_HEALTH_TIMEOUT", .seconds(2), positive: true))
        loaded.statementTimeout = try timeout("SAGA_STATEMENT_TIMEOUT")
        loaded.lockTimeout = try timeout("SAGA_LOCK_TIMEOUT")
        loaded.groupInstanceId = try groupInstanceId(env["SAGA_KAFKA_GROUP_INSTANCE_ID"] ?? "")
        return loaded
    }

    /// `raw` when it is a PostgreSQL URL (libpq checks the rest when it connects: several hosts, a Unix
    /// socket directory, parameters). - Throws: naming `name`; the value is not printed, as it may hold a
    /// password in a form that cannot be masked.
    static func databaseURL(_ name: String, _ raw: String) throws(ConfigurationError) -> String {
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
    static func groupInstanceId(
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
    static func checkBootstrap(_ raw: String) throws(ConfigurationError) {
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

    /// Every SAGA_* variable the commands and scripts read.
    static let knownVariables: Set<String> = [
        "SAGA_KAFKA_BOOTSTRAP", "SAGA_KAFKA_PROPERTIES", "SAGA_KAFKA_FETCH_WAIT_MAX_MS", "SAGA_KAFKA_EMBEDDED",
        "SAGA_KAFKA_GROUP_INSTANCE_ID",
        "SAGA_DATABASE_URL", "SAGA_ORDERS_DATABASE_URL", "SAGA_INVENTORY_DATABASE_URL", "SAGA_BILLING_DATABASE_URL",
        "SAGA_TRACKER_DATABASE_URL", "SAGA_TOPIC_PREFIX", "SAGA_HTTP_HOST", "SAGA_HTTP_PORT", "SAGA_OPS_PORT",
        "SAGA_ORDER_CREATED_VERSION", "SAGA_WORKER_BATCH_SIZE", "SAGA_RELAY_BATCH_SIZE", "SAGA_RELAY_MAX_SHARDS",
        "SAGA_INBOX_RETENTION", "SAGA_LOG_FORMAT", "SAGA_LOG_LEVEL", "SAGA_HEALTH_INTERVAL",
        "SAGA_HEALTH_TIMEOUT", "SAGA_STATEMENT_TIMEOUT", "SAGA_LOCK_TIMEOUT",
        // scripts/ and the tests
        "SAGA_PG_PORT", "SAGA_PG_FSYNC", "SAGA_PG_DB", "SAGA_PG_DIR", "SAGA_ROOT", "SAGA_LOCAL", "SAGA_PIDS",
        "SAGA_STARTED_PG",
        "SAGA_TEST_LOG_LEVEL", "SAGA_TEST_BROKER",
    ]

    /// SAGA_* variables set in `env` that nothing reads: most likely misspelt.
    static func unknownVariables(_ env: [String: String] = ProcessInfo.processInfo.environment) -> [String] {
        env.keys.filter { $0.hasPrefix("SAGA_") && !knownVariables.contains($0) }.sorted()
    }

    /// The bootstrap servers a running `saga broker` wrote to `.saga/broker`, if any.
    static func readBrokerFile(_ path: String = brokerFilePath) -> String? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        let servers = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return servers.isEmpty ? nil : servers
    }

    /// `key=value` pairs separated by `;` or newlines, passed to librdkafka as they are.
    static func parseProperties(_ raw: String) throws(ConfigurationError) -> [String: String] {
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
    func kafka() throws(ConfigurationError) -> KafkaSettings {
        guard let kafkaBootstrap else {
            throw ConfigurationError(
                "no Kafka broker: set SAGA_KAFKA_BOOTSTRAP, or start the local stack with `saga dev` (or `saga broker`)"
            )
        }
        return KafkaSettings(
            bootstrapServers: kafkaBootstrap, properties: kafkaProperties, fetchWaitMaxMs: fetchWaitMaxMs)
    }

    var topics: TopicNaming { TopicNaming(prefix: topicPrefix) }

    /// A service's database (or the tracker's): its own schema, named as the service, in
    /// `SAGA_<SERVICE>_DATABASE_URL` or `SAGA_DATABASE_URL`.
    func database(_ service: String) -> ServiceDatabase {
        var database = ServiceDatabase(
            url: serviceDatabaseURLs[service] ?? databaseURL,
            schema: topicPrefix.isEmpty
                ? service : sanitized(topicPrefix) + service)
        database.statementTimeout = statementTimeout
        database.lockTimeout = lockTimeout
        return database
    }

    private func sanitized(_ prefix: String) -> String {
        String(prefix.lowercased().map { $0.isLetter || $0.isNumber ? $0 : "_" })
    }
}

struct ConfigurationError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// `90s`, `15m`, `2h`, `7d`, `500ms`.
enum DurationParser {
    static func parse(_ raw: String) -> Duration? {
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

/// `.saga/dev.json`: where `saga dev` says the local stack is, so other commands need no configuration.
struct DevStackFile: Codable, Sendable {
    var http: String
    var kafkaBootstrap: String
    /// `kafkaBootstrap` is `saga dev`'s own embedded broker (absent in files of older versions).
    var kafkaEmbedded: Bool?
    var databaseURL: String
    var schemas: [String: String]
    var pid: Int32

    static let path = ".saga/dev.json"

    /// The file, when present and its process is still alive.
    static func read(from path: String = DevStackFile.path) -> DevStackFile? {
        guard let data = FileManager.default.contents(atPath: path),
            let file = try? JSONDecoder().decode(DevStackFile.self, from: data), kill(file.pid, 0) == 0
        else { return nil }
        return file
    }

    func write(to path: String = DevStackFile.path) throws {
        try FileManager.default.createDirectory(
            atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try encoder.encode(self).write(to: URL(fileURLWithPath: path))
    }
}
