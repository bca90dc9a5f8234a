import Foundation
import SagaDaemon
import Testing

/// `.saga/dev.json`: the ops server's URL is optional, so files of older versions still read.
struct DevStackFileTests {
    @Test func theOpsURLRoundTripsAndIsOptional() throws {
        let written = DevStackFile(
            http: "http://127.0.0.1:8080", kafkaBootstrap: "127.0.0.1:40002", kafkaEmbedded: true,
            databaseURL: "postgresql://127.0.0.1/x", schemas: ["orders": "orders"], pid: 1,
            ops: "http://127.0.0.1:9090")
        let read = try JSONDecoder().decode(DevStackFile.self, from: try JSONEncoder().encode(written))
        #expect(read.ops == "http://127.0.0.1:9090")
        let older = Data(
            #"{"http":"http://127.0.0.1:8080","kafkaBootstrap":"127.0.0.1:40002","databaseURL":"postgresql://127.0.0.1/x","schemas":{},"pid":1}"#
                .utf8)
        let old = try JSONDecoder().decode(DevStackFile.self, from: older)
        #expect(old.ops == nil && old.kafkaEmbedded == nil && old.http == "http://127.0.0.1:8080")
    }
}
