import Foundation
import Logging
import Synchronization

/// One notification received through `LISTEN`.
public struct PostgresNotification: Sendable, Hashable {
    /// The channel it was sent on.
    public var channel: String
    /// The payload given to `NOTIFY` (empty when none was).
    public var payload: String
    /// The server process id of the session that sent it.
    public var pid: Int32

    /// Creates a notification from its parts (for tests and fakes).
    public init(channel: String, payload: String, pid: Int32) {
        self.channel = channel
        self.payload = payload
        self.pid = pid
    }
}

/// Receives `NOTIFY` messages on a dedicated session and a dedicated thread.
///
/// The thread owns the session: it connects, runs `LISTEN` for each channel, then waits on the
/// socket with `poll()` (250 ms at a time, so ``close()`` is noticed) and yields every
/// notification into ``notifications``. Notifications are buffered without limit until read.
/// Only notifications from committed transactions arrive (PostgreSQL's rule).
public final class PostgresListener: Sendable {
    /// The notifications in arrival order. Finishes after ``close()``, or when the session is
    /// lost (logged as an error): a caller that needs notifications again starts a new listener
    /// and re-reads whatever state it was watching, since notifications sent meanwhile are lost.
    /// Ending the iteration (for instance cancelling the consuming task) also stops the listener.
    public let notifications: AsyncStream<PostgresNotification>
    private let control: ListenerControl

    private init(notifications: AsyncStream<PostgresNotification>, control: ListenerControl) {
        self.notifications = notifications
        self.control = control
    }

    deinit { control.requestStop() }

    /// Connects and subscribes to `channels` before returning, so a notification committed after
    /// `start` returns is delivered.
    ///
    /// - Parameters:
    ///   - configuration: the server to listen on; the listener opens a connection of its own.
    ///   - channels: channel names, quoted as identifiers (case and spaces are kept).
    ///   - logger: where the listener logs a lost connection.
    /// - Throws: the connection errors of ``PostgresConnection/connect(_:logger:)``, or `.query`
    ///   when a `LISTEN` fails.
    public static func start(_ configuration: PostgresConfiguration, channels: [String], logger: Logger)
        async throws(PostgresError) -> PostgresListener
    {
        let (stream, continuation) = AsyncStream.makeStream(of: PostgresNotification.self)
        let control = ListenerControl()
        // Nobody reads any more: stop the thread and free the session.
        continuation.onTermination = { _ in control.requestStop() }
        let started: Result<Void, PostgresError> = await withCheckedContinuation { startContinuation in
            let thread = Thread {
                ListenerLoop.run(
                    configuration: configuration, channels: channels, logger: logger, control: control,
                    output: continuation, started: { startContinuation.resume(returning: $0) })
            }
            thread.name = "saga.postgres.listener"
            thread.start()
        }
        try started.get()
        return PostgresListener(notifications: stream, control: control)
    }

    /// Stops listening, ends the session and finishes ``notifications``. Returns once the thread
    /// has closed the session. Idempotent.
    public func close() async {
        await control.stopAndWait()
    }
}

/// Shared between a listener and its thread: the stop request and who waits for the end.
final class ListenerControl: Sendable {
    private struct State {
        var stopRequested = false
        var finished = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = Mutex(State())

    var stopRequested: Bool { state.withLock { $0.stopRequested } }

    func requestStop() { state.withLock { $0.stopRequested = true } }

    func stopAndWait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let finished = state.withLock { state in
                state.stopRequested = true
                if !state.finished { state.waiters.append(continuation) }
                return state.finished
            }
            if finished { continuation.resume() }
        }
    }

    func markFinished() {
        let waiters = state.withLock { state in
            state.finished = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}

/// The body of the listener thread; every libpq call for the listening session happens here.
enum ListenerLoop {
    static func run(
        configuration: PostgresConfiguration, channels: [String], logger: Logger, control: ListenerControl,
        output: AsyncStream<PostgresNotification>.Continuation, started: (Result<Void, PostgresError>) -> Void
    ) {
        defer {
            output.finish()
            control.markFinished()
        }
        let connection: PQConnection
        do {
            connection = try PQConnection.connect(configuration, logger: logger)
            for channel in channels {
                try connection.executeScript("LISTEN " + connection.escapeIdentifier(channel))
            }
        } catch {
            started(.failure(error))
            return
        }
        defer { connection.close() }
        started(.success(()))
        logger.debug("listening for PostgreSQL notifications", metadata: ["channels": "\(channels)"])
        while !control.stopRequested {
            guard connection.waitReadable(timeoutMilliseconds: 250) else { continue }
            do {
                for notification in try connection.readNotifications() { output.yield(notification) }
            } catch {
                logger.error("PostgreSQL listener lost its connection", metadata: ["error": "\(error)"])
                return
            }
        }
    }
}
