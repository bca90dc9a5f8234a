import Logging
import Synchronization

/// A fixed-size pool of ``PostgresConnection``s.
///
/// - At most `size` sessions are open at once; connections are opened lazily on demand.
/// - When all are in use, callers wait in FIFO order (a cancelled waiter leaves the queue and
///   throws `CancellationError`).
/// - An idle connection is checked without blocking before it is handed out; one the server
///   has ended is dropped and replaced by a new session.
/// - A connection that comes back broken (an operation failed with a `.connection` error) or
///   still inside a transaction is closed, not reused.
public final class PostgresPool: Sendable {
    private let configuration: PostgresConfiguration
    private let size: Int
    private let logger: Logger
    private let state: Mutex<State>

    private enum Lease: Sendable {
        case connection(PostgresConnection)
        /// Permission to open a new session; it holds one of the pool's `size` slots.
        case permit
    }

    private struct Waiter {
        var id: UInt64
        var continuation: CheckedContinuation<Lease, any Error>
    }

    private struct State {
        var idle: [PostgresConnection] = []
        /// Slots in use: idle, leased and being-opened connections.
        var open = 0
        var waiters: [Waiter] = []
        var nextWaiterID: UInt64 = 0
        var closed = false
    }

    /// Creates a pool; no connection is opened until the first operation.
    /// - Precondition: `size >= 1`.
    public init(configuration: PostgresConfiguration, size: Int = 4, logger: Logger) {
        precondition(size >= 1, "a PostgresPool needs at least one connection")
        self.configuration = configuration
        self.size = size
        self.logger = logger
        self.state = Mutex(State())
    }

    /// Lends a connection to `body` and takes it back afterwards, also when `body` throws.
    ///
    /// `body` runs on the connection's ``PostgresConnection/executor`` (a task executor preference), so its
    /// statements are plain calls on the session's thread, without a hand-off there and back.
    /// - Throws: `body`'s error; a ``PostgresError`` (`.connection`, `.invalidConfiguration`)
    ///   when no session could be opened; `.closed` after ``close()``; `CancellationError` when
    ///   the task is cancelled while waiting for a connection.
    @discardableResult
    public func withConnection<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        if case .connection(let connection) = try await lease() {
            // One hop to the session's thread for the liveness probe and the body both.
            let value: T? = try await withTaskExecutorPreference(connection.executor) {
                guard await connection.probe() else { return nil }
                return try await lend(connection, to: body)
            }
            if let value { return value }
            logger.info("discarding a pooled PostgreSQL connection the server ended")
            await connection.close()
        }
        let connection: PostgresConnection
        do {
            connection = try await PostgresConnection.connect(configuration, logger: logger)
        } catch {
            returnPermit()
            throw error
        }
        return try await withTaskExecutorPreference(connection.executor) { try await lend(connection, to: body) }
    }

    /// Runs `body` with `connection` and gives the connection back afterwards, also when `body` throws.
    private func lend<T: Sendable>(_ connection: PostgresConnection, to body: (PostgresConnection) async throws -> T)
        async throws -> T
    {
        let value: T
        do {
            value = try await body(connection)
        } catch {
            await release(connection, failedWith: error)
            throw error
        }
        await release(connection, failedWith: nil)
        return value
    }

    /// Runs `body` in a transaction on one pooled connection; see
    /// ``PostgresConnection/withTransaction(isolation:_:)`` for commit and rollback rules.
    @discardableResult
    public func withTransaction<T: Sendable>(
        isolation: PostgresIsolation = .readCommitted, _ body: (PostgresConnection) async throws -> T
    ) async throws -> T {
        try await withConnection { connection in
            try await connection.withTransaction(isolation: isolation, body)
        }
    }

    /// Runs one statement on a pooled connection and returns its rows.
    @discardableResult
    public func query(_ sql: String, _ binds: [PostgresBind] = []) async throws -> [PostgresRow] {
        try await withConnection { try await $0.query(sql, binds) }
    }

    /// Runs one statement on a pooled connection and returns the number of affected rows.
    @discardableResult
    public func execute(_ sql: String, _ binds: [PostgresBind] = []) async throws -> Int {
        try await withConnection { try await $0.execute(sql, binds) }
    }

    /// Closes idle connections, fails waiting callers with `.closed`, and closes leased
    /// connections as they come back. Later operations throw `.closed`. Idempotent.
    public func close() async {
        let (idle, waiters) = state.withLock { state in
            state.closed = true
            let idle = state.idle
            let waiters = state.waiters
            state.idle = []
            state.waiters = []
            state.open -= idle.count
            return (idle, waiters)
        }
        for waiter in waiters { waiter.continuation.resume(throwing: PostgresError.closedPool) }
        for connection in idle { await connection.close() }
    }

    private func lease() async throws -> Lease {
        enum Immediate {
            case lease(Lease)
            case closed, cancelled, waiting
        }
        let id = state.withLock { state -> UInt64 in
            state.nextWaiterID += 1
            return state.nextWaiterID
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Lease, any Error>) in
                let immediate: Immediate = state.withLock { state in
                    if state.closed { return .closed }
                    if let connection = state.idle.popLast() { return .lease(.connection(connection)) }
                    if state.open < size {
                        state.open += 1
                        return .lease(.permit)
                    }
                    if Task.isCancelled { return .cancelled }
                    state.waiters.append(Waiter(id: id, continuation: continuation))
                    return .waiting
                }
                switch immediate {
                case .lease(let lease): continuation.resume(returning: lease)
                case .closed: continuation.resume(throwing: PostgresError.closedPool)
                case .cancelled: continuation.resume(throwing: CancellationError())
                case .waiting: break
                }
            }
        } onCancel: {
            let waiter = state.withLock { state -> Waiter? in
                guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return state.waiters.remove(at: index)
            }
            waiter?.continuation.resume(throwing: CancellationError())
        }
    }

    /// Gives a slot back: to the first waiter as a permit to connect, or to the pool.
    private func returnPermit() {
        let waiter = state.withLock { state -> Waiter? in
            if !state.closed, !state.waiters.isEmpty { return state.waiters.removeFirst() }
            state.open -= 1
            return nil
        }
        waiter?.continuation.resume(returning: .permit)
    }

    private func release(_ connection: PostgresConnection, failedWith error: (any Error)?) async {
        let sessionEnded = (error as? PostgresError).map(Self.endsSession) ?? false
        let reusable = !sessionEnded && connection.isHealthy && connection.transactionState == .idle
        if !reusable {
            if !sessionEnded, connection.isHealthy {
                logger.warning("closing a PostgreSQL connection returned to the pool inside an open transaction")
            }
            await connection.close()
            returnPermit()
            return
        }
        enum Action {
            case handOver(Waiter)
            case close, keep
        }
        let action = state.withLock { state -> Action in
            if state.closed {
                state.open -= 1
                return .close
            }
            if !state.waiters.isEmpty { return .handOver(state.waiters.removeFirst()) }
            state.idle.append(connection)
            return .keep
        }
        switch action {
        case .handOver(let waiter): waiter.continuation.resume(returning: .connection(connection))
        case .close: await connection.close()
        case .keep: break
        }
    }
}

extension PostgresPool {
    /// Errors after which the session must not be reused even if libpq still reports it open:
    /// connection failures, class 08 (connection exception) and 57P (operator intervention).
    static func endsSession(_ error: PostgresError) -> Bool {
        guard error.kind != .connection else { return true }
        guard let state = error.sqlState else { return false }
        return state.hasPrefix("08") || state.hasPrefix("57P")
    }
}

extension PostgresError {
    static let closedPool = PostgresError(kind: .closed, message: "the connection pool is closed")
}
