import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import SagaEngine
import SagaServices
import Testing
import Yams

/// schemas/openapi.yaml, as YAML text and as JSON.
enum OpenAPIDocument {
    static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func load() throws -> JSONValue {
        let text = try String(contentsOf: root.appendingPathComponent("schemas/openapi.yaml"), encoding: .utf8)
        return try json(try #require(try Yams.load(yaml: text)))
    }

    /// A YAML value as JSON (keys are strings in this document).
    static func json(_ any: Any) throws -> JSONValue {
        switch any {
        case let map as [String: Any]: return .object(try map.mapValues(json))
        case let list as [Any]: return .array(try list.map(json))
        case let bool as Bool: return .bool(bool)
        case let int as Int: return .integer(Int64(int))
        case let double as Double: return .number(double)
        case let string as String: return .string(string)
        case is NSNull: return .null
        default: throw YamlError.representer(problem: "unexpected \(type(of: any))")
        }
    }

    /// The operations: path → method (upper case) → documented statuses → response object.
    static func operations(_ document: JSONValue) -> [String: [String: [String: JSONValue]]] {
        guard case .object(let paths)? = document["paths"] else { return [:] }
        var result: [String: [String: [String: JSONValue]]] = [:]
        for (path, item) in paths {
            guard case .object(let methods) = item else { continue }
            for (method, operation) in methods where ["get", "post", "put", "patch", "delete"].contains(method) {
                guard case .object(let responses)? = operation["responses"] else { continue }
                result[path, default: [:]][method.uppercased()] = responses
            }
        }
        return result
    }

    /// A component schema compiled by the engine's validator: `#/components/schemas/X` becomes `#/$defs/X`.
    static func schema(_ ref: String, in document: JSONValue) throws -> JSONSchema {
        func rewrite(_ value: JSONValue) -> JSONValue {
            switch value {
            case .object(let members):
                var out: [String: JSONValue] = [:]
                for (key, member) in members {
                    if key == "$ref", case .string(let target) = member {
                        out[key] = .string(target.replacingOccurrences(of: "#/components/schemas/", with: "#/$defs/"))
                    } else {
                        out[key] = rewrite(member)
                    }
                }
                return .object(out)
            case .array(let items): return .array(items.map(rewrite))
            default: return value
            }
        }
        let components = try #require(document["components"]?["schemas"], "no components/schemas")
        return try JSONSchema(
            .object([
                "$schema": .string("https://json-schema.org/draft/2020-12/schema"),
                "$defs": rewrite(components),
                "$ref": .string(ref.replacingOccurrences(of: "#/components/schemas/", with: "#/$defs/")),
            ]))
    }
}

/// The orders API answers as schemas/openapi.yaml says: every documented status of every operation is reached,
/// no undocumented one is answered, each body validates against its documented schema and documented headers
/// are there; a method the document does not list answers 405 with exactly the listed ones in `Allow`.
@Suite struct OpenAPIConformanceTests {
    struct Probe: Sendable {
        var path: String
        var method: HTTPRequest.Method
        var uri: String
        var headers: HTTPFields = [:]
        var body: String? = nil
        /// The status this probe is meant to reach (the test also checks it is the one answered).
        var expected: Int
    }

    static let order = #"{"customerId": "alice", "currency": "EUR", "lines": [{"sku": "widget", "quantity": 2}]}"#
    static let json: HTTPFields = [.contentType: "application/json"]
    static func keyed(_ key: String) -> HTTPFields {
        [.contentType: "application/json", HTTPField.Name("Idempotency-Key")!: key]
    }

    @Test func theServerAnswersAsTheDocumentSays() async throws {
        let document = try OpenAPIDocument.load()
        let operations = OpenAPIDocument.operations(document)
        #expect(Set(operations.keys) == ["/orders", "/orders/{id}", "/health"])
        try await OrdersHTTPTests.withOrdersAPI { client, pool in
            var orderId = ""
            var observed: [String: Set<String>] = [:]
            func run(_ probe: Probe) async throws {
                let (status, headers, body) = try await client.execute(
                    uri: probe.uri, method: probe.method, headers: probe.headers,
                    body: probe.body.map { ByteBuffer(string: $0) }
                ) { ($0.status.code, $0.headers, Array(buffer: $0.body)) }
                let operation = "\(probe.method.rawValue) \(probe.path)"
                #expect(status == probe.expected, "\(operation) (\(probe.uri)): \(status)")
                observed[operation, default: []].insert(String(status))
                guard let response = operations[probe.path]?[probe.method.rawValue]?[String(status)] else {
                    Issue.record("\(operation) answered \(status), which the document does not list")
                    return
                }
                #expect(headers[.contentType] == "application/json", "\(operation) \(status)")
                let value = try JSONValue(parsing: body)
                guard case .string(let ref)? = response["content"]?["application/json"]?["schema"]?["$ref"] else {
                    Issue.record("\(operation) \(status): no application/json schema documented")
                    return
                }
                let violations = try OpenAPIDocument.schema(ref, in: document).validate(value)
                #expect(violations.isEmpty, "\(operation) \(status): \(violations) in \(value)")
                if case .object(let documented)? = response["headers"] {
                    for name in documented.keys {
                        #expect(headers[HTTPField.Name(name)!] != nil, "\(operation) \(status): no \(name) header")
                    }
                }
                if probe.path == "/orders", status == 202, case .string(let id)? = value["orderId"] { orderId = id }
            }

            try await run(
                Probe(
                    path: "/orders", method: .post, uri: "/orders", headers: Self.keyed("k"), body: Self.order,
                    expected: 202))
            try await run(
                Probe(
                    path: "/orders", method: .post, uri: "/orders", headers: Self.keyed("k"), body: Self.order,
                    expected: 200))
            try await run(
                Probe(
                    path: "/orders", method: .post, uri: "/orders", headers: Self.keyed("k"),
                    body: Self.order.replacingOccurrences(of: "2}", with: "3}"), expected: 422))
            try await run(
                Probe(path: "/orders", method: .post, uri: "/orders", headers: Self.json, body: "{}", expected: 400))
            try await run(
                Probe(
                    path: "/orders", method: .post, uri: "/orders", headers: Self.json,
                    body: String(repeating: " ", count: OrdersHTTP.maxBodySize + 1), expected: 413))
            try await run(
                Probe(
                    path: "/orders", method: .post, uri: "/orders", headers: [.contentType: "text/plain"],
                    body: Self.order, expected: 415))
            try await run(Probe(path: "/orders/{id}", method: .get, uri: "/orders/\(orderId)", expected: 200))
            // An order with a deadline (the request's): its view has one too.
            let plain = orderId
            try await run(
                Probe(
                    path: "/orders", method: .post, uri: "/orders", headers: Self.json,
                    body: Self.order.replacingOccurrences(of: "}]}", with: #"}], "deadlineSeconds": 600}"#),
                    expected: 202))
            #expect(orderId != plain)
            try await run(Probe(path: "/orders/{id}", method: .get, uri: "/orders/\(orderId)", expected: 200))
            try await run(Probe(path: "/orders/{id}", method: .get, uri: "/orders/nope", expected: 400))
            try await run(Probe(path: "/orders/{id}", method: .get, uri: "/orders/\(UUID().uuidString)", expected: 404))
            try await run(Probe(path: "/health", method: .get, uri: "/health", expected: 200))

            // Every other method on a documented path: 405, and Allow lists exactly what the document does.
            for (path, methods) in operations {
                let uri = path.replacingOccurrences(of: "{id}", with: orderId)
                for method in [HTTPRequest.Method.get, .post, .put, .patch, .delete]
                where methods[method.rawValue] == nil {
                    let (status, allow) = try await client.execute(uri: uri, method: method) {
                        ($0.status, $0.headers[.allow])
                    }
                    #expect(status == .methodNotAllowed, "\(method) \(path)")
                    #expect(allow == methods.keys.sorted().joined(separator: ", "), "\(method) \(path)")
                }
            }

            // The session storing an order dies: 503 with what became of the order.
            let (killed, killedBody) = try await OrdersOutcomeTests.postWhileTheSessionIsKilled(client, pool)
            observed["POST /orders", default: []].insert(String(killed.code))
            #expect(killed == .serviceUnavailable)
            if case .string(let ref)? = operations["/orders"]?["POST"]?[String(killed.code)]?["content"]?[
                "application/json"]?["schema"]?["$ref"]
            {
                let violations = try OpenAPIDocument.schema(ref, in: document).validate(killedBody)
                #expect(violations.isEmpty, "POST /orders \(killed.code): \(violations) in \(killedBody)")
            } else {
                Issue.record("POST /orders \(killed.code): no application/json schema documented")
            }

            // The database gone: the server's own failures, as documented.
            await pool.close()
            try await run(
                Probe(
                    path: "/orders", method: .post, uri: "/orders", headers: Self.json, body: Self.order, expected: 500)
            )
            try await run(Probe(path: "/orders/{id}", method: .get, uri: "/orders/\(orderId)", expected: 500))
            try await run(Probe(path: "/health", method: .get, uri: "/health", expected: 503))

            for (path, methods) in operations {
                for (method, responses) in methods {
                    let operation = "\(method) \(path)"
                    #expect(
                        observed[operation] == Set(responses.keys),
                        "\(operation): documented \(responses.keys.sorted()), reached \((observed[operation] ?? []).sorted())"
                    )
                }
            }
        }
    }

    /// The limits the document states are the ones the code enforces.
    @Test func theDocumentedLimitsAreTheCodes() throws {
        let document = try OpenAPIDocument.load()
        let schemas = try #require(document["components"]?["schemas"])
        #expect(
            schemas["OrderRequest"]?["properties"]?["customerId"]?["maxLength"]
                == .integer(Int64(OrderRequest.maxCustomerIdLength)))
        #expect(schemas["OrderRequest"]?["properties"]?["lines"]?["maxItems"] == .integer(Int64(OrderRequest.maxLines)))
        #expect(
            schemas["OrderRequestLine"]?["properties"]?["sku"]?["maxLength"]
                == .integer(Int64(OrderRequest.maxSKULength)))
        #expect(
            schemas["OrderRequestLine"]?["properties"]?["quantity"]?["maximum"] == .integer(OrderRequest.maxQuantity))
        let deadline = schemas["OrderRequest"]?["properties"]?["deadlineSeconds"]
        #expect(deadline?["minimum"] == .integer(OrderRequest.deadlineSecondsRange.lowerBound))
        #expect(deadline?["maximum"] == .integer(OrderRequest.deadlineSecondsRange.upperBound))
        let key = try #require(document["components"]?["parameters"]?["IdempotencyKey"]?["schema"])
        #expect(key["maxLength"] == .integer(Int64(OrderRequest.maxIdempotencyKeyLength)))
        guard case .string(let description)? = document["info"]?["description"] else {
            Issue.record("no info.description")
            return
        }
        #expect(description.contains("at most 1 MiB") && OrdersHTTP.maxBodySize == 1 << 20)
        #expect(description.contains("nothing for \(OrdersHTTP.idleTimeout.components.seconds) s"))
    }
}
