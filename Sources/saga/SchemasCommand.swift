import ArgumentParser
import Foundation
import SagaEngine
import SagaSchemas

struct SchemasCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "schemas",
        abstract: "The event contracts: the AsyncAPI document.",
        subcommands: [SchemasAsyncAPICommand.self])
}

struct SchemasAsyncAPICommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "asyncapi",
        abstract: "Print the AsyncAPI 3.0 document of the events (schemas/asyncapi.yaml is its output).",
        discussion: """
            Generated from the schemas compiled into this binary (schemas/), the topics (one per event type and
            deadletter.<service>), what each service produces and consumes, and the Kafka key and headers. After
            changing any of them: saga schemas asyncapi > schemas/asyncapi.yaml (a test fails when it is stale).
            """)

    func run() throws {
        print(AsyncAPIDocument.yaml(), terminator: "")
    }
}
