import JSONSchema
import SagaEngine
import SagaSchemas

// The saga's event contracts, one type per schema in schemas/<type>/v<N>.schema.json.

/// Money in integer minor units (cents) with an ISO 4217 currency. Never floating point.
public struct Money: Codable, Sendable, Hashable, CustomStringConvertible {
    public var amount: Int64
    public var currency: String
    public init(amount: Int64, currency: String) {
        self.amount = amount
        self.currency = currency
    }
    public var description: String {
        let sign = amount < 0 ? "-" : ""
        let a = abs(amount)
        return "\(sign)\(a / 100).\(a % 100 < 10 ? "0" : "")\(a % 100) \(currency)"
    }
}

public struct OrderLine: Codable, Sendable, Hashable {
    public var sku: String
    public var quantity: Int
    public init(sku: String, quantity: Int) {
        self.sku = sku
        self.quantity = quantity
    }
}

/// `order.created` v1: a bare total in minor units next to the currency.
public struct OrderCreatedV1: EventPayload, Hashable {
    public static let eventType = "order.created"
    public static let eventVersion = 1
    public var orderId: String
    public var customerId: String
    public var currency: String
    public var lines: [OrderLine]
    public var totalAmount: Int64
    public init(orderId: String, customerId: String, currency: String, lines: [OrderLine], totalAmount: Int64) {
        self.orderId = orderId
        self.customerId = customerId
        self.currency = currency
        self.lines = lines
        self.totalAmount = totalAmount
    }
}

/// `order.created` v2: structured money, and the unit price quoted to the customer per line
/// (absent on orders upcast from v1, which did not carry it).
public struct OrderCreatedV2: EventPayload, Hashable {
    public static let eventType = "order.created"
    public static let eventVersion = 2
    public struct Line: Codable, Sendable, Hashable {
        public var sku: String
        public var quantity: Int
        public var unitPrice: Money?
        public init(sku: String, quantity: Int, unitPrice: Money?) {
            self.sku = sku
            self.quantity = quantity
            self.unitPrice = unitPrice
        }
    }
    public var orderId: String
    public var customerId: String
    public var total: Money
    public var lines: [Line]

    /// v1 → v2: the total becomes Money; lines carry no unit price.
    public static let upcasterFromV1 = Upcaster(type: eventType, from: 1) { v1 in
        let old = try v1.decode(OrderCreatedV1.self)
        return try JSONValue(
            encoding: OrderCreatedV2(
                orderId: old.orderId, customerId: old.customerId,
                total: Money(amount: old.totalAmount, currency: old.currency),
                lines: old.lines.map { Line(sku: $0.sku, quantity: $0.quantity, unitPrice: nil) }))
    }

    public init(orderId: String, customerId: String, total: Money, lines: [Line]) {
        self.orderId = orderId
        self.customerId = customerId
        self.total = total
        self.lines = lines
    }

    /// The v1 form of this event, for producers configured to emit v1.
    public var v1: OrderCreatedV1 {
        OrderCreatedV1(
            orderId: orderId, customerId: customerId, currency: total.currency,
            lines: lines.map { OrderLine(sku: $0.sku, quantity: $0.quantity) }, totalAmount: total.amount)
    }
}

public struct InventoryReserved: EventPayload, Hashable {
    public static let eventType = "inventory.reserved"
    public static let eventVersion = 1
    public var orderId: String
    public var customerId: String
    public var total: Money
    public var lines: [OrderLine]
    public init(orderId: String, customerId: String, total: Money, lines: [OrderLine]) {
        self.orderId = orderId
        self.customerId = customerId
        self.total = total
        self.lines = lines
    }
}

public struct InventoryRejected: EventPayload, Hashable {
    public static let eventType = "inventory.rejected"
    public static let eventVersion = 1
    public struct Shortage: Codable, Sendable, Hashable {
        public var sku: String
        public var requested: Int
        public var available: Int
        public init(sku: String, requested: Int, available: Int) {
            self.sku = sku
            self.requested = requested
            self.available = available
        }
    }
    public var orderId: String
    public var customerId: String
    public var reason: String
    public var shortages: [Shortage]
    public init(orderId: String, customerId: String, reason: String, shortages: [Shortage]) {
        self.orderId = orderId
        self.customerId = customerId
        self.reason = reason
        self.shortages = shortages
    }
}

public struct PaymentCompleted: EventPayload, Hashable {
    public static let eventType = "payment.completed"
    public static let eventVersion = 1
    public var orderId: String
    public var customerId: String
    public var paymentId: String
    public var amount: Money
    public init(orderId: String, customerId: String, paymentId: String, amount: Money) {
        self.orderId = orderId
        self.customerId = customerId
        self.paymentId = paymentId
        self.amount = amount
    }
}

public struct PaymentFailed: EventPayload, Hashable {
    public static let eventType = "payment.failed"
    public static let eventVersion = 1
    public enum Reason: String, Codable, Sendable {
        case insufficientCredit = "insufficient_credit"
        case unknownCustomer = "unknown_customer"
        case currencyMismatch = "currency_mismatch"
    }
    public var orderId: String
    public var customerId: String
    public var reason: Reason
    public var amount: Money
    public init(orderId: String, customerId: String, reason: Reason, amount: Money) {
        self.orderId = orderId
        self.customerId = customerId
        self.reason = reason
        self.amount = amount
    }
}

public struct InventoryReleased: EventPayload, Hashable {
    public static let eventType = "inventory.released"
    public static let eventVersion = 1
    public var orderId: String
    public var customerId: String
    public var reason: String
    public var lines: [OrderLine]
    public init(orderId: String, customerId: String, reason: String, lines: [OrderLine]) {
        self.orderId = orderId
        self.customerId = customerId
        self.reason = reason
        self.lines = lines
    }
}

public struct OrderConfirmed: EventPayload, Hashable {
    public static let eventType = "order.confirmed"
    public static let eventVersion = 1
    public var orderId: String
    public var customerId: String
    public var total: Money
    public init(orderId: String, customerId: String, total: Money) {
        self.orderId = orderId
        self.customerId = customerId
        self.total = total
    }
}

public struct OrderCancelled: EventPayload, Hashable {
    public static let eventType = "order.cancelled"
    public static let eventVersion = 1
    public enum Reason: String, Codable, Sendable {
        case outOfStock = "out_of_stock"
        case paymentDeclined = "payment_declined"
    }
    public var orderId: String
    public var customerId: String
    public var reason: Reason
    public var detail: String
    public init(orderId: String, customerId: String, reason: Reason, detail: String) {
        self.orderId = orderId
        self.customerId = customerId
        self.reason = reason
        self.detail = detail
    }
}

/// Every event type of the saga, in flow order.
public let sagaEventTypes = [
    OrderCreatedV2.eventType, InventoryReserved.eventType, InventoryRejected.eventType, PaymentCompleted.eventType,
    PaymentFailed.eventType, InventoryReleased.eventType, OrderConfirmed.eventType, OrderCancelled.eventType,
]

/// Upcasters of every event type that has more than one version.
public let sagaUpcasters = [OrderCreatedV2.upcasterFromV1]

/// One kind of event a service publishes: its type and version.
public struct EmittedEvent: Sendable, Hashable {
    public var producer: String
    public var type: String
    public var version: Int
    public init(producer: String, type: String, version: Int) {
        self.producer = producer
        self.type = type
        self.version = version
    }
    init<P: EventPayload>(_ producer: String, _ payload: P.Type) {
        self.init(producer: producer, type: P.eventType, version: P.eventVersion)
    }
}

/// Every (producer, type, version) the services publish: what `saga schemas check` and the AsyncAPI document
/// take as produced. orders emits `order.created` v1 or v2 (SAGA_ORDER_CREATED_VERSION). ContractTests checks
/// that a run of every outcome publishes nothing else.
public let sagaEmittedEvents: [EmittedEvent] = [
    EmittedEvent(OrdersService.name, OrderCreatedV1.self), EmittedEvent(OrdersService.name, OrderCreatedV2.self),
    EmittedEvent(InventoryService.name, InventoryReserved.self),
    EmittedEvent(InventoryService.name, InventoryRejected.self),
    EmittedEvent(InventoryService.name, InventoryReleased.self),
    EmittedEvent(BillingService.name, PaymentCompleted.self), EmittedEvent(BillingService.name, PaymentFailed.self),
    EmittedEvent(OrdersService.name, OrderConfirmed.self), EmittedEvent(OrdersService.name, OrderCancelled.self),
]

extension ParticipantDefinition {
    /// A participant of the order saga: the saga's upcasters, and the embedded schemas (`schemas/`) of every
    /// event type its declaration names.
    static func orderSaga(
        name: String, migrations: [PostgresMigration], handlers: [EventHandler], declaration: SagaDeclaration
    ) -> ParticipantDefinition {
        ParticipantDefinition(
            name: name, migrations: migrations, upcasters: sagaUpcasters, handlers: handlers,
            declaration: declaration,
            schemas: EventSchema.embedded(types: declaration.emits.map(\.type) + declaration.consumes.map(\.type)))
    }
}

/// The three services, in flow order: what each consumes is its handlers' types and versions.
public var sagaServiceDefinitions: [ParticipantDefinition] {
    [OrdersService.definition(), InventoryService.definition(), BillingService.definition()]
}

/// Every topic the saga uses: one per event type and one dead-letter topic per service.
public func sagaTopics(_ naming: TopicNaming) -> [String] {
    sagaEventTypes.map(naming.topic(for:))
        + [OrdersService.name, InventoryService.name, BillingService.name].map { naming.deadLetterTopic(consumer: $0) }
}
