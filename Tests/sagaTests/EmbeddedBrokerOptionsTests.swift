import ArgumentParser
import Testing

@testable import saga

/// `--partitions` of the embedded broker (`saga dev`, `saga broker`): a value the mock cluster cannot use is refused
/// with the flag's name before anything starts (`saga dev --partitions 0` used to start a stack whose topics had no
/// partitions: every worker was assigned none and no order could be published).
@Suite struct EmbeddedBrokerOptionsTests {
    @Test(arguments: ["0", "-1", "257"])
    func devRefusesPartitionsOutOfRange(_ value: String) {
        #expect(
            DevCommand.message(for: refusal { _ = try DevCommand.parse(["--partitions", value]) }).contains(
                "--partitions"))
    }

    @Test(arguments: ["0", "-1", "257"])
    func brokerRefusesPartitionsOutOfRange(_ value: String) {
        #expect(
            BrokerCommand.message(for: refusal { _ = try BrokerCommand.parse(["--partitions", value]) })
                .contains("--partitions"))
    }

    @Test func bothTakeTheSameDefaultAndAnyValueInRange() throws {
        #expect(try DevCommand.parse([]).partitions == SagaEnvironment.embeddedPartitions)
        #expect(try BrokerCommand.parse([]).partitions == SagaEnvironment.embeddedPartitions)
        #expect(try DevCommand.parse(["--partitions", "1"]).partitions == 1)
        #expect(try BrokerCommand.parse(["--partitions", "256"]).partitions == 256)
    }

    private func refusal(_ parse: () throws -> Void) -> any Error {
        do {
            try parse()
        } catch {
            return error
        }
        Issue.record("accepted")
        return CancellationError()
    }
}
