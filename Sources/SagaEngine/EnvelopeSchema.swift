// swift-format-ignore-file
// The envelope schema is the runtime's: every participant's codec validates envelopes with it. Its text is
// schemas/envelope/v1.schema.json (SagaEngineTests checks that they are the same document).

import SagaSchemas

extension SchemaRegistry {
    /// The envelope schema (`envelope/v1`) every event is published in: the runtime's, not a participant's.
    public static let envelopeSchema: String = #"""
{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "$id": "saga:envelope/v1",
  "title": "Event envelope v1",
  "description": "The wrapper every saga event is published in. `data` holds the payload, described by schemas/<type>/v<version>.schema.json.",
  "type": "object",
  "additionalProperties": false,
  "required": [
    "id",
    "type",
    "version",
    "sagaId",
    "occurredAt",
    "producer",
    "data"
  ],
  "properties": {
    "id": {
      "description": "Unique id of this event; consumers deduplicate on it.",
      "type": "string",
      "format": "uuid"
    },
    "type": {
      "description": "Event type, `<aggregate>.<event>` in lower case, e.g. `order.created`.",
      "type": "string",
      "pattern": "^[a-z]+\\.[a-z]+$"
    },
    "version": {
      "description": "Schema version of `data` for this event type.",
      "type": "integer",
      "minimum": 1
    },
    "sagaId": {
      "description": "Identifier of the saga instance the event belongs to.",
      "type": "string",
      "minLength": 1,
      "maxLength": 200
    },
    "causationId": {
      "description": "Id of the event that caused this one; absent or null for the first event of a saga.",
      "type": [
        "string",
        "null"
      ],
      "format": "uuid"
    },
    "occurredAt": {
      "description": "When the event happened (RFC 3339).",
      "type": "string",
      "format": "date-time"
    },
    "producer": {
      "description": "Name of the service that published the event.",
      "type": "string",
      "minLength": 1
    },
    "traceparent": {
      "description": "W3C Trace Context `traceparent` of the publishing span; absent or null when not traced.",
      "type": [
        "string",
        "null"
      ],
      "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
    },
    "data": {
      "description": "The event payload; validated against the schema for (`type`, `version`).",
      "type": "object"
    }
  },
  "examples": [
    {
      "id": "0b8e5a3e-2f6c-4d7a-9a51-3f1c2b7e9d10",
      "type": "order.created",
      "version": 2,
      "sagaId": "7d444840-9dc0-11d1-b245-5ffdce74fad2",
      "causationId": null,
      "occurredAt": "2024-05-01T12:30:00.250Z",
      "producer": "orders",
      "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
      "data": {
        "orderId": "7d444840-9dc0-11d1-b245-5ffdce74fad2",
        "customerId": "c-42",
        "total": {
          "amount": 2500,
          "currency": "EUR"
        },
        "lines": [
          {
            "sku": "SKU-1",
            "quantity": 2,
            "unitPrice": {
              "amount": 1250,
              "currency": "EUR"
            }
          }
        ]
      }
    }
  ]
}
"""#

    /// Compiles `schemas` (a participant's event schemas) with the runtime's ``envelopeSchema``.
    /// - Throws: `LoadError` naming the first schema that does not compile.
    public convenience init(schemas: [EventSchema]) throws(LoadError) {
        try self.init(envelope: Self.envelopeSchema, schemas: schemas)
    }
}
