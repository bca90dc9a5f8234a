/// W3C trace context (`traceparent`: version-traceid-spanid-flags), carried in every envelope and as a
/// Kafka header so a saga can be followed across services.
public enum TraceParent {
    /// A new root trace.
    public static func root() -> String { "00-\(hex(16))-\(hex(8))-01" }

    /// The child of `parent`: same trace id and flags, new span id. A missing or malformed parent starts a new trace.
    public static func child(of parent: String?) -> String {
        guard let parent, isValid(parent) else { return root() }
        let parts = parent.split(separator: "-")
        return "00-\(parts[1])-\(hex(8))-\(parts[3])"
    }

    /// The trace id of a well-formed traceparent.
    public static func traceId(_ traceparent: String) -> String? {
        isValid(traceparent) ? String(traceparent.split(separator: "-")[1]) : nil
    }

    public static func isValid(_ value: String) -> Bool {
        let parts = value.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 4, parts.map(\.count) == [2, 32, 16, 2] else { return false }
        let hexDigits = Set("0123456789abcdef")
        guard value.allSatisfy({ $0 == "-" || hexDigits.contains($0) }) else { return false }
        return parts[1] != String(repeating: "0", count: 32) && parts[2] != String(repeating: "0", count: 16)
    }

    private static func hex(_ bytes: Int) -> String {
        var generator = SystemRandomNumberGenerator()
        var out = ""
        for _ in 0..<bytes {
            let b = UInt8.random(in: 0...255, using: &generator)
            out += String(b, radix: 16).count == 1 ? "0" + String(b, radix: 16) : String(b, radix: 16)
        }
        return out
    }
}
