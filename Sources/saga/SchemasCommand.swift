import ArgumentParser
import Foundation
import SagaEngine
import SagaSchemas

struct SchemasCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "schemas",
        abstract: "The event contracts: the schema-evolution gate, and the AsyncAPI document.",
        subcommands: [SchemasCheckCommand.self, SchemasAsyncAPICommand.self])
}

struct SchemasCheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract:
            "Refuse schema changes that would break a producer or a consumer (exit 1), compared with a git revision.",
        discussion: """
            Compares schemas/<type>/v<N>.schema.json of the working tree with the \
            same files at REF (default: the last tag reachable from HEAD, else the \
            merge base with origin/main, else with main) and with what this \
            binary's code produces, upcasts and consumes. It refuses:
              - a version published at REF changed in place (as JSON) or removed;
              - a version N > 1 without version N - 1, or without an upcaster
                from N - 1 (sagaUpcasters);
              - a version a consumer handles that has no schema, or that nothing
                produces or upcasts to;
              - a produced version without a schema, or newer than a consumer of
                its type handles.
            Exit status 0 when nothing is refused, 1 otherwise (one line each).
            """)

    @Option(help: ArgumentHelp("The git revision whose schemas count as published.", valueName: "REF"))
    var against: String?

    @Option(
        help: ArgumentHelp(
            "The repository's root (default: the git top level of the current directory).", valueName: "DIR"))
    var root: String?

    func run() throws {
        let rootURL = try root.map { URL(fileURLWithPath: $0) } ?? Self.topLevel()
        let reference = try against ?? SchemaGate.defaultReference(root: rootURL)
        let current = try SchemaGate.filesOnDisk(root: rootURL)
        let published = try SchemaGate.filesAt(reference, root: rootURL)
        let problems = SchemaGate.problems(
            current: current, published: published, reference: reference, code: SchemaGate.thisCode)
        guard problems.isEmpty else {
            for problem in problems { print("refused: \(problem)") }
            print("schemas check: \(problems.count) problem(s) against \(reference)")
            throw ExitCode.failure
        }
        print(
            "schemas check: \(current.count) schema files against \(reference) (\(published.count) published there):"
                + " published versions unchanged; every version upcast from the previous one; every consumed"
                + " version produced or upcast")
    }

    private static func topLevel() throws -> URL {
        let output = try Git.run(["rev-parse", "--show-toplevel"], in: URL(fileURLWithPath: "."))
        return URL(fileURLWithPath: String(decoding: output, as: UTF8.self).trimmingCharacters(in: .newlines))
    }
}

struct SchemasAsyncAPICommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "asyncapi",
        abstract: "Print the AsyncAPI 3.0 document of the events (schemas/asyncapi.yaml is its output).",
        discussion: """
            Generated from the schemas compiled into this binary (schemas/), the \
            topics (one per event type, and deadletter.<service>), what each \
            service produces and consumes, and the Kafka key and headers. After \
            changing any of them:
                saga schemas asyncapi > schemas/asyncapi.yaml
            (AsyncAPIDocumentTests fails while the committed file is stale).
            """)

    func run() throws {
        print(AsyncAPIDocument.yaml(), terminator: "")
    }
}
