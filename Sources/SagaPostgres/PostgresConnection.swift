import Dispatch
import Logging
import Synchronization

/// One PostgreSQL session.
///
/// Every libpq call for the session runs on the connection's own serial `DispatchQueue`, never on
/// Swift's cooperative pool; async callers are suspended meanwhile. Statements from concurrent
/// callers run one at a time in arrival order, but a transaction is only meaningful for one
/// caller at a time: share a ``PostgresPool`` between tasks, not a connection.
///
/// Code that runs on the connection's ``executor`` (``PostgresPool/withConnection(_:)`` lends it that
/// way, and `withTaskExecutorPreference(connection.executor)` does it for a connection of one's own)
/// runs its statements directly, without a hand-off to the queue's thread and back: two thread
/// wakes fewer per round trip.
public final class PostgresConnection: Sendable {
    private let queue: DispatchQueue
    /// A task executor that runs jobs on the connection's queue, so that a task preferring it calls libpq
    /// without a hand-off.
    public let executor: PostgresConnectionExecutor
    private let confined: QueueConfined
    private let health: Mutex<PQConnection.Health>
    /// A `BEGIN` deferred by ``withTransaction(isolation:_:)`` until the first statement, which carries it to
    /// the connection's queue (one hand-off and one round trip for both).
    let deferredBegin = Mutex<String?>(nil)
    /// Writes deferred by ``executeDeferred(_:_:)`` until the next statement, which carries them to the queue.
    let deferredWrites = Mutex<[PQConnection.Statement]>([])
    let logger: Logger
    /// The server process id of this session (for `pg_terminate_backend`, `pg_stat_activity`).
    public let backendPID: Int32
    /// libpq's cancel handle of the session, for ``cancel()`` while the queue is busy.
    let cancelHandle = Mutex<PostgresCancelHandle?>(nil)

    private init(queue: DispatchQueue, confined: QueueConfined, health: PQConnection.Health, pid: Int32, logger: Logger)
    {
        self.queue = queue
        self.executor = PostgresConnectionExecutor(queue: queue)
        self.confined = confined
        self.health = Mutex(health)
        self.backendPID = pid
        self.logger = logger
    }

    /// Opens a session, then sets UTC time zone, ISO DateStyle and the configured `search_path`.
    ///
    /// - Throws: `.invalidConfiguration` for a URL libpq cannot parse; `.connection` when the
    ///   server cannot be reached, refuses the login, or the time-out passes. Messages never
    ///   contain the URL's password.
    public static func connect(_ configuration: PostgresConfiguration, logger: Logger) async throws(PostgresError)
        -> PostgresConnection
    {
        let queue = DispatchQueue(label: "saga.postgres.connection")
        let confined = QueueConfined()
        queue.setSpecific(key: QueueConfined.key, value: ObjectIdentifier(confined))
        let result: Result<(PQConnection.Health, Int32, PostgresCancelHandle?), PostgresError> =
            await withCheckedContinuation {
                continuation in
                queue.async {
                    continuation.resume(
                        returning: Result { () throws(PostgresError) in
                            let connection = try PQConnection.connect(configuration, logger: logger)
                            confined.connection = connection
                            return (connection.health, connection.backendPID, connection.makeCancelHandle())
                        })
                }
            }
        let (health, pid, cancel) = try result.get()
        var connectionLogger = logger
        connectionLogger[metadataKey: "postgres.pid"] = "\(pid)"
        let connection = PostgresConnection(
            queue: queue, confined: confined, health: health, pid: pid, logger: connectionLogger)
        connection.cancelHandle.withLock { $0 = cancel }
        return connection
    }

    /// Runs `operation` on the connection's queue and records the session's health afterwards. A deferred
    /// `BEGIN` and deferred writes go with it (a statement sends them first, in its pipeline), unless
    /// `carryingDeferred` is false (an operation that sends no statement).
    func run<R: Sendable>(
        carryingDeferred: Bool = true, _ operation: @escaping @Sendable (PQConnection) throws(PostgresError) -> R
    )
        async throws(PostgresError) -> R
    {
        let (begin, writes) = carryingDeferred ? takeDeferred() : (nil, [])
        if isCurrentExecutor {
            // Already on the connection's queue (a task on its executor): call libpq here.
            return try runConfined(begin: begin, writes: writes, operation)
        }
        let carried = SendableStatements(writes)
        let result: Result<R, PostgresError> = await withCheckedContinuation { continuation in
            queue.async { [self] in
                continuation.resume(
                    returning: Result { () throws(PostgresError) in
                        try runConfined(begin: begin, writes: carried.values, operation)
                    })
            }
        }
        return try result.get()
    }

    /// Runs `operation` with the session's `PQConnection`; only on the connection's queue.
    private func runConfined<R>(
        begin: String?, writes: [PQConnection.Statement], _ operation: (PQConnection) throws(PostgresError) -> R
    ) throws(PostgresError) -> R {
        guard let connection = confined.connection, connection.isOpen else { throw .closed }
        if let begin { connection.pendingBegin = begin }
        connection.pendingWrites += writes
        defer {
            let state = connection.health
            health.withLock { $0 = state }
        }
        return try operation(connection)
    }

    /// Whether the calling code runs on the connection's ``executor`` (on its queue), so that its statements are
    /// plain calls on the session's thread rather than hand-offs to it.
    public var isCurrentExecutor: Bool {
        DispatchQueue.getSpecific(key: QueueConfined.key) == ObjectIdentifier(confined)
    }

    /// Takes the deferred `BEGIN` and writes for the next operation to send.
    private func takeDeferred() -> (String?, [PQConnection.Statement]) {
        let begin = deferredBegin.withLock { pending in
            defer { pending = nil }
            return pending
        }
        let writes = deferredWrites.withLock { pending in
            defer { pending = [] }
            return pending
        }
        return (begin, writes)
    }

    /// Runs one statement with bind parameters and returns its rows.
    ///
    /// Values travel as parameters (`$1`, `$2`, ...), never inside the SQL text: `[UInt8]`/`Data` and
    /// ``PostgresArray`` in binary format, the others as text. A statement with parameters is prepared on its
    /// first use on this session and reused by its SQL text (and its binary parameters' types) afterwards (up to
    /// 256 per session; more run unprepared), so keep values out of the SQL text.
    /// - Throws: `.query` with the server's SQLSTATE when the statement fails; `.connection` when
    ///   the session broke (the connection is then unusable); `.closed` after ``close()``.
    @discardableResult
    public func query(_ sql: String, _ binds: [PostgresBind] = []) async throws(PostgresError) -> [PostgresRow] {
        try await query(sql, binds, binaryResults: false)
    }

    /// Like ``query(_:_:)``; with `binaryResults`, the rows come in PostgreSQL's binary output format, so a
    /// `bytea` arrives as its bytes instead of hex digits and numbers need no parsing. Their values decode only
    /// as ``PostgresBinaryDecodable`` types: cast other columns to `text` in the query.
    /// - Throws: like ``query(_:_:)``.
    public func query(_ sql: String, _ binds: [PostgresBind] = [], binaryResults: Bool) async throws(PostgresError)
        -> [PostgresRow]
    {
        let binds = SendableBinds(binds)
        return try await run { connection throws(PostgresError) in
            try connection.execute(sql, binds.values, wantRows: true, binaryResults: binaryResults).rows
        }
    }

    /// Runs one statement with bind parameters and returns the number of rows it affected
    /// (0 for statements that report no count).
    /// - Throws: like ``query(_:_:)``.
    @discardableResult
    public func execute(_ sql: String, _ binds: [PostgresBind] = []) async throws(PostgresError) -> Int {
        let binds = SendableBinds(binds)
        return try await run { connection throws(PostgresError) in
            try connection.execute(sql, binds.values, wantRows: false).affectedRows
        }
    }

    /// Sends `statements` in one round trip (libpq pipeline mode) and returns their results in order.
    ///
    /// - Outside a transaction the statements form one implicit transaction: if one fails, none takes
    ///   effect. Inside ``withTransaction(isolation:_:)`` (or after an explicit `BEGIN`) they run in that
    ///   transaction, and a failure aborts it like any failing statement.
    /// - The statements after a failing one are not run.
    /// - Meant for a handful of statements (an API request, a worker batch's writes): every statement
    ///   is sent before any result is read.
    /// - Throws: the first failure, with its SQLSTATE, its message prefixed with its position
    ///   (`statement 2 of 3: ...`); `.connection` when the session broke; `.closed` after ``close()``.
    @discardableResult
    public func pipeline(_ statements: [PostgresStatement]) async throws(PostgresError) -> [PostgresStatementResult] {
        let statements = statements.map {
            PQConnection.Statement(sql: $0.sql, binds: $0.binds, wantRows: true, binaryResults: $0.binaryResults)
        }
        let carried = SendableStatements(statements)
        return try await run { connection throws(PostgresError) in
            try connection.pipeline(carried.values).map {
                PostgresStatementResult(rows: $0.rows, affectedRows: $0.affectedRows, commandTag: $0.commandTag)
            }
        }
    }

    /// Runs a parameterless script that may hold several statements (migrations, schema setup).
    /// Outside a transaction the statements run as one implicit transaction; the first error
    /// stops the script.
    /// - Throws: like ``query(_:_:)``.
    public func executeScript(_ sql: String) async throws(PostgresError) {
        try await run { connection throws(PostgresError) in try connection.executeScript(sql) }
    }

    /// Runs a statement and returns its command tag (`COMMIT`, `ROLLBACK`, `INSERT 0 1`, ...).
    func command(_ sql: String) async throws(PostgresError) -> String {
        try await run { connection throws(PostgresError) in
            try connection.execute(sql, [], wantRows: false).commandTag
        }
    }

    /// `true` while the session is open and not inside a failed transaction block, as of the
    /// last operation (a server-side kill is noticed by the next operation or a pool check-out).
    public var isHealthy: Bool { health.withLock { $0.isHealthy } }

    var transactionState: PQConnection.Health.Transaction { health.withLock { $0.transaction } }

    /// Reads pending input without blocking so that a session the server ended is detected.
    /// Returns ``isHealthy`` afterwards.
    func probe() async -> Bool {
        do {
            try await run(carryingDeferred: false) { connection throws(PostgresError) in
                _ = connection.consumeAvailableInput()
            }
        } catch {
            return false
        }
        return isHealthy
    }

    /// Ends the session (`PQfinish`). Idempotent; later operations throw `.closed`.
    public func close() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            queue.async { [self] in
                confined.connection?.close()
                confined.connection = nil
                health.withLock { $0 = PQConnection.Health(open: false, transaction: .idle) }
                continuation.resume()
            }
        }
    }

    /// Quotes `name` as an SQL identifier (`"my ""schema"""`) for the rare statement that cannot
    /// take it as a parameter, such as `CREATE SCHEMA`. Values must still go as bind parameters.
    public static func quoteIdentifier(_ name: String) -> String {
        "\"" + name.replacingAll("\"", with: "\"\"") + "\""
    }
}

/// Holds the connection's `PQConnection`.
///
/// `@unchecked Sendable` is safe because `connection` is read and written only inside blocks
/// submitted to the owning ``PostgresConnection``'s serial queue, which orders every access.
private final class QueueConfined: @unchecked Sendable {
    var connection: PQConnection?
    /// Marks a connection's queue with its `QueueConfined`'s identity, so that code can tell it runs there.
    static let key = DispatchSpecificKey<ObjectIdentifier>()
}

/// A task executor that runs every job on one ``PostgresConnection``'s serial queue.
///
/// A task that prefers it (`withTaskExecutorPreference`) runs its nonisolated code, and the code of
/// default actors it calls, on the thread that calls libpq for the session, so each statement it runs is a
/// plain call instead of a hand-off to that thread and back. While a statement waits for the server the
/// thread is blocked, as it would be anyway; other jobs on the queue run after it.
public final class PostgresConnectionExecutor: TaskExecutor {
    private let queue: DispatchQueue

    init(queue: DispatchQueue) { self.queue = queue }

    /// Runs `job` on the connection's queue.
    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        queue.async { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}

/// One statement of a ``PostgresConnection/pipeline(_:)``.
public struct PostgresStatement: Sendable {
    /// The statement's SQL, with `$1`, `$2`, … for its parameters.
    public var sql: String
    /// The values of the parameters, in order.
    public var binds: [PostgresBind]
    /// Rows in PostgreSQL's binary output format, as ``PostgresConnection/query(_:_:binaryResults:)`` asks them.
    public var binaryResults: Bool

    /// A statement of `sql` with `binds` as its parameters.
    public init(_ sql: String, _ binds: [PostgresBind] = [], binaryResults: Bool = false) {
        self.sql = sql
        self.binds = binds
        self.binaryResults = binaryResults
    }
}

/// What one statement of a ``PostgresConnection/pipeline(_:)`` returned.
public struct PostgresStatementResult: Sendable {
    /// The rows (empty for a statement that returns none).
    public var rows: [PostgresRow]
    /// Rows affected (0 for statements that report no count).
    public var affectedRows: Int
    /// The command tag (`INSERT 0 1`, `SELECT 3`, ...).
    public var commandTag: String
}

/// Pipeline statements, carried to the connection's queue; like ``SendableBinds``, safe because every
/// bind is `Sendable`.
struct SendableStatements: @unchecked Sendable {
    let values: [PQConnection.Statement]
    init(_ values: [PQConnection.Statement]) { self.values = values }
}

/// The caller's binds, carried to the connection's queue.
///
/// `PostgresEncodable` requires `Sendable`, so the array is safe to send; the wrapper only spells
/// that out for the existential optional array.
struct SendableBinds: Sendable {
    let values: [PostgresBind]
    init(_ values: [PostgresBind]) { self.values = values }
}
