import SagaEngine
import Testing

/// W3C traceparent checks, as every emitted event runs them on its cause's trace context.
@Suite struct TraceParentTests {
    @Test func acceptsOnlyWellFormedLowerCaseTraceparents() {
        #expect(TraceParent.isValid("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"))
        #expect(TraceParent.isValid("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"))
        #expect(!TraceParent.isValid("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"))
        #expect(!TraceParent.isValid("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0"))
        #expect(!TraceParent.isValid("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-011"))
        #expect(!TraceParent.isValid("00-0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331-01"))
        #expect(!TraceParent.isValid("00-0af7651916cd43dd8448eb211c80319-cb7ad6b7169203331-01"))
        #expect(!TraceParent.isValid("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"))
        #expect(!TraceParent.isValid("00-00000000000000000000000000000000-b7ad6b7169203331-01"))
        #expect(!TraceParent.isValid("00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01"))
        #expect(!TraceParent.isValid(""))
        #expect(!TraceParent.isValid("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01é"))
    }

    @Test func newIdsAreRandomAndWellFormed() {
        let roots = (0..<200).map { _ in TraceParent.root() }
        #expect(roots.allSatisfy(TraceParent.isValid))
        #expect(Set(roots.compactMap(TraceParent.traceId)).count == roots.count)
        let children = (0..<200).map { _ in TraceParent.child(of: roots[0]) }
        #expect(children.allSatisfy { TraceParent.traceId($0) == TraceParent.traceId(roots[0]) })
        #expect(Set(children.map { $0.split(separator: "-")[2] }).count == children.count)
        // Every hex digit shows up in the span ids: the bytes are spread over the whole word.
        #expect(Set(children.flatMap { $0.split(separator: "-")[2] }).count == 16)
    }

    @Test func aChildKeepsTheTraceIdAndFlagsUnderVersionZeroAndARootIsSampled() {
        let parent = "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
        let child = TraceParent.child(of: parent)
        #expect(child.hasPrefix("00-0af7651916cd43dd8448eb211c80319c-"))
        #expect(child.hasSuffix("-00"))
        #expect(child.split(separator: "-")[2] != "b7ad6b7169203331")
        #expect(TraceParent.isValid(child))
        #expect(TraceParent.traceId(parent) == "0af7651916cd43dd8448eb211c80319c")
        #expect(TraceParent.traceId("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331") == nil)
        let root = TraceParent.root()
        #expect(root.hasPrefix("00-") && root.hasSuffix("-01") && TraceParent.isValid(root))
        #expect(TraceParent.child(of: "not a traceparent").hasSuffix("-01"))
    }
}
