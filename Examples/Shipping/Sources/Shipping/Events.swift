import SagaEngine

/// `order.confirmed` v1, as shipping reads it: the orders service's contract (a copy of its schema is in
/// `schemas/order.confirmed/v1.schema.json`). Shipping decodes only the fields it uses.
public struct OrderConfirmed: EventPayload, Hashable {
    public static let eventType = "order.confirmed"
    public static let eventVersion = 1
    /// The order, and the saga's id.
    public var orderId: String
    /// Who ordered.
    public var customerId: String

    public init(orderId: String, customerId: String) {
        self.orderId = orderId
        self.customerId = customerId
    }
}

/// `shipment.scheduled` v1: shipping's own event (`schemas/shipment.scheduled/v1.schema.json`).
public struct ShipmentScheduled: EventPayload, Hashable {
    public static let eventType = "shipment.scheduled"
    public static let eventVersion = 1
    /// The order shipped, and the saga's id.
    public var orderId: String
    /// The shipment.
    public var shipmentId: String
    /// Who carries it.
    public var carrier: String

    public init(orderId: String, shipmentId: String, carrier: String) {
        self.orderId = orderId
        self.shipmentId = shipmentId
        self.carrier = carrier
    }
}
