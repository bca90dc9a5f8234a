import Foundation
import SagaPostgres
import Testing

/// The setup the two commands share (scripts/lib.sh, through `scripts/pg`) works from any checkout: also from a
/// `0700` folder that the `postgres` OS user cannot enter, as root (what CI and a newcomer under /root do).
@Suite struct SetupScriptTests {
    /// The checkout this test was built from.
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    @Test func theLocalPostgreSQLStartsAndStopsFromACheckoutInAPrivateFolder() async throws {
        let fm = FileManager.default
        // Like mktemp -d: a 0700 folder, as /root or a private temporary checkout.
        let outer = fm.temporaryDirectory.appendingPathComponent("saga-private-\(UUID().uuidString.prefix(8))")
        try fm.createDirectory(at: outer, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        defer { try? fm.removeItem(at: outer) }
        let checkout = outer.appendingPathComponent("checkout")
        try fm.createDirectory(at: checkout, withIntermediateDirectories: false)
        try fm.copyItem(at: Self.root.appendingPathComponent("scripts"), to: checkout.appendingPathComponent("scripts"))
        // Below the kernel's ephemeral ports (32768–60999 on Linux by default): a port in that range, as 55450 was,
        // can be handed meanwhile to a socket of a test running in parallel (a mock broker's listener, a client's
        // end of a connection), and PostgreSQL then fails to bind it.
        let port = 25_400 + Int.random(in: 0..<500)
        let environment = ["SAGA_PG_PORT": String(port)]
        let url = "postgresql://postgres@127.0.0.1:\(port)/saga"

        let started = try await Self.run(checkout, ["scripts/pg", "start"], environment: environment)
        let link = checkout.appendingPathComponent(".local/postgres").path
        let dataFolder = try? fm.destinationOfSymbolicLink(atPath: link)
        defer { if let dataFolder { try? fm.removeItem(atPath: dataFolder) } }
        #expect(started.status == 0, "scripts/pg start failed:\n\(started.output)")
        #expect(started.output.contains(url), "\(started.output)")
        #expect(getuid() != 0 || dataFolder != nil, "as root, the data must live where the postgres user can reach it")

        var answered: Int?
        do {
            let connection = try await PostgresConnection.connect(
                PostgresConfiguration(url: url), logger: .init(label: "test"))
            answered = try await connection.query("SELECT 1 AS one").first?.decode("one", as: Int.self)
            await connection.close()
        } catch {
            Issue.record("the started server does not answer: \(error)")
        }
        #expect(answered == 1)

        // Stopped by the same script, whatever happened above.
        let stopped = try await Self.run(checkout, ["scripts/pg", "stop"], environment: environment)
        #expect(stopped.status == 0, "scripts/pg stop failed:\n\(stopped.output)")
        var gone = PostgresConfiguration(url: url)
        gone.connectTimeoutSeconds = 2
        await #expect(throws: PostgresError.self) {
            _ = try await PostgresConnection.connect(gone, logger: .init(label: "test"))
        }
    }

    /// Runs `arguments` in `directory` with bash (killed after two minutes): its exit status and everything it printed.
    static func run(_ directory: URL, _ arguments: [String], environment: [String: String]) async throws -> (
        status: Int32, output: String
    ) {
        // Foundation notices a child's end when every copy of a descriptor it gave the child is closed; the server
        // that `scripts/pg start` leaves running would inherit one. So the script runs with every descriptor above
        // 2 closed, as from a terminal.
        let closeInherited = #"for fd in $(ls /proc/$$/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done; exec "$@""#
        let finished = try await ComposeTests.run(
            URL(fileURLWithPath: "/bin/bash"), ["-c", closeInherited, "bash"] + arguments,
            environment: ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("SAGA_") }
                .merging(environment) { _, new in new },
            directory: directory, timeout: .seconds(120))
        return (finished.status, finished.stdout + finished.stderr)
    }
}
