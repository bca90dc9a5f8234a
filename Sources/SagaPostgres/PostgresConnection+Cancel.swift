import CLibPQ
import Dispatch
import Logging

/// libpq's cancel handle of one session (`PGcancel`).
///
/// `@unchecked Sendable` is safe because the handle does not change after `PQgetCancel` made it, libpq
/// documents `PQcancel` as safe to call from any thread (even a signal handler) while the session's own
/// thread is busy, and the handle is freed once, in `deinit`.
final class PostgresCancelHandle: @unchecked Sendable {
    private let handle: OpaquePointer

    init(_ handle: OpaquePointer) { self.handle = handle }

    deinit { PQfreeCancel(handle) }

    /// Sends the cancel request (blocking: it opens a connection of its own). Returns libpq's error, if any.
    func send() -> String? {
        var buffer = [CChar](repeating: 0, count: 256)
        guard PQcancel(handle, &buffer, Int32(buffer.count)) == 0 else { return nil }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

extension PostgresConnection {
    /// Asks the server to cancel the statement this session is running now (`PQcancel`, sent over a
    /// connection of its own from a dispatch thread: it never waits for this session's queue, and never
    /// blocks Swift's cooperative pool). The statement then fails with SQLSTATE `57014` and its
    /// transaction is aborted; a session running nothing is not affected (a statement sent after the
    /// request arrived is not cancelled). Returns once the request was sent; a failure to send it is logged.
    public func cancel() async {
        guard let handle = cancelHandle.withLock({ $0 }) else { return }
        let error: String? = await withCheckedContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(returning: handle.send()) }
        }
        if let error { logger.warning("cancel request failed", metadata: ["error": .string(error)]) }
    }
}

extension PostgresPool {
    /// Like ``withTransaction(isolation:_:)``, and when the calling task is cancelled while `body` runs, the
    /// statement in flight is cancelled at the server (``PostgresConnection/cancel()``), so the transaction
    /// fails with SQLSTATE `57014` and rolls back at once instead of running on (a statement waiting for a
    /// lock, a long query when a daemon is stopped). No extra round trip while nothing is cancelled.
    public func withCancellableTransaction<T: Sendable>(
        isolation: PostgresIsolation = .readCommitted, _ body: (PostgresConnection) async throws -> T
    ) async throws -> T {
        try await withConnection { connection in
            try await withTaskCancellationHandler {
                try await connection.withTransaction(isolation: isolation, body)
            } onCancel: {
                Task.detached { await connection.cancel() }
            }
        }
    }
}
