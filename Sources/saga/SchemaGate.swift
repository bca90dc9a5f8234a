import Foundation
import SagaDaemon
import SagaEngine
import SagaSchemas
import SagaServices

/// The schema-evolution gate behind `saga schemas check`: compares the event schemas of a checkout with those
/// of a published git revision and with what the code produces, upcasts and consumes.
///
/// It refuses:
/// - a published version (a `schemas/<type>/v<N>.schema.json` present at the revision) that changed in place
///   or disappeared: events already in topics and outboxes were written against it;
/// - a version N > 1 without version N - 1, or without an upcaster from N - 1 in the code;
/// - a consumer's handled version that has no schema, or that nothing produces or upcasts to;
/// - a deadline type (delivered by a participant's own deadlines, never on Kafka) whose handled version has no
///   schema;
/// - a produced version that has no schema, or that is newer than a consumer of its type handles (the consumer
///   would dead-letter it).
struct SchemaGate {
    /// What the code says about the events.
    struct Code: Sendable {
        /// `(type, from version)` of every upcaster.
        var upcasters: Set<SchemaKey>
        var produced: [EmittedEvent]
        /// The handlers of event types consumed from Kafka (deadline types excluded).
        var consumers: [(service: String, type: String, version: Int)]
        /// The handlers of deadline types (``SagaDeclaration/deadlines``): produced by their own service's
        /// deadlines, not by an emitter.
        var deadlines: [(service: String, type: String, version: Int)] = []
    }

    /// Every problem found, one sentence each; empty when the gate passes.
    static func problems(
        current: [SchemaKey: JSONValue], published: [SchemaKey: JSONValue], reference: String, code: Code
    ) -> [String] {
        var problems: [String] = []
        func file(_ key: SchemaKey) -> String { "schemas/\(key.type)/v\(key.version).schema.json" }

        for key in published.keys.sorted() {
            guard let now = current[key] else {
                problems.append("\(file(key)): published at \(reference) and removed; a published version stays")
                continue
            }
            if now != published[key] {
                problems.append(
                    "\(file(key)): published at \(reference) and changed in place; add "
                        + "\(key.type)/v\(key.version + 1).schema.json with an upcaster instead")
            }
        }

        let payloads = current.keys.filter { $0.type != "envelope" }
        for key in payloads.sorted() where key.version > 1 {
            let previous = SchemaKey(type: key.type, version: key.version - 1)
            if current[previous] == nil {
                problems.append("\(file(key)): there is no v\(key.version - 1) before it")
            }
            if !code.upcasters.contains(previous) {
                problems.append(
                    "\(file(key)): no upcaster from \(key.type) v\(key.version - 1) to v\(key.version) in the code "
                        + "(sagaUpcasters)")
            }
        }

        let producedVersions = Dictionary(grouping: code.produced, by: \.type).mapValues { Set($0.map(\.version)) }
        for event in code.produced where current[SchemaKey(type: event.type, version: event.version)] == nil {
            problems.append("\(event.producer) produces \(event.type) v\(event.version), which has no schema")
        }
        for consumer in code.consumers {
            let key = SchemaKey(type: consumer.type, version: consumer.version)
            guard current[key] != nil else {
                problems.append(
                    "\(consumer.service) handles \(consumer.type) v\(consumer.version), which has no schema")
                continue
            }
            let produced = producedVersions[consumer.type] ?? []
            // Reachable: produced as is, or produced older and upcast step by step.
            let reachable = produced.contains { version in
                version <= consumer.version
                    && (version..<consumer.version).allSatisfy {
                        code.upcasters.contains(SchemaKey(type: consumer.type, version: $0))
                    }
            }
            if !reachable {
                problems.append(
                    "\(consumer.service) handles \(consumer.type) v\(consumer.version), which nothing produces "
                        + "or upcasts to (produced: \(produced.sorted().map { "v\($0)" }.joined(separator: ", ")))")
            }
            for event in code.produced where event.type == consumer.type && event.version > consumer.version {
                problems.append(
                    "\(event.producer) produces \(event.type) v\(event.version), newer than v\(consumer.version) "
                        + "which \(consumer.service) handles: it would dead-letter them")
            }
        }
        for deadline in code.deadlines
        where current[SchemaKey(type: deadline.type, version: deadline.version)] == nil {
            problems.append(
                "\(deadline.service)'s deadline delivers \(deadline.type) v\(deadline.version), which has no schema")
        }
        return problems
    }

    /// The code of this binary: `sagaUpcasters`, `sagaEmittedEvents` and the three services' handlers.
    static var thisCode: Code {
        Code(
            upcasters: Set(sagaUpcasters.map { SchemaKey(type: $0.type, version: $0.fromVersion) }),
            produced: sagaEmittedEvents,
            consumers: sagaServiceDefinitions.flatMap { definition in
                let deadlines = Set(definition.declaration.deadlines.map(\.type))
                return definition.handlers.filter { !deadlines.contains($0.eventType) }.map {
                    (definition.name, $0.eventType, $0.version)
                }
            },
            deadlines: sagaServiceDefinitions.flatMap { definition in
                let deadlines = Set(definition.declaration.deadlines.map(\.type))
                return definition.handlers.filter { deadlines.contains($0.eventType) }.map {
                    (definition.name, $0.eventType, $0.version)
                }
            })
    }

    /// `schemas/<type>/v<N>.schema.json` → its key; nil for any other path.
    static func key(ofPath path: String) -> SchemaKey? {
        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == "schemas", parts[2].hasPrefix("v"), parts[2].hasSuffix(".schema.json"),
            let version = Int(parts[2].dropFirst().dropLast(".schema.json".count)), version >= 1
        else { return nil }
        return SchemaKey(type: String(parts[1]), version: version)
    }

    /// The schema files under `root/schemas`, parsed.
    /// - Throws: `ConfigurationError` naming a file that is not JSON.
    static func filesOnDisk(root: URL) throws -> [SchemaKey: JSONValue] {
        let schemas = root.appendingPathComponent("schemas")
        var files: [SchemaKey: JSONValue] = [:]
        let fileManager = FileManager.default
        for type in try fileManager.contentsOfDirectory(atPath: schemas.path).sorted() {
            let directory = schemas.appendingPathComponent(type)
            var isDirectory: ObjCBool = false
            guard fileManager.fileExists(atPath: directory.path, isDirectory: &isDirectory), isDirectory.boolValue
            else { continue }
            for name in try fileManager.contentsOfDirectory(atPath: directory.path) {
                guard let key = key(ofPath: "schemas/\(type)/\(name)") else { continue }
                let bytes = try Data(contentsOf: directory.appendingPathComponent(name))
                files[key] = try parse(Array(bytes), "schemas/\(type)/\(name)")
            }
        }
        return files
    }

    /// The schema files at git revision `reference` of the repository at `root`, parsed.
    /// - Throws: `ConfigurationError` when git fails or a file is not JSON.
    static func filesAt(_ reference: String, root: URL) throws -> [SchemaKey: JSONValue] {
        let listing = try Git.run(["ls-tree", "-r", "--name-only", reference, "--", "schemas/"], in: root)
        var files: [SchemaKey: JSONValue] = [:]
        for path in String(decoding: listing, as: UTF8.self).split(separator: "\n").map(String.init) {
            guard let key = key(ofPath: path) else { continue }
            files[key] = try parse(try Git.run(["show", "\(reference):\(path)"], in: root), "\(reference):\(path)")
        }
        return files
    }

    private static func parse(_ bytes: [UInt8], _ name: String) throws -> JSONValue {
        do { return try JSONValue(parsing: bytes) } catch {
            throw ConfigurationError("\(name): not JSON: \(error.message)")
        }
    }

    /// The revision to compare with when none is given: the last tag reachable from HEAD, else the merge base of
    /// HEAD with `origin/main`, else with `main`.
    /// - Throws: `ConfigurationError` when there is none of them.
    static func defaultReference(root: URL) throws -> String {
        if let tag = try? Git.run(["describe", "--tags", "--abbrev=0"], in: root) {
            return String(decoding: tag, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        }
        for branch in ["origin/main", "main"] {
            if let base = try? Git.run(["merge-base", "HEAD", branch], in: root) {
                return String(decoding: base, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            }
        }
        throw ConfigurationError("no tag and no main branch to compare schemas/ with: pass --against REF")
    }
}

/// `git` in a repository, for the schema gate.
enum Git {
    /// Runs `git -C root args...` and returns its standard output.
    /// - Throws: `ConfigurationError` with git's message when it exits non-zero.
    static func run(_ arguments: [String], in root: URL) throws -> [UInt8] {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["git", "-C", root.path] + arguments
        let output = Pipe()
        let errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        process.standardInput = FileHandle.nullDevice
        try process.run()
        // Read before waiting: a full pipe would block git (its error output is a line or two).
        let out = output.fileHandleForReading.readDataToEndOfFile()
        let err = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            let message = String(decoding: err, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            throw ConfigurationError("git \(arguments.joined(separator: " ")): \(message)")
        }
        return Array(out)
    }
}
