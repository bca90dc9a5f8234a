import JSONSchema
import SagaEngine
import SagaSchemas

// The saga's event contracts, one type per schema in schemas/<type>/v<N>.schema.json.

/// Money in integer minor units (cents) with an ISO 4217 currency. Never floating point.
public struct Money: Codable, Sendable, Hashable, CustomStringConvertible {
    /// The amount in minor units (cents for EUR).
    public var amount: Int64
    /// The ISO 4217 currency code, e.g. `EUR`.
    public var currency: String
    /// An amount of minor units of `currency`.
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

/// A quantity of one product in an order.
public struct OrderLine: Codable, Sendable, Hashable {
    /// The product.
    public var sku: String
    /// How many units.
    public var quantity: Int
    /// A line of `quantity` units of `sku`.
    public init(sku: String, quantity: Int) {
        self.sku = sku
        self.quantity = quantity
    }
}

/// `order.created` v1: a bare total in minor units next to the currency.
public struct OrderCreatedV1: EventPayload, Hashable {
    public static let eventType = "order.created"
    public static let eventVersion = 1
    /// The order this saga is about; also the saga's correlation key.
    public var orderId: String
    /// The customer who placed the order.
    public var customerId: String
    /// The ISO 4217 currency of `totalAmount`.
    public var currency: String
    /// The ordered products.
    public var lines: [OrderLine]
    /// The order's total in minor units of `currency`.
    public var totalAmount: Int64
    /// The event from its fields.
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
    /// A quantity of one product and the unit price quoted for it.
    public struct Line: Codable, Sendable, Hashable {
        /// The product.
        public var sku: String
        /// How many units.
        public var quantity: Int
        /// The unit price quoted to the customer; nil on an order upcast from v1.
        public var unitPrice: Money?
        /// A line from its fields.
        public init(sku: String, quantity: Int, unitPrice: Money?) {
            self.sku = sku
            self.quantity = quantity
            self.unitPrice = unitPrice
        }
    }
    /// The order this saga is about; also the saga's correlation key.
    public var orderId: String
    /// The customer who placed the order.
    public var customerId: String
    /// The order's total.
    public var total: Money
    /// The ordered products.
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

    /// The event from its fields.
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

/// `inventory.reserved` v1: the stock of every line is reserved for the order.
public struct InventoryReserved: EventPayload, Hashable {
    public static let eventType = "inventory.reserved"
    public static let eventVersion = 1
    /// The order this saga is about; also the saga's correlation key.
    public var orderId: String
    /// The customer who placed the order.
    public var customerId: String
    /// The amount to charge.
    public var total: Money
    /// The reserved products.
    public var lines: [OrderLine]
    /// The event from its fields.
    public init(orderId: String, customerId: String, total: Money, lines: [OrderLine]) {
        self.orderId = orderId
        self.customerId = customerId
        self.total = total
        self.lines = lines
    }
}

/// `inventory.rejected` v1: the order cannot be reserved (a failure step); nothing was reserved.
public struct InventoryRejected: EventPayload, Hashable {
    public static let eventType = "inventory.rejected"
    public static let eventVersion = 1
    /// A line that could not be satisfied.
    public struct Shortage: Codable, Sendable, Hashable {
        /// The product.
        public var sku: String
        /// The units the order asked for.
        public var requested: Int
        /// The units available.
        public var available: Int
        /// A shortage from its fields.
        public init(sku: String, requested: Int, available: Int) {
            self.sku = sku
            self.requested = requested
            self.available = available
        }
    }
    /// The order this saga is about; also the saga's correlation key.
    public var orderId: String
    /// The customer who placed the order.
    public var customerId: String
    /// A human-readable explanation of the rejection.
    public var reason: String
    /// The lines that could not be satisfied; may be empty when the rejection has another cause.
    public var shortages: [Shortage]
    /// The event from its fields.
    public init(orderId: String, customerId: String, reason: String, shortages: [Shortage]) {
        self.orderId = orderId
        self.customerId = customerId
        self.reason = reason
        self.shortages = shortages
    }
}

/// `payment.completed` v1: the customer was charged for the order.
public struct PaymentCompleted: EventPayload, Hashable {
    public static let eventType = "payment.completed"
    public static let eventVersion = 1
    /// The order this saga is about; also the saga's correlation key.
    public var orderId: String
    /// The customer who placed the order.
    public var customerId: String
    /// The payment's id.
    public var paymentId: String
    /// The amount charged.
    public var amount: Money
    /// The event from its fields.
    public init(orderId: String, customerId: String, paymentId: String, amount: Money) {
        self.orderId = orderId
        self.customerId = customerId
        self.paymentId = paymentId
        self.amount = amount
    }
}

/// `payment.failed` v1: the customer could not be charged (a failure step); inventory releases the stock.
public struct PaymentFailed: EventPayload, Hashable {
    public static let eventType = "payment.failed"
    public static let eventVersion = 1
    /// Why the payment failed.
    public enum Reason: String, Codable, Sendable {
        /// The charge would take the customer past the credit limit.
        case insufficientCredit = "insufficient_credit"
        /// Billing has no account of the customer.
        case unknownCustomer = "unknown_customer"
        /// The order's currency is not the account's.
        case currencyMismatch = "currency_mismatch"
    }
    /// The order this saga is about; also the saga's correlation key.
    public var orderId: String
    /// The customer who placed the order.
    public var customerId: String
    /// Why the payment failed.
    public var reason: Reason
    /// The amount that could not be charged.
    public var amount: Money
    /// The event from its fields.
    public init(orderId: String, customerId: String, reason: Reason, amount: Money) {
        self.orderId = orderId
        self.customerId = customerId
        self.reason = reason
        self.amount = amount
    }
}

/// `inventory.released` v1: the reservation of a failed order is undone (the compensation).
public struct InventoryReleased: EventPayload, Hashable {
    public static let eventType = "inventory.released"
    public static let eventVersion = 1
    /// The order this saga is about; also the saga's correlation key.
    public var orderId: String
    /// The customer who placed the order.
    public var customerId: String
    /// Why the reservation was released.
    public var reason: String
    /// The released products.
    public var lines: [OrderLine]
    /// The event from its fields.
    public init(orderId: String, customerId: String, reason: String, lines: [OrderLine]) {
        self.orderId = orderId
        self.customerId = customerId
        self.reason = reason
        self.lines = lines
    }
}

/// `order.confirmed` v1: the order is reserved and paid (the outcome "confirmed").
public struct OrderConfirmed: EventPayload, Hashable {
    public static let eventType = "order.confirmed"
    public static let eventVersion = 1
    /// The order this saga is about; also the saga's correlation key.
    public var orderId: String
    /// The customer who placed the order.
    public var customerId: String
    /// The amount charged.
    public var total: Money
    /// The event from its fields.
    public init(orderId: String, customerId: String, total: Money) {
        self.orderId = orderId
        self.customerId = customerId
        self.total = total
    }
}

/// `order.cancelled` v1: the order will not be fulfilled. Superseded by v2 (orders emits v2); kept for the
/// upcaster and for events written before v2.
public struct OrderCancelledV1: EventPayload, Hashable {
    public static let eventType = "order.cancelled"
    public static let eventVersion = 1
    /// Why the order was cancelled.
    public enum Reason: String, Codable, Sendable {
        /// Inventory rejected the order.
        case outOfStock = "out_of_stock"
        /// Billing declined the payment (inventory released the stock).
        case paymentDeclined = "payment_declined"
    }
    /// The order this saga is about; also the saga's correlation key.
    public var orderId: String
    /// The customer who placed the order.
    public var customerId: String
    /// Why the order was cancelled.
    public var reason: Reason
    /// A human-readable detail; may be empty.
    public var detail: String
    /// The event from its fields.
    public init(orderId: String, customerId: String, reason: Reason, detail: String) {
        self.orderId = orderId
        self.customerId = customerId
        self.reason = reason
        self.detail = detail
    }
}

/// `order.cancelled` v2: the order will not be fulfilled (the outcome "cancelled", detailed by `reason`).
/// Inventory and billing consume it to undo what they did for the order.
public struct OrderCancelled: EventPayload, Hashable {
    public static let eventType = "order.cancelled"
    public static let eventVersion = 2
    /// Why the order was cancelled.
    public enum Reason: String, Codable, Sendable {
        /// Inventory rejected the order.
        case outOfStock = "out_of_stock"
        /// Billing declined the payment (inventory released the stock).
        case paymentDeclined = "payment_declined"
        /// The order had no outcome by its deadline (`order.expired`).
        case timeout = "timeout"
    }
    /// The order this saga is about; also the saga's correlation key.
    public var orderId: String
    /// The customer who placed the order.
    public var customerId: String
    /// Why the order was cancelled.
    public var reason: Reason
    /// A human-readable detail; may be empty.
    public var detail: String

    /// v1 → v2: identity (v2 only adds the reason `timeout`).
    public static let upcasterFromV1 = Upcaster(type: eventType, from: 1) { v1 in
        let old = try v1.decode(OrderCancelledV1.self)
        let reason: Reason =
            switch old.reason {
            case .outOfStock: .outOfStock
            case .paymentDeclined: .paymentDeclined
            }
        return try JSONValue(
            encoding: OrderCancelled(
                orderId: old.orderId, customerId: old.customerId, reason: reason, detail: old.detail))
    }

    /// The event from its fields.
    public init(orderId: String, customerId: String, reason: Reason, detail: String) {
        self.orderId = orderId
        self.customerId = customerId
        self.reason = reason
        self.detail = detail
    }
}

/// `order.expired` v1: the order's deadline passed. A deadline event of orders: scheduled when the order is
/// placed, delivered to orders' own handler when due, never published on Kafka (so not in `sagaEventTypes`).
public struct OrderExpired: EventPayload, Hashable {
    public static let eventType = "order.expired"
    public static let eventVersion = 1
    /// The order this saga is about; also the saga's correlation key.
    public var orderId: String
    /// The customer who placed the order.
    public var customerId: String
    /// When the deadline falls due (the order's `deadline_at`), RFC 3339.
    public var dueAt: String
    /// The order's time limit in seconds, from placement to `dueAt`.
    public var timeoutSeconds: Int
    /// The event from its fields.
    public init(orderId: String, customerId: String, dueAt: String, timeoutSeconds: Int) {
        self.orderId = orderId
        self.customerId = customerId
        self.dueAt = dueAt
        self.timeoutSeconds = timeoutSeconds
    }
}

/// `payment.refunded` v1: billing refunded the charge of a cancelled order (a compensation).
public struct PaymentRefunded: EventPayload, Hashable {
    public static let eventType = "payment.refunded"
    public static let eventVersion = 1
    /// The order this saga is about; also the saga's correlation key.
    public var orderId: String
    /// The customer who placed the order.
    public var customerId: String
    /// The refunded payment (the `paymentId` of its `payment.completed`).
    public var paymentId: String
    /// This refund's id.
    public var refundId: String
    /// The amount refunded: the whole charge.
    public var amount: Money
    /// Why, e.g. `order cancelled: timeout`.
    public var reason: String
    /// The event from its fields.
    public init(orderId: String, customerId: String, paymentId: String, refundId: String, amount: Money, reason: String)
    {
        self.orderId = orderId
        self.customerId = customerId
        self.paymentId = paymentId
        self.refundId = refundId
        self.amount = amount
        self.reason = reason
    }
}

/// Every event type the saga publishes on Kafka, in flow order (a deadline type, `order.expired`, is not).
public let sagaEventTypes = [
    OrderCreatedV2.eventType, InventoryReserved.eventType, InventoryRejected.eventType, PaymentCompleted.eventType,
    PaymentFailed.eventType, InventoryReleased.eventType, OrderConfirmed.eventType, OrderCancelled.eventType,
    PaymentRefunded.eventType,
]

/// Upcasters of every event type that has more than one version.
public let sagaUpcasters = [OrderCreatedV2.upcasterFromV1, OrderCancelled.upcasterFromV1]

/// One kind of event a service publishes: its type and version.
public struct EmittedEvent: Sendable, Hashable {
    /// The service that publishes it.
    public var producer: String
    /// The event type.
    public var type: String
    /// The version.
    public var version: Int
    /// An emitted event from its parts.
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
    EmittedEvent(BillingService.name, PaymentRefunded.self),
]

extension ParticipantDefinition {
    /// A participant of the order saga: the saga's upcasters, and the embedded schemas (`schemas/`) of every
    /// event type its declaration names; `genericPlans` as in ``ParticipantDefinition/genericPlans``.
    static func orderSaga(
        name: String, migrations: [PostgresMigration], handlers: [EventHandler], declaration: SagaDeclaration,
        genericPlans: Bool = false
    ) -> ParticipantDefinition {
        var definition = ParticipantDefinition(
            name: name, migrations: migrations, upcasters: sagaUpcasters, handlers: handlers,
            declaration: declaration,
            schemas: EventSchema.embedded(types: declaration.emits.map(\.type) + declaration.consumes.map(\.type)))
        definition.genericPlans = genericPlans
        return definition
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
