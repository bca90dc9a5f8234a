/// The one error type of `SagaPostgres`.
///
/// `message` is the server's primary message (or libpq's, for connection problems). It never
/// contains the password from the configuration URL and never the values of bind parameters
/// (the server may still quote a rejected input value, e.g. `invalid input syntax for type
/// integer: "x"`). `detail` is the server's DETAIL field, which may quote row data (a duplicate
/// key's value), so `description` leaves it out.
public struct PostgresError: Error, Sendable, CustomStringConvertible {
    /// What kind of failure this is.
    public enum Kind: Sendable, Hashable {
        /// The server could not be reached, refused the session, or the session broke.
        case connection
        /// The server rejected a statement (see `sqlState`).
        case query
        /// A value could not be decoded into the requested Swift type.
        case decoding
        /// The connection, pool or listener was already closed.
        case closed
        /// The configuration (for instance the URL) is not usable.
        case invalidConfiguration
    }

    /// What kind of failure this is.
    public var kind: Kind
    /// The SQLSTATE code reported by the server, e.g. `"23505"` for a unique violation.
    public var sqlState: String?
    /// The server's primary message, or libpq's or this module's for other kinds.
    public var message: String
    /// The server's DETAIL field. It may contain row data: do not log it blindly.
    public var detail: String?
    /// The name of the violated constraint, when the server reports one.
    public var constraintName: String?

    /// Creates an error from its parts; mainly for fakes and tests of code built on this module.
    public init(
        kind: Kind, message: String, sqlState: String? = nil, detail: String? = nil, constraintName: String? = nil
    ) {
        self.kind = kind
        self.message = message
        self.sqlState = sqlState
        self.detail = detail
        self.constraintName = constraintName
    }

    /// Whether running the same work again on a (possibly new) connection may succeed:
    /// connection failures, `40001` serialization failure, `40P01` deadlock, class `08`
    /// connection exceptions, `57P01`/`57P02`/`57P03` administrator shutdown or cannot connect
    /// now, and `53300` too many connections.
    public var isRetriable: Bool {
        if kind == .connection { return true }
        guard let sqlState else { return false }
        if sqlState.hasPrefix("08") { return true }
        return ["40001", "40P01", "57P01", "57P02", "57P03", "53300"].contains(sqlState)
    }

    public var description: String {
        var text = "PostgresError.\(kind)"
        if let sqlState { text += " [\(sqlState)]" }
        text += ": \(message)"
        if let constraintName { text += " (constraint \(constraintName))" }
        return text
    }

    static let closed = PostgresError(kind: .closed, message: "the connection is closed")

    /// Returns a copy whose message is prefixed with the phase that failed ("BEGIN failed: ...").
    func prefixed(_ phase: String) -> PostgresError {
        var copy = self
        copy.message = "\(phase): \(message)"
        return copy
    }
}
