import Foundation
import SagaEngine

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// A small JSON-over-HTTP client for the demo and the benchmark (the orders API on loopback).
struct OrdersClient: Sendable {
    let base: String
    let session: URLSession

    init(base: String) {
        self.base = base
        let configuration = URLSessionConfiguration.ephemeral
        configuration.httpMaximumConnectionsPerHost = 64
        configuration.timeoutIntervalForRequest = 30
        self.session = URLSession(configuration: configuration)
    }

    /// The orders API of the running stack (`.saga/dev.json`, else SAGA_HTTP_HOST:SAGA_HTTP_PORT), once it answers.
    /// - Throws: when it does not answer, with a hint to start the stack.
    static func runningStack(_ env: SagaEnvironment) async throws -> OrdersClient {
        let client = OrdersClient(base: DevStackFile.read()?.http ?? "http://\(env.httpHost):\(env.httpPort)")
        guard await client.healthy() else {
            throw ConfigurationError(
                "the orders API at \(client.base) does not answer: start the stack first (saga dev)")
        }
        return client
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Places an order; returns its id. - Throws: `Failure` with the API's reason on a non-2xx answer.
    func place(customerId: String, currency: String = "EUR", lines: [(String, Int)]) async throws -> String {
        let body = JSONValue.object([
            "customerId": .string(customerId), "currency": .string(currency),
            "lines": .array(lines.map { .object(["sku": .string($0.0), "quantity": .integer(Int64($0.1))]) }),
        ])
        let (status, json) = try await send("POST", "/orders", body: body.serialized())
        guard status == 202 || status == 200, case .string(let id)? = json["orderId"] else {
            throw Failure(
                description: "POST /orders answered \(status): \(String(decoding: json.serialized(), as: UTF8.self))")
        }
        return id
    }

    /// `GET /orders/{id}` as JSON.
    func order(_ id: String) async throws -> JSONValue {
        let (status, json) = try await send("GET", "/orders/\(id)", body: nil)
        guard status == 200 else { throw Failure(description: "GET /orders/\(id) answered \(status)") }
        return json
    }

    func healthy() async -> Bool { (try? await send("GET", "/health", body: nil).0) == 200 }

    private func send(_ method: String, _ path: String, body: [UInt8]?) async throws -> (Int, JSONValue) {
        guard let url = URL(string: base + path) else { throw Failure(description: "bad URL \(base + path)") }
        var request = URLRequest(url: url)
        request.httpMethod = method
        if let body {
            request.httpBody = Data(body)
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        }
        let (data, response) = try await session.data(for: request)
        let status = (response as? HTTPURLResponse)?.statusCode ?? 0
        return (status, (try? JSONValue(parsing: Array(data))) ?? .null)
    }
}
