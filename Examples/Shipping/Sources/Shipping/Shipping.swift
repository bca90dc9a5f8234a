import Foundation
import SagaEngine

/// The shipping participant: when an order is confirmed, it schedules the shipment (a row in its `shipments`
/// table) and emits `shipment.scheduled`, in the same transaction as its inbox record and its outbox row.
public enum ShippingService {
    /// Its name: its database schema, its consumer group, the producer of its events.
    public static let name = "shipping"

    /// The carrier every shipment goes with.
    public static let carrier = "post"

    /// Its tables, in its own schema (the runtime adds its outbox and inbox there first).
    public static let migrations = [
        PostgresMigration(
            version: 100, name: "shipping: shipments",
            sql: """
                CREATE TABLE shipments (
                    order_id     text PRIMARY KEY,
                    shipment_id  uuid NOT NULL UNIQUE,
                    customer_id  text NOT NULL,
                    carrier      text NOT NULL,
                    scheduled_at timestamptz NOT NULL DEFAULT now()
                );
                """)
    ]

    /// Schedules the shipment of a confirmed order. The runtime calls it once per event (the inbox drops a
    /// redelivered one), in the transaction that also records the event and stores what it emits.
    public static let scheduleShipment = EventHandler.on(OrderConfirmed.self) { confirmed, context in
        let shipmentId = UUID().uuidString.lowercased()
        // Deferred: its result is not read, so it goes with the runtime's next statement (the COMMIT), in one
        // round trip.
        try await context.connection.executeDeferred(
            "INSERT INTO shipments (order_id, shipment_id, customer_id, carrier) VALUES ($1, $2::uuid, $3, $4)",
            [confirmed.orderId, shipmentId, confirmed.customerId, carrier])
        return [
            try context.emit(ShipmentScheduled(orderId: confirmed.orderId, shipmentId: shipmentId, carrier: carrier))
        ]
    }

    /// Its part of the saga: after `order.confirmed` the saga waits on shipping to schedule the shipment, and
    /// `shipment.scheduled` is a step.
    public static let declaration = SagaDeclaration(
        emits: [.step(ShipmentScheduled.self)],
        consumes: [.handles(OrderConfirmed.self, waitingOn: "schedule the shipment")])

    /// The participant, as the runtime and the daemon kit run it.
    public static let definition = ParticipantDefinition(
        name: name, migrations: migrations, handlers: [scheduleShipment], declaration: declaration,
        schemas: ShippingSchemas.all)
}
