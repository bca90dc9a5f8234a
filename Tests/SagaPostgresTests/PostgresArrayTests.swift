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

    @Test func byteArraysKeepEveryByteAndNull() async throws {
        let connection = try await PostgresConnection.connect(PostgresTestDatabase.configuration(), logger: testLogger)
        let values: [[UInt8]?] = [
            [0, 1, 0x7f, 0x80, 0xff], nil, [], Array("\\\"{},".utf8), Array(repeating: 0, count: 3000),
        ]
        let rows = try await connection.query(
            "SELECT b, b IS NULL AS null FROM unnest($1::bytea[]) WITH ORDINALITY AS u(b, n) ORDER BY n",
            [PostgresArray(bytes: values)])
        #expect(try rows.map { try $0.decode("b", as: [UInt8]?.self) } == values)
        #expect(try rows.map { try $0.decode("null", as: Bool.self) } == values.map { $0 == nil })
        await connection.close()
    }

    /// The literal (`postgresText`) is what the binary array holds: sent as text, it reads back the same.
    @Test func theLiteralMatchesTheBinaryArray() async throws {
        let connection = try await PostgresConnection.connect(PostgresTestDatabase.configuration(), logger: testLogger)
        let arrays: [(PostgresArray, String)] = [
            (PostgresArray(["a\"b", "c\\d", "", "NULL", "é,}"]), "text[]"),
            (PostgresArray([Int64.min, -1, 0, Int64.max]), "bigint[]"),
            (PostgresArray([UUID(), UUID()]), "uuid[]"),
            (PostgresArray(bytes: [[0, 0xff], nil, []]), "bytea[]"),
            (PostgresArray([String]()), "text[]"),
        ]
        for (array, type) in arrays {
            let row = try await connection.query(
                "SELECT $1::\(type) IS NOT DISTINCT FROM $2::text::\(type) AS same",
                [array, array.postgresText]
            ).first
            #expect(try row?.decode("same", as: Bool.self) == true, "\(type): \(array.postgresText)")
        }
        await connection.close()
    }

    @Test func refusalsAreTheServers() async throws {
        let connection = try await PostgresConnection.connect(PostgresTestDatabase.configuration(), logger: testLogger)
        // A NUL, which text cannot hold: refused as data (class 22), like a NUL in a text parameter.
        do {
            _ = try await connection.query("SELECT cardinality($1::text[]) AS n", [PostgresArray(["a\u{0}b"])])
            Issue.record("accepted a NUL in text")
        } catch {
            #expect(error.sqlState?.hasPrefix("22") == true, "\(error)")
        }
        // Integers beyond bigint go as their literal, which the server refuses as out of range.
        do {
            _ = try await connection.query("SELECT cardinality($1::bigint[]) AS n", [PostgresArray([UInt64.max])])
            Issue.record("accepted an integer beyond bigint")
        } catch {
            #expect(error.sqlState == "22003", "\(error)")
        }
        #expect(
            try await connection.query("SELECT $1::numeric[]::text AS t", [PostgresArray([UInt64.max])]).first?
                .decode("t", as: String.self) == "{18446744073709551615}")
        // Strings cast to another type in the SQL are converted element by element, invalid ones refused.
        let id = UUID()
        #expect(
            try await connection.query("SELECT ($1::uuid[])[1] AS u", [PostgresArray([id.lowercasedString])]).first?
                .decode("u", as: UUID.self) == id)
        do {
            _ = try await connection.query("SELECT ($1::uuid[])[1] AS u", [PostgresArray(["not a uuid"])])
            Issue.record("accepted a string that is no UUID")
        } catch {
            #expect(error.sqlState == "22P02", "\(error)")
        }
        await connection.close()
    }

    /// A statement prepared while a parameter was NULL (its type inferred from the SQL's cast, here `uuid[]`) is not
    /// reused for an array of another type in that place (`text[]`): that text is prepared again for those types.
    @Test func aTextIsPreparedPerParameterTypes() async throws {
        let connection = try await PostgresConnection.connect(PostgresTestDatabase.configuration(), logger: testLogger)
        let sql = "SELECT coalesce(cardinality($1::uuid[]), -1) AS n, $2::int AS k"
        let none: PostgresBind = nil
        #expect(try await connection.query(sql, [none, 1]).first?.decode("n", as: Int.self) == -1)
        let ids = [UUID().lowercasedString, UUID().lowercasedString]
        #expect(try await connection.query(sql, [PostgresArray(ids), 2]).first?.decode("n", as: Int.self) == 2)
        #expect(try await connection.query(sql, [PostgresArray([UUID()]), 3]).first?.decode("n", as: Int.self) == 1)
        #expect(try await connection.query(sql, [none, 4]).first?.decode("n", as: Int.self) == -1)
        await connection.close()
    }
}
