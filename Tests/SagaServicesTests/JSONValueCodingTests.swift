import Foundation
import SagaServices
import Testing

@testable import SagaEngine

/// The direct Codable ⇄ JSONValue coders give exactly what going through JSONEncoder / JSONDecoder gives.
@Suite struct JSONValueCodingTests {
    /// The JSONValue the Foundation coders produce (the path the direct encoder replaces).
    static func viaFoundation<T: Encodable>(_ value: T) throws -> JSONValue {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(Timestamp.format(date))
        }
        return try JSONValue(parsing: Array(try encoder.encode(value)))
    }

    static func check<T: Codable & Equatable>(_ value: T) throws {
        let direct = try JSONValueEncoder.encode(value)
        #expect(direct == (try viaFoundation(value)), "\(T.self)")
        #expect(try JSONValueDecoder.decode(T.self, from: direct) == value, "\(T.self)")
        #expect(try JSONValue(encoding: value).decode(T.self) == value)
    }

    @Test func everySagaPayloadEncodesAndDecodesAsThroughFoundation() throws {
        let money = Money(amount: 1250, currency: "EUR")
        let id = UUID().uuidString.lowercased()
        try Self.check(
            OrderCreatedV2(
                orderId: id, customerId: "ali\"ce\\ \u{1F600} \u{0}", total: money,
                lines: [
                    .init(sku: "widget", quantity: 2, unitPrice: money), .init(sku: "g", quantity: 1, unitPrice: nil),
                ]))
        try Self.check(OrderCreatedV2(orderId: id, customerId: "a", total: money, lines: []).v1)
        try Self.check(
            InventoryReserved(orderId: id, customerId: "a", total: money, lines: [.init(sku: "w", quantity: 1)]))
        try Self.check(
            InventoryRejected(
                orderId: id, customerId: "a", reason: "r", shortages: [.init(sku: "w", requested: 3, available: 1)]))
        try Self.check(PaymentCompleted(orderId: id, customerId: "a", paymentId: id, amount: money))
        try Self.check(PaymentFailed(orderId: id, customerId: "a", reason: .currencyMismatch, amount: money))
        try Self.check(InventoryReleased(orderId: id, customerId: "a", reason: "r", lines: []))
        try Self.check(OrderConfirmed(orderId: id, customerId: "a", total: Money(amount: Int64.min, currency: "")))
        try Self.check(OrderCancelled(orderId: id, customerId: "a", reason: .paymentDeclined, detail: ""))
    }

    struct Special: Codable, Equatable {
        var at: Date
        var ratio: Double
        var blob: Data
    }

    @Test func typesFoundationTreatsSpeciallyGoThroughFoundation() throws {
        let value = Special(at: Date(timeIntervalSince1970: 1_700_000_000.25), ratio: 3.0, blob: Data([0, 1]))
        #expect(throws: NeedsFoundationCoder.self) { try JSONValueEncoder.encode(value) }
        let encoded = try JSONValue(encoding: value)
        #expect(encoded == (try Self.viaFoundation(value)))
        #expect(encoded["at"] == .string(Timestamp.format(value.at)))
        #expect(throws: NeedsFoundationCoder.self) { try JSONValueDecoder.decode(Money.self, from: .string("x")) }
        // A mismatch is reported as JSONDecoder reports it.
        #expect(throws: EventDecodingError.self) { try JSONValue.object(["amount": .string("1")]).decode(Money.self) }
        #expect(throws: EventDecodingError.self) {
            try JSONValue.object(["amount": .integer(1), "currency": .integer(1)]).decode(Money.self)
        }
    }
}
