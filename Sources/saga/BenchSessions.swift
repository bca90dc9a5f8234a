import Foundation
import Logging
import SagaEngine
import SagaPostgres

/// The PostgreSQL server's CPU over a phase, by the `application_name` of its client sessions (the engine's
/// components name theirs: `saga worker inventory`, `saga relay orders`, `saga api orders`, `saga tracker`, …; see
/// `PostgresConfiguration.named(_:)`), so that the report says which component the server works for. Read from
/// `pg_stat_activity` and each backend's /proc entry, so only for a server on this machine.
final class PostgresSessionWatch: Sendable {
    private let connection: PostgresConnection

    private init(connection: PostgresConnection) {
        self.connection = connection
    }

    /// A watch on the server at `url`, or nil when it cannot be reached. For a server on this machine only (see
    /// `CommitProbe.postmaster(url:logger:)`): elsewhere no backend is in /proc, and every sample is empty.
    static func start(url: String, logger: Logger) async -> PostgresSessionWatch? {
        var configuration = PostgresConfiguration(url: url).named("bench")
        configuration.connectTimeoutSeconds = 5
        guard let connection = try? await PostgresConnection.connect(configuration, logger: logger) else { return nil }
        return PostgresSessionWatch(connection: connection)
    }

    /// One client session: its application name and CPU seconds so far.
    struct Session: Sendable, Equatable {
        var name: String
        var cpuSeconds: Double
    }

    /// Every client session's name and CPU seconds, by backend PID; nil when the server cannot be asked.
    func sample() async -> [Int32: Session]? {
        guard
            let rows = try? await connection.query(
                """
                SELECT pid, application_name FROM pg_stat_activity
                WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
                """)
        else { return nil }
        var sessions: [Int32: Session] = [:]
        for row in rows {
            guard let pid = try? row.decode("pid", as: Int.self),
                let name = try? row.decode("application_name", as: String.self),
                let cpu = ProcessSample.read(Int32(pid))?.cpuSeconds
            else { continue }
            sessions[Int32(pid)] = Session(name: name.isEmpty ? "(no application_name)" : name, cpuSeconds: cpu)
        }
        return sessions
    }

    func close() async { await connection.close() }

    /// The CPU each application name's sessions used between `start` and `end`, most first: a session in both
    /// samples counts what it used in between, one that began in between (not in `start`, or its PID then another
    /// session's) all it used. One that ended in between is not in `end` and is left out (the server's whole
    /// figure, `postgres (all backends)`, has it).
    static func figures(from start: [Int32: Session], to end: [Int32: Session], seconds: Double) -> [SessionFigures] {
        var byName: [String: SessionFigures] = [:]
        for (pid, now) in end {
            let before = start[pid].flatMap { $0.name == now.name ? $0.cpuSeconds : nil } ?? 0
            byName[now.name, default: SessionFigures(name: now.name, sessions: 0, cpuSeconds: 0, cpuShare: 0)].add(
                now.cpuSeconds - before, seconds: seconds)
        }
        return byName.values.sorted { ($0.cpuSeconds, $1.name) > ($1.cpuSeconds, $0.name) }
    }
}

/// The CPU the server's sessions of one application name used over a phase.
struct SessionFigures: Sendable, Equatable {
    var name: String
    var sessions: Int
    var cpuSeconds: Double
    var cpuShare: Double

    mutating func add(_ cpu: Double, seconds: Double) {
        sessions += 1
        cpuSeconds += cpu
        cpuShare = seconds > 0 ? cpuSeconds / seconds : 0
    }

    var json: JSONValue {
        .object([
            "applicationName": .string(name), "sessions": .integer(Int64(sessions)),
            "cpuSeconds": .number(round2(cpuSeconds)), "cpuPercent": .number(round1(cpuShare * 100)),
        ])
    }

    var text: String {
        "\(name)\(sessions > 1 ? " (×\(sessions))" : "") \(fmt(cpuSeconds)) s (\(fmt(cpuShare * 100)) %)"
    }
}
