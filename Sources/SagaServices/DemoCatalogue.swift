import SagaEngine

/// The small catalogue and customer list `saga dev`, the demo and the benchmark start from.
/// Seeding only inserts what is missing: a restarted stack keeps its stock and balances.
public struct DemoCatalogue: Sendable {
    /// A product with its price and initial stock.
    public struct Product: Sendable, Hashable {
        /// The product's SKU.
        public var sku: String
        /// Its price per unit.
        public var unitPrice: Money
        /// The units in stock when seeded.
        public var stock: Int
        /// A product from its fields.
        public init(sku: String, unitPrice: Money, stock: Int) {
            self.sku = sku
            self.unitPrice = unitPrice
            self.stock = stock
        }
    }
    /// A customer with a credit limit.
    public struct Customer: Sendable, Hashable {
        /// The customer's id.
        public var id: String
        /// How much billing may charge the customer in all.
        public var creditLimit: Money
        /// A customer from its fields.
        public init(id: String, creditLimit: Money) {
            self.id = id
            self.creditLimit = creditLimit
        }
    }
    /// The products: orders' price list and inventory's stock.
    public var products: [Product]
    /// The customers: billing's accounts.
    public var customers: [Customer]

    /// A catalogue of `products` and `customers`.
    public init(products: [Product], customers: [Customer]) {
        self.products = products
        self.customers = customers
    }

    /// widget, gadget and gizmo (5 in stock) sell; doohickey is priced but never in stock.
    /// alice has credit for anything, bob for €50, carol for nothing.
    public static let standard = DemoCatalogue(
        products: [
            Product(sku: "widget", unitPrice: Money(amount: 1250, currency: "EUR"), stock: 1000),
            Product(sku: "gadget", unitPrice: Money(amount: 3000, currency: "EUR"), stock: 500),
            Product(sku: "gizmo", unitPrice: Money(amount: 9999, currency: "EUR"), stock: 5),
            Product(sku: "doohickey", unitPrice: Money(amount: 420, currency: "EUR"), stock: 0),
        ],
        customers: [
            Customer(id: "alice", creditLimit: Money(amount: 1_000_000, currency: "EUR")),
            Customer(id: "bob", creditLimit: Money(amount: 5_000, currency: "EUR")),
            Customer(id: "carol", creditLimit: Money(amount: 0, currency: "EUR")),
        ])

    /// Writes prices (orders), stock (inventory) and accounts (billing), each into its own service's database.
    public func seed(orders: PostgresPool, inventory: PostgresPool, billing: PostgresPool) async throws {
        for p in products {
            try await orders.execute(
                "INSERT INTO prices (sku, currency, unit_price) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                [p.sku, p.unitPrice.currency, p.unitPrice.amount])
            try await inventory.execute(
                "INSERT INTO stock (sku, available) VALUES ($1, $2) ON CONFLICT DO NOTHING", [p.sku, p.stock])
        }
        for c in customers {
            try await billing.execute(
                "INSERT INTO accounts (customer_id, currency, credit_limit) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                [c.id, c.creditLimit.currency, c.creditLimit.amount])
        }
    }
}
