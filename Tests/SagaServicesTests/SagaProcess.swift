import Foundation
import SagaTestSupport
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// The `saga` executable run as a real process, as in a container: configured by environment, its stderr
/// kept in a file, stopped by SIGTERM.
final class SagaProcess: @unchecked Sendable {
    // @unchecked: Process is used from the test's own task only.
    let process = Process()
    let log: URL
    let arguments: [String]

    /// The `saga` executable built next to the test bundle.
    static var executable: URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("saga")
    }

    /// Starts `saga arguments...` with the test process's environment plus `environment`.
    init(_ arguments: [String], environment: [String: String]) throws {
        try #require(
            FileManager.default.isExecutableFile(atPath: Self.executable.path),
            "build the saga executable first (swift build --build-tests builds it)")
        self.arguments = arguments
        log = FileManager.default.temporaryDirectory.appendingPathComponent("saga-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        process.executableURL = Self.executable
        process.arguments = arguments
        // The test's own SAGA_* / OTEL_* settings stay out: the daemon gets only what the test gives it.
        // Without a real Kafka the broker is a mock cluster (the test's own, or scripts/test's `saga broker`), and
        // the daemon is told so, as `saga dev` tells its processes: it answers no CreateTopics.
        let embedded = KafkaTestBroker.usesRealKafka ? [:] : ["SAGA_KAFKA_EMBEDDED": "1"]
        process.environment = ProcessInfo.processInfo.environment.filter {
            !$0.key.hasPrefix("SAGA_") && !$0.key.hasPrefix("OTEL_")
        }.merging(embedded) { _, new in new }.merging(environment) { _, new in new }
        let output = try FileHandle(forWritingTo: log)
        process.standardError = output
        process.standardOutput = output
        try process.run()
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(at: log)
    }

    /// What it wrote to stdout and stderr so far.
    var output: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }

    /// Its output as JSON log lines (lines that are not JSON objects are left out).
    var logLines: [[String: Any]] {
        output.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }

    /// Waits for it to exit; nil when it is still running after `timeout`.
    func waitForExit(timeout: Duration = .seconds(30)) async throws -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(50)) }
        return process.isRunning ? nil : process.terminationStatus
    }

    /// SIGTERM, then its exit status (nil, after a SIGKILL, when it did not stop within `timeout`).
    func stop(timeout: Duration = .seconds(30)) async throws -> Int32? {
        guard process.isRunning else { return process.terminationStatus }
        process.terminate()
        let status = try await waitForExit(timeout: timeout)
        if status == nil { kill(process.processIdentifier, SIGKILL) }
        return status
    }

    /// Runs `saga arguments...` to completion: its exit status and output.
    static func run(_ arguments: [String], environment: [String: String], timeout: Duration = .seconds(60))
        async throws -> (status: Int32?, output: String)
    {
        let p = try SagaProcess(arguments, environment: environment)
        let status = try await p.waitForExit(timeout: timeout)
        if status == nil { _ = try await p.stop() }
        return (status, p.output)
    }

    /// A loopback port nothing listens on right now.
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard bound else { throw POSIXError(.EADDRINUSE) }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// GET `url`: status and body, retrying while nothing listens yet (for up to 10 s).
    static func get(_ url: String) async throws -> (status: Int, body: String) {
        let deadline = ContinuousClock.now + .seconds(10)
        while true {
            do {
                let (data, response) = try await URLSession.shared.data(from: URL(string: url)!)
                return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
            } catch  where ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(200))  // the server may still be starting
            }
        }
    }

    /// The value of the Prometheus sample `series` (name and labels exactly as exposed), if present.
    static func sample(_ metrics: String, _ series: String) -> Double? {
        for line in metrics.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1).trimmingCharacters(in: .whitespaces))
        }
        return nil
    }
}
