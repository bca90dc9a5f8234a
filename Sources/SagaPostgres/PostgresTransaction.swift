/// A session inside a transaction that someone else owns (a worker's batch): it runs statements, but it
/// cannot end the transaction or touch its savepoints.
///
/// Code that must write inside a transaction without owning it (a saga handler) gets one of these instead
/// of the ``PostgresConnection``, so that the owner alone commits or rolls back, and everything written in
/// the transaction commits together or not at all.
///
/// - Statements that control the transaction are refused before they are sent, with SQLSTATE `2D000`
///   (invalid transaction termination), and the transaction stays as it was: `BEGIN`, `START`, `COMMIT`,
///   `END`, `ROLLBACK` (also `ROLLBACK TO SAVEPOINT`), `ABORT`, `SAVEPOINT`, `RELEASE` and `PREPARE`
///   (`PREPARE TRANSACTION`; prepared statements are made by the connection itself).
/// - Nothing can be hidden behind an allowed statement: every statement goes alone through the extended
///   query protocol, which runs one statement per call, and PostgreSQL itself refuses `COMMIT` and
///   `ROLLBACK` in functions, `DO` blocks and procedures called inside a transaction block.
/// - The check reads only the statement's first word (after blanks and comments): no extra round trip.
public struct PostgresTransaction: Sendable {
    private let connection: PostgresConnection
    /// Whether ``executeDeferred(_:_:)`` defers its statement to the next one or runs it at once.
    public let defersWrites: Bool

    /// For the owner of the transaction: a view of `connection` to hand to code that must not end it.
    /// - Parameters:
    ///   - connection: the session of the transaction the caller owns.
    ///   - defersWrites: whether ``executeDeferred(_:_:)`` may send its statement with the next one, perhaps the
    ///     owner's own (`RELEASE SAVEPOINT`, `COMMIT`), which then fails for it; false runs it at once, where its
    ///     failure is thrown from it (e.g. for an owner that puts each unit of work in a savepoint and must know
    ///     which one failed).
    public init(_ connection: PostgresConnection, defersWrites: Bool = false) {
        self.connection = connection
        self.defersWrites = defersWrites
    }

    /// The server process id of the session (for logs and `pg_stat_activity`).
    public var backendPID: Int32 { connection.backendPID }

    /// Like ``PostgresConnection/query(_:_:)``.
    /// - Throws: `.query` with SQLSTATE `2D000` for a transaction-control statement (not sent); otherwise as
    ///   ``PostgresConnection/query(_:_:)``.
    @discardableResult
    public func query(_ sql: String, _ binds: [PostgresBind] = []) async throws(PostgresError) -> [PostgresRow] {
        try Self.refuseTransactionControl(sql)
        return try await connection.query(sql, binds)
    }

    /// Like ``query(_:_:)``, for a statement (its rows binary when it says so).
    @discardableResult
    public func query(_ statement: PostgresStatement) async throws(PostgresError) -> [PostgresRow] {
        try Self.refuseTransactionControl(statement.sql)
        return try await connection.query(statement.sql, statement.binds, binaryResults: statement.binaryResults)
    }

    /// The rows of `first`, and of `second` when there is one, read in the same round trip (a pipeline); no
    /// rows for a missing `second`.
    /// - Throws: like ``pipeline(_:)``.
    public func query(_ first: PostgresStatement, pipelinedWith second: PostgresStatement?) async throws(PostgresError)
        -> (first: [PostgresRow], second: [PostgresRow])
    {
        guard let second else { return (try await query(first), []) }
        let results = try await pipeline([first, second])
        return (results[0].rows, results[1].rows)
    }

    /// Like ``PostgresConnection/execute(_:_:)``.
    /// - Throws: like ``query(_:_:)``.
    @discardableResult
    public func execute(_ sql: String, _ binds: [PostgresBind] = []) async throws(PostgresError) -> Int {
        try Self.refuseTransactionControl(sql)
        return try await connection.execute(sql, binds)
    }

    /// A write whose result the caller does not read. When ``defersWrites`` is set, it is sent with the
    /// session's next statement, in its round trip (``PostgresConnection/executeDeferred(_:_:)``): the handler's
    /// own next statement, or the owner's next one, such as its `COMMIT`; else it runs at once. Statements run in
    /// the order they were issued either way, so later ones see what it wrote.
    ///
    /// A deferred write that fails fails the statement that carried it (with its own SQLSTATE), and with it the
    /// transaction.
    /// - Throws: `.query` with SQLSTATE `2D000` for a transaction-control statement (not sent); when run at
    ///   once, like ``execute(_:_:)``.
    public func executeDeferred(_ sql: String, _ binds: [PostgresBind] = []) async throws(PostgresError) {
        try Self.refuseTransactionControl(sql)
        if defersWrites {
            try connection.executeDeferred(sql, binds)
        } else {
            try await connection.execute(sql, binds)
        }
    }

    /// Like ``PostgresConnection/pipeline(_:)``: the statements in one round trip, in the transaction.
    /// - Throws: `.query` with SQLSTATE `2D000`, before anything is sent, when one of them controls the
    ///   transaction; otherwise as ``PostgresConnection/pipeline(_:)``.
    @discardableResult
    public func pipeline(_ statements: [PostgresStatement]) async throws(PostgresError) -> [PostgresStatementResult] {
        for statement in statements { try Self.refuseTransactionControl(statement.sql) }
        return try await connection.pipeline(statements)
    }

    /// The first words of the statements that control a transaction.
    static let transactionControl: Set<String> = [
        "BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE", "PREPARE",
    ]

    static func refuseTransactionControl(_ sql: String) throws(PostgresError) {
        let word = firstWord(of: sql)
        guard transactionControl.contains(word) else { return }
        throw PostgresError(
            kind: .query,
            message: "\(word) refused: the transaction belongs to its owner, who alone ends it or sets savepoints",
            sqlState: "2D000")
    }

    /// The statement's first word, upper-cased, after blanks, `--` comments and (nested) `/* */` comments.
    static func firstWord(of sql: String) -> String {
        let bytes = Array(sql.utf8)
        var i = 0
        while i < bytes.count {
            let b = bytes[i]
            if b == 0x20 || b == 0x09 || b == 0x0A || b == 0x0D || b == 0x0C || b == 0x28 {  // blanks, "("
                i += 1
            } else if b == 0x2D, i + 1 < bytes.count, bytes[i + 1] == 0x2D {  // -- to the end of the line
                while i < bytes.count && bytes[i] != 0x0A { i += 1 }
            } else if b == 0x2F, i + 1 < bytes.count, bytes[i + 1] == 0x2A {  // /* ... */, nested
                var depth = 0
                while i < bytes.count {
                    if bytes[i] == 0x2F, i + 1 < bytes.count, bytes[i + 1] == 0x2A {
                        depth += 1
                        i += 2
                    } else if bytes[i] == 0x2A, i + 1 < bytes.count, bytes[i + 1] == 0x2F {
                        depth -= 1
                        i += 2
                        if depth == 0 { break }
                    } else {
                        i += 1
                    }
                }
            } else {
                break
            }
        }
        var word: [UInt8] = []
        while i < bytes.count, word.count < 16 {
            let b = bytes[i]
            if (0x41...0x5A).contains(b) || b == 0x5F {
                word.append(b)
            } else if (0x61...0x7A).contains(b) {
                word.append(b - 0x20)
            } else {
                break
            }
            i += 1
        }
        return String(decoding: word, as: UTF8.self)
    }
}
