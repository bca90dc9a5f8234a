import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import SagaDaemon
import SagaEngine

/// Plain HTTP on loopback for the tools (the demo, the benchmark, `saga health`), through AsyncHTTPClient:
/// no libcurl, so the container image needs nothing for it.
enum LocalHTTP {
    /// One client for the process, sized for the benchmark's concurrency. Never shut down: it lives as long
    /// as the command.
    /// A refused connection fails at once (no retry until the deadline): `saga health` answers quickly.
    /// Idle connections are closed after 20 s, before the orders API closes them (`OrdersHTTP.idleTimeout`,
    /// 30 s): a request never goes out on a connection the server is closing.
    static let client: HTTPClient = {
        var configuration = HTTPClient.Configuration(
            timeout: .init(connect: .seconds(5), read: .seconds(30)),
            connectionPool: .init(idleTimeout: .seconds(20), concurrentHTTP1ConnectionsPerHostSoftLimit: 64))
        configuration.connectionPool.retryConnectionEstablishment = false
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }()

    /// Sends a request; returns the status and the body (at most 4 MiB).
    static func send(
        _ method: HTTPMethod, _ url: String, body: [UInt8]? = nil, headers: [(String, String)] = [],
        timeout: Duration = .seconds(30)
    ) async throws -> (status: Int, body: [UInt8]) {
        var request = HTTPClientRequest(url: url)
        request.method = method
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let body {
            request.body = .bytes(body)
            request.headers.add(name: "Content-Type", value: "application/json")
        }
        let response = try await client.execute(request, timeout: .init(timeout))
        let bytes = try await response.body.collect(upTo: 4 << 20)
        return (Int(response.status.code), Array(buffer: bytes))
    }
}

/// A small JSON-over-HTTP client for the demo and the benchmark (the orders API on loopback).
struct OrdersClient: Sendable {
    let base: String

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

    /// Places an order (with its own deadline in seconds when `deadlineSeconds` is given); returns its id.
    /// - Throws: `Failure` with the API's reason on a non-2xx answer.
    func place(
        customerId: String, currency: String = "EUR", lines: [(String, Int)], deadlineSeconds: Int? = nil
    ) async throws -> String {
        var members: [String: JSONValue] = [
            "customerId": .string(customerId), "currency": .string(currency),
            "lines": .array(lines.map { .object(["sku": .string($0.0), "quantity": .integer(Int64($0.1))]) }),
        ]
        if let deadlineSeconds { members["deadlineSeconds"] = .integer(Int64(deadlineSeconds)) }
        let body = JSONValue.object(members)
        let (status, json) = try await send(.POST, "/orders", body: body.serialized())
        guard status == 202 || status == 200, case .string(let id)? = json["orderId"] else {
            throw Failure(
                description: "POST /orders answered \(status): \(String(decoding: json.serialized(), as: UTF8.self))")
        }
        return id
    }

    /// `GET /orders/{id}` as JSON.
    func order(_ id: String) async throws -> JSONValue {
        let (status, json) = try await send(.GET, "/orders/\(id)", body: nil)
        guard status == 200 else { throw Failure(description: "GET /orders/\(id) answered \(status)") }
        return json
    }

    func healthy() async -> Bool { (try? await send(.GET, "/health", body: nil).0) == 200 }

    private func send(_ method: HTTPMethod, _ path: String, body: [UInt8]?) async throws -> (Int, JSONValue) {
        let (status, data) = try await LocalHTTP.send(method, base + path, body: body)
        return (status, (try? JSONValue(parsing: data)) ?? .null)
    }
}
