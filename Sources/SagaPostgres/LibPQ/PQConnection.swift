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
            // Before the URL, so that the URL's own parameters win over these defaults.
            ("keepalives", "1"),
            ("keepalives_idle", String(configuration.keepalivesIdleSeconds)),
            ("keepalives_interval", String(configuration.keepalivesIntervalSeconds)),
            ("keepalives_count", String(configuration.keepalivesCount)),
            ("tcp_user_timeout", String(configuration.tcpUserTimeoutMilliseconds)),
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
        for (name, value) in connection.sessionSettings(configuration) {
            binds.append(value)
            sql += ", set_config('\(name)', $\(binds.count), false)"
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

    /// A prepared statement's key: its SQL text and the types its parameters were declared with (those of
    /// binary parameters; 0, inferred by the server, for text ones), so that a text with parameters of other
    /// types (a NULL where an array was bound before) is prepared apart instead of being read as the wrong type.
    private struct PreparedKey: Hashable {
        var sql: String
        var types: [UInt32]
    }
    /// A statement prepared on this session, and when to prepare it again.
    private struct Prepared {
        var name: String
        var replanAt: ContinuousClock.Instant
        var interval: Duration
    }
    /// The statements prepared on this session.
    private var prepared: [PreparedKey: Prepared] = [:]
    /// How long a statement keeps its plans before it is prepared again: from ``firstReplanInterval``, doubled each
    /// time up to ``maxReplanInterval``. The server re-plans a prepared statement when its tables' statistics change,
    /// but after five executions it may settle on a generic plan costed on the tables' size of that moment: one
    /// costed on a table of a few hundred rows reads the whole table for every batch (a sequential scan, or a merge
    /// join along a whole index) once the table has grown — as it does within seconds under load on a young
    /// database, long before autovacuum analyzes it again (seen: 15 ms per batch of the orders worker's status
    /// update, the saga's p50 at 6.5 s). Prepared again, a statement is costed on the tables as they are then; the
    /// short intervals cover a database's first minutes, the long one what autovacuum has not yet analyzed.
    static let firstReplanInterval: Duration = .seconds(1)
    static let maxReplanInterval: Duration = .seconds(300)
    private var preparedCount = 0
    /// Past this many prepared statements, further SQL texts run unprepared (a caller that builds SQL text
    /// with values in it must not grow the server's memory without bound).
    static let maxPreparedStatements = 256

    /// A `BEGIN` the owner deferred: it is sent together with the next statement (same hand-off, same
    /// round trip), or never if no statement follows before `COMMIT`/`ROLLBACK`.
    var pendingBegin: String?
    /// Writes the owner deferred (``PostgresConnection/executeDeferred(_:_:)``): sent before the next statement,
    /// in its pipeline, after a deferred `BEGIN`.
    var pendingWrites: [Statement] = []

    /// How many statements this session has prepared (for tests).
    var preparedStatementCount: Int { prepared.count }

    struct Statement {
        var sql: String
        var binds: [PostgresBind]
        var wantRows: Bool
        /// Rows in the binary output format (see ``PostgresBinaryDecodable``).
        var binaryResults = false
    }

    /// Runs one statement. A statement with parameters is prepared once per session (`PQprepare`, keyed by
    /// its SQL text and its binary parameters' types) and then executed with `PQexecPrepared`; `[UInt8]`/`Data`
    /// and `PostgresArray` parameters travel in binary format, every other one as text. A deferred `BEGIN` goes in the
    /// same pipeline. The rows come in text format, or binary with `binaryResults`.
    func execute(_ sql: String, _ binds: [PostgresBind], wantRows: Bool, binaryResults: Bool = false)
        throws(PostgresError) -> QueryResult
    {
        if pendingBegin != nil || !pendingWrites.isEmpty {
            return try pipeline([
                Statement(sql: sql, binds: binds, wantRows: wantRows, binaryResults: binaryResults)
            ])[0]
        }
        guard let conn else { throw PostgresError.closed }
        let parameters = try EncodedParameters(binds)
        let name = try preparedName(sql, parameters)
        let result: OpaquePointer? = parameters.withPointers { values, lengths, formats, types in
            if let name {
                PQexecPrepared(conn, name, parameters.count, values, lengths, formats, binaryResults ? 1 : 0)
            } else {
                PQexecParams(conn, sql, parameters.count, types, values, lengths, formats, binaryResults ? 1 : 0)
            }
        }
        do {
            return try consume(result, wantRows: wantRows)
        } catch {
            forgetIfPlanChanged(sql, error)
            // Outside a transaction the failed statement changed nothing: prepare it anew and run it once more,
            // as an unprepared statement would have run.
            if error.sqlState == "0A000", name != nil, PQtransactionStatus(conn) == PQTRANS_IDLE {
                return try execute(sql, binds, wantRows: wantRows, binaryResults: binaryResults)
            }
            throw error
        }
    }

    /// Sends `statements` (after a deferred `BEGIN` and deferred writes, if any) in one round trip in libpq
    /// pipeline mode and returns their results in order. Outside a transaction block they form one implicit
    /// transaction.
    /// - Throws: the first failure, its message prefixed with the statement's position (`statement 2 of 3:`);
    ///   the statements after it did not run. A failing deferred `BEGIN` is reported as `BEGIN failed: ...`, a
    ///   failing deferred write as `deferred write 1 of 2: ...`.
    func pipeline(_ statements: [Statement]) throws(PostgresError) -> [QueryResult] {
        guard let conn else { throw PostgresError.closed }
        let begin = pendingBegin.map { [Statement(sql: $0, binds: [], wantRows: false)] } ?? []
        let writes = pendingWrites
        let all = begin + writes + statements
        pendingBegin = nil
        pendingWrites = []
        if all.isEmpty { return [] }
        let encoded = try all.map { (statement) throws(PostgresError) in try EncodedParameters(statement.binds) }
        var names: [String?] = []
        for (statement, parameters) in zip(all, encoded) { names.append(try preparedName(statement.sql, parameters)) }

        guard PQenterPipelineMode(conn) == 1 else { throw failure(nil) }
        var sendFailure: PostgresError?
        for (index, statement) in all.enumerated() {
            let parameters = encoded[index]
            let sent: Int32 = parameters.withPointers { values, lengths, formats, types in
                if let name = names[index] {
                    PQsendQueryPrepared(
                        conn, name, parameters.count, values, lengths, formats, statement.binaryResults ? 1 : 0)
                } else {
                    PQsendQueryParams(
                        conn, statement.sql, parameters.count, types, values, lengths, formats,
                        statement.binaryResults ? 1 : 0)
                }
            }
            if sent != 1 {
                sendFailure = failure(nil)
                break
            }
        }
        if sendFailure == nil, PQpipelineSync(conn) != 1 { sendFailure = failure(nil) }
        if let sendFailure {
            // Nothing can be read back reliably: the session is unusable.
            close()
            throw PostgresError(kind: .connection, message: sendFailure.message, sqlState: sendFailure.sqlState)
        }

        var outcomes: [Result<QueryResult, PostgresError>] = []
        for statement in all {
            var outcome: Result<QueryResult, PostgresError>?
            // One statement yields one result, then NULL.
            while let result = PQgetResult(conn) {
                if outcome == nil {
                    if PQresultStatus(result) == PGRES_PIPELINE_ABORTED {
                        PQclear(result)
                        outcome = .failure(PostgresError(kind: .query, message: "not run: an earlier statement failed"))
                    } else {
                        outcome = Result { () throws(PostgresError) in try consume(result, wantRows: statement.wantRows)
                        }
                    }
                } else {
                    PQclear(result)
                }
            }
            outcomes.append(outcome ?? .failure(failure(nil)))
        }
        // The sync point, then back to normal mode.
        var synced = false
        for _ in 0..<4 {
            guard let result = PQgetResult(conn) else {
                if PQstatus(conn) != CONNECTION_OK { break }
                continue
            }
            let status = PQresultStatus(result)
            PQclear(result)
            if status == PGRES_PIPELINE_SYNC {
                synced = true
                break
            }
        }
        if !synced || PQexitPipelineMode(conn) != 1 {
            let cause = failure(nil)
            close()
            throw PostgresError(kind: .connection, message: "pipeline did not complete: \(cause.message)")
        }

        var results: [QueryResult] = []
        let offset = begin.count + writes.count
        for (index, outcome) in outcomes.enumerated() {
            switch outcome {
            case .success(let result): results.append(result)
            case .failure(let error):
                forgetIfPlanChanged(all[index].sql, error)
                if index < begin.count { throw error.prefixed("BEGIN failed") }
                if index < offset {
                    throw error.prefixed("deferred write \(index - begin.count + 1) of \(writes.count)")
                }
                throw error.prefixed("statement \(index - offset + 1) of \(statements.count)")
            }
        }
        return Array(results[offset...])
    }

    /// The name of `sql`'s prepared statement, preparing it first if needed; `nil` for a statement without
    /// parameters or once the cache is full (it then runs unprepared).
    private func preparedName(_ sql: String, _ parameters: EncodedParameters) throws(PostgresError) -> String? {
        guard let conn, parameters.count > 0 else { return nil }
        let key = PreparedKey(sql: sql, types: parameters.types)
        var interval = Self.firstReplanInterval
        let name: String
        if let known = prepared[key] {
            // Not inside a failed transaction: DEALLOCATE would fail there, and the statement reports that failure.
            let status = PQtransactionStatus(conn)
            guard ContinuousClock.now >= known.replanAt, status == PQTRANS_IDLE || status == PQTRANS_INTRANS else {
                return known.name
            }
            _ = try consume(PQexec(conn, "DEALLOCATE \(known.name)"), wantRows: false)
            prepared[key] = nil
            name = known.name
            interval = min(known.interval * 2, Self.maxReplanInterval)
        } else {
            guard prepared.count < Self.maxPreparedStatements else { return nil }
            preparedCount += 1
            name = "saga_\(preparedCount)"
        }
        let result = parameters.withPointers { _, _, _, types in
            PQprepare(conn, name, sql, parameters.count, types)
        }
        _ = try consume(result, wantRows: false)
        prepared[key] = Prepared(name: name, replanAt: .now + interval, interval: interval)
        return name
    }

    /// After a table's columns changed, a prepared `SELECT *` fails with 0A000 ("cached plan must not change
    /// result type"): prepare the statement again next time.
    private func forgetIfPlanChanged(_ sql: String, _ error: PostgresError) {
        if error.sqlState == "0A000" { prepared = prepared.filter { $0.key.sql != sql } }
    }

    /// Runs a parameterless, possibly multi-statement script (`PQexec`).
    func executeScript(_ sql: String) throws(PostgresError) {
        guard let conn else { throw PostgresError.closed }
        if pendingBegin != nil || !pendingWrites.isEmpty { _ = try pipeline([]) }
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
        if columnCount > 0, PQfformat(result, 0) == 1 {
            return (0..<rowCount).map { row in
                var bytes: [UInt8] = []
                bytes.reserveCapacity((0..<columnCount).reduce(0) { $0 + Int(PQgetlength(result, row, $1)) })
                var ranges: [Range<Int>?] = []
                for column in 0..<columnCount {
                    guard PQgetisnull(result, row, column) == 0 else {
                        ranges.append(nil)
                        continue
                    }
                    let length = Int(PQgetlength(result, row, column))
                    PQgetvalue(result, row, column).withMemoryRebound(to: UInt8.self, capacity: length) {
                        bytes.append(contentsOf: UnsafeBufferPointer(start: $0, count: length))
                    }
                    ranges.append((bytes.count - length)..<bytes.count)
                }
                let values = ranges.map { $0.map { bytes[$0] } }
                return PostgresRow(columns: columns, values: .binary(values), index: index)
            }
        }
        return (0..<rowCount).map { row in
            let values: [String?] = (0..<columnCount).map { column in
                PQgetisnull(result, row, column) == 1 ? nil : String(cString: PQgetvalue(result, row, column))
            }
            return PostgresRow(columns: columns, values: .text(values), index: index)
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

    /// The session's socket (`PQsocket`), -1 when closed.
    var socketDescriptor: Int32 { conn.map { PQsocket($0) } ?? -1 }

    /// The server's version as a number (`PQserverVersion`: 140005 for 14.5), 0 when closed.
    var serverVersion: Int32 { conn.map { PQserverVersion($0) } ?? 0 }

    /// A cancel handle for the session (`PQgetCancel`), usable from any thread.
    func makeCancelHandle() -> PostgresCancelHandle? { conn.flatMap { PQgetCancel($0) }.map(PostgresCancelHandle.init) }

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

/// Bind parameters in libpq's form: text values as NUL-terminated copies, `[UInt8]`/`Data` as binary
/// bytea (type OID 17, format 1). Owns the memory until it is released.
final class EncodedParameters {
    private var storage: [UnsafeMutableRawPointer?] = []
    private var lengths: [Int32] = []
    private var formats: [Int32] = []
    private(set) var types: [UInt32] = []
    var count: Int32 { Int32(storage.count) }

    private static let byteaOID: UInt32 = 17

    init(_ binds: [PostgresBind]) throws(PostgresError) {
        storage.reserveCapacity(binds.count)
        for (position, bind) in binds.enumerated() {
            guard let bind else {
                append(nil, length: 0, format: 0, type: 0)
                continue
            }
            if let array = bind as? PostgresArray, case .binary(let bytes, let typeOID) = array.form {
                appendBinary(bytes, type: typeOID)
            } else if let bytes = bind as? [UInt8] {
                appendBinary(bytes, type: Self.byteaOID)
            } else if let data = bind as? Data {
                appendBinary(Array(data), type: Self.byteaOID)
            } else {
                var text = bind.postgresText
                let copy: UnsafeMutableRawPointer? = text.withUTF8 { utf8 in
                    guard !utf8.contains(0) else { return nil }
                    let memory = malloc(utf8.count + 1)!
                    if let base = utf8.baseAddress { memcpy(memory, base, utf8.count) }
                    memory.storeBytes(of: 0, toByteOffset: utf8.count, as: UInt8.self)
                    return memory
                }
                guard let copy else {
                    // The server would refuse it as 22021 (character_not_in_repertoire): report it the same way.
                    throw PostgresError(
                        kind: .query,
                        message:
                            "parameter $\(position + 1) contains a NUL character, which PostgreSQL text cannot hold",
                        sqlState: "22021")
                }
                append(copy, length: 0, format: 0, type: 0)
            }
        }
    }

    deinit { for pointer in storage { free(pointer) } }

    private func appendBinary(_ bytes: [UInt8], type: UInt32) {
        let memory = malloc(max(bytes.count, 1))!
        bytes.withUnsafeBytes { raw in
            if let base = raw.baseAddress { memcpy(memory, base, bytes.count) }
        }
        append(memory, length: Int32(bytes.count), format: 1, type: type)
    }

    private func append(_ pointer: UnsafeMutableRawPointer?, length: Int32, format: Int32, type: UInt32) {
        storage.append(pointer)
        lengths.append(length)
        formats.append(format)
        types.append(type)
    }

    /// Calls `body` with libpq's parameter arrays (values, lengths, formats, type OIDs).
    func withPointers<R>(
        _ body: (
            UnsafePointer<UnsafePointer<CChar>?>?, UnsafePointer<Int32>?, UnsafePointer<Int32>?, UnsafePointer<Oid>?
        ) -> R
    ) -> R {
        let values = storage.map { $0.map { UnsafePointer($0.assumingMemoryBound(to: CChar.self)) } }
        return values.withUnsafeBufferPointer { v in
            lengths.withUnsafeBufferPointer { l in
                formats.withUnsafeBufferPointer { f in
                    types.withUnsafeBufferPointer { t in
                        body(v.baseAddress, l.baseAddress, f.baseAddress, t.baseAddress)
                    }
                }
            }
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
