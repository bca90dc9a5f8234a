import Foundation
import SagaPostgres
import SagaTestSupport
import Testing

@Suite struct PostgresBinaryResultsTests {
    @Test func everyBinaryDecodableTypeReadsItsColumns() async throws {
        let connection = try await PostgresConnection.connect(PostgresTestDatabase.configuration(), logger: testLogger)
        let id = UUID()
        let payload: [UInt8] = [0, 1, 0x5c, 0x78, 0x7f, 0x80, 0xff]
        let rows = try await connection.query(
            """
            SELECT 'ünï ✓'::text AS t, $1::bytea AS b, NULL::bytea AS n, ''::bytea AS e, (-2)::smallint AS i2,
                (-70000)::int AS i4, (-5000000000)::bigint AS i8, (-1.25)::float8 AS f8, 1.5::real AS f4,
                true AS yes, false AS no, $2::uuid AS u
            """, [payload, id], binaryResults: true)
        let row = try #require(rows.first)
        #expect(try row.decode("t", as: String.self) == "ünï ✓")
        #expect(row["t"] == "ünï ✓")
        #expect(try row.decode("b", as: [UInt8].self) == payload)
        #expect(try row.decode("b", as: Data.self) == Data(payload))
        #expect(try row.decode("n", as: [UInt8]?.self) == nil)
        #expect(row.isNull("n") && !row.isNull("e"))
        #expect(try row.decode("e", as: [UInt8].self) == [])
        #expect(try row.decode("i2", as: Int16.self) == -2)
        #expect(try row.decode("i2", as: Int.self) == -2)
        #expect(try row.decode("i4", as: Int32.self) == -70000)
        #expect(try row.decode("i4", as: Int.self) == -70000)
        #expect(try row.decode("i8", as: Int64.self) == -5_000_000_000)
        #expect(try row.decode("i8", as: Int.self) == -5_000_000_000)
        #expect(try row.decode("f8", as: Double.self) == -1.25)
        #expect(try row.decode("f4", as: Double.self) == 1.5)
        #expect(try row.decode("yes", as: Bool.self) && !(try row.decode("no", as: Bool.self)))
        #expect(try row.decode("u", as: UUID.self) == id)
        await connection.close()
    }

    @Test func aValueThatIsNotItsTypesBinaryFormIsAClearError() async throws {
        let connection = try await PostgresConnection.connect(PostgresTestDatabase.configuration(), logger: testLogger)
        let row = try #require(
            try await connection.query("SELECT now() AS at, 7::int AS n", binaryResults: true).first)
        #expect {
            _ = try row.decode("at", as: Date.self)
        } throws: { error in
            (error as? PostgresError)?.message == "column \"at\": Date cannot be read from PostgreSQL's binary format"
        }
        #expect {
            _ = try row.decode("n", as: Int16.self)
        } throws: { error in
            (error as? PostgresError)?.message.contains("cannot read Int16 from 4 bytes") == true
        }
        // The same statement without binary results reads as text, as before.
        let text = try #require(try await connection.query("SELECT now() AS at, 7::int AS n").first)
        #expect(try text.decode("n", as: Int16.self) == 7)
        _ = try text.decode("at", as: Date.self)
        await connection.close()
    }
}
