import SagaEngine

/// A `POST /orders` body, validated: `{"customerId": "...", "currency": "EUR", "lines": [{"sku": "...", "quantity": 2}]}`.
public struct OrderRequest: Sendable, Hashable {
    public var customerId: String
    public var currency: String
    public var lines: [OrderLine]

    public init(customerId: String, currency: String, lines: [OrderLine]) {
        self.customerId = customerId
        self.currency = currency
        self.lines = lines
    }

    public static let maxLines = 100

    /// Parses and validates a request body.
    /// - Throws: `OrderRequestError` naming the first field that is wrong and why.
    public init(body: [UInt8]) throws(OrderRequestError) {
        let json: JSONValue
        do { json = try JSONValue(parsing: body) } catch { throw OrderRequestError("body is not valid JSON") }
        guard case .object(let o) = json else { throw OrderRequestError("body must be a JSON object") }
        guard case .string(let customerId)? = o["customerId"], !customerId.isEmpty, customerId.count <= 200 else {
            throw OrderRequestError("customerId: required, a non-empty string of at most 200 characters")
        }
        guard case .string(let currency)? = o["currency"], currency.count == 3,
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
            guard case .string(let sku)? = line["sku"], !sku.isEmpty, sku.count <= 100 else {
                throw OrderRequestError("lines[\(i)].sku: required, a non-empty string of at most 100 characters")
            }
            let quantity: Int64
            switch line["quantity"] {
            case .integer(let q)?: quantity = q
            case .number(let q)? where q.rounded() == q && abs(q) < 1e15: quantity = Int64(q)
            default: throw OrderRequestError("lines[\(i)].quantity: required, an integer")
            }
            guard quantity >= 1 else { throw OrderRequestError("lines[\(i)].quantity: must be at least 1") }
            guard quantity <= 1_000_000 else { throw OrderRequestError("lines[\(i)].quantity: at most 1000000") }
            lines.append(OrderLine(sku: sku, quantity: Int(quantity)))
        }
        self.init(customerId: customerId, currency: currency, lines: lines)
    }
}

/// Why an order request was refused (HTTP 400), in words a client can act on.
public struct OrderRequestError: Error, Sendable, Hashable, CustomStringConvertible {
    public var reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}
