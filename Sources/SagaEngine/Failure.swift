import SagaPostgres

/// Whose fault a failure of a batch (or of one of its events) is: that decides between dead-lettering the
/// event and retrying the batch.
package enum Failure: Equatable {
    /// The event's, for certain: dead-letter it now. Undecodable or invalid events, a ``HandlerRejection``,
    /// an invalid emitted event, any other error a handler throws, and the data errors PostgreSQL reports:
    /// SQLSTATE class 22 (data exception, e.g. a NUL in text), 23 (integrity constraint violation) and
    /// 54 (program limit exceeded, e.g. 54000 when a value is too large for an index row).
    case eventFault(reason: String)
    /// Nobody's for good: retry the batch with backoff as long as it takes, never dead-letter for it. A
    /// lost or refused connection (class 08, 57P01–57P03, 53300), 40001 serialization failure, 40P01
    /// deadlock, 40003 statement completion unknown, class 53 insufficient resources (disk full, out of
    /// memory), 55P03 lock not available (`lock_timeout`), class 58 system errors, cancellation.
    case transient
    /// Not known to be either (an undefined table or column during a deploy, 57014 `statement_timeout`,
    /// 25P02, XX000, a row that does not decode): retried, but an event that keeps failing with the same
    /// error (`signature`) is dead-lettered after ``WorkerConfiguration/deadLetterAfterAttempts`` attempts.
    case undecided(signature: String, reason: String)

    package init(_ error: any Error) {
        switch error {
        case let e as EventDecodingError: self = .eventFault(reason: e.reason)
        case let e as HandlerRejection: self = .eventFault(reason: "rejected: \(e.reason)")
        case let e as EventEncodingError: self = .eventFault(reason: "handler emitted an invalid event: \(e.reason)")
        case let e as PostgresError: self = Self(e)
        case is CancellationError: self = .transient
        default: self = .eventFault(reason: "handler failed: \(error)")
        }
    }

    package init(_ error: PostgresError) {
        if error.isRetriable || error.kind == .closed {
            self = .transient
            return
        }
        guard let state = error.sqlState else {
            self = .undecided(signature: "\(error.kind) \(error.message)", reason: error.description)
            return
        }
        switch state.prefix(2) {
        case "22", "23", "54": self = .eventFault(reason: "database rejected the event: \(error.description)")
        case "53", "58": self = .transient
        default:
            if ["40003", "55P03"].contains(state) {
                self = .transient
            } else {
                self = .undecided(signature: "\(state) \(error.message)", reason: error.description)
            }
        }
    }

    var isTransient: Bool { self == .transient }
}
