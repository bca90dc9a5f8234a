import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import HummingbirdTesting
import Logging
import SagaEngine
import SagaServices
import SagaTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// What fuzzing the orders API by hand found (issue 14), one test per finding: every such request is
/// refused with a 4xx, a JSON reason and a warning in the log, and stores nothing.
@Suite struct OrdersHTTPHardeningTests {
    typealias Fixture = OrdersHTTPTests

    /// A `POST /orders` body; `quantity` is spliced in as written (a JSON number literal).
    static func order(customerId: String = "alice", sku: String = "widget", quantity: String = "1") -> String {
        let c = String(decoding: JSONValue.string(customerId).serialized(), as: UTF8.self)
        let s = String(decoding: JSONValue.string(sku).serialized(), as: UTF8.self)
        return #"{"customerId": \#(c), "currency": "EUR", "lines": [{"sku": \#(s), "quantity": \#(quantity)}]}"#
    }

    static func stored(_ pool: PostgresPool) async throws -> Int {
        try await pool.query("SELECT 1 FROM orders").count
    }

    static func reason(_ json: JSONValue) -> String {
        if case .string(let reason)? = json["error"] { return reason }
        return "no error in \(json)"
    }

    @Test(arguments: [
        ("alice\u{0}", "widget", "customerId"),
        ("alice", "wid\u{0}get", "lines[0].sku"),
        ("al\u{1B}ice", "widget", "customerId"),
        ("alice\u{85}", "widget", "customerId"),
        ("alice", "widget\u{7F}", "lines[0].sku"),
        // 101 characters but 202 code points: the order.created schema counts code points.
        (String(repeating: "e\u{301}", count: 101), "widget", "customerId"),
        ("alice", String(repeating: "e\u{301}", count: 51), "lines[0].sku"),
    ])
    func controlCharactersAndTooManyCodePointsAnswer400(customerId: String, sku: String, field: String)
        async throws
    {
        try await Fixture.withOrdersAPI { client, pool in
            let (status, json) = try await Fixture.post(client, Self.order(customerId: customerId, sku: sku))
            #expect(status == .badRequest)
            #expect(Self.reason(json).hasPrefix(field), "\(json)")
            #expect(try await Self.stored(pool) == 0)
        }
    }

    @Test func aCustomerIdOfExactly200CodePointsIsAccepted() async throws {
        try await Fixture.withOrdersAPI { client, pool in
            let (status, json) = try await Fixture.post(
                client, Self.order(customerId: String(repeating: "e\u{301}", count: 100)))
            #expect(status == .accepted, "\(json)")
            #expect(try await Self.stored(pool) == 1)
        }
    }

    @Test(arguments: ["1.0", "1e0", "1E2", "0.9999999999999999999", "2.5", "-0.0", "100000000000000000000000"])
    func aQuantityThatIsNotAnIntegerLiteralAnswers400(quantity: String) async throws {
        try await Fixture.withOrdersAPI { client, pool in
            let (status, json) = try await Fixture.post(client, Self.order(quantity: quantity))
            #expect(status == .badRequest)
            #expect(Self.reason(json).hasPrefix("lines[0].quantity"), "\(json)")
            #expect(try await Self.stored(pool) == 0)
        }
    }

    @Test func anUnknownFieldAnswers400() async throws {
        try await Fixture.withOrdersAPI { client, pool in
            let body = #"{"customerId": "a", "currency": "EUR", "lines": [{"sku": "widget", "quantity": 1}], "x": 1}"#
            let (status, json) = try await Fixture.post(client, body)
            #expect(status == .badRequest)
            #expect(Self.reason(json).contains("x"), "\(json)")
            let line = #"{"customerId": "a", "currency": "EUR", "lines": [{"sku": "widget", "quantity": 1, "y": 2}]}"#
            let (lineStatus, lineJSON) = try await Fixture.post(client, line)
            #expect(lineStatus == .badRequest)
            #expect(Self.reason(lineJSON).hasPrefix("lines[0]"), "\(lineJSON)")
            #expect(try await Self.stored(pool) == 0)
        }
    }

    static let longRandomKey = String((0..<3000).map { _ in "abcdefghijklmnopqrstuvwxyz0123456789-_".randomElement()! })

    @Test(arguments: ["", String(repeating: "k", count: 256), longRandomKey, "a b", "tab\tinside"])
    func anInvalidIdempotencyKeyAnswers400(key: String) async throws {
        try await Fixture.withOrdersAPI { client, pool in
            let (status, json) = try await Fixture.post(client, Self.order(), key: key)
            #expect(status == .badRequest)
            #expect(Self.reason(json).hasPrefix("Idempotency-Key"), "\(json)")
            #expect(try await Self.stored(pool) == 0)
        }
    }

    @Test func aKeyOf255VisibleCharactersIsAccepted() async throws {
        try await Fixture.withOrdersAPI { client, pool in
            let key = String(repeating: "k", count: 254) + "~"
            let (first, _) = try await Fixture.post(client, Self.order(), key: key)
            let (again, _) = try await Fixture.post(client, Self.order(), key: key)
            #expect(first == .accepted)
            #expect(again == .ok)
            #expect(try await Self.stored(pool) == 1)
        }
    }

    @Test func idempotencyKeysAreScopedToTheCustomer() async throws {
        try await Fixture.withOrdersAPI { client, pool in
            let (s1, alice) = try await Fixture.post(client, Self.order(customerId: "alice"), key: "shared")
            let (s2, bob) = try await Fixture.post(client, Self.order(customerId: "bob"), key: "shared")
            let (s3, bobAgain) = try await Fixture.post(client, Self.order(customerId: "bob"), key: "shared")
            #expect(s1 == .accepted)
            #expect(s2 == .accepted, "bob must not get alice's order")
            #expect(alice["orderId"] != bob["orderId"])
            #expect(s3 == .ok)
            #expect(bobAgain["orderId"] == bob["orderId"])
            #expect(try await Self.stored(pool) == 2)
        }
    }

    @Test func aReusedKeyWithADifferentRequestAnswers422() async throws {
        try await Fixture.withOrdersAPI { client, pool in
            let (s1, first) = try await Fixture.post(client, Self.order(quantity: "1"), key: "k-1")
            let (s2, other) = try await Fixture.post(client, Self.order(quantity: "2"), key: "k-1")
            #expect(s1 == .accepted)
            #expect(s2 == .unprocessableContent)
            #expect(Self.reason(other).hasPrefix("Idempotency-Key"), "\(other)")
            // The same request written differently (member order, spacing) is the same request.
            let reordered = #"{"lines":[{"quantity":1,"sku":"widget"}],"currency":"EUR","customerId":"alice"}"#
            let (s3, same) = try await Fixture.post(client, reordered, key: "k-1")
            #expect(s3 == .ok)
            #expect(same["orderId"] == first["orderId"])
            #expect(try await Self.stored(pool) == 1)
        }
    }

    @Test(arguments: [
        (HTTPRequest.Method.put, "/orders", "POST"), (.delete, "/orders", "POST"), (.get, "/orders", "POST"),
        (.patch, "/orders/7d444840-9dc0-11d1-b245-5ffdce74fad2", "GET"),
        (.post, "/orders/7d444840-9dc0-11d1-b245-5ffdce74fad2", "GET"), (.delete, "/health", "GET"),
        (.head, "/orders", "POST"),
    ])
    func aWrongMethodAnswers405WithAllow(method: HTTPRequest.Method, path: String, allow: String) async throws {
        try await Fixture.withOrdersAPI { client, pool in
            let (status, allowed) = try await client.execute(uri: path, method: method) {
                ($0.status, $0.headers[.allow])
            }
            #expect(status == .methodNotAllowed)
            #expect(allowed == allow)
            #expect(try await Self.stored(pool) == 0)
        }
    }

    @Test func anUnknownPathAnswers404WithAReason() async throws {
        try await Fixture.withOrdersAPI { client, _ in
            let (status, json) = try await client.execute(uri: "/nowhere", method: .get) {
                ($0.status, (try? JSONValue(parsing: Array(buffer: $0.body))) ?? .null)
            }
            #expect(status == .notFound)
            #expect(Self.reason(json).contains("/nowhere"), "\(json)")
        }
    }

    @Test(arguments: [
        "text/plain", "application/x-www-form-urlencoded", "application/xml", "application/json; charset=utf-16",
        "multipart/form-data; boundary=x", "application/jsonx", "",
    ])
    func aBodyThatIsNotJSONByItsContentTypeAnswers415(contentType: String) async throws {
        try await Fixture.withOrdersAPI { client, pool in
            let (status, json) = try await Fixture.post(
                client, Self.order(), contentType: contentType.isEmpty ? nil : contentType)
            #expect(status == .unsupportedMediaType)
            #expect(Self.reason(json).contains("application/json"), "\(json)")
            #expect(try await Self.stored(pool) == 0)
        }
    }

    @Test(arguments: ["application/json; charset=UTF-8", "Application/JSON", #"application/json;charset="utf-8""#])
    func jsonWithAnyCaseOrAUTF8CharsetIsAccepted(contentType: String) async throws {
        try await Fixture.withOrdersAPI { client, _ in
            let (status, json) = try await Fixture.post(client, Self.order(), contentType: contentType)
            #expect(status == .accepted, "\(json)")
        }
    }

    @Test func aBodyLargerThan1MiBAnswers413() async throws {
        try await Fixture.withOrdersAPI { client, pool in
            let (status, json) = try await Fixture.post(client, String(repeating: " ", count: (1 << 20) + 1))
            #expect(status == .contentTooLarge)
            #expect(Self.reason(json).contains("1 MiB"), "\(json)")
            #expect(try await Self.stored(pool) == 0)
        }
    }

    @Test func aBodyShorterThanItsContentLengthIsABadRequestNotTooLarge() async throws {
        let logs = CapturedLogs()
        try await Fixture.withOrdersAPI(.live, logger: logs.logger) { client, pool in
            let port = try #require(client.port)
            let head =
                "POST /orders HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            let answer = try await RawHTTP.exchange(
                port: port, send: Array((head + #"{"customerId": "alice""#).utf8), closeWriting: true,
                readFor: .seconds(10))
            #expect(answer.text.hasPrefix("HTTP/1.1 400"), "\(answer.text)")
            #expect(try await Self.stored(pool) == 0)
            let refusal = logs.entries.first { $0.metadata["status"] != nil }
            #expect(refusal?.level == .warning)
            #expect(refusal?.metadata["status"] == "400")
            #expect(refusal.map { "\($0.metadata["reason"] ?? "")".hasPrefix("malformed HTTP request") } == true)
        }
    }

    @Test func jsonNestedDeeperThan512LevelsAnswers400() async throws {
        try await Fixture.withOrdersAPI { client, pool in
            let deep = String(repeating: "[", count: 600) + String(repeating: "]", count: 600)
            let body = #"{"customerId": "a", "currency": "EUR", "lines": \#(deep)}"#
            let (status, json) = try await Fixture.post(client, body)
            #expect(status == .badRequest)
            #expect(Self.reason(json).hasPrefix("body is not valid JSON: "), "\(json)")
            #expect(Self.reason(json).hasSuffix("nesting deeper than 512"), "\(json)")
            #expect(try await Self.stored(pool) == 0)
        }
    }

    /// Connections that send nothing, half a head or half a body are closed after the idle timeout.
    @Test(arguments: [
        "", "POST /orders HTTP/1.1\r\nHost: local",
        "POST /orders HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    ])
    func idleAndHalfSentConnectionsAreClosed(sent: String) async throws {
        try await Fixture.withOrdersAPI(.live, server: OrdersHTTP.server(idleTimeout: .milliseconds(500))) {
            client, _ in
            let port = try #require(client.port)
            let answer = try await RawHTTP.exchange(
                port: port, send: Array(sent.utf8), closeWriting: false, readFor: .seconds(10))
            #expect(answer.closed, "the server kept the connection open: \(answer.text)")
            #expect(answer.elapsed < .seconds(5))
            #expect(answer.elapsed >= .milliseconds(400))
        }
        #expect(OrdersHTTP.idleTimeout <= .seconds(60))
    }

    @Test func everyRefusedRequestIsLoggedAtWarningWithItsReason() async throws {
        let logs = CapturedLogs()
        try await Fixture.withOrdersAPI(logger: logs.logger) { client, pool in
            _ = try await Fixture.post(client, Self.order(quantity: "0"))
            _ = try await Fixture.post(client, Self.order(), contentType: "text/plain")
            _ = try await client.execute(uri: "/orders", method: .put) { _ in }
            _ = try await client.execute(uri: "/nowhere", method: .get) { _ in }
            _ = try await client.execute(uri: "/orders/\(UUID().uuidString)", method: .get) { _ in }
            _ = try await Fixture.post(client, Self.order(quantity: "1"), key: "k")
            _ = try await Fixture.post(client, Self.order(quantity: "2"), key: "k")
            let failures = logs.entries.filter { $0.metadata["status"] != nil }
            #expect(
                failures.map(\.metadata["status"]) == ["400", "415", "405", "404", "404", "422"].map { .string($0) })
            for entry in failures {
                #expect(entry.level == .warning, "\(entry)")
                #expect(entry.metadata["reason"].map { !"\($0)".isEmpty } == true, "\(entry)")
            }
            #expect(failures.first?.metadata["reason"] == "lines[0].quantity: must be at least 1")

            // What the client sent is logged without its control characters: it cannot forge log lines.
            _ = try await Fixture.post(client, Self.order(), contentType: "text/plain;\tx=y")
            let echoed = try #require(logs.entries.last { $0.metadata["status"] != nil })
            #expect(
                echoed.metadata["reason"] == "Content-Type: expected application/json (UTF-8), got text/plain;\\u{9}x=y"
            )

            // A failure of ours (here: the database is gone) is a 500 with a JSON reason, logged at error.
            await pool.close()
            let (status, json) = try await Fixture.post(client, Self.order())
            #expect(status == .internalServerError)
            #expect(json["error"] != nil, "\(json)")
            let last = try #require(logs.entries.last { $0.metadata["status"] != nil })
            #expect(last.level == .error)
            #expect(last.metadata["status"] == "500")
        }
    }
}

/// A log handler that keeps every entry, for tests that check what was logged.
final class CapturedLogs: @unchecked Sendable {
    struct Entry: Sendable {
        var level: Logger.Level
        var message: String
        var metadata: Logger.Metadata
    }
    // Guarded by `lock`.
    private var stored: [Entry] = []
    private let lock = NSLock()

    var entries: [Entry] { lock.withLock { stored } }
    func append(_ entry: Entry) { lock.withLock { stored.append(entry) } }

    var logger: Logger {
        var logger = Logger(label: "captured") { _ in Handler(logs: self) }
        logger.logLevel = .trace
        return logger
    }

    struct Handler: LogHandler {
        let logs: CapturedLogs
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            logs.append(
                Entry(
                    level: event.level, message: "\(event.message)",
                    metadata: metadata.merging(event.metadata ?? [:]) { _, new in new }))
        }
    }
}

/// Raw HTTP/1.1 over a loopback socket, for what a well-behaved client never sends.
enum RawHTTP {
    struct Answer: Sendable {
        var bytes: [UInt8]
        /// The server closed the connection (read returned 0 or the connection was reset).
        var closed: Bool
        var elapsed: Duration
        var text: String { String(decoding: bytes, as: UTF8.self) }
    }

    /// Connects to 127.0.0.1:`port`, sends `send`, optionally shuts down the writing side, then reads until the
    /// server closes the connection or `readFor` has passed. Runs on its own thread (the calls block).
    static func exchange(port: Int, send: [UInt8], closeWriting: Bool, readFor: Duration) async throws -> Answer {
        try await withCheckedThrowingContinuation { continuation in
            Thread {
                continuation.resume(
                    with: Result {
                        try blockingExchange(port: port, send: send, closeWriting: closeWriting, readFor: readFor)
                    })
            }.start()
        }
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    private static func blockingExchange(port: Int, send: [UInt8], closeWriting: Bool, readFor: Duration) throws
        -> Answer
    {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket: errno \(errno)") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else { throw Failure(description: "connect: errno \(errno)") }
        var timeout = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let start = ContinuousClock.now
        if !send.isEmpty {
            guard send.withUnsafeBytes({ Glibc.send(fd, $0.baseAddress, $0.count, 0) }) == send.count else {
                throw Failure(description: "send: errno \(errno)")
            }
        }
        if closeWriting { shutdown(fd, Int32(SHUT_WR)) }
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while ContinuousClock.now - start < readFor {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                received += buffer[0..<n]
            } else if n == 0 || errno == ECONNRESET {
                return Answer(bytes: received, closed: true, elapsed: ContinuousClock.now - start)
            } else if errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR {
                throw Failure(description: "recv: errno \(errno)")
            }
        }
        return Answer(bytes: received, closed: false, elapsed: ContinuousClock.now - start)
    }
}
