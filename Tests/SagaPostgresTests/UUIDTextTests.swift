import Foundation
import SagaPostgres
import Testing

@Suite struct UUIDTextTests {
    @Test func lowercasedStringIsFoundationsTextLowercased() {
        let fixed = UUID(
            uuid: (0x00, 0x01, 0x9a, 0xbf, 0x10, 0xc2, 0x7e, 0x3d, 0x8f, 0xa0, 0x5b, 0x6c, 0xde, 0xef, 0xf0, 0xff))
        #expect(fixed.lowercasedString == "00019abf-10c2-7e3d-8fa0-5b6cdeeff0ff")
        for _ in 0..<1000 {
            let id = UUID()
            #expect(id.lowercasedString == id.uuidString.lowercased())
        }
    }

    @Test func parsingReadsWhatFoundationReads() {
        for _ in 0..<1000 {
            let id = UUID()
            #expect(UUID(parsing: id.uuidString) == id)
            #expect(UUID(parsing: id.uuidString.lowercased()) == id)
            #expect(UUID(parsing: id.lowercasedString) == UUID(uuidString: id.lowercasedString))
        }
        let mixed = "0190A5c4-aBcD-7EF0-9a1B-C2d3E4f5A6b7"
        #expect(UUID(parsing: mixed) == UUID(uuidString: mixed))
        let inside = "id=\(mixed);"
        #expect(UUID(parsing: inside.dropFirst(3).dropLast()) == UUID(uuidString: mixed))
    }

    @Test func parsingRefusesWhatIsNotTheCanonicalForm() {
        for text in [
            "", "0190a5c4-abcd-7ef0-9a1b-c2d3e4f5a6b", "0190a5c4-abcd-7ef0-9a1b-c2d3e4f5a6b70",
            "0190a5c4abcd-7ef0-9a1b-c2d3e4f5a6b7-", "0190a5c4-abcd-7ef0-9a1b_c2d3e4f5a6b7",
            "0190a5c4-abcd-7ef0-9a1b-c2d3e4f5a6bg", "{190a5c4-abcd-7ef0-9a1b-c2d3e4f5a6b7",
            "0190a5c4-abcd-7ef0-9a1b-c2d3e4f5a6é", "0190a5c4 abcd 7ef0 9a1b c2d3e4f5a6b7",
        ] {
            #expect(UUID(parsing: text) == nil, "\(text)")
            #expect(UUID(uuidString: text) == nil, "Foundation reads \(text)")
        }
    }
}
