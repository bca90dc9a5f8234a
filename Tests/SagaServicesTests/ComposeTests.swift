import Foundation
import Logging
import SagaEngine
import SagaKafka
import SagaServices
import SagaTestSupport
import Testing
import Yams

/// `compose/`: the compose file as Debian's `docker-compose config` resolves it, the topics and databases it
/// creates, each saga container's command and environment run for real against the test's loopback broker
/// and PostgreSQL, and the image's runtime libraries. No container engine runs here, so no container does.
@Suite(.serialized) struct ComposeTests {
    // MARK: the compose file

    @Test func theComposeFileValidatesWithDockerComposeConfig() throws {
        let config = try Self.config()
        #expect(!config.services.isEmpty)
        #expect(config.services["orders"]?.command == ["worker", "orders"])
    }

    @Test func itNamesEveryDaemonWithHealthChecksAndRestartPoliciesAndScalableWorkers() throws {
        let config = try Self.config()
        for name in ["kafka", "postgres", "topics", "migrate"] {
            #expect(config.services[name] != nil, "compose has no \(name) service")
        }

        // Every daemon and tool of the saga, run from the one image.
        let saga = Self.sagaServices(config)
        let services = TestStack.services
        let expected: Set<[String]> = Set(
            services.map { ["worker", $0] } + services.map { ["relay", $0] } + [["tracker"], ["migrate", "--seed"]])
        #expect(Set(saga.values.map { $0.command ?? [] }) == expected)
        #expect(Set(saga.values.map { $0.image ?? "" }).count == 1, "one image for every saga container")
        #expect(
            Set(saga.values.map { $0.environment ?? [:] }).count == 1,
            "every saga container has the one environment (the YAML anchor)")
        for (name, service) in saga {
            #expect(
                service.build?.context == Self.root.path && service.build?.dockerfile == "compose/Dockerfile",
                "\(name) is not built from compose/Dockerfile in the repository root")
        }

        for (name, service) in config.services {
            #expect(service.containerName == nil, "\(name) has a container_name: it could not scale")
        }
        // Only the orders API (and, in the tracing profile, Jaeger's UI) publish a host port.
        #expect(Set(config.services.filter { !($0.value.ports ?? []).isEmpty }.keys) == ["orders", "jaeger"])
        #expect(config.services["orders"]?.ports == ["127.0.0.1:8080:8080/tcp"])
        #expect(config.services["jaeger"]?.profiles == ["tracing"])

        // Long-running containers: a health check and a restart policy; saga ones check with `saga health`.
        let oneShots: Set<String> = ["migrate", "topics"]
        for (name, service) in config.services where !oneShots.contains(name) {
            #expect(
                ["always", "unless-stopped", "on-failure"].contains(service.restart ?? ""),
                "\(name) has no restart policy")
            let test = service.healthcheck?.test ?? []
            #expect(!test.isEmpty && test != ["NONE"], "\(name) has no health check")
            if saga[name] != nil { #expect(test == ["CMD", "saga", "health"], "\(name): health check \(test)") }
        }
        // One-shots run once; what needs them waits until they succeeded, and for healthy infrastructure.
        for name in oneShots { #expect(config.services[name]?.restart == "no", "\(name) must not restart") }
        for (name, service) in saga where !oneShots.contains(name) {
            let dependsOn = service.dependsOn ?? [:]
            #expect(dependsOn["migrate"]?.condition == "service_completed_successfully", "\(name) after migrate")
            #expect(dependsOn["topics"]?.condition == "service_completed_successfully", "\(name) after topics")
            #expect(dependsOn["postgres"]?.condition == "service_healthy", "\(name) after a healthy postgres")
            #expect(dependsOn["kafka"]?.condition == "service_healthy", "\(name) after a healthy kafka")
        }
        #expect(config.services["migrate"]?.dependsOn?["postgres"]?.condition == "service_healthy")
        #expect(config.services["topics"]?.dependsOn?["kafka"]?.condition == "service_healthy")

        // The broker advertises the address the saga containers bootstrap from.
        let bootstrap = try #require(saga.values.first?.environment?["SAGA_KAFKA_BOOTSTRAP"])
        #expect(bootstrap == "kafka:9092")
        let advertised = config.services["kafka"]?.environment?["KAFKA_ADVERTISED_LISTENERS"] ?? ""
        #expect(advertised.split(separator: ",").contains { $0.hasSuffix("://" + bootstrap) })
        #expect(saga.values.first?.environment?["SAGA_HTTP_HOST"] == "0.0.0.0")
        // The published port is the API's (SAGA_HTTP_PORT, default 8080); ops stay on 9090 in every container.
        let env = saga.values.first?.environment ?? [:]
        #expect(config.services["orders"]?.ports?.first?.hasSuffix(":\(env["SAGA_HTTP_PORT"] ?? "8080")/tcp") ?? false)
        #expect((env["SAGA_OPS_PORT"] ?? "9090") == "9090")
    }

    @Test func tracingIsOffUnlessTheShellNamesAnOTLPEndpoint() throws {
        let off = Self.sagaServices(try Self.config())
        #expect(!off.isEmpty)
        for (name, service) in off {
            #expect(service.environment?["OTEL_EXPORTER_OTLP_ENDPOINT"] == "", "\(name): tracing on by default")
        }
        let config = try Self.config(shell: ["OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"])
        for (name, service) in Self.sagaServices(config) {
            #expect(service.environment?["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318", "\(name)")
        }
        let jaeger = try #require(config.services["jaeger"])
        #expect(jaeger.profiles == ["tracing"])
        #expect(jaeger.image?.hasPrefix("jaegertracing/jaeger:") ?? false)
    }

    @Test func theTopicsContainerCreatesExactlyTheSagaTopics() async throws {
        let config = try Self.config()
        let topics = try #require(config.services["topics"])
        #expect(topics.image == config.services["kafka"]?.image, "the topics tool comes from the Kafka image")
        let environment = topics.environment ?? [:]
        #expect(
            environment["TOPICS_TOOL"] == "/opt/kafka/bin/kafka-topics.sh",
            "the topics container names its tool in TOPICS_TOOL (the test runs its script with a stand-in)")
        let sagaBootstrap = Self.sagaServices(config).values.first?.environment?["SAGA_KAFKA_BOOTSTRAP"]

        // The container's own script, with a stand-in for kafka-topics.sh that records its arguments.
        func runScript(toolExitStatus: Int) async throws -> (Finished, [[String]]) {
            let dir = try Self.temporaryDirectory("topics")
            defer { try? FileManager.default.removeItem(at: dir) }
            let calls = dir.appendingPathComponent("calls")
            let tool = dir.appendingPathComponent("kafka-topics.sh")
            try "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '\(calls.path)'\nexit \(toolExitStatus)\n".write(
                to: tool, atomically: true, encoding: .utf8)
            try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: tool.path)
            var env = environment
            env["TOPICS_TOOL"] = tool.path
            env["PATH"] = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
            let argv = ((topics.entrypoint ?? []) + (topics.command ?? [])).map(Self.unescapeDollars)
            let executable = try #require(argv.first, "the topics container has no entrypoint or command")
            let result = try await Self.run(
                URL(fileURLWithPath: executable), Array(argv.dropFirst()), environment: env, directory: dir)
            let recorded = (try? String(contentsOf: calls, encoding: .utf8)) ?? ""
            return (result, recorded.split(separator: "\n").map { $0.split(separator: " ").map(String.init) })
        }

        let (result, calls) = try await runScript(toolExitStatus: 0)
        #expect(result.status == 0, "the topics script failed: \(result.stderr)")
        func option(_ name: String, _ call: [String]) -> String? {
            call.firstIndex(of: name).flatMap { call.index(after: $0) < call.endIndex ? call[$0 + 1] : nil }
        }
        let created = calls.compactMap { option("--topic", $0) }
        let expected = sagaTopics(TopicNaming())
        #expect(Set(created) == Set(expected))
        #expect(created.count == expected.count, "each topic created once: \(created)")
        for service in TestStack.services {
            #expect(created.contains(TopicNaming().deadLetterTopic(consumer: service)))
        }
        for call in calls {
            #expect(call.contains("--create") && call.contains("--if-not-exists"), "\(call)")
            #expect(option("--bootstrap-server", call) == sagaBootstrap, "\(call)")
            #expect((Int(option("--partitions", call) ?? "") ?? 0) >= 1, "\(call)")
        }

        // A topic that cannot be created fails the container (so nothing that waits for it starts).
        let (failed, failedCalls) = try await runScript(toolExitStatus: 1)
        #expect(failed.status != 0)
        #expect(failedCalls.count == 1)
    }

    @Test func eachServiceHasItsOwnDatabaseCreatedByTheInitScript() throws {
        let config = try Self.config()
        let postgres = try #require(config.services["postgres"])
        let mount = try #require(
            (postgres.volumes ?? []).map { $0.split(separator: ":").map(String.init) }
                .first { $0.count >= 2 && $0[1] == "/docker-entrypoint-initdb.d" },
            "postgres mounts no init script into /docker-entrypoint-initdb.d")
        var isDirectory: ObjCBool = false
        #expect(FileManager.default.fileExists(atPath: mount[0], isDirectory: &isDirectory))
        let scripts =
            isDirectory.boolValue
            ? try FileManager.default.contentsOfDirectory(atPath: mount[0]).sorted().map { mount[0] + "/" + $0 }
            : [mount[0]]
        #expect(scripts.allSatisfy { $0.hasSuffix(".sql") }, "only SQL init scripts are read here: \(scripts)")
        var created: [String] = []
        let pattern = try Regex(#"(?i)create\s+database\s+"?([a-z0-9_]+)"?"#)
        for script in scripts {
            let sql = try String(contentsOfFile: script, encoding: .utf8).split(separator: "\n")
                .filter { !$0.trimmingCharacters(in: .whitespaces).hasPrefix("--") }.joined(separator: "\n")
            created += sql.matches(of: pattern).compactMap { $0.output[1].substring.map(String.init) }
        }
        let databases = TestStack.services + ["tracker"]
        #expect(created.sorted() == databases.sorted())

        let user = postgres.environment?["POSTGRES_USER"]
        let password = postgres.environment?["POSTGRES_PASSWORD"]
        for (name, service) in Self.sagaServices(config) {
            for database in databases {
                let key = "SAGA_\(database.uppercased())_DATABASE_URL"
                let url = try #require(
                    service.environment?[key].flatMap(URLComponents.init(string:)), "\(name) has no \(key)")
                #expect(url.scheme == "postgresql" || url.scheme == "postgres", "\(name) \(key)")
                #expect(
                    url.host == "postgres" && (url.port ?? 5432) == 5432, "\(name) \(key) is not the postgres service")
                #expect(url.path == "/" + database, "\(name) \(key) names database \(url.path)")
                #expect(url.user == user && url.password == password, "\(name) \(key): not POSTGRES_USER's credentials")
            }
        }
    }

    // MARK: each container's command, for real

    /// Every saga container's `command` with its environment, the infrastructure addresses swapped for the
    /// test's loopback broker and PostgreSQL: the one-shots exit 0; each daemon answers its health check
    /// (`saga health`) and stops with status 0 on SIGTERM, after which the health check fails.
    @Test func everySagaContainerRunsItsCommandAndBecomesHealthy() async throws {
        let saga = SagaProcess.executable
        try #require(
            FileManager.default.isExecutableFile(atPath: saga.path),
            "build the saga executable first (swift build --build-tests builds it)")
        let config = try Self.config()
        let containers = Self.sagaServices(config).sorted { $0.key < $1.key }
        let prefix = KafkaTestBroker.uniqueName("compose") + "."
        let broker = try await KafkaTestBroker.withTopics(sagaTopics(TopicNaming(prefix: prefix)), partitions: 4)
        let schemaPrefix = String(prefix.lowercased().map { $0.isLetter || $0.isNumber ? $0 : "_" })
        let schemas = (TestStack.services + ["tracker"]).map { schemaPrefix + $0 }
        let directory = try Self.temporaryDirectory("compose")
        var daemons: [Daemon] = []
        func cleanUp() async {
            for daemon in daemons where daemon.process.isRunning { kill(daemon.process.processIdentifier, SIGKILL) }
            for schema in schemas { try? await PostgresTestDatabase.dropSchema(schema) }
            broker.cluster?.shutdown()
            try? FileManager.default.removeItem(at: directory)
        }

        do {
            let known = Set(config.services.keys)
            func environment(_ name: String, _ service: ComposeService) throws -> [String: String] {
                var env = try Self.loopback(
                    service.environment ?? [:], container: name, kafka: broker.servers, services: known)
                env["SAGA_TOPIC_PREFIX"] = prefix
                env["SAGA_OPS_PORT"] = String(try SagaProcess.freePort())
                env["SAGA_HTTP_PORT"] = String(try SagaProcess.freePort())
                return env
            }

            // The one-shots first, as compose orders them.
            for (name, service) in containers where service.restart == "no" {
                let command = service.command ?? []
                let result = try await Self.run(
                    saga, command, environment: try environment(name, service), directory: directory,
                    timeout: .seconds(120))
                try #require(
                    result.reason == .exit && result.status == 0,
                    "\(name): `saga \(command.joined(separator: " "))` exited \(result.status)\n\(result.stderr)")
                #expect(!result.stderr.contains("unknown variable"), "\(name): misspelt variable\n\(result.stderr)")
            }
            let seeded = try await Self.query(
                #"SELECT available AS value FROM "\#(schemaPrefix)inventory".stock WHERE sku = 'widget'"#)
            #expect(seeded == ["1000"], "migrate --seed did not seed the prefixed inventory schema")

            // Every daemon at once, as `docker compose up` starts them.
            for (name, service) in containers where service.restart != "no" {
                let log = directory.appendingPathComponent("\(name).log")
                _ = FileManager.default.createFile(atPath: log.path, contents: nil)
                let process = Process()
                process.executableURL = saga
                process.arguments = service.command ?? []
                process.environment = try environment(name, service)
                process.currentDirectoryURL = directory
                process.standardOutput = try FileHandle(forWritingTo: log)
                process.standardError = process.standardOutput
                try process.run()
                let check = (service.healthcheck?.test ?? []).drop { $0 == "CMD" }
                daemons.append(Daemon(name: name, process: process, log: log, healthcheck: Array(check)))
            }
            #expect(daemons.count == 7)

            // Each daemon's health check, as the engine would run it, until it passes (all polled together).
            for daemon in daemons {
                #expect(daemon.healthcheck.first == "saga", "\(daemon.name): health check \(daemon.healthcheck)")
            }
            var last: [String: Finished] = [:]
            let deadline = ContinuousClock.now + .seconds(60)
            while ContinuousClock.now < deadline {
                let waiting = daemons.filter { last[$0.name]?.status != 0 && $0.process.isRunning }
                if waiting.isEmpty { break }
                let results = try await Self.runAll(
                    saga, waiting.map { (Array($0.healthcheck.dropFirst()), $0.process.environment) },
                    directory: directory, timeout: .seconds(15))
                for (daemon, result) in zip(waiting, results) { last[daemon.name] = result }
                try await Task.sleep(for: .milliseconds(500))
            }
            for daemon in daemons {
                let answer = last[daemon.name]
                #expect(
                    answer?.status == 0,
                    """
                    \(daemon.name) (saga \(daemon.process.arguments?.joined(separator: " ") ?? "")) never passed its \
                    health check `\(daemon.healthcheck.joined(separator: " "))` within 60 s\
                    \(daemon.process.isRunning ? "" : " (it exited)"): \(answer.map { $0.stdout + $0.stderr } ?? "not run")
                    its output:
                    \(daemon.output)
                    """)
            }

            // What the containers serve: liveness and metrics on the ops port, the orders API on its own.
            for daemon in daemons where daemon.process.isRunning {
                let ops = "http://127.0.0.1:\(daemon.process.environment?["SAGA_OPS_PORT"] ?? "")"
                #expect(try await SagaProcess.get(ops + "/health/live").status == 200, "\(daemon.name) /health/live")
                let metrics = try await SagaProcess.get(ops + "/metrics")
                #expect(metrics.status == 200 && metrics.body.contains("# TYPE"), "\(daemon.name) /metrics")
                if daemon.process.arguments == ["worker", "orders"] {
                    let api = "http://127.0.0.1:\(daemon.process.environment?["SAGA_HTTP_PORT"] ?? "")"
                    let unknown = try await SagaProcess.get(api + "/orders/\(UUID().uuidString.lowercased())")
                    #expect(unknown.status == 404, "the orders API: \(unknown)")
                }
            }
            for daemon in daemons { daemon.process.terminate() }  // SIGTERM
            for daemon in daemons {
                let deadline = ContinuousClock.now + .seconds(30)
                while daemon.process.isRunning && ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(100))
                }
                #expect(!daemon.process.isRunning, "\(daemon.name) did not exit within 30 s of SIGTERM")
                if daemon.process.isRunning { continue }
                #expect(
                    daemon.process.terminationReason == .exit && daemon.process.terminationStatus == 0,
                    "\(daemon.name) exited with \(daemon.process.terminationStatus) on SIGTERM:\n\(daemon.output)")
            }
            for daemon in daemons {
                #expect(
                    !daemon.fullOutput.contains("unknown variable"),
                    "\(daemon.name): misspelt variable\n\(daemon.output)")
            }
            // With the daemons gone, their health checks fail (all at once: each may wait for its timeout).
            let after = try await Self.runAll(
                saga, daemons.map { (Array($0.healthcheck.dropFirst()), $0.process.environment) },
                directory: directory, timeout: .seconds(15))
            for (daemon, result) in zip(daemons, after) {
                #expect(result.status != 0, "\(daemon.name): the health check passed with the daemon stopped")
            }
        } catch {
            await cleanUp()
            throw error
        }
        await cleanUp()
    }

    // MARK: the image

    @Test func theImageIsBuiltWithSwiftAndRunsOnDebianSlimAsAnUnprivilegedUser() throws {
        let stages = try Self.dockerfileStages()
        try #require(stages.count >= 2, "compose/Dockerfile is not multi-stage")
        let build = stages[0]
        let runtime = stages[stages.count - 1]
        #expect(build.from == "swift:6.3-bookworm")
        let swiftBuild = build.all("RUN").first { $0.contains("swift build") } ?? ""
        #expect(swiftBuild.contains("-c release") && swiftBuild.contains("--static-swift-stdlib"), "\(swiftBuild)")
        let copied = build.all("COPY").compactMap { $0.split(separator: " ").first.map(String.init) }
        for source in ["Package.swift", "Sources", "schemas"] { #expect(copied.contains(source), "COPY \(source)") }

        #expect(runtime.from == "debian:bookworm-slim")
        #expect(Set(["librdkafka1", "libpq5", "ca-certificates"]).isSubset(of: runtime.aptInstalled))
        let user = try #require(runtime.all("USER").last, "the runtime stage sets no USER")
        let uid = String(user.split(separator: ":").first ?? "")
        #expect(!["root", "0", ""].contains(uid), "runs as \(user)")
        let entrypoint = try #require(runtime.all("ENTRYPOINT").last)
        #expect(entrypoint == #"["/usr/local/bin/saga"]"#)
        #expect(
            runtime.all("COPY").contains {
                $0.hasPrefix("--from=\(build.name ?? "0") ") && $0.hasSuffix(" /usr/local/bin/saga")
            },
            "the binary is copied from the build stage onto PATH (the health check runs `saga health`)")
    }

    /// Every shared library the saga binary needs from the system — directly, or through the Swift runtime
    /// and Foundation, which `--static-swift-stdlib` links into the image's binary — comes from a Debian
    /// package that the runtime stage installs or that debian:bookworm-slim has.
    @Test func everySharedLibraryTheBinaryNeedsIsInTheRuntimeImage() throws {
        let saga = SagaProcess.executable
        try #require(FileManager.default.isExecutableFile(atPath: saga.path), "build the saga executable first")
        let runtime = try #require(try Self.dockerfileStages().last)
        let slim: Set<String> = ["libc6", "libgcc-s1", "libstdc++6", "zlib1g"]
        let allowed = runtime.aptInstalled.union(slim)

        let resolved = try Self.ldd(saga.path)
        var system: [String: String] = [:]  // library -> who needs it
        var queue = try Self.needed(saga.path).map { ($0, "saga") }
        var seen = Set<String>()
        while let (library, neededBy) = queue.popLast() {
            guard seen.insert(library).inserted else { continue }
            guard Self.isLinkedStatically(library) else {
                system[library] = neededBy
                continue
            }
            let path = try #require(resolved[library], "ldd does not resolve \(library)")
            queue += try Self.needed(path).map { ($0, library) }
        }
        #expect(system.keys.contains("libc.so.6"))
        #expect(system.keys.contains("librdkafka.so.1") && system.keys.contains("libpq.so.5"))

        for (library, neededBy) in system.sorted(by: { $0.key < $1.key }) {
            let owners = try Self.debianPackages(owning: library)
            #expect(!owners.isEmpty, "\(library) (needed by \(neededBy)) belongs to no Debian package")
            #expect(
                owners.contains { allowed.contains($0) },
                """
                \(library) (from \(owners.sorted().joined(separator: ", ")), needed by \(neededBy)) is neither \
                installed by compose/Dockerfile's runtime stage (\(runtime.aptInstalled.sorted().joined(separator: " "))) \
                nor part of debian:bookworm-slim (\(slim.sorted().joined(separator: " ")))
                """)
        }
    }

    // MARK: helpers

    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    /// `docker-compose -f compose/docker-compose.yml config`, which must exit 0, parsed.
    /// - Parameter shell: variables of the shell that runs it (which the file may interpolate); none of the
    ///   caller's COMPOSE_* or OTEL_* variables are passed on.
    static func config(shell: [String: String] = [:]) throws -> ComposeConfig {
        let tool = try #require(
            executable("docker-compose"),
            "docker-compose is not installed (Debian: apt-get install docker-compose; scripts/test installs it)")
        let env = ProcessInfo.processInfo.environment.filter {
            !$0.key.hasPrefix("COMPOSE_") && !$0.key.hasPrefix("OTEL_")
        }.merging(shell) { $1 }
        let result = try runBlocking(
            tool, ["-f", root.appendingPathComponent("compose/docker-compose.yml").path, "config"], environment: env,
            directory: root)
        try #require(result.status == 0, "docker-compose config exited \(result.status):\n\(result.stderr)")
        return try YAMLDecoder().decode(ComposeConfig.self, from: result.stdout)
    }

    /// The services run from the saga image (built from compose/Dockerfile), by name.
    static func sagaServices(_ config: ComposeConfig) -> [String: ComposeService] {
        config.services.filter { $0.value.build?.dockerfile?.hasSuffix("compose/Dockerfile") ?? false }
    }

    /// A container's environment pointed at the test's loopback infrastructure.
    /// - Throws: when a value still names a compose service after the known addresses were replaced.
    static func loopback(
        _ environment: [String: String], container: String, kafka: String, services: Set<String>
    ) throws -> [String: String] {
        var env: [String: String] = [:]
        for (key, value) in environment {
            if key == "SAGA_KAFKA_BOOTSTRAP" {
                env[key] = kafka
            } else if key.hasSuffix("_DATABASE_URL") {
                env[key] = PostgresTestDatabase.url
            } else if key == "SAGA_HTTP_HOST" {
                env[key] = "127.0.0.1"
            } else {
                for service in services
                where value.hasPrefix(service + ":") || value.contains("//" + service) || value.contains("@" + service)
                    || value.contains("," + service + ":")
                {
                    Issue.record(
                        "\(container): \(key)=\(value) names the compose service \(service); the test does not know its loopback address"
                    )
                }
                env[key] = unescapeDollars(value)
            }
        }
        return env
    }

    /// Compose writes a literal `$` as `$$`.
    static func unescapeDollars(_ text: String) -> String { text.replacingOccurrences(of: "$$", with: "$") }

    static func executable(_ name: String) -> URL? {
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let url = URL(fileURLWithPath: String(dir)).appendingPathComponent(name)
            if FileManager.default.isExecutableFile(atPath: url.path) { return url }
        }
        return nil
    }

    static func temporaryDirectory(_ name: String) throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("\(name)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    /// One query on the test database: the column `value` of each row.
    static func query(_ sql: String) async throws -> [String?] {
        let pool = PostgresPool(
            configuration: PostgresTestDatabase.configuration(), size: 1, logger: Logger(label: "test"))
        do {
            let rows = try await pool.query(sql)
            await pool.close()
            return rows.map { $0["value"] }
        } catch {
            await pool.close()
            throw error
        }
    }

    // MARK: processes

    struct Finished: Sendable {
        var status: Int32
        var reason: Process.TerminationReason
        var stdout: String
        var stderr: String
    }

    /// Runs a program to its end (killed after `timeout`), its output collected through files.
    static func run(
        _ executable: URL, _ arguments: [String], environment: [String: String]?, directory: URL,
        timeout: Duration = .seconds(60)
    ) async throws -> Finished {
        let (process, out, err) = try start(executable, arguments, environment: environment, directory: directory)
        let deadline = ContinuousClock.now + timeout
        while process.isRunning && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(50)) }
        return finish(process, out, err)
    }

    /// Runs `executable` once per argument list, all at once; each is killed after `timeout`.
    static func runAll(
        _ executable: URL, _ runs: [([String], [String: String]?)], directory: URL, timeout: Duration
    ) async throws -> [Finished] {
        let started = try runs.map { try start(executable, $0.0, environment: $0.1, directory: directory) }
        let deadline = ContinuousClock.now + timeout
        while started.contains(where: { $0.0.isRunning }) && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        return started.map { finish($0.0, $0.1, $0.2) }
    }

    /// `run` for synchronous tests (tools that end quickly).
    static func runBlocking(
        _ executable: URL, _ arguments: [String], environment: [String: String]? = nil, directory: URL? = nil
    ) throws -> Finished {
        let (process, out, err) = try start(
            executable, arguments, environment: environment, directory: directory ?? root)
        process.waitUntilExit()
        return finish(process, out, err)
    }

    private static func start(
        _ executable: URL, _ arguments: [String], environment: [String: String]?, directory: URL
    ) throws -> (Process, URL, URL) {
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("out-\(UUID().uuidString)")
        let err = FileManager.default.temporaryDirectory.appendingPathComponent("err-\(UUID().uuidString)")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        _ = FileManager.default.createFile(atPath: err.path, contents: nil)
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        if let environment { process.environment = environment }
        process.currentDirectoryURL = directory
        process.standardOutput = try FileHandle(forWritingTo: out)
        process.standardError = try FileHandle(forWritingTo: err)
        process.standardInput = FileHandle.nullDevice
        try process.run()
        return (process, out, err)
    }

    private static func finish(_ process: Process, _ out: URL, _ err: URL) -> Finished {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        defer {
            try? FileManager.default.removeItem(at: out)
            try? FileManager.default.removeItem(at: err)
        }
        return Finished(
            status: process.terminationStatus, reason: process.terminationReason,
            stdout: (try? String(contentsOf: out, encoding: .utf8)) ?? "",
            stderr: (try? String(contentsOf: err, encoding: .utf8)) ?? "")
    }

    final class Daemon {
        let name: String
        let process: Process
        let log: URL
        let healthcheck: [String]
        init(name: String, process: Process, log: URL, healthcheck: [String]) {
            self.name = name
            self.process = process
            self.log = log
            self.healthcheck = healthcheck
        }
        /// What the process wrote (stdout and stderr).
        var fullOutput: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }
        /// The end of it, for failure messages.
        var output: String { String(fullOutput.suffix(6000)) }
    }

    // MARK: the Dockerfile and the binary

    struct Stage {
        var from: String
        var name: String?
        var instructions: [(keyword: String, arguments: String)] = []

        func all(_ keyword: String) -> [String] { instructions.filter { $0.keyword == keyword }.map(\.arguments) }

        /// The packages that `apt-get install` lines of this stage install.
        var aptInstalled: Set<String> {
            var packages = Set<String>()
            for run in all("RUN") {
                for command in run.split(separator: "&&").flatMap({ $0.split(separator: ";") }) {
                    let words = command.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
                    guard let apt = words.firstIndex(where: { $0 == "apt-get" || $0 == "apt" }),
                        let install = words[apt...].firstIndex(of: "install")
                    else { continue }
                    packages.formUnion(words[(install + 1)...].filter { !$0.hasPrefix("-") })
                }
            }
            return packages
        }
    }

    /// compose/Dockerfile's stages: continuation lines joined, comments dropped.
    static func dockerfileStages() throws -> [Stage] {
        let text = try String(
            contentsOf: root.appendingPathComponent("compose/Dockerfile"), encoding: .utf8)
        var logical: [String] = []
        var pending = ""
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("#") || (line.isEmpty && pending.isEmpty) { continue }
            if line.hasSuffix("\\") {
                pending += String(line.dropLast()) + " "
            } else {
                logical.append(pending + line)
                pending = ""
            }
        }
        var stages: [Stage] = []
        for line in logical where !line.isEmpty {
            let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
            let keyword = parts[0].uppercased()
            let arguments = parts.count > 1 ? parts[1].trimmingCharacters(in: .whitespaces) : ""
            if keyword == "FROM" {
                let words = arguments.split(separator: " ").map(String.init)
                let name = words.count >= 3 && words[1].uppercased() == "AS" ? words[2] : nil
                stages.append(Stage(from: words.first ?? "", name: name))
            } else if !stages.isEmpty {
                stages[stages.count - 1].instructions.append((keyword, arguments))
            }
        }
        return stages
    }

    /// Libraries `--static-swift-stdlib` links into the binary: the Swift runtime, Foundation, Dispatch.
    static func isLinkedStatically(_ library: String) -> Bool {
        ["libswift", "libFoundation", "lib_FoundationICU", "libdispatch", "libBlocksRuntime"].contains {
            library.hasPrefix($0)
        }
    }

    /// The NEEDED entries of an ELF file (`readelf -d`).
    static func needed(_ path: String) throws -> [String] {
        let readelf = try #require(executable("readelf"), "readelf is not installed (Debian: binutils)")
        let result = try runBlocking(readelf, ["-d", path])
        try #require(result.status == 0, "readelf -d \(path): \(result.stderr)")
        return result.stdout.split(separator: "\n").filter { $0.contains("(NEEDED)") }.compactMap { line in
            guard let open = line.firstIndex(of: "["), let close = line.lastIndex(of: "]") else { return nil }
            return String(line[line.index(after: open)..<close])
        }
    }

    /// Where the dynamic loader finds each library the binary loads (`ldd`).
    static func ldd(_ path: String) throws -> [String: String] {
        let ldd = try #require(executable("ldd"), "ldd is not installed")
        let result = try runBlocking(ldd, [path])
        try #require(result.status == 0, "ldd \(path): \(result.stderr)")
        var out: [String: String] = [:]
        for line in result.stdout.split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count >= 3, parts[1] == "=>" {
                out[String(parts[0]).trimmingCharacters(in: .whitespaces)] = String(parts[2])
            }
        }
        return out
    }

    /// The Debian packages that ship a file named `library` (`dpkg -S`).
    static func debianPackages(owning library: String) throws -> Set<String> {
        let dpkg = try #require(executable("dpkg"), "dpkg is not installed")
        let result = try runBlocking(dpkg, ["-S", "*/" + library])
        var packages = Set<String>()
        for line in result.stdout.split(separator: "\n") {
            guard let separator = line.range(of: ": /") else { continue }
            for package in line[..<separator.lowerBound].split(separator: ",") {
                let name = package.trimmingCharacters(in: .whitespaces)
                packages.insert(String(name.split(separator: ":").first ?? ""))
            }
        }
        return packages
    }
}

/// `docker-compose config` output, as far as the tests read it.
struct ComposeConfig: Decodable {
    var services: [String: ComposeService]
}

struct ComposeService: Decodable {
    struct Build: Decodable {
        var context: String?
        var dockerfile: String?
    }
    struct Healthcheck: Decodable {
        var test: [String]?
    }
    struct Dependency: Decodable {
        var condition: String?
    }

    var image: String?
    var build: Build?
    var command: [String]?
    var entrypoint: [String]?
    var environment: [String: String]?
    var healthcheck: Healthcheck?
    var restart: String?
    var ports: [String]?
    var volumes: [String]?
    var profiles: [String]?
    var dependsOn: [String: Dependency]?
    var containerName: String?

    enum CodingKeys: String, CodingKey {
        case image, build, command, entrypoint, environment, healthcheck, restart, ports, volumes, profiles
        case dependsOn = "depends_on"
        case containerName = "container_name"
    }
}
