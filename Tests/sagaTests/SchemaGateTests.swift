import Foundation
import SagaEngine
import SagaSchemas
import SagaServices
import Testing

@testable import saga

/// `saga schemas check`: what it refuses, on made-up schema sets and on a real git repository.
@Suite struct SchemaGateTests {
    static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func schema(_ title: String) -> JSONValue { .object(["title": .string(title), "type": .string("object")]) }
    static func key(_ type: String, _ version: Int) -> SchemaKey { SchemaKey(type: type, version: version) }

    static let code = SchemaGate.Code(
        upcasters: [key("a.b", 1)],
        produced: [EmittedEvent(producer: "p", type: "a.b", version: 2)],
        consumers: [(service: "c", type: "a.b", version: 2)])
    static let files: [SchemaKey: JSONValue] = [key("a.b", 1): schema("v1"), key("a.b", 2): schema("v2")]

    @Test func aConsistentSetPasses() {
        #expect(SchemaGate.problems(current: Self.files, published: Self.files, reference: "r", code: Self.code) == [])
    }

    @Test func aPublishedVersionChangedInPlaceOrRemovedIsRefused() {
        var changed = Self.files
        changed[Self.key("a.b", 1)] = Self.schema("v1, relaxed")
        let inPlace = SchemaGate.problems(current: changed, published: Self.files, reference: "v1.0", code: Self.code)
        #expect(inPlace.count == 1)
        #expect(inPlace.first?.contains("schemas/a.b/v1.schema.json: published at v1.0 and changed in place") == true)

        var removed = Self.files
        removed[Self.key("a.b", 1)] = nil
        let gone = SchemaGate.problems(current: removed, published: Self.files, reference: "v1.0", code: Self.code)
        #expect(gone.contains { $0.contains("a.b/v1.schema.json: published at v1.0 and removed") })
    }

    @Test func aNewVersionWithoutAnUpcasterIsRefused() {
        var next = Self.files
        next[Self.key("a.b", 3)] = Self.schema("v3")
        let problems = SchemaGate.problems(current: next, published: Self.files, reference: "r", code: Self.code)
        #expect(problems == ["schemas/a.b/v3.schema.json: no upcaster from a.b v2 to v3 in the code (sagaUpcasters)"])
    }

    @Test func aConsumedVersionNothingProducesOrUpcastsIsRefused() {
        var code = Self.code
        code.upcasters = []
        code.produced = [EmittedEvent(producer: "p", type: "a.b", version: 1)]
        let problems = SchemaGate.problems(current: Self.files, published: Self.files, reference: "r", code: code)
        #expect(problems.contains { $0.hasPrefix("c handles a.b v2, which nothing produces or upcasts to") })
        #expect(problems.contains { $0.contains("no upcaster from a.b v1 to v2") })

        code.consumers = [(service: "c", type: "a.b", version: 7)]
        #expect(
            SchemaGate.problems(current: Self.files, published: [:], reference: "r", code: code).contains(
                "c handles a.b v7, which has no schema"))
    }

    @Test func aProducedVersionNewerThanAConsumerHandlesIsRefused() {
        var code = Self.code
        code.consumers = [(service: "c", type: "a.b", version: 1)]
        let problems = SchemaGate.problems(current: Self.files, published: Self.files, reference: "r", code: code)
        #expect(problems.contains { $0.hasPrefix("p produces a.b v2, newer than v1 which c handles") })
    }

    @Test func aDeadlineTypeNeedsASchemaButNoProducer() {
        var code = Self.code
        // Delivered by c's own deadlines: nothing emits it, and that is fine.
        code.deadlines = [(service: "c", type: "c.expired", version: 1)]
        var files = Self.files
        files[Self.key("c.expired", 1)] = Self.schema("c.expired v1")
        #expect(SchemaGate.problems(current: files, published: files, reference: "r", code: code) == [])
        #expect(
            SchemaGate.problems(current: Self.files, published: Self.files, reference: "r", code: code) == [
                "c's deadline delivers c.expired v1, which has no schema"
            ])
    }

    @Test func thisCodeAndTheseSchemasPass() throws {
        let onDisk = try SchemaGate.filesOnDisk(root: Self.root)
        #expect(onDisk.count == SchemaRegistry.shared.keys.count + 1)  // + the envelope
        #expect(
            SchemaGate.problems(current: onDisk, published: onDisk, reference: "HEAD", code: SchemaGate.thisCode) == [])
    }

    /// The command on a real repository: a copy of schemas/ committed and tagged, then changed.
    @Test func theCommandRefusesAnInPlaceChangeOfATaggedVersion() throws {
        let repo = FileManager.default.temporaryDirectory.appendingPathComponent("schema-gate-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: repo) }
        try FileManager.default.createDirectory(at: repo, withIntermediateDirectories: true)
        try FileManager.default.copyItem(
            at: Self.root.appendingPathComponent("schemas"), to: repo.appendingPathComponent("schemas"))
        for arguments in [
            ["init", "-q", "-b", "main"], ["add", "schemas"],
            ["-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", "published"],
            ["tag", "v1.0.0"],
        ] {
            _ = try Git.run(arguments, in: repo)
        }
        let clean = try Self.saga(["schemas", "check", "--root", repo.path])
        #expect(clean.status == 0, "\(clean.output)")
        #expect(clean.output.contains("against v1.0.0"), "\(clean.output)")

        // Relax a bound of a published version in place.
        let file = repo.appendingPathComponent("schemas/payment.completed/v1.schema.json")
        let text = try String(contentsOf: file, encoding: .utf8)
        try text.replacingOccurrences(of: #""additionalProperties": false"#, with: #""additionalProperties": true"#)
            .write(to: file, atomically: true, encoding: .utf8)
        let changed = try Self.saga(["schemas", "check", "--root", repo.path])
        #expect(changed.status == 1)
        #expect(
            changed.output.contains(
                "refused: schemas/payment.completed/v1.schema.json: published at v1.0.0 and changed in place"),
            "\(changed.output)")
        // Against a revision where it did not exist yet, the same file is new, not changed.
        _ = try Git.run(["checkout", "-q", "--", "schemas"], in: repo)
        let v2 = repo.appendingPathComponent("schemas/payment.completed/v2.schema.json")
        try text.replacingOccurrences(of: "saga:payment.completed/v1", with: "saga:payment.completed/v2")
            .write(to: v2, atomically: true, encoding: .utf8)
        let noUpcaster = try Self.saga(["schemas", "check", "--root", repo.path, "--against", "v1.0.0"])
        #expect(noUpcaster.status == 1)
        #expect(
            noUpcaster.output.contains("no upcaster from payment.completed v1 to v2 in the code"),
            "\(noUpcaster.output)")
    }

    static func saga(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("saga")
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: output, as: UTF8.self))
    }
}
