import ArgumentParser
import Foundation
import SagaEngine
import SagaServices
import Synchronization

/// The pieces of the chaos test (scripts/chaos drives them while it kills daemons, crashes PostgreSQL and
/// takes brokers down): seed, place orders from concurrent clients, probe recovery, send poison records,
/// inject broker faults, and check every invariant at the end.
struct ChaosCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chaos",
        abstract: "The chaos test's load, probes, poison, broker faults and checks (driven by scripts/chaos).",
        discussion: """
            Meant for a database and topic prefix of its own (scripts/chaos uses SAGA_TOPIC_PREFIX=chaos. on its own \
            PostgreSQL server): `check` treats every order, outbox row and dead letter there as the run's. \
            Orders and poison records are written to ledger files (JSON lines) that `check` reads.
            """,
        subcommands: [
            ChaosSeedCommand.self, ChaosLoadCommand.self, ChaosProbeCommand.self, ChaosPoisonCommand.self,
            ChaosBrokerCommand.self, ChaosCheckCommand.self,
        ])
}

/// The run's catalogue and the orders it places, each with the outcome it must end with.
enum ChaosPlan {
    static let plenty = "chaos-plenty"
    static let none = "chaos-none"
    static let unknownSku = "chaos-unknown"
    static let rich = "chaos-rich"
    static let broke = "chaos-broke"
    static let nobody = "chaos-nobody"

    static let catalogue = DemoCatalogue(
        products: [
            .init(sku: plenty, unitPrice: Money(amount: 100, currency: "EUR"), stock: 100_000_000),
            .init(sku: none, unitPrice: Money(amount: 250, currency: "EUR"), stock: 0),
        ],
        customers: [
            .init(id: rich, creditLimit: Money(amount: 1_000_000_000_000, currency: "EUR")),
            .init(id: broke, creditLimit: Money(amount: 0, currency: "EUR")),
        ])

    static var seeded: [String: Int] { Dictionary(uniqueKeysWithValues: catalogue.products.map { ($0.sku, $0.stock) }) }

    /// The `i`th order: 60 % confirmed, 20 % out of stock (one all-or-nothing), 15 % payment declined (no credit,
    /// unknown customer), 5 % refused by the API (unknown SKU).
    static func order(_ i: Int) -> (customer: String, lines: [ChaosLedger.Line], expected: String) {
        func line(_ sku: String, _ quantity: Int) -> ChaosLedger.Line { .init(sku: sku, quantity: quantity) }
        switch i % 20 {
        case 0..<12: return (rich, [line(plenty, 1 + i % 3)], "CONFIRMED")
        case 12, 13: return (rich, [line(plenty, 1), line(none, 1)], "out_of_stock")
        case 14, 15: return (rich, [line(none, 2)], "out_of_stock")
        case 16, 17: return (broke, [line(plenty, 1)], "payment_declined")
        case 18: return (nobody, [line(plenty, 2)], "payment_declined")
        default: return (rich, [line(unknownSku, 1)], "refused")
        }
    }

    /// A probe: an order that must end confirmed.
    static let probe = (customer: rich, lines: [ChaosLedger.Line(sku: plenty, quantity: 1)], expected: "CONFIRMED")
}

/// One JSON line per order the chaos clients tried to place.
struct ChaosLedger: Codable, Sendable {
    struct Line: Codable, Sendable, Hashable {
        var sku: String
        var quantity: Int
    }
    /// The Idempotency-Key of every attempt.
    var key: String
    var customer: String
    var lines: [Line]
    /// CONFIRMED, out_of_stock, payment_declined, or refused (the API must answer 4xx and store nothing).
    var expected: String
    /// accepted (orderId set), refused (4xx) or unanswered (no answer before the client gave up).
    var answer: String
    var orderId: String?
    var attempts: Int
    /// Answers 5xx without an order id that came before a 200 naming an order stored by one of those attempts.
    var ambiguous: Int
    var serverErrors: Int
    var transportErrors: Int
    var probe: Bool

    static func read(_ path: String) throws -> [ChaosLedger] {
        try readLines(path)
    }
}

/// Reads a file of JSON lines (a ledger).
func readLines<T: Decodable>(_ path: String) throws -> [T] {
    guard let data = FileManager.default.contents(atPath: path) else { return [] }
    let decoder = JSONDecoder()
    return try data.split(separator: UInt8(ascii: "\n")).map { try decoder.decode(T.self, from: Data($0)) }
}

/// Appends JSON lines to a file, from several tasks and processes (the load and the probes share a ledger): the
/// file is opened with O_APPEND and each line is one write.
final class LedgerWriter: Sendable {
    private let handle: Mutex<FileHandle>

    init(path: String) throws {
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw ValidationError("cannot open \(path): \(String(cString: strerror(errno)))") }
        handle = Mutex(FileHandle(fileDescriptor: fd, closeOnDealloc: true))
    }

    func append<T: Encodable>(_ value: T) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var line = try encoder.encode(value)
        line.append(UInt8(ascii: "\n"))
        try handle.withLock { try $0.write(contentsOf: line) }
    }
}

/// Places orders with an Idempotency-Key and retries through crashes until an answer that settles it.
struct ChaosClient: Sendable {
    let base: String

    init(base: String) { self.base = base }

    /// The orders API of SAGA_HTTP_HOST:SAGA_HTTP_PORT (never `.saga/dev.json`: a chaos run has its own stack).
    init(env: SagaEnvironment) { base = "http://\(env.httpHost):\(env.httpPort)" }

    func place(
        key: String, customer: String, lines: [ChaosLedger.Line], expected: String, probe: Bool, giveUp: Duration
    )
        async -> ChaosLedger
    {
        var entry = ChaosLedger(
            key: key, customer: customer, lines: lines, expected: expected, answer: "unanswered", orderId: nil,
            attempts: 0, ambiguous: 0, serverErrors: 0, transportErrors: 0, probe: probe)
        let body = JSONValue.object([
            "customerId": .string(customer), "currency": .string("EUR"),
            "lines": .array(lines.map { .object(["sku": .string($0.sku), "quantity": .integer(Int64($0.quantity))]) }),
        ]).serialized()
        let deadline = ContinuousClock.now + giveUp
        var bare5xx = 0
        while true {
            entry.attempts += 1
            do {
                let (status, data) = try await LocalHTTP.send(
                    .POST, base + "/orders", body: body, headers: [("Idempotency-Key", key)], timeout: .seconds(10))
                let json = (try? JSONValue(parsing: data)) ?? .null
                if status == 200 || status == 202, case .string(let id)? = json["orderId"] {
                    entry.answer = "accepted"
                    entry.orderId = id
                    // 200: an earlier attempt stored it. When every earlier attempt got an answer, one of those
                    // answers was a 5xx that did not say so.
                    if status == 200 && entry.transportErrors == 0 { entry.ambiguous = bare5xx }
                    return entry
                }
                if (400..<500).contains(status) && status != 408 && status != 429 {
                    entry.answer = "refused"
                    return entry
                }
                entry.serverErrors += 1
                if status >= 500, json["orderId"] == nil { bare5xx += 1 }
            } catch {
                entry.transportErrors += 1
            }
            if ContinuousClock.now >= deadline { return entry }
            try? await Task.sleep(for: .milliseconds(200))
        }
    }

    /// The order's status and reason (`GET /orders/{id}`), nil while the API does not answer.
    func status(_ id: String) async -> (status: String, outcome: String)? {
        guard let (code, data) = try? await LocalHTTP.send(.GET, base + "/orders/\(id)", timeout: .seconds(5)),
            code == 200, let json = try? JSONValue(parsing: data), case .string(let status)? = json["status"]
        else { return nil }
        return (status, SagaChecks.outcome(json))
    }
}

struct ChaosSeedCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "seed", abstract: "Migrate the three services and insert the chaos catalogue and customers.")

    func run() async throws {
        let runtime = try Runtime.start("saga.chaos")
        try await runtime.stack.migrate()
        try await runtime.stack.seed(ChaosPlan.catalogue)
        print("seeded: \(ChaosPlan.catalogue.products.map(\.sku).joined(separator: ", "))")
    }
}

struct ChaosLoadCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "load",
        abstract: "Place orders of every outcome from concurrent clients at a steady rate; write them to a ledger.",
        discussion: """
            Every order carries an Idempotency-Key; a client retries it through refused connections and 5xx \
            answers (a daemon killed, PostgreSQL down) until it is accepted, refused (4xx), or --give-up seconds \
            passed. One JSON line per order in --ledger.
            """)

    @Option(help: "Orders to place (every outcome; 5 % are refused by the API).") var sagas = 1000
    @Option(help: "Concurrent clients.") var clients = 8
    @Option(help: "Orders per second, all clients together.") var rate = 20.0
    @Option(help: "Seconds a client keeps retrying one order.") var giveUp = 300
    @Option(help: "The ledger file (JSON lines, appended).") var ledger: String

    func validate() throws {
        guard (1...1_000_000).contains(sagas) else { throw ValidationError("--sagas must be 1...1000000") }
        guard (1...256).contains(clients) else { throw ValidationError("--clients must be 1...256") }
        guard rate > 0 && rate <= 10_000 else { throw ValidationError("--rate must be in (0, 10000]") }
        guard giveUp >= 1 else { throw ValidationError("--give-up must be at least 1") }
    }

    func run() async throws {
        let runtime = try Runtime.start("saga.chaos")
        let client = ChaosClient(env: runtime.env)
        let writer = try LedgerWriter(path: ledger)
        let state = LoadState()
        let (sagas, rate, giveUp) = (self.sagas, self.rate, self.giveUp)
        let start = ContinuousClock.now
        let run = String(UUID().uuidString.prefix(8)).lowercased()
        try await withThrowingDiscardingTaskGroup { group in
            for _ in 0..<clients {
                group.addTask {
                    while true {
                        let i = state.next.add(1, ordering: .relaxed).oldValue
                        guard i < sagas else { return }
                        try await Task.sleep(
                            until: start + .nanoseconds(Int64(Double(i) / rate * 1e9)), clock: .continuous)
                        let order = ChaosPlan.order(i)
                        let entry = await client.place(
                            key: "chaos-\(run)-\(i)", customer: order.customer, lines: order.lines,
                            expected: order.expected, probe: false, giveUp: .seconds(giveUp))
                        try writer.append(entry)
                        let done = state.tally.withLock {
                            $0[entry.answer, default: 0] += 1
                            return $0.values.reduce(0, +)
                        }
                        if done % max(1, sagas / 10) == 0 {
                            FileHandle.standardError.write(Data("saga chaos load: \(done)/\(sagas) placed\n".utf8))
                        }
                    }
                }
            }
        }
        let counts = state.tally.withLock { $0 }
        print(
            "placed \(sagas) orders in \(Int((ContinuousClock.now - start).components.seconds)) s: "
                + counts.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", "))
    }
}

/// What the load's clients share: the next order to place, and the answers so far.
private final class LoadState: Sendable {
    let next = Atomic<Int>(0)
    let tally = Mutex<[String: Int]>([:])
}

struct ChaosProbeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "probe",
        abstract: "Place one order that must be confirmed and print the seconds until it was (recovery time).",
        discussion: "Exits 1 when it is not confirmed within --timeout seconds. Appends the order to --ledger.")

    @Option(help: "Seconds to wait.") var timeout = 120
    @Option(help: "The ledger file (JSON lines, appended).") var ledger: String

    func run() async throws {
        let runtime = try Runtime.start("saga.chaos")
        let client = ChaosClient(env: runtime.env)
        let start = ContinuousClock.now
        let deadline = start + .seconds(timeout)
        let p = ChaosPlan.probe
        let entry = await client.place(
            key: "probe-\(UUID().lowercasedString)", customer: p.customer, lines: p.lines, expected: p.expected,
            probe: true, giveUp: .seconds(timeout))
        try LedgerWriter(path: ledger).append(entry)
        guard let id = entry.orderId else {
            FileHandle.standardError.write(Data("saga chaos probe: the order was \(entry.answer)\n".utf8))
            throw ExitCode(1)
        }
        while ContinuousClock.now < deadline {
            if let s = await client.status(id), SagaChecks.isTerminal(status: s.status) {
                guard s.outcome == p.expected else {
                    FileHandle.standardError.write(Data("saga chaos probe: \(id) ended \(s.outcome)\n".utf8))
                    throw ExitCode(1)
                }
                let took = (ContinuousClock.now - start).components
                print(String(format: "%.1f", Double(took.seconds) + Double(took.attoseconds) / 1e18))
                return
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        FileHandle.standardError.write(Data("saga chaos probe: \(id) not confirmed within \(timeout) s\n".utf8))
        throw ExitCode(1)
    }
}

struct ChaosBrokerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "broker",
        abstract:
            "Inject a fault into a `saga broker --control-port`: down|up <broker id|all>, or errors <api> <codes>.")

    @Option(help: "The broker's control port (saga broker --control-port).") var controlPort: Int
    @Argument(help: "down, up or errors.") var action: String
    @Argument(help: "down/up: a broker id or 'all'; errors: a Kafka API key (0 Produce, 1 Fetch, ...).")
    var target: String
    @Argument(help: "errors: comma-separated Kafka error codes.") var codes: String?

    func validate() throws {
        guard ["down", "up", "errors"].contains(action) else { throw ValidationError("action: down, up or errors") }
        guard action != "errors" || codes != nil else { throw ValidationError("errors needs the error codes") }
    }

    func run() async throws {
        let path =
            action == "errors"
            ? "/errors/\(target)?codes=\(codes ?? "")" : "/brokers/\(target)/\(action)"
        let (status, body) = try await LocalHTTP.send(
            .POST, "http://127.0.0.1:\(controlPort)\(path)", timeout: .seconds(5))
        guard status == 204 else {
            FileHandle.standardError.write(
                Data("saga chaos broker: \(status) \(String(decoding: body, as: UTF8.self))\n".utf8))
            throw ExitCode(1)
        }
    }
}
