import Foundation
import SagaPostgres
import SagaTestSupport
import Testing

@Suite struct PostgresListenerTests {
    /// Collects notifications until one has `payload`, or the deadline passes.
    private func collect(_ listener: PostgresListener, until payload: String) async -> [PostgresNotification] {
        let stream = listener.notifications
        return await withDeadline(seconds: 10) {
            var received: [PostgresNotification] = []
            for await notification in stream {
                received.append(notification)
                if notification.payload == payload { break }
            }
            return received
        }
    }

    @Test func deliversANotificationFromAnotherConnection() async throws {
        let channel = "Saga Test \(UUID().uuidString)"
        let configuration = PostgresTestDatabase.configuration()
        let listener = try await PostgresListener.start(
            configuration, channels: [channel, "unused_channel"], logger: testLogger)
        let senderPID = try await withConnection(configuration) { sender in
            try await sender.query("SELECT pg_notify($1, $2)", [channel, "hello 'world' 🌍"])
            return sender.backendPID
        }
        let received = await collect(listener, until: "hello 'world' 🌍")
        #expect(received == [PostgresNotification(channel: channel, payload: "hello 'world' 🌍", pid: senderPID)])
        await listener.close()
    }

    @Test func notificationFromARolledBackTransactionIsNotDelivered() async throws {
        let channel = "saga_test_\(UUID().uuidString)"
        let configuration = PostgresTestDatabase.configuration()
        let listener = try await PostgresListener.start(configuration, channels: [channel], logger: testLogger)
        try await withConnection(configuration) { sender in
            await #expect(throws: Marker(id: 1)) {
                try await sender.withTransaction { tx in
                    try await tx.query("SELECT pg_notify($1, $2)", [channel, "rolled back"])
                    throw Marker(id: 1)
                }
            }
            try await sender.withTransaction { tx in
                try await tx.query("SELECT pg_notify($1, $2)", [channel, "committed"])
            }
        }
        let received = await collect(listener, until: "committed")
        #expect(received.map(\.payload) == ["committed"])
        await listener.close()
    }

    @Test func closeFinishesTheStream() async throws {
        let listener = try await PostgresListener.start(
            PostgresTestDatabase.configuration(), channels: ["saga_test_close"], logger: testLogger)
        await listener.close()
        await listener.close()
        let stream = listener.notifications
        let ended = await withDeadline(seconds: 5) {
            for await _ in stream {}
            return !Task.isCancelled
        }
        #expect(ended)
    }

    @Test func lostConnectionFinishesTheStream() async throws {
        let channel = "saga_test_\(UUID().uuidString)"
        let configuration = PostgresTestDatabase.configuration()
        let listener = try await PostgresListener.start(configuration, channels: [channel], logger: testLogger)
        let pid = try await withConnection(configuration) { admin in
            try await admin.query(
                "SELECT pid FROM pg_stat_activity WHERE query = $1",
                ["LISTEN " + PostgresConnection.quoteIdentifier(channel)]
            )[0].decode("pid", as: Int32.self)
        }
        try await terminateBackend(pid)
        let stream = listener.notifications
        let ended = await withDeadline(seconds: 5) {
            for await _ in stream {}
            return !Task.isCancelled
        }
        #expect(ended)
        await listener.close()
    }

    @Test func endingTheIterationEndsTheSession() async throws {
        let channel = "saga_test_\(UUID().uuidString)"
        let configuration = PostgresTestDatabase.configuration()
        let listener = try await PostgresListener.start(configuration, channels: [channel], logger: testLogger)
        let listening = "LISTEN " + PostgresConnection.quoteIdentifier(channel)
        let stream = listener.notifications
        let received = await withDeadline(seconds: 0.2) {
            var count = 0
            for await _ in stream { count += 1 }
            return count
        }
        #expect(received == 0)
        let gone = try await withConnection(configuration) { admin in
            for _ in 0..<100 {
                let rows = try await admin.query("SELECT 1 FROM pg_stat_activity WHERE query = $1", [listening])
                if rows.isEmpty { return true }
                try await Task.sleep(for: .milliseconds(20))
            }
            return false
        }
        #expect(gone)
        await listener.close()
    }

    @Test func unreachableServerFailsStart() async {
        await #expect(throws: PostgresError.self) {
            _ = try await PostgresListener.start(
                PostgresConfiguration(url: "postgresql://postgres@127.0.0.1:1/saga"), channels: ["x"],
                logger: testLogger)
        }
    }
}
