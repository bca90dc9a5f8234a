import Foundation
import Logging
import SagaTestSupport
import Testing

@testable import saga

/// The probes `saga bench` measures its limits with, and how it finds the processes it reports.
@Suite struct BenchProbeTests {
    /// Whether a PostgreSQL server runs on this machine (not, say, only in a container of another machine).
    static var postgresRunsHere: Bool {
        let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc"))?.filter { Int($0) != nil } ?? []
        return pids.contains {
            (try? String(contentsOfFile: "/proc/\($0)/comm", encoding: .utf8))?.hasPrefix("postgres") == true
        }
    }

    /// The bench reports the whole PostgreSQL server's CPU through its postmaster, found as the parent of a
    /// backend: it must be found every time (a run once printed no PostgreSQL line when the backend it asked had
    /// already exited, its connection closed, before /proc was read).
    @Test(.enabled(if: postgresRunsHere, "the test database's server runs on this machine"))
    func thePostmasterIsFoundEveryTime() async throws {
        var found: [Int32?] = []
        for _ in 0..<40 {
            found.append(await CommitProbe.postmaster(url: PostgresTestDatabase.url, logger: Logger(label: "test")))
        }
        #expect(found.allSatisfy { $0 != nil }, "found \(found.compactMap { $0 }.count) of \(found.count) times")
        #expect(Set(found.compactMap { $0 }).count == 1)
    }
}
