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
            if !takeUnsentBegin() {
                do {
                    try await execute("ROLLBACK")
                } catch let rollbackError {
                    logger.error(
                        "ROLLBACK failed after the transaction body threw",
                        metadata: ["error": "\(rollbackError)", "bodyError": "\(String(reflecting: type(of: error)))"])
                }
            }
            throw error
        }
        // The body ran no statement: there is no transaction to commit.
        if takeUnsentBegin() { return value }
        let tag: String
        do {
            tag = try await command("COMMIT")
        } catch {
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

    /// Removes a deferred BEGIN that no statement carried yet; `true` if there was one.
    private func takeUnsentBegin() -> Bool {
        deferredBegin.withLock { pending in
            defer { pending = nil }
            return pending != nil
        }
    }
}
