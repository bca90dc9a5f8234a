import Foundation
import HTTPTypes
import Hummingbird
import SagaEngine

/// The orders HTTP API:
/// - `POST /orders` → 202 `{"orderId", "status": "PENDING"}` (optional `Idempotency-Key` header; a W3C
///   `traceparent` header makes the saga continue the caller's trace), 400 with a reason;
/// - `GET /orders/{id}` → 200 with status, lines and history; 404 for an unknown id; 400 for a malformed one;
/// - `GET /health` → 200 when the database answers, else 503.
public enum OrdersHTTP {
    public static func router(book: OrderBook) -> Router<BasicRequestContext> {
        let router = Router()
        // A server span per request continuing the caller's trace (a no-op until a tracer is bootstrapped).
        router.add(middleware: TracingMiddleware())
        router.get("/health") { _, _ -> Response in
            do {
                try await book.pool.query("SELECT 1")
                return json(.ok, ["status": .string("ok")])
            } catch {
                return json(
                    .serviceUnavailable, ["status": .string("unavailable"), "reason": .string("database: \(error)")])
            }
        }
        router.post("/orders") { request, context -> Response in
            var request = request
            let body: ByteBuffer
            do { body = try await request.collectBody(upTo: 1 << 20) } catch {
                return problem(.contentTooLarge, "body larger than 1 MiB")
            }
            let order: OrderRequest
            do { order = try OrderRequest(body: Array(buffer: body)) } catch let error as OrderRequestError {
                return problem(.badRequest, error.reason)
            }
            do {
                let placed = try await book.place(
                    order, idempotencyKey: request.headers[.idempotencyKey], traceparent: request.headers[.traceparent])
                if let event = placed.event {
                    EventLog.logger(context.logger, for: event).info("order placed")
                }
                var response = json(
                    placed.created ? .accepted : .ok,
                    ["orderId": .string(placed.orderId.uuidString.lowercased()), "status": .string("PENDING")])
                response.headers[.location] = "/orders/\(placed.orderId.uuidString.lowercased())"
                return response
            } catch let error as OrderRequestError {
                return problem(.badRequest, error.reason)
            }
        }
        router.get("/orders/:id") { _, context -> Response in
            guard let raw = context.parameters.get("id"), let id = UUID(uuidString: raw) else {
                return problem(.badRequest, "order id must be a UUID")
            }
            guard let view = try await book.view(id) else { return problem(.notFound, "no order \(raw)") }
            return json(.ok, try JSONValue(encoding: view))
        }
        return router
    }

    static func json(_ status: HTTPResponse.Status, _ object: [String: JSONValue]) -> Response {
        json(status, .object(object))
    }

    static func json(_ status: HTTPResponse.Status, _ value: JSONValue) -> Response {
        Response(
            status: status, headers: [.contentType: "application/json"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: value.serialized())))
    }

    static func problem(_ status: HTTPResponse.Status, _ reason: String) -> Response {
        json(status, ["error": .string(reason)])
    }
}

extension HTTPField.Name {
    static let idempotencyKey = Self("Idempotency-Key")!
    static let traceparent = Self("traceparent")!
}
