import Foundation
import Logging
import SagaPostgres

/// The PostgreSQL server integration tests run against, and per-test schemas on it.
public enum PostgresTestDatabase {
    /// `SAGA_DATABASE_URL` when set, else the server started by `scripts/pg`
    /// (`postgresql://postgres@127.0.0.1:55432/saga`).
    public static var url: String {
        if let url = ProcessInfo.processInfo.environment["SAGA_DATABASE_URL"], !url.isEmpty { return url }
        return "postgresql://postgres@127.0.0.1:55432/saga"
    }

    /// A configuration for ``url`` whose `search_path` is `schema`.
    public static func configuration(schema: String? = nil) -> PostgresConfiguration {
        PostgresConfiguration(url: url, searchPath: schema)
    }

    /// Creates a schema named `prefix` plus a random suffix, lower-cased, and returns its name.
    /// Tests isolate themselves by using it as their `search_path`.
    /// - Throws: `PostgresError` when the server is unreachable or refuses `CREATE SCHEMA`.
    public static func freshSchema(_ prefix: String) async throws -> String {
        let suffix = UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(10)
        let name = "\(prefix)_\(suffix)".lowercased()
        let connection = try await PostgresConnection.connect(configuration(), logger: logger)
        do {
            try await connection.executeScript("CREATE SCHEMA " + PostgresConnection.quoteIdentifier(name))
        } catch {
            await connection.close()
            throw error
        }
        await connection.close()
        return name
    }

    /// Drops a schema made by ``freshSchema(_:)`` and everything in it; no error if it is gone.
    public static func dropSchema(_ name: String) async throws {
        let connection = try await PostgresConnection.connect(configuration(), logger: logger)
        do {
            try await connection.executeScript(
                "DROP SCHEMA IF EXISTS " + PostgresConnection.quoteIdentifier(name) + " CASCADE")
        } catch {
            await connection.close()
            throw error
        }
        await connection.close()
    }

    static let logger = Logger(label: "saga.test.postgres")
}
