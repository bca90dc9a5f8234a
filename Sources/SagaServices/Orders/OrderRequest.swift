import Foundation
import SagaEngine

/// A `POST /orders` body, validated: `{"customerId": "...", "currency": "EUR", "lines": [{"sku": "...", "quantity": 2}]}`,
/// optionally with `"deadlineSeconds": 600`.
///
/// Limits (also in `schemas/openapi.yaml` and the README): `customerId` 1...200 and `sku` 1...100 Unicode code
/// points (counted as the event schemas count them), no control characters (U+0000–U+001F, U+007F–U+009F);
/// `currency` three upper-case letters; 1...100 lines; `quantity` an integer literal (no fraction, no exponent)
/// in 1...1,000,000; `deadlineSeconds` an integer literal in 1...86,400; no other members. The body itself is at
/// most 1 MiB of JSON nested at most 512 deep.
public struct OrderRequest: Sendable, Hashable {
    /// The customer placing the order.
    public var customerId: String
    /// The ISO 4217 currency the order is priced in.
    public var currency: String
    /// The ordered products.
    public var lines: [OrderLine]
    /// Seconds from placement until the order times out unless confirmed or cancelled before: overrides the
    /// service's default (`SAGA_ORDER_DEADLINE`), and applies even when that is off. nil: the default.
    public var deadlineSeconds: Int?

    /// A request from its fields, not validated (``init(body:)`` validates).
    public init(customerId: String, currency: String, lines: [OrderLine], deadlineSeconds: Int? = nil) {
        self.customerId = customerId
        self.currency = currency
        self.lines = lines
        self.deadlineSeconds = deadlineSeconds
    }

    /// Most lines in one order.
    public static let maxLines = 100
    /// Longest `customerId`, in Unicode code points.
    public static let maxCustomerIdLength = 200
    /// Longest `sku`, in Unicode code points.
    public static let maxSKULength = 100
    /// Largest quantity of one line.
    public static let maxQuantity: Int64 = 1_000_000
    /// The `deadlineSeconds` accepted.
    public static let deadlineSecondsRange: ClosedRange<Int64> = 1...86_400

    /// Parses and validates a request body.
    /// - Throws: `OrderRequestError` naming the first field that is wrong and why.
    public init(body: [UInt8]) throws(OrderRequestError) {
        let json: JSONValue
        do { json = try JSONValue(parsing: body) } catch {
            throw OrderRequestError("body is not valid JSON: \(error.message)")
        }
        guard case .object(let o) = json else { throw OrderRequestError("body must be a JSON object") }
        try Self.refuseUnknownMembers(o, allowed: ["customerId", "currency", "lines", "deadlineSeconds"], at: "body")
        guard case .string(let customerId)? = o["customerId"],
            Self.isText(customerId, maxCodePoints: Self.maxCustomerIdLength)
        else {
            throw OrderRequestError(
                "customerId: required, a non-empty string of at most \(Self.maxCustomerIdLength) code points"
                    + " without control characters")
        }
        guard case .string(let currency)? = o["currency"], currency.unicodeScalars.count == 3,
            currency.unicodeScalars.allSatisfy({ ("A"..."Z").contains($0) })
        else { throw OrderRequestError("currency: required, three upper-case letters (ISO 4217), e.g. \"EUR\"") }
        guard case .array(let items)? = o["lines"] else {
            throw OrderRequestError("lines: required, an array of {\"sku\", \"quantity\"}")
        }
        guard !items.isEmpty else { throw OrderRequestError("lines: must not be empty") }
        guard items.count <= Self.maxLines else { throw OrderRequestError("lines: at most \(Self.maxLines) lines") }
        var lines: [OrderLine] = []
        for (i, item) in items.enumerated() {
            guard case .object(let line) = item else { throw OrderRequestError("lines[\(i)]: must be an object") }
            try Self.refuseUnknownMembers(line, allowed: ["sku", "quantity"], at: "lines[\(i)]")
            guard case .string(let sku)? = line["sku"], Self.isText(sku, maxCodePoints: Self.maxSKULength) else {
                throw OrderRequestError(
                    "lines[\(i)].sku: required, a non-empty string of at most \(Self.maxSKULength) code points"
                        + " without control characters")
            }
            // An integer literal only: `1.0`, `1e0` or `0.9999999999999999999` are numbers, not quantities.
            guard case .integer(let quantity)? = line["quantity"] else {
                throw OrderRequestError(
                    "lines[\(i)].quantity: required, an integer from 1 to \(Self.maxQuantity) (no fraction or exponent)"
                )
            }
            guard quantity >= 1 else { throw OrderRequestError("lines[\(i)].quantity: must be at least 1") }
            guard quantity <= Self.maxQuantity else {
                throw OrderRequestError("lines[\(i)].quantity: at most \(Self.maxQuantity)")
            }
            lines.append(OrderLine(sku: sku, quantity: Int(quantity)))
        }
        var deadlineSeconds: Int? = nil
        if let value = o["deadlineSeconds"] {
            let range = Self.deadlineSecondsRange
            guard case .integer(let seconds) = value else {
                throw OrderRequestError(
                    "deadlineSeconds: an integer from \(range.lowerBound) to \(range.upperBound) (no fraction or exponent)"
                )
            }
            guard seconds >= range.lowerBound else {
                throw OrderRequestError("deadlineSeconds: must be at least \(range.lowerBound)")
            }
            guard seconds <= range.upperBound else {
                throw OrderRequestError("deadlineSeconds: at most \(range.upperBound)")
            }
            deadlineSeconds = Int(seconds)
        }
        self.init(customerId: customerId, currency: currency, lines: lines, deadlineSeconds: deadlineSeconds)
    }

    /// The request in one canonical form (JSON, members sorted, no spaces): two bodies that place the same order
    /// have the same canonical form, whatever their member order or spacing. `deadlineSeconds` is in it only when
    /// given (so the forms, and fingerprints, of requests without it are what they were before it existed).
    public var canonical: String {
        var members: [String: JSONValue] = [
            "customerId": .string(customerId), "currency": .string(currency),
            "lines": .array(
                lines.map { .object(["sku": .string($0.sku), "quantity": .integer(Int64($0.quantity))]) }),
        ]
        if let deadlineSeconds { members["deadlineSeconds"] = .integer(Int64(deadlineSeconds)) }
        return String(decoding: JSONValue.object(members).serialized(), as: UTF8.self)
    }

    /// The longest `Idempotency-Key` accepted.
    public static let maxIdempotencyKeyLength = 255

    /// Checks an `Idempotency-Key`: 1...255 visible ASCII characters (`!` to `~`, no space or control character).
    /// - Throws: `OrderRequestError` saying what a key must be.
    public static func validate(idempotencyKey key: String) throws(OrderRequestError) {
        let scalars = key.unicodeScalars
        guard !scalars.isEmpty, scalars.count <= maxIdempotencyKeyLength,
            scalars.allSatisfy({ (0x21...0x7E).contains($0.value) })
        else {
            throw OrderRequestError(
                "Idempotency-Key: 1 to \(maxIdempotencyKeyLength) visible ASCII characters (no spaces), e.g. a UUID")
        }
    }

    /// Non-empty, at most `maxCodePoints` Unicode code points (as JSON Schema's `maxLength` counts), no C0 or
    /// C1 control character and no DEL (PostgreSQL text cannot even hold U+0000).
    static func isText(_ s: String, maxCodePoints: Int) -> Bool {
        var count = 0
        for scalar in s.unicodeScalars {
            count += 1
            if scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || count > maxCodePoints { return false }
        }
        return count > 0
    }

    private static func refuseUnknownMembers(_ object: [String: JSONValue], allowed: Set<String>, at path: String)
        throws(OrderRequestError)
    {
        if let unknown = object.keys.filter({ !allowed.contains($0) }).sorted().first {
            let name = String(decoding: JSONValue.string(unknown).serialized(), as: UTF8.self)
            throw OrderRequestError(
                "\(path): unknown member \(name) (allowed: \(allowed.sorted().joined(separator: ", ")))")
        }
    }
}

/// Why an order request was refused (HTTP 400), in words a client can act on.
public struct OrderRequestError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What is wrong with the request.
    public var reason: String
    /// An error with `reason`.
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

/// An `Idempotency-Key` reused by the same customer for a different request (HTTP 422): the key's first
/// request placed an order, this one asks for something else.
public struct IdempotencyKeyConflict: Error, Sendable, Hashable, CustomStringConvertible {
    /// The conflict.
    public init() {}
    public var description: String {
        "Idempotency-Key: already used by this customer for a different request; use a new key for a new request"
    }
}

/// The database failed before the order was stored (it is unreachable, or the session broke and the order is
/// not there): nothing was written, so placing the order again is safe.
public struct OrderNotStored: Error, Sendable, CustomStringConvertible {
    /// The database error.
    public var reason: String
    public var description: String { "the order was not stored: the database is unavailable (\(reason))" }
}

/// The session that stored the order broke before the commit's answer arrived, and the database stayed out of
/// reach, so whether `orderId` exists is not known. `GET /orders/{orderId}` tells once the database is back
/// (404: not stored); a retry must carry the same `Idempotency-Key`, or it may place the order twice.
public struct OrderOutcomeUnknown: Error, Sendable, CustomStringConvertible {
    /// The order whose outcome is unknown.
    public var orderId: UUID
    /// The database error.
    public var reason: String
    public var description: String {
        "the outcome of order \(orderId.lowercasedString) is unknown: the database connection broke while it "
            + "was being stored (\(reason))"
    }
}
