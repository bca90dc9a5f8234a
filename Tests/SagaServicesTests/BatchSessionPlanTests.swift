import Logging
import SagaKafka
import SagaPostgres
import SagaServices
import SagaTestSupport
import Testing

@testable import SagaEngine

/// Inventory and billing handle their batches on sessions that plan each statement once (generic plans); orders,
/// which cancels deadlines, leaves the plans to the server.
@Suite struct BatchSessionPlanTests {
    @Test func theSampleServicesUseGenericPlansWhereTheirStatementsAllowIt() async throws {
        let cases = [
            (InventoryService.definition(), "force_generic_plan"), (BillingService.definition(), "force_generic_plan"),
            (OrdersService.definition(), "auto"),
        ]
        for (definition, expected) in cases {
            let configuration = WorkerConfiguration(
                name: definition.name, kafka: KafkaSettings(bootstrapServers: "127.0.0.1:9"),
                database: ServiceDatabase(url: PostgresTestDatabase.url, schema: "public"),
                topics: TopicNaming(prefix: ""))
            let logger = Logger(label: "plan-test")
            let worker = try Worker(
                configuration: configuration, definition: definition, middleware: [], batchMiddleware: [],
                logger: logger)
            let pool = PostgresPool(configuration: worker.batchSession, size: 1, logger: logger)
            let mode: String
            do {
                mode = try await pool.query("SELECT current_setting('plan_cache_mode') AS mode")[0].decode("mode")
            } catch {
                await pool.close()
                throw error
            }
            await pool.close()
            #expect(mode == expected, "\(definition.name)")
        }
    }
}
