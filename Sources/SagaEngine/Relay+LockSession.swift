import SagaPostgres

extension OutboxRelay {
    /// The configuration of the session that holds this relay's shard locks: `database` with
    /// ``RelayConfiguration/lockSessionIdleTimeout`` as its idle-session timeout.
    ///
    /// A relay that freezes (SIGSTOP, a stuck host whose kernel still answers) keeps its TCP connection
    /// alive, so neither side's keepalives notice it, and its session advisory locks would hold its shards
    /// for good. The server instead ends its session once it has been idle that long, which frees the shards
    /// for a standby (it looks every `claimInterval`). Per saga, order holds: the standby publishes the
    /// shard's rows from the oldest unpublished one on, and whatever the frozen relay still sends when it
    /// wakes up are rows the standby sends too, in the same order to the same partition, so the first
    /// delivery of each keeps the saga's order and the consumers' inboxes skip the second. Its next
    /// statement then fails and it starts a new session.
    ///
    /// An idle relay uses the session every `pollInterval` (every `claimInterval` while it owns no shard), so
    /// the timeout is at least three times the longer of the two.
    func lockSession(_ database: PostgresConfiguration) -> PostgresConfiguration {
        var session = database
        session.idleSessionTimeout = configuration.lockSessionIdleTimeout.map {
            max($0, max(configuration.pollInterval, configuration.claimInterval) * 3)
        }
        return session
    }
}
