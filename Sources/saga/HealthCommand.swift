import ArgumentParser
import Foundation
import SagaEngine

struct HealthCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "health",
        abstract: "Ask a running daemon whether it is ready (exit 0) or not (exit 1): the container health check.",
        discussion: """
            GETs /health/ready (or /health/live with --live) from the daemon's ops port on this machine \
            (SAGA_OPS_PORT, default 9090) and prints the answer. Exit status 0 when it answers 200, 1 otherwise.
            """)

    @Flag(help: "Ask whether the process is alive instead of whether its database and broker answer.")
    var live = false

    @Option(help: "The daemon's ops URL (default http://127.0.0.1:SAGA_OPS_PORT).")
    var url: String?

    @Option(help: "How long to wait for the answer, in seconds.")
    var timeout: Int = 5

    func run() async throws {
        let base = try url ?? "http://127.0.0.1:\(SagaEnvironment.load().opsPort)"
        let target = base + (live ? "/health/live" : "/health/ready")
        do {
            let (status, body) = try await LocalHTTP.send(.GET, target, timeout: .seconds(timeout))
            print("\(target): \(status) \(String(decoding: body, as: UTF8.self))")
            if status != 200 { throw ExitCode.failure }
        } catch let exit as ExitCode {
            throw exit
        } catch {
            print("\(target): no answer (\(error))")
            throw ExitCode.failure
        }
    }
}
