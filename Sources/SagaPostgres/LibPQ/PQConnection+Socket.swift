import CLibPQ
import Glibc

extension PQConnection {
    /// The keepalive options of the session's socket as the kernel has them (zeros for a Unix socket).
    func socketOptions() -> PostgresSocketOptions {
        let fd = socketDescriptor
        guard fd >= 0 else { return PostgresSocketOptions() }
        func option(_ level: Int32, _ name: Int32) -> Int {
            var value: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(fd, level, name, &value, &length) == 0 else { return 0 }
            return Int(value)
        }
        let tcp = Int32(IPPROTO_TCP)
        return PostgresSocketOptions(
            keepalive: option(SOL_SOCKET, SO_KEEPALIVE) != 0, idleSeconds: option(tcp, TCP_KEEPIDLE),
            intervalSeconds: option(tcp, TCP_KEEPINTVL), count: option(tcp, TCP_KEEPCNT),
            userTimeoutMilliseconds: option(tcp, TCP_USER_TIMEOUT))
    }
}

/// TCP options of a session's socket, read back from the kernel (for tests and diagnostics).
struct PostgresSocketOptions: Sendable, Hashable {
    var keepalive = false
    var idleSeconds = 0
    var intervalSeconds = 0
    var count = 0
    var userTimeoutMilliseconds = 0
}

extension PostgresConnection {
    /// The keepalive options of the session's socket as the kernel has them.
    func socketOptions() async throws(PostgresError) -> PostgresSocketOptions {
        try await run { connection throws(PostgresError) in connection.socketOptions() }
    }
}

extension PQConnection {
    /// The session settings a connection gets from its configuration, set in the statement that sets the
    /// time zone (no extra round trip): the `search_path`, the statement and lock timeouts, the plan cache mode,
    /// and, over TCP, the server's end of the keepalives with the same values as the client's (the URL's, when it
    /// names them).
    func sessionSettings(_ configuration: PostgresConfiguration) -> [(String, String)] {
        var settings: [(String, String)] = []
        if let searchPath = configuration.searchPath { settings.append(("search_path", searchPath)) }
        if let timeout = configuration.statementTimeout {
            settings.append(("statement_timeout", String(Self.milliseconds(timeout))))
        }
        if let timeout = configuration.lockTimeout {
            settings.append(("lock_timeout", String(Self.milliseconds(timeout))))
        }
        if let timeout = configuration.idleSessionTimeout {
            settings.append(("idle_in_transaction_session_timeout", String(Self.milliseconds(timeout))))
            if serverVersion >= 140000 {
                settings.append(("idle_session_timeout", String(Self.milliseconds(timeout))))
            }
        }
        if configuration.genericPlans && serverVersion >= 120000 {
            settings.append(("plan_cache_mode", "force_generic_plan"))
        }
        let options = socketOptions()
        if options.keepalive {
            settings += [
                ("tcp_keepalives_idle", String(options.idleSeconds)),
                ("tcp_keepalives_interval", String(options.intervalSeconds)),
                ("tcp_keepalives_count", String(options.count)),
                ("tcp_user_timeout", String(options.userTimeoutMilliseconds)),
            ]
        }
        return settings
    }

    /// Whole milliseconds, at least 1 for a positive duration (0 would mean "no timeout").
    static func milliseconds(_ duration: Duration) -> Int {
        guard duration > .zero else { return 0 }
        let (seconds, attoseconds) = duration.components
        return max(1, Int(seconds * 1000 + attoseconds / 1_000_000_000_000_000))
    }
}
