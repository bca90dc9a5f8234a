/// Transaction isolation levels, spelled as in `BEGIN ISOLATION LEVEL ...`.
public enum PostgresIsolation: String, Sendable {
    /// Each statement sees what was committed before it began (PostgreSQL's default).
    case readCommitted = "READ COMMITTED"
    /// Every statement sees what was committed before the transaction's first statement.
    case repeatableRead = "REPEATABLE READ"
    /// As if the serializable transactions ran one after another; a conflict fails with SQLSTATE 40001.
    case serializable = "SERIALIZABLE"
}

extension PostgresConnection {
    /// Runs `body` inside `BEGIN ISOLATION LEVEL <isolation>` ... `COMMIT`.
    ///
    /// - Returns `body`'s result once `COMMIT` succeeded.
    /// - If `body` throws, the transaction is rolled back and `body`'s error is rethrown
    ///   unchanged (a failing `ROLLBACK` is logged; the session is then unhealthy).
    /// - Throws a ``PostgresError`` whose message starts with `BEGIN failed:` or
    ///   `COMMIT failed:` when those statements fail. A transaction the server had already
    ///   aborted (a statement in `body` failed and `body` caught the error) is reported as
    ///   `COMMIT failed` with SQLSTATE `25P02`, never as a success.
    /// - A serialization failure at commit keeps its SQLSTATE `40001` and `isRetriable`.
    @discardableResult
    public func withTransaction<T: Sendable>(
        isolation: PostgresIsolation = .readCommitted, _ body: (PostgresConnection) async throws -> T
    ) async throws -> T {
        // BEGIN travels with the body's first statement (same hand-off, same round trip); a failure of it
        // surfaces there as `BEGIN failed: ...`.
        let begin = "BEGIN ISOLATION LEVEL \(isolation.rawValue)"
        let alreadyDeferred = deferredBegin.withLock { pending in
            defer { if pending == nil { pending = begin } }
            return pending != nil
        }
        if alreadyDeferred {
            // A transaction inside a transaction that has not started yet: start the outer one now, as
            // BEGIN would have been sent before.
            do {
                try await execute(begin)
            } catch {
                throw error.prefixed("BEGIN failed")
            }
        }
        let value: T
        do {
            value = try await body(self)
        } catch {
            deferredWrites.withLock { $0 = [] }
            if !takeUnsentBegin() {
                await rollBack(after: "the transaction body threw", "\(String(reflecting: type(of: error)))")
            }
            throw error
        }
        // The body ran no statement and deferred none: there is no transaction to commit.
        if deferredWrites.withLock({ $0.isEmpty }), takeUnsentBegin() { return value }
        let tag: String
        do {
            tag = try await command("COMMIT")
        } catch {
            // A deferred write sent with the COMMIT failed: the transaction is aborted, not ended.
            if transactionState == .failed || transactionState == .inTransaction {
                await rollBack(after: "COMMIT failed", "\(error)")
            }
            throw error.prefixed("COMMIT failed")
        }
        guard tag == "COMMIT" else {
            throw PostgresError(
                kind: .query,
                message: "COMMIT failed: the transaction had been aborted by an earlier error and was rolled back",
                sqlState: "25P02")
        }
        return value
    }

    /// Defers a write whose result nobody reads: it is sent with the session's next statement (or the
    /// transaction's `COMMIT`), before it, in the same round trip (libpq pipeline mode). Statements run in the
    /// order they were issued, so later statements see what it wrote.
    ///
    /// - Only inside a transaction: ``withTransaction(isolation:_:)``'s `COMMIT` sends whatever is still
    ///   deferred, and a body that throws drops it with the transaction.
    /// - Its failure is reported by the statement that carried it, its message prefixed
    ///   `deferred write 1 of 2:`, with its SQLSTATE (`COMMIT failed: deferred write …` at the commit; the
    ///   transaction is then rolled back). The statements after it do not run.
    /// - Throws: SQLSTATE `25P01` outside a transaction (nothing would be sure to carry it).
    public func executeDeferred(_ sql: String, _ binds: [PostgresBind] = []) throws(PostgresError) {
        let inTransaction = deferredBegin.withLock { $0 != nil } || transactionState == .inTransaction
        guard inTransaction else {
            throw PostgresError(
                kind: .query, message: "executeDeferred outside a transaction: no COMMIT is sure to carry it",
                sqlState: "25P01")
        }
        deferredWrites.withLock { $0.append(PQConnection.Statement(sql: sql, binds: binds, wantRows: false)) }
    }

    /// Rolls the transaction back; a failure is logged (the session is then unhealthy), with `cause`.
    private func rollBack(after what: String, _ cause: String) async {
        do {
            try await execute("ROLLBACK")
        } catch {
            logger.error("ROLLBACK failed after \(what)", metadata: ["error": "\(error)", "cause": .string(cause)])
        }
    }

    /// Removes a deferred BEGIN that no statement carried yet; `true` if there was one.
    private func takeUnsentBegin() -> Bool {
        deferredBegin.withLock { pending in
            defer { pending = nil }
            return pending != nil
        }
    }
}
