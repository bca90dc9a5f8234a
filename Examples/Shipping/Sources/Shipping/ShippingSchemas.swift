// swift-format-ignore-file
// The JSON Schemas of schemas/<type>/v<N>.schema.json, embedded so the daemon needs no files at run time.
// ShippingTests fails when a file and its copy here differ.
import SagaEngine

/// The schemas of the events shipping consumes and emits.
public enum ShippingSchemas {
    /// Every schema, by type and version: `order.confirmed` v1 (the orders service's contract, copied from
    /// the engine's `schemas/`) and `shipment.scheduled` v1 (shipping's own).
    public static let all: [EventSchema] = [
        EventSchema(
            type: "order.confirmed", version: 1,
            json: #"""
{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "$id": "saga:order.confirmed/v1",
  "title": "order.confirmed v1",
  "description": "The order is reserved and paid; the saga ended successfully.",
  "type": "object",
  "additionalProperties": false,
  "required": [
    "orderId",
    "customerId",
    "total"
  ],
  "properties": {
    "orderId": {
      "description": "The order this saga is about; also the saga's correlation key.",
      "type": "string",
      "format": "uuid"
    },
    "customerId": {
      "description": "Opaque identifier of the customer who placed the order.",
      "type": "string",
      "minLength": 1,
      "maxLength": 200
    },
    "total": {
      "description": "Amount paid.",
      "$ref": "#/$defs/Money"
    }
  },
  "$defs": {
    "Money": {
      "description": "An amount of money in integer minor units (cents for EUR) of a currency.",
      "type": "object",
      "additionalProperties": false,
      "required": [
        "amount",
        "currency"
      ],
      "properties": {
        "amount": {
          "description": "Amount in minor units of the currency, never negative.",
          "type": "integer",
          "minimum": 0
        },
        "currency": {
          "description": "ISO 4217 alphabetic currency code.",
          "type": "string",
          "pattern": "^[A-Z]{3}$"
        }
      }
    }
  },
  "examples": [
    {
      "orderId": "7d444840-9dc0-11d1-b245-5ffdce74fad2",
      "customerId": "c-42",
      "total": {
        "amount": 2500,
        "currency": "EUR"
      }
    }
  ]
}
"""#),
        EventSchema(
            type: "shipment.scheduled", version: 1,
            json: #"""
{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "$id": "saga:shipment.scheduled/v1",
  "title": "shipment.scheduled v1",
  "description": "Shipping scheduled the shipment of a confirmed order.",
  "type": "object",
  "additionalProperties": false,
  "required": [
    "orderId",
    "shipmentId",
    "carrier"
  ],
  "properties": {
    "orderId": {
      "description": "The order shipped; also the saga's correlation key.",
      "type": "string",
      "format": "uuid"
    },
    "shipmentId": {
      "description": "The shipment, as shipping numbers it.",
      "type": "string",
      "format": "uuid"
    },
    "carrier": {
      "description": "Who carries it.",
      "type": "string",
      "minLength": 1,
      "maxLength": 100
    }
  },
  "examples": [
    {
      "orderId": "7d444840-9dc0-11d1-b245-5ffdce74fad2",
      "shipmentId": "5b1e6a52-4c1e-4f3e-9a53-7a2c1f0e8b11",
      "carrier": "post"
    }
  ]
}
"""#),
    ]
}
