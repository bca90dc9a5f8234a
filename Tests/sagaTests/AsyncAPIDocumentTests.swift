import Foundation
import SagaEngine
import SagaSchemas
import SagaServices
import Testing
import Yams

@testable import saga

/// schemas/asyncapi.yaml is `saga schemas asyncapi`'s output for this code and these schemas, and says what
/// the code does.
@Suite struct AsyncAPIDocumentTests {
    static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test func theCommittedDocumentIsCurrent() throws {
        let committed = try String(
            contentsOf: Self.root.appendingPathComponent("schemas/asyncapi.yaml"), encoding: .utf8)
        #expect(
            committed == AsyncAPIDocument.yaml(),
            "schemas/asyncapi.yaml is stale: run `saga schemas asyncapi > schemas/asyncapi.yaml`")
    }

    @Test func itHasEveryTopicEverySchemaVersionEveryProducerAndConsumer() throws {
        let document = try #require(try Yams.load(yaml: AsyncAPIDocument.yaml()) as? [String: Any])
        #expect(document["asyncapi"] as? String == "3.0.0")
        let channels = try #require(document["channels"] as? [String: [String: Any]])
        #expect(Set(channels.values.compactMap { $0["address"] as? String }) == Set(sagaTopics(TopicNaming())))

        let components = try #require(document["components"] as? [String: [String: Any]])
        let messages = try #require(components["messages"] as? [String: [String: Any]])
        let schemas = try #require(components["schemas"] as? [String: [String: Any]])
        // The one type without a topic: order.expired, a deadline of orders (never on Kafka).
        #expect(Set(SchemaRegistry.shared.keys.map(\.type)).subtracting(sagaEventTypes) == ["order.expired"])
        for key in SchemaRegistry.shared.keys where sagaEventTypes.contains(key.type) {
            let name = "\(key.type).v\(key.version)"
            #expect(messages[name] != nil, "no message \(name)")
            #expect(schemas[name]?["$ref"] as? String == "\(key.type)/v\(key.version).schema.json")
            let channelMessages = channels[key.type]?["messages"] as? [String: Any]
            #expect(channelMessages?[name] != nil, "channel \(key.type) lacks \(name)")
        }

        let operations = try #require(document["operations"] as? [String: [String: Any]])
        func messageNames(_ operation: String) -> Set<String> {
            let refs = (operations[operation]?["messages"] as? [[String: String]]) ?? []
            return Set(refs.compactMap { $0["$ref"]?.split(separator: "/").last.map(String.init) })
        }
        for event in sagaEmittedEvents {
            let operation = "\(event.producer).send.\(event.type)"
            #expect(operations[operation]?["action"] as? String == "send", "\(operation)")
            #expect(messageNames(operation).contains("\(event.type).v\(event.version)"), "\(operation)")
        }
        for service in sagaServiceDefinitions {
            // A deadline type (orders' order.expired) is delivered by the service's own deadlines, never read from
            // a topic: no receive operation.
            let deadlineTypes = Set(service.declaration.deadlines.map(\.type))
            for type in deadlineTypes {
                #expect(operations["\(service.name).receive.\(type)"] == nil, "\(service.name) receives \(type)")
            }
            for handler in service.handlers where !deadlineTypes.contains(handler.eventType) {
                let operation = "\(service.name).receive.\(handler.eventType)"
                #expect(operations[operation]?["action"] as? String == "receive", "\(operation)")
                // What the consumer accepts: every version up to the one it handles (older ones upcast).
                #expect(
                    messageNames(operation)
                        == Set((1...handler.version).map { "\(handler.eventType).v\($0)" }), "\(operation)")
            }
            #expect(operations["\(service.name).send.deadletter.\(service.name)"] != nil)
        }
        let deadLetterHeaders = try #require(schemas["DeadLetterHeaders"]?["required"] as? [String])
        #expect(
            Set(deadLetterHeaders)
                == [
                    SagaHeader.deadLetterReason, SagaHeader.deadLetterSourceTopic, SagaHeader.deadLetterSourcePartition,
                    SagaHeader.deadLetterSourceOffset, SagaHeader.deadLetterConsumer, SagaHeader.deadLetteredAt,
                ])
    }

    @Test(arguments: [
        "plain", "#/components/x", "true", "No", "a: b", "x #y", "3.0.0", "", "line\nbreak", "quote\"d", "é",
        "$message.payload#/sagaId", "- dash",
    ])
    func aScalarReadsBackAsTheSameString(text: String) throws {
        let yaml = YAMLNode.document(.map([("key", .string(text))]))
        let loaded = try #require(try Yams.load(yaml: yaml) as? [String: Any])
        #expect(loaded["key"] as? String == text, "\(yaml)")
    }
}
