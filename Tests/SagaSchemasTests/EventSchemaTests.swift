import JSONSchema
import SagaSchemas
import Testing

private let orderId = "7d444840-9dc0-11d1-b245-5ffdce74fad2"
private let paymentId = "9f1c3a52-8d7e-4b61-a0f4-6c2d5e8b7a19"
private let refundId = "3c7e9b1a-5d2f-4e8a-b6c4-1f0a9d8e7b25"

private func json(_ text: String) -> JSONValue {
    do {
        return try JSONValue(parsing: Array(text.utf8))
    } catch {
        fatalError("test fixture is not JSON: \(error) in \(text)")
    }
}

private let money = #"{"amount": 2500, "currency": "EUR"}"#

/// A valid payload for every event schema.
private let validPayloads: [SchemaKey: String] = [
    SchemaKey(type: "order.created", version: 1): #"""
    {"orderId": "\#(orderId)", "customerId": "c-42", "currency": "EUR",
     "lines": [{"sku": "SKU-1", "quantity": 2}], "totalAmount": 2500}
    """#,
    SchemaKey(type: "order.created", version: 2): #"""
    {"orderId": "\#(orderId)", "customerId": "c-42", "total": \#(money),
     "lines": [{"sku": "SKU-1", "quantity": 2, "unitPrice": {"amount": 1250, "currency": "EUR"}}]}
    """#,
    SchemaKey(type: "inventory.reserved", version: 1): #"""
    {"orderId": "\#(orderId)", "customerId": "c-42", "total": \#(money), "lines": [{"sku": "SKU-1", "quantity": 2}]}
    """#,
    SchemaKey(type: "inventory.rejected", version: 1): #"""
    {"orderId": "\#(orderId)", "customerId": "c-42", "reason": "insufficient stock",
     "shortages": [{"sku": "SKU-1", "requested": 2, "available": 0}]}
    """#,
    SchemaKey(type: "payment.completed", version: 1): #"""
    {"orderId": "\#(orderId)", "customerId": "c-42", "paymentId": "\#(paymentId)", "amount": \#(money)}
    """#,
    SchemaKey(type: "payment.failed", version: 1): #"""
    {"orderId": "\#(orderId)", "customerId": "c-42", "reason": "insufficient_credit", "amount": \#(money)}
    """#,
    SchemaKey(type: "inventory.released", version: 1): #"""
    {"orderId": "\#(orderId)", "customerId": "c-42", "reason": "payment failed", "lines": [{"sku": "SKU-1", "quantity": 2}]}
    """#,
    SchemaKey(type: "order.confirmed", version: 1): #"""
    {"orderId": "\#(orderId)", "customerId": "c-42", "total": \#(money)}
    """#,
    SchemaKey(type: "order.cancelled", version: 1): #"""
    {"orderId": "\#(orderId)", "customerId": "c-42", "reason": "out_of_stock", "detail": ""}
    """#,
    SchemaKey(type: "order.cancelled", version: 2): #"""
    {"orderId": "\#(orderId)", "customerId": "c-42", "reason": "timeout", "detail": "no outcome by 2024-05-01T12:45:00Z"}
    """#,
    SchemaKey(type: "order.expired", version: 1): #"""
    {"orderId": "\#(orderId)", "customerId": "c-42", "dueAt": "2024-05-01T12:45:00.000Z", "timeoutSeconds": 900}
    """#,
    SchemaKey(type: "payment.refunded", version: 1): #"""
    {"orderId": "\#(orderId)", "customerId": "c-42", "paymentId": "\#(paymentId)", "refundId": "\#(refundId)",
     "amount": \#(money), "reason": "order cancelled: timeout"}
    """#,
]

/// Returns `value` with the member at `pointer` (tokens) replaced, or removed when `newValue` is nil.
private func setting(_ value: JSONValue, _ pointer: ArraySlice<String>, to newValue: JSONValue?) -> JSONValue {
    guard let token = pointer.first else { return newValue ?? .null }
    let rest = pointer.dropFirst()
    switch value {
    case .object(var members):
        if rest.isEmpty && newValue == nil {
            members[token] = nil
        } else {
            members[token] = setting(members[token] ?? .null, rest, to: newValue)
        }
        return .object(members)
    case .array(var items):
        let index = Int(token)!
        if rest.isEmpty && newValue == nil {
            items.remove(at: index)
        } else {
            items[index] = setting(items[index], rest, to: newValue)
        }
        return .array(items)
    default:
        fatalError("cannot descend into \(value) at \(token)")
    }
}

private func setting(_ value: JSONValue, _ pointer: String, to newValue: JSONValue?) -> JSONValue {
    setting(
        value, pointer.split(separator: "/", omittingEmptySubsequences: false).dropFirst().map(String.init)[...],
        to: newValue)
}

/// A broken variant of a valid payload and the violation paths it must produce.
private struct Breakage: CustomStringConvertible {
    var what: String
    var pointer: String
    var newValue: JSONValue?
    var expectedPaths: [String]
    var description: String { "\(what) (\(pointer))" }
}

/// The breakages that apply to the payload of `key`, chosen by the fields it has.
private func breakages(for key: SchemaKey, _ valid: JSONValue) -> [Breakage] {
    guard case .object(let members) = valid else { return [] }
    var result: [Breakage] = [
        Breakage(what: "missing field", pointer: "/orderId", newValue: nil, expectedPaths: [""]),
        Breakage(what: "missing field", pointer: "/customerId", newValue: nil, expectedPaths: [""]),
        Breakage(
            what: "bad uuid", pointer: "/orderId", newValue: .string("7d444840-9dc0-11d1-b245"),
            expectedPaths: ["/orderId"]),
        Breakage(what: "wrong type", pointer: "/orderId", newValue: .integer(7), expectedPaths: ["/orderId"]),
        Breakage(what: "wrong type", pointer: "/customerId", newValue: .integer(42), expectedPaths: ["/customerId"]),
        Breakage(what: "empty string", pointer: "/customerId", newValue: .string(""), expectedPaths: ["/customerId"]),
        Breakage(what: "unknown field", pointer: "/unexpected", newValue: .bool(true), expectedPaths: ["/unexpected"]),
    ]
    for moneyField in ["total", "amount"] where members[moneyField] != nil {
        result += [
            Breakage(what: "missing field", pointer: "/\(moneyField)", newValue: nil, expectedPaths: [""]),
            Breakage(
                what: "bad currency", pointer: "/\(moneyField)/currency", newValue: .string("eur"),
                expectedPaths: ["/\(moneyField)/currency"]),
            Breakage(
                what: "bad currency", pointer: "/\(moneyField)/currency", newValue: .string("EURO"),
                expectedPaths: ["/\(moneyField)/currency"]),
            Breakage(
                what: "negative amount", pointer: "/\(moneyField)/amount", newValue: .integer(-1),
                expectedPaths: ["/\(moneyField)/amount"]),
            Breakage(
                what: "fractional amount", pointer: "/\(moneyField)/amount", newValue: .number(12.5),
                expectedPaths: ["/\(moneyField)/amount"]),
            Breakage(
                what: "wrong type", pointer: "/\(moneyField)/amount", newValue: .string("25.00"),
                expectedPaths: ["/\(moneyField)/amount"]),
            Breakage(
                what: "missing field", pointer: "/\(moneyField)/currency", newValue: nil,
                expectedPaths: ["/\(moneyField)"]),
        ]
    }
    if members["lines"] != nil {
        result += [
            Breakage(
                what: "negative quantity", pointer: "/lines/0/quantity", newValue: .integer(-2),
                expectedPaths: ["/lines/0/quantity"]),
            Breakage(
                what: "zero quantity", pointer: "/lines/0/quantity", newValue: .integer(0),
                expectedPaths: ["/lines/0/quantity"]),
            Breakage(
                what: "wrong type", pointer: "/lines/0/quantity", newValue: .string("2"),
                expectedPaths: ["/lines/0/quantity"]),
            Breakage(what: "missing field", pointer: "/lines/0/sku", newValue: nil, expectedPaths: ["/lines/0"]),
            Breakage(what: "no lines", pointer: "/lines", newValue: .array([]), expectedPaths: ["/lines"]),
            Breakage(
                what: "too many lines", pointer: "/lines",
                newValue: .array(Array(repeating: json(#"{"sku": "S", "quantity": 1}"#), count: 101)),
                expectedPaths: ["/lines"]),
        ]
    }
    if members["paymentId"] != nil {
        result.append(
            Breakage(what: "bad uuid", pointer: "/paymentId", newValue: .string("pay-1"), expectedPaths: ["/paymentId"])
        )
    }
    if members["reason"] != nil {
        result.append(
            Breakage(what: "bad reason", pointer: "/reason", newValue: .string(""), expectedPaths: ["/reason"]))
        result.append(Breakage(what: "missing field", pointer: "/reason", newValue: nil, expectedPaths: [""]))
    }
    return result
}

@Suite struct EventSchemaTests {
    let registry = SchemaRegistry.shared

    @Test func everyEventTypeHasAValidPayloadFixture() {
        #expect(Set(validPayloads.keys) == Set(registry.keys))
    }

    @Test(arguments: SchemaRegistry.shared.keys)
    func validPayloadPassesAndBrokenOnesFail(key: SchemaKey) throws {
        let valid = json(try #require(validPayloads[key], "no fixture for \(key)"))
        #expect(registry.validate(type: key.type, version: key.version, data: valid) == [])
        let cases = breakages(for: key, valid)
        #expect(cases.count >= 7)
        for breakage in cases {
            let broken = setting(valid, breakage.pointer, to: breakage.newValue)
            let found = registry.validate(type: key.type, version: key.version, data: broken) ?? []
            #expect(found.map(\.path) == breakage.expectedPaths, "\(key) \(breakage): \(found)")
        }
    }

    @Test func orderCreatedV2UnitPriceIsOptionalButChecked() {
        let valid = json(validPayloads[SchemaKey(type: "order.created", version: 2)]!)
        let upcast = setting(valid, "/lines/0/unitPrice", to: nil)
        #expect(registry.validate(type: "order.created", version: 2, data: upcast) == [])
        let badPrice = setting(valid, "/lines/0/unitPrice/currency", to: .string("eu"))
        #expect(
            registry.validate(type: "order.created", version: 2, data: badPrice)?.map(\.path) == [
                "/lines/0/unitPrice/currency"
            ])
        // v1's flat shape is not a v2 payload.
        let v1 = json(validPayloads[SchemaKey(type: "order.created", version: 1)]!)
        #expect(
            registry.validate(type: "order.created", version: 2, data: v1)?.map(\.path) == [
                "", "/currency", "/totalAmount",
            ])
    }

    @Test func inventoryRejectedShortages() {
        let valid = json(validPayloads[SchemaKey(type: "inventory.rejected", version: 1)]!)
        let key = (type: "inventory.rejected", version: 1)
        #expect(
            registry.validate(type: key.type, version: key.version, data: setting(valid, "/shortages", to: .array([])))
                == [])
        #expect(
            registry.validate(
                type: key.type, version: key.version, data: setting(valid, "/shortages/0/requested", to: .integer(0)))?
                .map(\.path) == ["/shortages/0/requested"])
        #expect(
            registry.validate(
                type: key.type, version: key.version, data: setting(valid, "/shortages/0/available", to: .integer(-1)))?
                .map(\.path) == ["/shortages/0/available"])
        #expect(
            registry.validate(type: key.type, version: key.version, data: setting(valid, "/shortages", to: nil))?
                .map(\.path) == [""])
        let longReason = JSONValue.string(String(repeating: "x", count: 501))
        #expect(
            registry.validate(type: key.type, version: key.version, data: setting(valid, "/reason", to: longReason))?
                .map(\.path) == ["/reason"])
    }

    @Test func closedReasonEnums() {
        let failed = json(validPayloads[SchemaKey(type: "payment.failed", version: 1)]!)
        for reason in ["insufficient_credit", "unknown_customer", "currency_mismatch"] {
            #expect(
                registry.validate(
                    type: "payment.failed", version: 1, data: setting(failed, "/reason", to: .string(reason))) == [])
        }
        #expect(
            registry.validate(
                type: "payment.failed", version: 1, data: setting(failed, "/reason", to: .string("card_expired")))?
                .map(\.path) == ["/reason"])
        let cancelled = json(validPayloads[SchemaKey(type: "order.cancelled", version: 1)]!)
        #expect(
            registry.validate(
                type: "order.cancelled", version: 1,
                data: setting(cancelled, "/reason", to: .string("payment_declined"))) == [])
        #expect(
            registry.validate(
                type: "order.cancelled", version: 1, data: setting(cancelled, "/reason", to: .string("other")))?
                .map(\.path) == ["/reason"])
        #expect(
            registry.validate(type: "order.cancelled", version: 1, data: setting(cancelled, "/detail", to: nil))?
                .map(\.path) == [""])
        #expect(
            registry.validate(
                type: "order.cancelled", version: 1,
                data: setting(cancelled, "/detail", to: .string(String(repeating: "é", count: 501))))?
                .map(\.path) == ["/detail"])
    }

    @Test func orderCancelledV2AddsTimeoutToV1sReasons() {
        let v2 = json(validPayloads[SchemaKey(type: "order.cancelled", version: 2)]!)
        for reason in ["out_of_stock", "payment_declined", "timeout"] {
            #expect(
                registry.validate(
                    type: "order.cancelled", version: 2, data: setting(v2, "/reason", to: .string(reason)))
                    == [])
        }
        #expect(
            registry.validate(type: "order.cancelled", version: 2, data: setting(v2, "/reason", to: .string("other")))?
                .map(\.path) == ["/reason"])
        // v1 stays as published: it does not know `timeout`; every v1 payload is a v2 payload.
        #expect(
            registry.validate(
                type: "order.cancelled", version: 1, data: setting(v2, "/reason", to: .string("timeout")))?
                .map(\.path) == ["/reason"])
        let v1 = json(validPayloads[SchemaKey(type: "order.cancelled", version: 1)]!)
        #expect(registry.validate(type: "order.cancelled", version: 2, data: v1) == [])
    }

    @Test func orderExpiredBoundsItsDueTimeAndTimeout() {
        let valid = json(validPayloads[SchemaKey(type: "order.expired", version: 1)]!)
        func paths(_ pointer: String, _ value: JSONValue?) -> [String]? {
            registry.validate(type: "order.expired", version: 1, data: setting(valid, pointer, to: value))?.map(\.path)
        }
        #expect(paths("/timeoutSeconds", .integer(1)) == [])
        #expect(paths("/timeoutSeconds", .integer(604_800)) == [])
        #expect(paths("/timeoutSeconds", .integer(0)) == ["/timeoutSeconds"])
        #expect(paths("/timeoutSeconds", .integer(604_801)) == ["/timeoutSeconds"])
        #expect(paths("/timeoutSeconds", .number(1.5)) == ["/timeoutSeconds"])
        #expect(paths("/dueAt", .string("2024-05-01 12:45:00")) == ["/dueAt"])
        #expect(paths("/dueAt", nil) == [""])
        #expect(paths("/timeoutSeconds", nil) == [""])
    }

    @Test func paymentRefundedNamesThePaymentAndTheRefund() {
        let valid = json(validPayloads[SchemaKey(type: "payment.refunded", version: 1)]!)
        func paths(_ pointer: String, _ value: JSONValue?) -> [String]? {
            registry.validate(type: "payment.refunded", version: 1, data: setting(valid, pointer, to: value))?
                .map(\.path)
        }
        #expect(paths("/refundId", .string("refund-1")) == ["/refundId"])
        #expect(paths("/refundId", nil) == [""])
        #expect(paths("/paymentId", nil) == [""])
        #expect(paths("/reason", .string(String(repeating: "x", count: 500))) == [])
        #expect(paths("/reason", .string(String(repeating: "x", count: 501))) == ["/reason"])
    }
}

@Suite struct EnvelopeSchemaTests {
    let registry = SchemaRegistry.shared
    let valid = json(
        #"""
        {"id": "0b8e5a3e-2f6c-4d7a-9a51-3f1c2b7e9d10", "type": "order.created", "version": 2,
         "sagaId": "\#(orderId)", "causationId": "\#(paymentId)", "occurredAt": "2024-05-01T12:30:00.250+02:00",
         "producer": "orders", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
         "data": {"anything": "goes here"}}
        """#)

    @Test func validEnvelopes() {
        #expect(registry.validateEnvelope(valid) == [])
        #expect(registry.validateEnvelope(setting(valid, "/causationId", to: .null)) == [])
        #expect(registry.validateEnvelope(setting(valid, "/causationId", to: nil)) == [])
        #expect(registry.validateEnvelope(setting(valid, "/traceparent", to: .null)) == [])
        #expect(registry.validateEnvelope(setting(valid, "/traceparent", to: nil)) == [])
    }

    @Test(
        arguments: [
            ("/id", nil, ""), ("/type", nil, ""), ("/version", nil, ""), ("/sagaId", nil, ""),
            ("/occurredAt", nil, ""), ("/producer", nil, ""), ("/data", nil, ""),
            ("/id", JSONValue.string("not-a-uuid"), "/id"),
            ("/type", .string("OrderCreated"), "/type"),
            ("/type", .string("order.created.v2"), "/type"),
            ("/version", .integer(0), "/version"),
            ("/version", .string("2"), "/version"),
            ("/version", .number(1.5), "/version"),
            ("/sagaId", .string(""), "/sagaId"),
            ("/sagaId", .string(String(repeating: "s", count: 201)), "/sagaId"),
            ("/causationId", .string("nope"), "/causationId"),
            ("/causationId", .integer(1), "/causationId"),
            ("/occurredAt", .string("2024-05-01 12:30:00"), "/occurredAt"),
            ("/occurredAt", .string("yesterday"), "/occurredAt"),
            ("/producer", .string(""), "/producer"),
            ("/traceparent", .string("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"), "/traceparent"),
            ("/traceparent", .string("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"), "/traceparent"),
            ("/data", .array([]), "/data"),
            ("/data", .null, "/data"),
            ("/extra", .integer(1), "/extra"),
        ] as [(String, JSONValue?, String)])
    func brokenEnvelopesFail(pointer: String, newValue: JSONValue?, expectedPath: String) {
        let found = registry.validateEnvelope(setting(valid, pointer, to: newValue))
        #expect(found.map(\.path) == [expectedPath], "\(found)")
    }
}
