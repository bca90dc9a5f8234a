import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import SagaKafka
import Testing

@testable import saga

/// `saga broker --control-port`: the routes reach the mock cluster, malformed requests are refused.
@Suite struct BrokerControlTests {
    @Test func routesTakeBrokersDownAndUpAndPushRequestErrors() async throws {
        var logger = Logger(label: "test")
        logger.logLevel = .warning
        let cluster = try KafkaMockCluster(brokers: 2, logger: logger)
        defer { cluster.shutdown() }
        try cluster.createTopic("control-test", partitions: 1)
        let app = Application(router: BrokerControl.router(cluster: cluster))
        try await app.test(.router) { client in
            try await client.execute(uri: "/brokers/1/down", method: .post) { #expect($0.status == .noContent) }
            try await client.execute(uri: "/brokers/all/up", method: .post) { #expect($0.status == .noContent) }
            try await client.execute(uri: "/brokers/x/down", method: .post) { #expect($0.status == .badRequest) }
            try await client.execute(uri: "/brokers/0/up", method: .post) { #expect($0.status == .badRequest) }
            try await client.execute(uri: "/errors/0?codes=6,x", method: .post) { #expect($0.status == .badRequest) }
            try await client.execute(uri: "/errors/0", method: .post) { #expect($0.status == .badRequest) }
            try await client.execute(uri: "/errors/-1?codes=6", method: .post) { #expect($0.status == .badRequest) }
            // TOPIC_AUTHORIZATION_FAILED is not retried: the next produce request fails with it.
            try await client.execute(uri: "/errors/0?codes=29", method: .post) { #expect($0.status == .noContent) }
        }
        var configuration = KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers)
        configuration.idempotent = false
        configuration.messageTimeoutMs = 10000
        let producer = try KafkaProducer(configuration: configuration, logger: logger)
        let result = await producer.send([KafkaOutgoingMessage(topic: "control-test", key: nil, value: [1])])
        await producer.shutdown()
        guard case .failure(let error) = result.first else {
            Issue.record("the produce request did not fail with the pushed error")
            return
        }
        #expect(error.description.lowercased().contains("authoriz"))
    }

    @Test func parsesBrokerIdsAndErrorCodes() {
        #expect(BrokerControl.brokerId("all") == -1)
        #expect(BrokerControl.brokerId("3") == 3)
        #expect(BrokerControl.brokerId("-1") == nil)
        #expect(BrokerControl.errorCodes("6, 7,-195") == [6, 7, -195])
        #expect(BrokerControl.errorCodes("6,,7") == nil)
        #expect(BrokerControl.errorCodes("") == nil)
    }
}
