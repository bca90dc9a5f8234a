import Foundation
import JSONSchema
import Testing

@testable import SagaSchemas

/// The repository root, found from this file's location (Tests/SagaSchemasTests/<file>).
let repositoryRoot = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// `(type, version)` of every `schemas/<type>/v<N>.schema.json` on disk, with its contents.
func schemaFilesOnDisk() throws -> [SchemaKey: Data] {
    let schemasDirectory = repositoryRoot.appendingPathComponent("schemas")
    let fileManager = FileManager.default
    var result: [SchemaKey: Data] = [:]
    for type in try fileManager.contentsOfDirectory(atPath: schemasDirectory.path) {
        var isDirectory: ObjCBool = false
        let directory = schemasDirectory.appendingPathComponent(type)
        guard fileManager.fileExists(atPath: directory.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            continue
        }
        for file in try fileManager.contentsOfDirectory(atPath: directory.path) {
            let prefix = "v"
            let suffix = ".schema.json"
            guard file.hasPrefix(prefix), file.hasSuffix(suffix),
                let version = Int(file.dropFirst(prefix.count).dropLast(suffix.count))
            else {
                Issue.record("unexpected file schemas/\(type)/\(file)")
                continue
            }
            result[SchemaKey(type: type, version: version)] = try Data(
                contentsOf: directory.appendingPathComponent(file))
        }
    }
    return result
}

@Suite struct EmbeddingTests {
    @Test func embeddedFileIsFresh() throws {
        let process = Process()
        process.executableURL = repositoryRoot.appendingPathComponent("scripts/gen-schemas")
        process.arguments = ["--stdout"]
        let output = Pipe()
        let errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        let generated = output.fileHandleForReading.readDataToEndOfFile()
        let stderr = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "gen-schemas failed: \(String(decoding: stderr, as: UTF8.self))")
        let committed = try Data(
            contentsOf: repositoryRoot.appendingPathComponent("Sources/SagaSchemas/EmbeddedSchemas.swift"))
        #expect(!generated.isEmpty)
        #expect(generated == committed, "Sources/SagaSchemas/EmbeddedSchemas.swift is stale: run scripts/gen-schemas")
    }

    @Test func everySchemaFileIsEmbeddedVerbatim() throws {
        let onDisk = try schemaFilesOnDisk()
        #expect(onDisk.count == EmbeddedSchemas.all.count)
        #expect(Set(onDisk.keys) == Set(EmbeddedSchemas.all.map { SchemaKey(type: $0.type, version: $0.version) }))
        for entry in EmbeddedSchemas.all {
            let key = SchemaKey(type: entry.type, version: entry.version)
            // Same JSON document (the literal drops only the file's final newline).
            let disk = try JSONValue(parsing: Array(onDisk[key] ?? Data()))
            #expect(try JSONValue(parsing: Array(entry.json.utf8)) == disk, "\(key)")
        }
        // The registry exposes every file except the envelope.
        #expect(SchemaRegistry.shared.keys == onDisk.keys.filter { $0.type != "envelope" }.sorted())
        #expect(onDisk[SchemaKey(type: "envelope", version: 1)] != nil)
    }

    @Test func everySchemaLoadsAndFollowsTheConventions() throws {
        for entry in EmbeddedSchemas.all {
            let key = SchemaKey(type: entry.type, version: entry.version)
            let document = try JSONValue(parsing: Array(entry.json.utf8))
            _ = try JSONSchema(document)
            guard case .object(let members) = document else {
                Issue.record("\(key) is not an object")
                continue
            }
            #expect(members["$id"] == .string("saga:\(key)"))
            #expect(members["$schema"] == .string("https://json-schema.org/draft/2020-12/schema"))
            #expect(members["additionalProperties"] == .bool(false), "\(key)")
            // Each file carries at least one example, and every example is valid.
            guard case .array(let examples)? = members["examples"], !examples.isEmpty else {
                Issue.record("\(key) has no examples")
                continue
            }
            for example in examples {
                let violations =
                    key.type == "envelope"
                    ? SchemaRegistry.shared.validateEnvelope(example)
                    : SchemaRegistry.shared.validate(type: key.type, version: key.version, data: example)
                #expect(violations == [], "\(key) example: \(violations ?? [])")
            }
        }
    }

    @Test func loadFailuresNameTheSchema() {
        let envelope = EmbeddedSchemas.all.first { $0.type == "envelope" }!
        do throws(SchemaRegistry.LoadError) {
            _ = try SchemaRegistry(embedded: [envelope, (type: "x.y", version: 3, json: #"{"oneOf": []}"#)])
            Issue.record("loaded a schema with an unsupported keyword")
        } catch {
            #expect(error.key == SchemaKey(type: "x.y", version: 3))
            #expect(error.underlying.message.contains("oneOf"))
        }
        do throws(SchemaRegistry.LoadError) {
            _ = try SchemaRegistry(embedded: [(type: "x.y", version: 1, json: "{}")])
            Issue.record("loaded without an envelope")
        } catch {
            #expect(error.key == SchemaKey(type: "envelope", version: 1))
        }
    }
}

@Suite struct RegistryAPITests {
    let registry = SchemaRegistry.shared

    @Test func keysAndVersions() {
        #expect(
            registry.keys.map(\.description) == [
                "inventory.rejected/v1", "inventory.released/v1", "inventory.reserved/v1",
                "order.cancelled/v1", "order.cancelled/v2", "order.confirmed/v1", "order.created/v1",
                "order.created/v2", "order.expired/v1", "payment.completed/v1", "payment.failed/v1",
                "payment.refunded/v1",
            ])
        #expect(registry.versions(of: "order.created") == [1, 2])
        #expect(registry.latestVersion(of: "order.created") == 2)
        #expect(registry.latestVersion(of: "payment.failed") == 1)
        #expect(registry.versions(of: "order.cancelled") == [1, 2])
        #expect(registry.versions(of: "nope.nope") == [])
        #expect(registry.latestVersion(of: "nope.nope") == nil)
        #expect(registry.versions(of: "envelope") == [])
        #expect(registry.validate(type: "order.created", version: 3, data: .object([:])) == nil)
        #expect(registry.validate(type: "envelope", version: 1, data: .object([:])) == nil)
        #expect(registry.validate(type: "order.created", version: 1, data: .object([:])) != nil)
    }

    @Test func schemaKeyOrderingAndDescription() {
        let a = SchemaKey(type: "order.created", version: 2)
        let b = SchemaKey(type: "order.created", version: 10)
        let c = SchemaKey(type: "payment.failed", version: 1)
        #expect(a < b && b < c && !(c < a))
        #expect(a.description == "order.created/v2")
    }
}
