import Foundation
import Hummingbird
import SagaEngine
import SagaKafka

/// `saga broker --control-port`: fault injection into the hosted mock cluster over loopback HTTP, for the chaos
/// test (scripts/chaos) and for trying failures by hand:
/// - `POST /brokers/{id}/down`: broker `id` (1...brokers, or `all`) drops its connections and refuses new ones;
/// - `POST /brokers/{id}/up`: it accepts connections again;
/// - `POST /errors/{apiKey}?codes=6,7,-195`: the next requests of Kafka API `apiKey` (0 Produce, 1 Fetch,
///   3 Metadata, 8 OffsetCommit, ...) fail with these error codes, in order (-195: the broker disconnects).
/// Answers 204 when done, 400 for a malformed request (with the reason as JSON), 409 when the mock cluster refuses
/// (e.g. an unknown broker).
enum BrokerControl {
    static func router(cluster: KafkaMockCluster) -> Router<BasicRequestContext> {
        let router = Router()
        for (action, up) in [("down", false), ("up", true)] {
            router.post("/brokers/:id/\(action)") { _, context -> Response in
                guard let raw = context.parameters.get("id"), let id = brokerId(raw) else {
                    return problem(.badRequest, "broker id: expected a number or 'all'")
                }
                do {
                    if up { try cluster.setBrokerUp(id) } else { try cluster.setBrokerDown(id) }
                } catch {
                    return problem(.conflict, "\(error)")
                }
                return Response(status: .noContent)
            }
        }
        router.post("/errors/:api") { request, context -> Response in
            guard let raw = context.parameters.get("api"), let api = Int16(raw), api >= 0 else {
                return problem(.badRequest, "api key: expected a Kafka API key such as 0 (Produce)")
            }
            guard let list = request.uri.queryParameters.get("codes"), let codes = errorCodes(list) else {
                return problem(.badRequest, "codes: expected a comma-separated list of Kafka error codes, e.g. 6,7")
            }
            cluster.pushRequestErrors(apiKey: api, errors: codes)
            return Response(status: .noContent)
        }
        return router
    }

    /// `all` is -1 (every broker); otherwise a positive broker id.
    static func brokerId(_ raw: String) -> Int32? {
        if raw == "all" { return -1 }
        guard let id = Int32(raw), id > 0 else { return nil }
        return id
    }

    /// 1 to 100 codes, each an Int32.
    static func errorCodes(_ raw: String) -> [Int32]? {
        let parts = raw.split(separator: ",", omittingEmptySubsequences: false)
        let codes = parts.compactMap { Int32($0.trimmingCharacters(in: .whitespaces)) }
        guard !codes.isEmpty, codes.count == parts.count, codes.count <= 100 else { return nil }
        return codes
    }

    private static func problem(_ status: HTTPResponse.Status, _ reason: String) -> Response {
        Response(
            status: status, headers: [.contentType: "application/json"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: JSONValue.object(["error": .string(reason)]).serialized()))
        )
    }
}
