import Foundation
import SagaPostgres
import SagaTestSupport
import Testing

@Suite struct PostgresArrayTests {
    @Test func arrayParametersRoundTripAnyValue() async throws {
        let connection = try await PostgresConnection.connect(PostgresTestDatabase.configuration(), logger: testLogger)
        let strings = [
            "plain", "with \"quotes\"", "back\\slash", "comma,brace}{", "NULL", "", "ünïcødé ✓", "\"\\\"",
            "\\both ends\"",
        ]
        let texts = try await connection.query(
            "SELECT s FROM unnest($1::text[]) WITH ORDINALITY AS u(s, n) ORDER BY n", [PostgresArray(strings)])
        #expect(try texts.map { try $0.decode("s", as: String.self) } == strings)
        let numbers: [Int64] = [-1, 0, 9_007_199_254_740_993]
        let ints = try await connection.query(
            "SELECT sum(x)::text AS s, count(*) AS n FROM unnest($1::bigint[]) x", [PostgresArray(numbers)])
        #expect(try ints.first?.decode("s", as: String.self) == "9007199254740992")
        let ids = [UUID(), UUID()]
        let uuids = try await connection.query("SELECT x FROM unnest($1::uuid[]) x", [PostgresArray(ids)])
        #expect(try Set(uuids.map { try $0.decode("x", as: UUID.self) }) == Set(ids))
        let empty = try await connection.query("SELECT cardinality($1::text[]) AS n", [PostgresArray([String]())])
        #expect(try empty.first?.decode("n", as: Int.self) == 0)
        await connection.close()
    }
}
