import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import SagaEngine

/// The orders HTTP API (the contract is `schemas/openapi.yaml`):
/// - `POST /orders` (`Content-Type: application/json`) → 202 `{"orderId", "status": "PENDING"}`; 200 with the
///   first order for the customer's retry with the same `Idempotency-Key`; 400 with a reason; 413 over 1 MiB;
///   415 for another content type; 422 for a key the customer used for a different request. A W3C
///   `traceparent` header makes the saga continue the caller's trace;
/// - `GET /orders/{id}` → 200 with status, lines and history; 404 for an unknown id; 400 for a malformed one;
/// - `GET /health` → 200 when the database answers, else 503.
///
/// Any other method on these paths is 405 with `Allow`; any other path 404. Every refusal has a JSON body
/// `{"error": reason}` (the health check's 503 says `{"status": "unavailable", "reason"}`) and is logged at
/// warning with its status and reason, or at error for a 5xx; a failure of ours is a 500 `{"error": "internal
/// error"}`, the cause in the log.
public enum OrdersHTTP {
    /// The largest `POST /orders` body accepted (413 above it).
    public static let maxBodySize = 1 << 20

    /// How long a connection may go without sending anything — before its first request, between requests, or
    /// in the middle of a request's head or body — before the server closes it. A request being answered is
    /// not cut off.
    public static let idleTimeout: Duration = .seconds(30)

    /// The HTTP/1.1 server the orders API runs on: closes connections idle for `idleTimeout`.
    public static func server(idleTimeout: Duration = idleTimeout) -> HTTPServerBuilder {
        .http1(configuration: .init(idleTimeout: TimeAmount(idleTimeout)))
    }

    /// Every route and the methods it answers; another method on one of these paths is 405 with `Allow`.
    /// A nil segment matches any one segment.
    static let routes: [(path: [String?], methods: [HTTPRequest.Method])] = [
        (["health"], [.get]), (["orders"], [.post]), (["orders", nil], [.get]),
    ]

    /// The methods `path` answers to, nil when no route has that path.
    static func allowedMethods(path: String) -> [HTTPRequest.Method]? {
        let segments = path.split(separator: "/").map(String.init)
        return routes.first { route in
            route.path.count == segments.count && zip(route.path, segments).allSatisfy { $0 == nil || $0 == $1 }
        }?.methods
    }

    /// The orders API's routes on `book`: `POST /orders`, `GET /orders/{id}` and `GET /health`.
    public static func router(book: OrderBook) -> Router<BasicRequestContext> {
        let router = Router()
        // A server span per request continuing the caller's trace (none until a tracer is bootstrapped).
        router.add(middleware: TracingWhenBootstrapped())
        router.add(middleware: RefusalMiddleware())
        router.get("/health") { _, _ -> Response in
            do {
                try await book.pool.query("SELECT 1")
                return json(.ok, ["status": .string("ok")])
            } catch {
                let reason = "database: \(error)"
                throw Refusal(
                    .serviceUnavailable, reason,
                    body: ["status": .string("unavailable"), "reason": .string(reason)])
            }
        }
        router.post("/orders") { request, context -> Response in
            guard isJSON(request.headers[.contentType]) else {
                throw Refusal(
                    .unsupportedMediaType,
                    "Content-Type: expected application/json (UTF-8), got \(request.headers[.contentType] ?? "none")")
            }
            let key = request.headers[.idempotencyKey]
            if let key {
                do { try OrderRequest.validate(idempotencyKey: key) } catch let error as OrderRequestError {
                    throw Refusal(.badRequest, error.reason)
                }
            }
            var request = request
            let body: ByteBuffer
            do { body = try await request.collectBody(upTo: maxBodySize) } catch is NIOTooManyBytesError {
                throw Refusal(.contentTooLarge, "body larger than 1 MiB")
            }
            do {
                let order = try OrderRequest(body: Array(buffer: body))
                let placed = try await book.place(
                    order, idempotencyKey: key, traceparent: request.headers[.traceparent])
                if let event = placed.event, context.logger.logLevel <= .info {  // its metadata costs, logged or not
                    EventLog.logger(context.logger, for: event).info("order placed")
                }
                var response = json(
                    placed.created ? .accepted : .ok,
                    ["orderId": .string(placed.orderId.lowercasedString), "status": .string("PENDING")])
                response.headers[.location] = "/orders/\(placed.orderId.lowercasedString)"
                return response
            } catch let error as OrderRequestError {
                throw Refusal(.badRequest, error.reason)
            } catch let error as IdempotencyKeyConflict {
                throw Refusal(.unprocessableContent, error.description)
            } catch let error as OrderNotStored {
                throw Refusal(
                    .serviceUnavailable, error.description, headers: [.retryAfter: "1"],
                    body: ["error": .string(error.description), "outcome": .string("not_stored")])
            } catch let error as OrderOutcomeUnknown {
                let id = error.orderId.lowercasedString
                throw Refusal(
                    .serviceUnavailable, error.description, headers: [.location: "/orders/\(id)"],
                    body: ["error": .string(error.description), "outcome": .string("unknown"), "orderId": .string(id)])
            }
        }
        router.get("/orders/:id") { _, context -> Response in
            guard let raw = context.parameters.get("id"), let id = UUID(parsing: raw) else {
                throw Refusal(.badRequest, "order id must be a UUID")
            }
            guard let view = try await book.view(id) else { throw Refusal(.notFound, "no order \(raw)") }
            return json(.ok, try JSONValue(encoding: view))
        }
        return router
    }

    /// `application/json` in any case, without a charset or with UTF-8 (JSON is UTF-8, RFC 8259).
    static func isJSON(_ contentType: String?) -> Bool {
        guard let contentType else { return false }
        if contentType == "application/json" { return true }  // what clients send, without splitting and trimming
        let parts = contentType.split(separator: ";", omittingEmptySubsequences: false).map {
            $0.trimmingCharacters(in: .whitespaces).lowercased()
        }
        guard parts.first == "application/json" else { return false }
        for parameter in parts.dropFirst() where !parameter.isEmpty {
            let pair = parameter.split(separator: "=", maxSplits: 1).map {
                $0.trimmingCharacters(in: .whitespaces)
            }
            guard pair.count == 2 else { return false }
            if pair[0] == "charset" {
                let value =
                    pair[1].hasPrefix("\"") && pair[1].hasSuffix("\"") && pair[1].count >= 2
                    ? String(pair[1].dropFirst().dropLast()) : pair[1]
                guard value == "utf-8" else { return false }
            }
        }
        return true
    }

    static func json(_ status: HTTPResponse.Status, _ object: [String: JSONValue]) -> Response {
        json(status, .object(object))
    }

    static func json(_ status: HTTPResponse.Status, _ value: JSONValue) -> Response {
        Response(
            status: status, headers: [.contentType: "application/json"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: value.serialized())))
    }

    /// A request refused: its status, the reason for the client and the log, extra headers, and the body
    /// (`{"error": reason}` unless given).
    struct Refusal: Error {
        var status: HTTPResponse.Status
        var reason: String
        var headers: HTTPFields = [:]
        var body: [String: JSONValue]? = nil

        init(
            _ status: HTTPResponse.Status, _ reason: String, headers: HTTPFields = [:],
            body: [String: JSONValue]? = nil
        ) {
            self.status = status
            self.reason = reason
            self.headers = headers
            self.body = body
        }
    }

    /// Turns every failure into a JSON answer and logs it: a `Refusal` as it says, a route that does not exist
    /// as 404, a wrong method as 405 with `Allow`, any other error as 500 (the cause only in the log). A
    /// malformed HTTP request (e.g. a body shorter than its `Content-Length`) is left to Hummingbird, which
    /// answers 400 and closes the connection.
    struct RefusalMiddleware<Context: RequestContext>: RouterMiddleware {
        func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response)
            async throws -> Response
        {
            do {
                return try await next(request, context)
            } catch let refusal as Refusal {
                return answer(refusal, request, context)
            } catch let error as HTTPParserError {
                log(.badRequest, "malformed HTTP request: \(error)", request, context)
                throw error
            } catch let error as any HTTPResponseError {
                if error.status == .notFound, let methods = allowedMethods(path: request.uri.path) {
                    let allow = methods.map(\.rawValue).joined(separator: ", ")
                    return answer(
                        Refusal(
                            .methodNotAllowed,
                            "method \(request.method) not allowed on \(request.uri.path): use \(allow)",
                            headers: [.allow: allow]), request, context)
                }
                let reason =
                    error.status == .notFound
                    ? "no route \(request.method) \(request.uri.path)" : "\(error)"
                return answer(Refusal(error.status, reason), request, context)
            } catch {
                log(.internalServerError, "internal error: \(error)", request, context)
                return OrdersHTTP.json(.internalServerError, ["error": .string("internal error")])
            }
        }

        private func answer(_ refusal: Refusal, _ request: Request, _ context: Context) -> Response {
            log(refusal.status, refusal.reason, request, context)
            var response = OrdersHTTP.json(refusal.status, refusal.body ?? ["error": .string(refusal.reason)])
            // A HEAD answer has no body: one here would be read as the start of the next answer.
            if request.method == .head { response.body = ResponseBody() }
            response.headers.append(contentsOf: refusal.headers)
            return response
        }

        private func log(_ status: HTTPResponse.Status, _ reason: String, _ request: Request, _ context: Context) {
            let metadata: Logger.Metadata = [
                "status": .string(String(status.code)), "reason": .string(Self.printable(reason)),
                "method": .string(Self.printable(request.method.rawValue)),
                "path": .string(Self.printable(request.uri.path)),
            ]
            if status.code >= 500 {
                context.logger.error("request failed", metadata: metadata)
            } else {
                context.logger.warning("request refused", metadata: metadata)
            }
        }

        /// `text` with control characters written as `\u{…}`: what a client sent cannot forge log lines in the
        /// text log format.
        static func printable(_ text: String) -> String {
            var out = ""
            for scalar in text.unicodeScalars {
                if scalar.properties.generalCategory == .control {
                    out += "\\u{\(String(scalar.value, radix: 16))}"
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
            return out
        }
    }
}

extension HTTPField.Name {
    static let idempotencyKey = Self("Idempotency-Key")!
    static let traceparent = Self("traceparent")!
}

/// Hummingbird's `TracingMiddleware` while a tracer is bootstrapped; without one, it would build a no-op span and
/// its attributes for every request, so requests go straight on.
struct TracingWhenBootstrapped<Context: RequestContext>: RouterMiddleware {
    let tracing = TracingMiddleware<Context>()

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response)
        async throws -> Response
    {
        guard TraceParent.isTracing else { return try await next(request, context) }
        return try await tracing.handle(request, context: context, next: next)
    }
}
