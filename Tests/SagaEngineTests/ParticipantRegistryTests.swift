import Foundation
import Logging
import SagaEngine
import SagaSchemas
import SagaTestSupport
import Testing

/// How declarations combine into the saga's model.
@Suite struct SagaModelTests {
    @Test func declarationsCombineIntoOneModel() {
        let model = SagaModel(declarations: [
            "b": SagaDeclaration(
                emits: [Emission(type: "x.done", kind: .outcome, outcome: .init(label: "done", detail: "why"))],
                consumes: [.init(type: "x.started", waitingOn: "finish it")]),
            "a": SagaDeclaration(
                emits: [.init(type: "x.started", kind: .step), .init(type: "x.done", kind: .failure)],
                consumes: [.init(type: "x.started", waitingOn: "watch it"), .init(type: "x.done")]),
            "c": SagaDeclaration(consumes: [.init(type: "x.done"), .init(type: "y.other", waitingOn: "see")]),
        ])
        #expect(model.participants == ["a", "b", "c"])
        #expect(model.eventTypes == ["x.done", "x.started", "y.other"])
        // Waiters are listed by participant; a consumer without a text is not waited on.
        #expect(model.waitingOn == ["x.started": "a: watch it; b: finish it", "y.other": "c: see"])
        // Two emitters that disagree: the first by name wins.
        #expect(model.kind(of: "x.done") == .failure)
        #expect(model.outcome(of: "x.done", data: .object([:])) == nil)
        #expect(model.kind(of: "y.other") == .step)
    }

    @Test func anOutcomeIsItsLabelDetailedByAStringField() {
        let model = SagaModel(declarations: [
            "p": SagaDeclaration(emits: [
                .init(type: "x.done", kind: .outcome, outcome: .init(label: "done", detail: "why")),
                .init(type: "x.ended", kind: .outcome),
            ])
        ])
        #expect(model.outcome(of: "x.done", data: .object(["why": .string("late")])) == "done: late")
        #expect(model.outcome(of: "x.done", data: .object(["why": .number(1)])) == "done")
        #expect(model.outcome(of: "x.ended", data: .null) == "x.ended")
        #expect(model.outcome(of: "x.started", data: .null) == nil)
    }

    typealias Emission = SagaDeclaration.Emission
}

/// The runtime's envelope schema, and registries built from what a participant supplies.
@Suite struct ParticipantSchemaTests {
    @Test func theRuntimesEnvelopeSchemaIsTheOneInSchemas() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let file = try Data(contentsOf: root.appendingPathComponent("schemas/envelope/v1.schema.json"))
        #expect(try JSONValue(parsing: Array(file)) == JSONValue(parsing: Array(SchemaRegistry.envelopeSchema.utf8)))
    }

    @Test func aParticipantsRegistryHoldsItsSchemasAndTheEnvelope() throws {
        let schema = EventSchema(
            type: "x.done", version: 1,
            json: #"{"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}}"#)
        let registry = try SchemaRegistry(schemas: [schema])
        #expect(registry.keys == [SchemaKey(type: "x.done", version: 1)])
        #expect(registry.validate(type: "x.done", version: 1, data: .object(["id": .string("a")])) == [])
        #expect(registry.validate(type: "x.done", version: 1, data: .object([:]))?.isEmpty == false)
        #expect(registry.validate(type: "order.created", version: 2, data: .object([:])) == nil)
        #expect(registry.validateEnvelope(.object([:])).isEmpty == false)
        do throws(SchemaRegistry.LoadError) {
            _ = try SchemaRegistry(schemas: [EventSchema(type: "x.bad", version: 2, json: #"{"oneOf": []}"#)])
            Issue.record("loaded a schema with an unsupported keyword")
        } catch {
            #expect(error.key == SchemaKey(type: "x.bad", version: 2))
        }
        #expect(throws: SchemaRegistry.LoadError.self) {
            try SchemaRegistry(schemas: [EventSchema(type: "envelope", version: 1, json: "{}")])
        }
    }
}

/// The registry table on a real PostgreSQL.
@Suite(.serialized) struct ParticipantRegistryTests {
    let logger = Logger(label: "registry-test")

    @Test func participantsStartingAtOnceAllRegisterAndReRegisteringReplaces() async throws {
        let registry = ParticipantRegistry(
            url: PostgresTestDatabase.url, schema: "reg_" + UUID().uuidString.prefix(8).lowercased())
        do {
            try await registerAtOnceThenReplace(registry)
        } catch {
            try? await PostgresTestDatabase.dropSchema(registry.schema)
            throw error
        }
        try await PostgresTestDatabase.dropSchema(registry.schema)
    }

    func registerAtOnceThenReplace(_ registry: ParticipantRegistry) async throws {
        let logger = self.logger
        #expect(try await registry.declarations(logger: logger).isEmpty)  // nothing yet, not an error
        // Eight processes' worth of participants start at once on a registry that does not exist yet.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<8 {
                group.addTask {
                    try await registry.register(
                        "p\(i)",
                        declaration: SagaDeclaration(consumes: [.init(type: "x.started", waitingOn: "step \(i)")]),
                        logger: logger)
                }
            }
            try await group.waitForAll()
        }
        #expect(try await registry.declarations(logger: logger).count == 8)
        let replaced = SagaDeclaration(emits: [.init(type: "x.started", kind: .step)])
        try await registry.register("p3", declaration: replaced, logger: logger)
        let declarations = try await registry.declarations(logger: logger)
        #expect(declarations.count == 8)
        #expect(declarations["p3"] == replaced)
        let model = try await registry.model(logger: logger)
        #expect(model.waitingOn["x.started"]?.contains("p3:") == false)
        #expect(model.waitingOn["x.started"]?.hasPrefix("p0: step 0; p1: step 1; p2: step 2; p4: step 4") == true)
    }
}
