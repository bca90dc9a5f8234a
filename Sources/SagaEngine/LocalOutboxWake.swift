import Synchronization

/// Wakes the outbox relays of this process when a writer in this process committed outbox rows.
///
/// A relay that found nothing polls its outbox for a while (`RelayConfiguration.idleGrace`), then asks writers for a
/// NOTIFY. A writer in the relay's own process (the worker of a participant daemon, or the service's own code, such
/// as an HTTP API placing orders) does better: it signals the relay directly once its transaction committed, so the
/// relay reads the new rows at once instead of at its next poll, with no NOTIFY and no extra statement. Writers in
/// other processes still wake the relay by NOTIFY or its polls.
enum LocalOutboxWake {
    private static let relays = Mutex<[String: [WakeSignal]]>([:])

    private static func key(_ database: ServiceDatabase) -> String { database.url + "\u{0}" + database.schema }

    /// Wakes every relay of this process that publishes `database`'s outbox.
    static func committed(_ database: ServiceDatabase) {
        let signals = relays.withLock { $0[key(database)] ?? [] }
        for signal in signals { signal.signal() }
    }

    /// Registers a relay's wake-up for `database`'s outbox until ``remove(_:for:)``.
    static func add(_ signal: WakeSignal, for database: ServiceDatabase) {
        relays.withLock { $0[key(database), default: []].append(signal) }
    }

    static func remove(_ signal: WakeSignal, for database: ServiceDatabase) {
        relays.withLock { relays in
            relays[key(database)]?.removeAll { $0 === signal }
            if relays[key(database)]?.isEmpty == true { relays[key(database)] = nil }
        }
    }
}

extension ServiceDatabase {
    /// Tells the outbox relays running in this process that a transaction of this process committed rows to this
    /// database's outbox, so that they publish them at once. Optional (relays find the rows by themselves, a little
    /// later); the worker does it after every batch. Call it after the commit, never before.
    public func outboxCommitted() {
        LocalOutboxWake.committed(self)
    }
}
