import Foundation
import JSONSchema

// Codable straight to and from `JSONValue`, without JSON text in between: every event a handler emits is
// encoded once and every event it handles is decoded once, and going through `JSONEncoder`/`JSONDecoder`
// meant serializing and parsing each of them once more. Plain values (strings, numbers, booleans, nested
// structs, arrays, optionals, raw-value enums) take this path; anything else (`Date`, `Data`, `URL`,
// `Decimal`, floating point, …) and any decoding error make the caller fall back to them, so results and
// errors are theirs.

/// A type the direct coders leave to `JSONEncoder`/`JSONDecoder`.
struct NeedsFoundationCoder: Error {}

/// Encodes an `Encodable` as a `JSONValue`. Throws `NeedsFoundationCoder` for types it does not handle
/// (those `JSONEncoder` treats specially, floating point, nested or super encoders).
struct JSONValueEncoder {
    static func encode<T: Encodable>(_ value: T) throws -> JSONValue {
        if Self.isSpecial(T.self) { throw NeedsFoundationCoder() }
        let box = Box()
        try value.encode(to: ValueEncoder(box: box, codingPath: []))
        return box.value ?? .object([:])
    }

    static func isSpecial(_ type: Any.Type) -> Bool {
        type == Date.self || type == Data.self || type == URL.self || type == Decimal.self
    }

    /// Where a container writes its value; containers nest by writing into their parent's box on the way out.
    final class Box {
        var value: JSONValue?
    }

    struct ValueEncoder: Encoder {
        let box: Box
        var codingPath: [any CodingKey]
        var userInfo: [CodingUserInfoKey: Any] { [:] }

        func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
            if box.value == nil { box.value = .object([:]) }
            return KeyedEncodingContainer(Keyed(box: box, codingPath: codingPath))
        }

        func unkeyedContainer() -> any UnkeyedEncodingContainer {
            if box.value == nil { box.value = .array([]) }
            return Unkeyed(box: box, codingPath: codingPath)
        }

        func singleValueContainer() -> any SingleValueEncodingContainer { Single(box: box, codingPath: codingPath) }
    }

    static func value<T: Encodable>(_ value: T, at codingPath: [any CodingKey]) throws -> JSONValue {
        if isSpecial(T.self) { throw NeedsFoundationCoder() }
        let box = Box()
        try value.encode(to: ValueEncoder(box: box, codingPath: codingPath))
        return box.value ?? .object([:])
    }

    /// Floating point goes through `JSONEncoder`, whose number formatting decides integer or not.
    static func number(_ value: Double) throws -> JSONValue { throw NeedsFoundationCoder() }

    struct Keyed<Key: CodingKey>: KeyedEncodingContainerProtocol {
        let box: Box
        var codingPath: [any CodingKey]

        private func set(_ key: Key, _ value: JSONValue) {
            guard case .object(var members) = box.value else { return }
            box.value = nil  // keep the dictionary uniquely referenced while it is changed
            members[key.stringValue] = value
            box.value = .object(members)
        }

        mutating func encodeNil(forKey key: Key) throws { set(key, .null) }
        mutating func encode(_ value: Bool, forKey key: Key) throws { set(key, .bool(value)) }
        mutating func encode(_ value: String, forKey key: Key) throws { set(key, .string(value)) }
        mutating func encode(_ value: Double, forKey key: Key) throws { set(key, try number(value)) }
        mutating func encode(_ value: Float, forKey key: Key) throws { set(key, try number(Double(value))) }
        mutating func encode(_ value: Int, forKey key: Key) throws { set(key, .integer(Int64(value))) }
        mutating func encode(_ value: Int8, forKey key: Key) throws { set(key, .integer(Int64(value))) }
        mutating func encode(_ value: Int16, forKey key: Key) throws { set(key, .integer(Int64(value))) }
        mutating func encode(_ value: Int32, forKey key: Key) throws { set(key, .integer(Int64(value))) }
        mutating func encode(_ value: Int64, forKey key: Key) throws { set(key, .integer(value)) }
        mutating func encode(_ value: UInt8, forKey key: Key) throws { set(key, .integer(Int64(value))) }
        mutating func encode(_ value: UInt16, forKey key: Key) throws { set(key, .integer(Int64(value))) }
        mutating func encode(_ value: UInt32, forKey key: Key) throws { set(key, .integer(Int64(value))) }
        mutating func encode(_ value: UInt, forKey key: Key) throws {
            guard let v = Int64(exactly: value) else { throw NeedsFoundationCoder() }
            set(key, .integer(v))
        }
        mutating func encode(_ value: UInt64, forKey key: Key) throws {
            guard let v = Int64(exactly: value) else { throw NeedsFoundationCoder() }
            set(key, .integer(v))
        }
        mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
            set(key, try JSONValueEncoder.value(value, at: codingPath + [key]))
        }

        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key)
            -> KeyedEncodingContainer<NestedKey>
        {
            // Rare in synthesized Codable; not supported directly.
            KeyedEncodingContainer(Failing<NestedKey>(codingPath: codingPath + [key]))
        }
        mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
            FailingUnkeyed(codingPath: codingPath + [key])
        }
        mutating func superEncoder() -> any Encoder { FailingEncoder(codingPath: codingPath) }
        mutating func superEncoder(forKey key: Key) -> any Encoder { FailingEncoder(codingPath: codingPath + [key]) }
    }

    struct Unkeyed: UnkeyedEncodingContainer {
        let box: Box
        var codingPath: [any CodingKey]
        var count: Int {
            if case .array(let items) = box.value { return items.count }
            return 0
        }

        private func append(_ value: JSONValue) {
            guard case .array(var items) = box.value else { return }
            box.value = nil
            items.append(value)
            box.value = .array(items)
        }

        mutating func encodeNil() throws { append(.null) }
        mutating func encode(_ value: Bool) throws { append(.bool(value)) }
        mutating func encode(_ value: String) throws { append(.string(value)) }
        mutating func encode(_ value: Double) throws { append(try number(value)) }
        mutating func encode(_ value: Float) throws { append(try number(Double(value))) }
        mutating func encode(_ value: Int) throws { append(.integer(Int64(value))) }
        mutating func encode(_ value: Int8) throws { append(.integer(Int64(value))) }
        mutating func encode(_ value: Int16) throws { append(.integer(Int64(value))) }
        mutating func encode(_ value: Int32) throws { append(.integer(Int64(value))) }
        mutating func encode(_ value: Int64) throws { append(.integer(value)) }
        mutating func encode(_ value: UInt8) throws { append(.integer(Int64(value))) }
        mutating func encode(_ value: UInt16) throws { append(.integer(Int64(value))) }
        mutating func encode(_ value: UInt32) throws { append(.integer(Int64(value))) }
        mutating func encode(_ value: UInt) throws {
            guard let v = Int64(exactly: value) else { throw NeedsFoundationCoder() }
            append(.integer(v))
        }
        mutating func encode(_ value: UInt64) throws {
            guard let v = Int64(exactly: value) else { throw NeedsFoundationCoder() }
            append(.integer(v))
        }
        mutating func encode<T: Encodable>(_ value: T) throws {
            append(try JSONValueEncoder.value(value, at: codingPath))
        }

        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type)
            -> KeyedEncodingContainer<NestedKey>
        {
            KeyedEncodingContainer(Failing<NestedKey>(codingPath: codingPath))
        }
        mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
            FailingUnkeyed(codingPath: codingPath)
        }
        mutating func superEncoder() -> any Encoder { FailingEncoder(codingPath: codingPath) }
    }

    struct Single: SingleValueEncodingContainer {
        let box: Box
        var codingPath: [any CodingKey]

        mutating func encodeNil() throws { box.value = .null }
        mutating func encode(_ value: Bool) throws { box.value = .bool(value) }
        mutating func encode(_ value: String) throws { box.value = .string(value) }
        mutating func encode(_ value: Double) throws { box.value = try number(value) }
        mutating func encode(_ value: Float) throws { box.value = try number(Double(value)) }
        mutating func encode(_ value: Int) throws { box.value = .integer(Int64(value)) }
        mutating func encode(_ value: Int8) throws { box.value = .integer(Int64(value)) }
        mutating func encode(_ value: Int16) throws { box.value = .integer(Int64(value)) }
        mutating func encode(_ value: Int32) throws { box.value = .integer(Int64(value)) }
        mutating func encode(_ value: Int64) throws { box.value = .integer(value) }
        mutating func encode(_ value: UInt8) throws { box.value = .integer(Int64(value)) }
        mutating func encode(_ value: UInt16) throws { box.value = .integer(Int64(value)) }
        mutating func encode(_ value: UInt32) throws { box.value = .integer(Int64(value)) }
        mutating func encode(_ value: UInt) throws {
            guard let v = Int64(exactly: value) else { throw NeedsFoundationCoder() }
            box.value = .integer(v)
        }
        mutating func encode(_ value: UInt64) throws {
            guard let v = Int64(exactly: value) else { throw NeedsFoundationCoder() }
            box.value = .integer(v)
        }
        mutating func encode<T: Encodable>(_ value: T) throws {
            box.value = try JSONValueEncoder.value(value, at: codingPath)
        }
    }

    /// Containers this encoder does not support directly: every use throws, so the caller falls back.
    struct Failing<Key: CodingKey>: KeyedEncodingContainerProtocol {
        var codingPath: [any CodingKey]
        mutating func encodeNil(forKey key: Key) throws { throw NeedsFoundationCoder() }
        mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws { throw NeedsFoundationCoder() }
        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key)
            -> KeyedEncodingContainer<NestedKey>
        {
            KeyedEncodingContainer(Failing<NestedKey>(codingPath: codingPath))
        }
        mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
            FailingUnkeyed(codingPath: codingPath)
        }
        mutating func superEncoder() -> any Encoder { FailingEncoder(codingPath: codingPath) }
        mutating func superEncoder(forKey key: Key) -> any Encoder { FailingEncoder(codingPath: codingPath) }
    }

    struct FailingUnkeyed: UnkeyedEncodingContainer {
        var codingPath: [any CodingKey]
        var count: Int { 0 }
        mutating func encodeNil() throws { throw NeedsFoundationCoder() }
        mutating func encode<T: Encodable>(_ value: T) throws { throw NeedsFoundationCoder() }
        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type)
            -> KeyedEncodingContainer<NestedKey>
        {
            KeyedEncodingContainer(Failing<NestedKey>(codingPath: codingPath))
        }
        mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer { self }
        mutating func superEncoder() -> any Encoder { FailingEncoder(codingPath: codingPath) }
    }

    struct FailingEncoder: Encoder {
        var codingPath: [any CodingKey]
        var userInfo: [CodingUserInfoKey: Any] { [:] }
        func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
            KeyedEncodingContainer(Failing<Key>(codingPath: codingPath))
        }
        func unkeyedContainer() -> any UnkeyedEncodingContainer { FailingUnkeyed(codingPath: codingPath) }
        func singleValueContainer() -> any SingleValueEncodingContainer { FailingSingle(codingPath: codingPath) }
    }

    struct FailingSingle: SingleValueEncodingContainer {
        var codingPath: [any CodingKey]
        mutating func encodeNil() throws { throw NeedsFoundationCoder() }
        mutating func encode<T: Encodable>(_ value: T) throws { throw NeedsFoundationCoder() }
    }
}

/// Decodes a `Decodable` from a `JSONValue`, accepting only what `JSONDecoder` accepts from the same JSON.
/// Throws on anything else (a mismatch, a type it leaves to `JSONDecoder`); the caller then asks
/// `JSONDecoder`, so the result and any error are `JSONDecoder`'s.
struct JSONValueDecoder: Decoder {
    let value: JSONValue
    var codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    static func decode<T: Decodable>(_ type: T.Type, from value: JSONValue) throws -> T {
        try decode(type, from: value, at: [])
    }

    static func decode<T: Decodable>(_ type: T.Type, from value: JSONValue, at codingPath: [any CodingKey]) throws
        -> T
    {
        if JSONValueEncoder.isSpecial(T.self) { throw NeedsFoundationCoder() }
        return try T(from: JSONValueDecoder(value: value, codingPath: codingPath))
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard case .object(let members) = value else { throw NeedsFoundationCoder() }
        return KeyedDecodingContainer(Keyed(members: members, codingPath: codingPath))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard case .array(let items) = value else { throw NeedsFoundationCoder() }
        return Unkeyed(items: items, codingPath: codingPath)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        Single(value: value, codingPath: codingPath)
    }

    static func bool(_ v: JSONValue) throws -> Bool {
        guard case .bool(let b) = v else { throw NeedsFoundationCoder() }
        return b
    }
    static func string(_ v: JSONValue) throws -> String {
        guard case .string(let s) = v else { throw NeedsFoundationCoder() }
        return s
    }
    /// Floating point goes through `JSONDecoder`, whose number parsing decides the rounding.
    static func double(_ v: JSONValue) throws -> Double { throw NeedsFoundationCoder() }
    static func integer<T: FixedWidthInteger>(_ v: JSONValue) throws -> T {
        guard case .integer(let i) = v, let t = T(exactly: i) else { throw NeedsFoundationCoder() }
        return t
    }

    struct Keyed<Key: CodingKey>: KeyedDecodingContainerProtocol {
        let members: [String: JSONValue]
        var codingPath: [any CodingKey]
        var allKeys: [Key] { members.keys.compactMap { Key(stringValue: $0) } }

        func contains(_ key: Key) -> Bool { members[key.stringValue] != nil }
        private func member(_ key: Key) throws -> JSONValue {
            guard let v = members[key.stringValue] else { throw NeedsFoundationCoder() }
            return v
        }

        func decodeNil(forKey key: Key) throws -> Bool {
            guard let v = members[key.stringValue] else { throw NeedsFoundationCoder() }
            return v == .null
        }
        func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try bool(member(key)) }
        func decode(_ type: String.Type, forKey key: Key) throws -> String { try string(member(key)) }
        func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try double(member(key)) }
        func decode(_ type: Float.Type, forKey key: Key) throws -> Float { throw NeedsFoundationCoder() }
        func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try integer(member(key)) }
        func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try integer(member(key)) }
        func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try integer(member(key)) }
        func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try integer(member(key)) }
        func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try integer(member(key)) }
        func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try integer(member(key)) }
        func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try integer(member(key)) }
        func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try integer(member(key)) }
        func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try integer(member(key)) }
        func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try integer(member(key)) }
        func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
            try JSONValueDecoder.decode(type, from: member(key), at: codingPath + [key])
        }

        func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws
            -> KeyedDecodingContainer<NestedKey>
        {
            try JSONValueDecoder(value: member(key), codingPath: codingPath + [key]).container(keyedBy: type)
        }
        func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
            try JSONValueDecoder(value: member(key), codingPath: codingPath + [key]).unkeyedContainer()
        }
        func superDecoder() throws -> any Decoder { throw NeedsFoundationCoder() }
        func superDecoder(forKey key: Key) throws -> any Decoder { throw NeedsFoundationCoder() }
    }

    struct Unkeyed: UnkeyedDecodingContainer {
        let items: [JSONValue]
        var codingPath: [any CodingKey]
        var count: Int? { items.count }
        var isAtEnd: Bool { currentIndex >= items.count }
        var currentIndex = 0

        init(items: [JSONValue], codingPath: [any CodingKey]) {
            self.items = items
            self.codingPath = codingPath
        }

        private mutating func next() throws -> JSONValue {
            guard currentIndex < items.count else { throw NeedsFoundationCoder() }
            defer { currentIndex += 1 }
            return items[currentIndex]
        }

        mutating func decodeNil() throws -> Bool {
            guard currentIndex < items.count else { throw NeedsFoundationCoder() }
            if items[currentIndex] == .null {
                currentIndex += 1
                return true
            }
            return false
        }
        mutating func decode(_ type: Bool.Type) throws -> Bool { try bool(next()) }
        mutating func decode(_ type: String.Type) throws -> String { try string(next()) }
        mutating func decode(_ type: Double.Type) throws -> Double { try double(next()) }
        mutating func decode(_ type: Float.Type) throws -> Float { throw NeedsFoundationCoder() }
        mutating func decode(_ type: Int.Type) throws -> Int { try integer(next()) }
        mutating func decode(_ type: Int8.Type) throws -> Int8 { try integer(next()) }
        mutating func decode(_ type: Int16.Type) throws -> Int16 { try integer(next()) }
        mutating func decode(_ type: Int32.Type) throws -> Int32 { try integer(next()) }
        mutating func decode(_ type: Int64.Type) throws -> Int64 { try integer(next()) }
        mutating func decode(_ type: UInt.Type) throws -> UInt { try integer(next()) }
        mutating func decode(_ type: UInt8.Type) throws -> UInt8 { try integer(next()) }
        mutating func decode(_ type: UInt16.Type) throws -> UInt16 { try integer(next()) }
        mutating func decode(_ type: UInt32.Type) throws -> UInt32 { try integer(next()) }
        mutating func decode(_ type: UInt64.Type) throws -> UInt64 { try integer(next()) }
        mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
            try JSONValueDecoder.decode(type, from: next(), at: codingPath)
        }

        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws
            -> KeyedDecodingContainer<NestedKey>
        {
            try JSONValueDecoder(value: next(), codingPath: codingPath).container(keyedBy: type)
        }
        mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
            try JSONValueDecoder(value: next(), codingPath: codingPath).unkeyedContainer()
        }
        mutating func superDecoder() throws -> any Decoder { throw NeedsFoundationCoder() }
    }

    struct Single: SingleValueDecodingContainer {
        let value: JSONValue
        var codingPath: [any CodingKey]

        func decodeNil() -> Bool { value == .null }
        func decode(_ type: Bool.Type) throws -> Bool { try bool(value) }
        func decode(_ type: String.Type) throws -> String { try string(value) }
        func decode(_ type: Double.Type) throws -> Double { try double(value) }
        func decode(_ type: Float.Type) throws -> Float { throw NeedsFoundationCoder() }
        func decode(_ type: Int.Type) throws -> Int { try integer(value) }
        func decode(_ type: Int8.Type) throws -> Int8 { try integer(value) }
        func decode(_ type: Int16.Type) throws -> Int16 { try integer(value) }
        func decode(_ type: Int32.Type) throws -> Int32 { try integer(value) }
        func decode(_ type: Int64.Type) throws -> Int64 { try integer(value) }
        func decode(_ type: UInt.Type) throws -> UInt { try integer(value) }
        func decode(_ type: UInt8.Type) throws -> UInt8 { try integer(value) }
        func decode(_ type: UInt16.Type) throws -> UInt16 { try integer(value) }
        func decode(_ type: UInt32.Type) throws -> UInt32 { try integer(value) }
        func decode(_ type: UInt64.Type) throws -> UInt64 { try integer(value) }
        func decode<T: Decodable>(_ type: T.Type) throws -> T {
            try JSONValueDecoder.decode(type, from: value, at: codingPath)
        }
    }
}
