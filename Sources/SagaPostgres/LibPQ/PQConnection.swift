import CLibPQ
import Foundation
import Logging

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Owns exactly one `PGconn` and is the only place that calls libpq for it.
///
/// Not thread-safe and not `Sendable`: the owner confines every call to one serial queue or one
/// thread. `PQfinish` runs once, in `close()` or in `deinit`.
final class PQConnection {
    private var conn: OpaquePointer?
    /// Set when the server announced (FATAL) that it ends the session, before libpq noticed the close.
    private var serverEndedSession = false
    private let logger: Logger
    private let configuration: PostgresConfiguration

    private init(conn: OpaquePointer, configuration: PostgresConfiguration, logger: Logger) {
        self.conn = conn
        self.configuration = configuration
        self.logger = logger
    }

    deinit { close() }

    /// Connects and applies the session settings. Blocks: call it off the cooperative pool.
    static func connect(_ configuration: PostgresConfiguration, logger: Logger) throws(PostgresError) -> PQConnection {
        try validate(configuration)
        let settings: [(String, String)] = [
            ("dbname", configuration.url),
            ("application_name", configuration.applicationName),
            ("connect_timeout", String(max(configuration.connectTimeoutSeconds, 0))),
            ("client_encoding", "UTF8"),
        ]
        let conn: OpaquePointer? = withCStringArray(settings.map(\.0)) { keywords in
            withCStringArray(settings.map(\.1)) { values in
                (keywords + [nil]).withUnsafeBufferPointer { k in
                    (values + [nil]).withUnsafeBufferPointer { v in
                        PQconnectdbParams(k.baseAddress, v.baseAddress, 1)
                    }
                }
            }
        }
        guard let conn else {
            throw PostgresError(kind: .connection, message: "libpq could not allocate a connection")
        }
        let connection = PQConnection(conn: conn, configuration: configuration, logger: logger)
        guard PQstatus(conn) == CONNECTION_OK else {
            let message = configuration.redact(connection.lastErrorMessage)
            throw PostgresError(kind: .connection, message: message.isEmpty ? "could not connect" : message)
        }
        connection.installNoticeReceiver()
        var sql = "SELECT set_config('TimeZone', 'UTC', false), set_config('DateStyle', 'ISO, YMD', false)"
        var binds: [PostgresBind] = []
        if let searchPath = configuration.searchPath {
            sql += ", set_config('search_path', $1, false)"
            binds.append(searchPath)
        }
        _ = try connection.execute(sql, binds, wantRows: false)
        return connection
    }

    /// Rejects a URL libpq cannot parse, with libpq's reason (password removed).
    private static func validate(_ configuration: PostgresConfiguration) throws(PostgresError) {
        let url = configuration.url
        guard url.hasPrefix("postgresql://") || url.hasPrefix("postgres://") else {
            throw PostgresError(
                kind: .invalidConfiguration,
                message: "the database URL must start with postgresql:// or postgres://")
        }
        var errorMessage: UnsafeMutablePointer<CChar>?
        let options = PQconninfoParse(url, &errorMessage)
        defer {
            if let options { PQconninfoFree(options) }
            if let errorMessage { PQfreemem(errorMessage) }
        }
        if options == nil {
            let reason = errorMessage.map { String(cString: $0) } ?? "unparsable connection URL"
            throw PostgresError(
                kind: .invalidConfiguration,
                message: "invalid database URL: "
                    + configuration.redact(reason.trimmingCharacters(in: .whitespacesAndNewlines)))
        }
    }

    var isOpen: Bool { conn != nil }

    /// `CONNECTION_OK`, and not in a failed transaction block.
    var health: Health {
        guard let conn else { return Health(open: false, transaction: .idle) }
        let transaction: Health.Transaction =
            switch PQtransactionStatus(conn) {
            case PQTRANS_IDLE: .idle
            case PQTRANS_INTRANS, PQTRANS_ACTIVE: .inTransaction
            case PQTRANS_INERROR: .failed
            default: .unknown
            }
        return Health(open: PQstatus(conn) == CONNECTION_OK && !serverEndedSession, transaction: transaction)
    }

    struct Health: Sendable {
        enum Transaction: Sendable { case idle, inTransaction, failed, unknown }
        var open: Bool
        var transaction: Transaction
        var isHealthy: Bool { open && transaction != .failed && transaction != .unknown }
    }

    /// Runs one statement with text-format parameters (`PQexecParams`).
    func execute(_ sql: String, _ binds: [PostgresBind], wantRows: Bool) throws(PostgresError) -> QueryResult {
        guard let conn else { throw PostgresError.closed }
        let texts = binds.map { $0?.postgresText }
        for (position, text) in texts.enumerated() where text?.utf8.contains(0) == true {
            // The server would refuse it as 22021 (character_not_in_repertoire): report it the same way.
            throw PostgresError(
                kind: .query,
                message: "parameter $\(position + 1) contains a NUL character, which PostgreSQL text cannot hold",
                sqlState: "22021")
        }
        let result: OpaquePointer? = withCStringArray(texts) { values in
            values.withUnsafeBufferPointer { buffer in
                PQexecParams(conn, sql, Int32(texts.count), nil, buffer.baseAddress, nil, nil, 0)
            }
        }
        return try consume(result, wantRows: wantRows)
    }

    /// Runs a parameterless, possibly multi-statement script (`PQexec`).
    func executeScript(_ sql: String) throws(PostgresError) {
        guard let conn else { throw PostgresError.closed }
        _ = try consume(PQexec(conn, sql), wantRows: false)
    }

    struct QueryResult {
        var rows: [PostgresRow]
        var affectedRows: Int
        var commandTag: String
    }

    private func consume(_ result: OpaquePointer?, wantRows: Bool) throws(PostgresError) -> QueryResult {
        guard let result else { throw failure(nil) }
        defer { PQclear(result) }
        switch PQresultStatus(result) {
        case PGRES_COMMAND_OK, PGRES_TUPLES_OK, PGRES_EMPTY_QUERY:
            let tag = String(cString: PQcmdStatus(result))
            let affected = Int(String(cString: PQcmdTuples(result))) ?? 0
            return QueryResult(rows: wantRows ? rows(of: result) : [], affectedRows: affected, commandTag: tag)
        case PGRES_COPY_IN, PGRES_COPY_OUT, PGRES_COPY_BOTH:
            throw PostgresError(kind: .query, message: "COPY is not supported through this API")
        default:
            throw failure(result)
        }
    }

    private func rows(of result: OpaquePointer) -> [PostgresRow] {
        let rowCount = PQntuples(result)
        let columnCount = PQnfields(result)
        let columns = (0..<columnCount).map { String(cString: PQfname(result, $0)) }
        var index: [String: Int] = [:]
        for (position, name) in columns.enumerated() where index[name] == nil { index[name] = position }
        return (0..<rowCount).map { row in
            let values: [String?] = (0..<columnCount).map { column in
                PQgetisnull(result, row, column) == 1 ? nil : String(cString: PQgetvalue(result, row, column))
            }
            return PostgresRow(columns: columns, values: values, index: index)
        }
    }

    /// Builds the error for a failed result (or a missing one), classifying a broken session as `.connection`.
    private func failure(_ result: OpaquePointer?) -> PostgresError {
        func field(_ code: UInt8) -> String? {
            guard let result, let value = PQresultErrorField(result, Int32(code)) else { return nil }
            return String(cString: value)
        }
        let broken = serverEndedSession || (conn.map { PQstatus($0) != CONNECTION_OK } ?? true)
        let sqlState = field(UInt8(ascii: "C"))
        let primary = field(UInt8(ascii: "M")) ?? lastErrorMessage
        return PostgresError(
            kind: broken ? .connection : .query,
            message: primary.isEmpty ? "the query failed without a message" : primary,
            sqlState: sqlState,
            detail: field(UInt8(ascii: "D")),
            constraintName: field(UInt8(ascii: "n")))
    }

    private var lastErrorMessage: String {
        guard let conn, let message = PQerrorMessage(conn) else { return "" }
        var text = String(cString: message).trimmingCharacters(in: .whitespacesAndNewlines)
        for severity in ["FATAL:  ", "ERROR:  "] where text.hasPrefix(severity) { text.removeFirst(severity.count) }
        return text
    }

    /// Quotes an identifier with this connection's encoding rules.
    func escapeIdentifier(_ name: String) throws(PostgresError) -> String {
        guard let conn else { throw PostgresError.closed }
        guard let escaped = PQescapeIdentifier(conn, name, name.utf8.count) else {
            throw PostgresError(kind: .query, message: "could not quote identifier: \(lastErrorMessage)")
        }
        defer { PQfreemem(escaped) }
        return String(cString: escaped)
    }

    /// Reads whatever the server sent without blocking, so a session the server ended is noticed.
    /// Returns the notifications that arrived.
    func consumeAvailableInput() -> [PostgresNotification] {
        guard let conn, PQstatus(conn) == CONNECTION_OK else { return [] }
        var notifications: [PostgresNotification] = []
        // A server-ended session first delivers its FATAL message, then end-of-file: read until quiet.
        for _ in 0..<4 {
            guard waitReadable(timeoutMilliseconds: 0) else { break }
            if PQconsumeInput(conn) == 0 { break }
            notifications += drainNotifications()
        }
        return notifications
    }

    /// Waits up to `timeoutMilliseconds` for the socket to become readable.
    func waitReadable(timeoutMilliseconds: Int32) -> Bool {
        guard let conn else { return false }
        let socket = PQsocket(conn)
        guard socket >= 0 else { return false }
        var descriptor = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
        let ready = poll(&descriptor, 1, timeoutMilliseconds)
        return ready > 0
    }

    /// `PQconsumeInput` then every pending notification. Throws when the session is lost.
    func readNotifications() throws(PostgresError) -> [PostgresNotification] {
        guard let conn else { throw PostgresError.closed }
        if PQconsumeInput(conn) == 0 || PQstatus(conn) != CONNECTION_OK {
            throw PostgresError(
                kind: .connection, message: lastErrorMessage.isEmpty ? "connection lost" : lastErrorMessage)
        }
        return drainNotifications()
    }

    private func drainNotifications() -> [PostgresNotification] {
        guard let conn else { return [] }
        var notifications: [PostgresNotification] = []
        while let notify = PQnotifies(conn) {
            notifications.append(
                PostgresNotification(
                    channel: String(cString: notify.pointee.relname),
                    payload: notify.pointee.extra.map { String(cString: $0) } ?? "",
                    pid: notify.pointee.be_pid))
            PQfreemem(notify)
        }
        return notifications
    }

    var backendPID: Int32 { conn.map { PQbackendPID($0) } ?? 0 }

    func close() {
        guard let conn else { return }
        self.conn = nil
        PQfinish(conn)
    }

    /// Receives server notices (WARNING, NOTICE) instead of libpq's default of printing to stderr,
    /// and the error a server sends an idle session before ending it, which libpq also routes here.
    private func installNoticeReceiver() {
        guard let conn else { return }
        // Unretained: `self` owns `conn` and finishes it before going away, so the pointer outlives every call.
        let context = Unmanaged.passUnretained(self).toOpaque()
        PQsetNoticeReceiver(
            conn,
            { context, result in
                guard let context, let result else { return }
                Unmanaged<PQConnection>.fromOpaque(context).takeUnretainedValue().receiveNotice(result)
            }, context)
    }

    private func receiveNotice(_ result: OpaquePointer) {
        func field(_ code: UInt8) -> String {
            PQresultErrorField(result, Int32(code)).map { String(cString: $0) } ?? ""
        }
        let severity = field(UInt8(ascii: "V"))
        if severity == "FATAL" || severity == "PANIC" {
            serverEndedSession = true
            logger.info(
                "the server is ending the PostgreSQL session",
                metadata: ["sqlState": "\(field(UInt8(ascii: "C")))", "message": "\(field(UInt8(ascii: "M")))"])
        } else {
            logger.debug(
                "postgres notice", metadata: ["severity": "\(severity)", "message": "\(field(UInt8(ascii: "M")))"])
        }
    }
}

/// Calls `body` with NUL-terminated copies of `strings` (`nil` stays a null pointer), freed afterwards.
func withCStringArray<R>(_ strings: [String?], _ body: ([UnsafePointer<CChar>?]) -> R) -> R {
    let owned: [UnsafeMutablePointer<CChar>?] = strings.map { string in
        string.map { value in
            guard let copy = strdup(value) else { fatalError("strdup failed: out of memory") }
            return copy
        }
    }
    defer { for pointer in owned { free(pointer) } }
    return body(owned.map { $0.map { UnsafePointer($0) } })
}

func withCStringArray<R>(_ strings: [String], _ body: ([UnsafePointer<CChar>?]) -> R) -> R {
    withCStringArray(strings.map { Optional($0) }, body)
}
