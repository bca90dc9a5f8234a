import Foundation

/// How to reach a PostgreSQL server.
///
/// Every connection made from a configuration also sets `client_encoding` to UTF8,
/// `TimeZone` to UTC and `DateStyle` to ISO, which the text decoders rely on, and has TCP keepalives
/// and `tcp_user_timeout` on (see ``keepalivesIdleSeconds``).
public struct PostgresConfiguration: Sendable {
    /// A libpq connection URI: `postgresql://user:password@host:port/database?param=value`.
    /// Any libpq URI parameter is accepted (`sslmode`, `options`, ...). The explicit fields
    /// below win over the same setting given in the URL.
    public var url: String
    /// Reported to the server as `application_name` (visible in `pg_stat_activity`). The engine's components add
    /// their role to it (``named(_:)``), e.g. `saga worker inventory`.
    public var applicationName: String = "saga"
    /// Schemas to put on each connection's `search_path` (e.g. `"orders"` or `"orders, public"`),
    /// or `nil` to keep the server's default.
    public var searchPath: String? = nil
    /// How long establishing a connection may take. libpq treats 1 as 2, and 0 as no limit.
    public var connectTimeoutSeconds: Int = 5
    /// TCP keepalives on every connection, so that a peer gone without a word (a frozen host, a cut
    /// network) is noticed in seconds, not hours: after this many idle seconds the client probes the
    /// server, every ``keepalivesIntervalSeconds``, and gives the connection up after ``keepalivesCount``
    /// unanswered probes (about 11 s with the defaults). Over TCP the server's end of the session gets the
    /// same values (`tcp_keepalives_*`). Unlike the fields above, these are defaults: the URL's own
    /// `keepalives_idle`, `keepalives_interval`, `keepalives_count` and `tcp_user_timeout` win.
    public var keepalivesIdleSeconds: Int = 5
    /// Seconds between two keepalive probes (see ``keepalivesIdleSeconds``).
    public var keepalivesIntervalSeconds: Int = 2
    /// Unanswered keepalive probes after which the connection is given up (see ``keepalivesIdleSeconds``).
    public var keepalivesCount: Int = 3
    /// How long sent data may stay unacknowledged before the connection is given up (`tcp_user_timeout`).
    public var tcpUserTimeoutMilliseconds: Int = 10_000
    /// `statement_timeout` of every session (a statement running longer fails with SQLSTATE 57014), or
    /// `nil` for the server's (by default none).
    public var statementTimeout: Duration? = nil
    /// `lock_timeout` of every session (waiting longer for a lock fails with SQLSTATE 55P03), or `nil` for
    /// the server's (by default none).
    public var lockTimeout: Duration? = nil
    /// Ends the session at the server once it has been idle this long, in or out of a transaction
    /// (`idle_session_timeout`, PostgreSQL 14+, and `idle_in_transaction_session_timeout`), or `nil` for
    /// the server's. For a session whose locks must not outlive a frozen client: a process stopped with
    /// SIGSTOP keeps its socket alive (its kernel answers keepalives), so only the server can notice it.
    public var idleSessionTimeout: Duration? = nil
    /// Prepared statements always run their generic plan, planned once per session (`plan_cache_mode =
    /// force_generic_plan`, PostgreSQL 12+); `false` (the default) leaves the choice to the server (`auto`), which
    /// plans a statement anew for every execution whenever planning it for the parameters' values promises a
    /// cheaper plan. Set-based statements over `unnest($1::…[])` and `= ANY($1)` promise that every time (the
    /// planner knows an array's length only then): the orders API's read of a group was planned on every call,
    /// ~0.4 ms each, 4–8× the time spent running it. A generic plan is fitted to the table's size when it is made,
    /// though: one made while a queue-like table (outbox, deadlines) is nearly empty scans it whole once it has
    /// grown, so this is for sessions whose statements look rows up by key in tables of a lasting size.
    public var genericPlans = false

    /// This configuration for the sessions of one component: its ``applicationName`` followed by `role` (e.g.
    /// `saga relay orders`), so that `pg_stat_activity` (and a per-session look at the server's CPU, such as
    /// `saga bench` reports) tells the components apart. The server keeps the first 63 bytes.
    public func named(_ role: String) -> PostgresConfiguration {
        var named = self
        named.applicationName = applicationName + " " + role
        return named
    }

    /// A configuration for the server at `url` (`postgresql://user:password@host:port/database?…`) whose
    /// sessions use ``searchPath``, when given, as their `search_path`.
    public init(url: String, searchPath: String? = nil) {
        self.url = url
        self.searchPath = searchPath
    }

    /// The URL with its password (user info or `password=` parameter) replaced by `***`: the only form of
    /// it that may be printed or logged.
    public var redactedURL: String { redact(url) }

    /// Removes the URL's password from `text` (libpq quotes a malformed URI in its messages).
    func redact(_ text: String) -> String {
        var result = text
        let secrets = Self.passwords(in: url)
        if !secrets.isEmpty {
            var redactedURL = url
            for secret in secrets { redactedURL = redactedURL.replacingAll(secret, with: "***") }
            result = result.replacingAll(url, with: redactedURL)
            for secret in secrets { result = result.replacingAll(secret, with: "***") }
        }
        return result
    }

    /// The password in a URI's user info or `password=` query parameter, raw and percent-decoded.
    static func passwords(in url: String) -> [String] {
        var found: [String] = []
        if let schemeEnd = url.range(of: "://") {
            let rest = url[schemeEnd.upperBound...]
            let authority = rest.prefix { $0 != "/" && $0 != "?" }
            if let at = authority.lastIndex(of: "@") {
                let userInfo = authority[..<at]
                if let colon = userInfo.firstIndex(of: ":") {
                    found.append(String(userInfo[userInfo.index(after: colon)...]))
                }
            }
        }
        if let query = url.split(separator: "?", maxSplits: 1).dropFirst().first {
            for pair in query.split(separator: "&") where pair.hasPrefix("password=") {
                found.append(String(pair.dropFirst("password=".count)))
            }
        }
        var all = found.filter { !$0.isEmpty }
        for secret in all { if let decoded = secret.removingPercentEncoding, decoded != secret { all.append(decoded) } }
        return all.sorted { $0.count > $1.count }
    }
}

extension String {
    func replacingAll(_ target: String, with replacement: String) -> String {
        guard !target.isEmpty else { return self }
        return self.split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }
}
