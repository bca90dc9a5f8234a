"""schemathesis hooks for scripts/fuzz-api (loaded through SCHEMATHESIS_HOOKS=fuzz_api_hooks).

A generated order whose SKUs are random strings is refused with a 400 for an unknown SKU before it reaches
the database, so random bodies would never test the path that stores an order. This points the lines of
two bodies in three at SKUs of the demo catalogue (priced in EUR) and their currency at EUR, unless that
would make an invalid body valid or a valid one invalid: valid bodies reach PostgreSQL, the order.created
schema and the outbox with the customer id, quantities and lines the fuzzer chose, and invalid ones are
refused for what the fuzzer broke, not for an unknown SKU.
"""
import pathlib

import schemathesis
import yaml
from jsonschema import Draft202012Validator

CATALOGUE = ["widget", "gadget", "gizmo", "doohickey"]
_document = yaml.safe_load((pathlib.Path(__file__).resolve().parent.parent / "schemas" / "openapi.yaml").read_text())
_schema = dict(_document["components"]["schemas"]["OrderRequest"])
_schema["$defs"] = _document["components"]["schemas"]


def _rewrite(node):
    if isinstance(node, dict):
        return {k: (v.replace("#/components/schemas/", "#/$defs/") if k == "$ref" else _rewrite(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite(v) for v in node]
    return node


_validator = Draft202012Validator(_rewrite(_schema))


def _with_catalogue(body):
    """`body` with its lines' string SKUs replaced by catalogue SKUs and a string currency by EUR; None when
    it has no list of lines to change."""
    lines = body.get("lines")
    if not isinstance(lines, list):
        return None
    mapped = dict(body, lines=[
        dict(line, sku=CATALOGUE[len(line["sku"]) % len(CATALOGUE)])
        if isinstance(line, dict) and isinstance(line.get("sku"), str) else line
        for line in lines
    ])
    if isinstance(body.get("currency"), str):
        mapped["currency"] = "EUR"
    return mapped


@schemathesis.hook
def map_body(context, body):
    if not isinstance(body, dict):
        return body
    # Every third customer keeps its random SKUs and currency: the unknown-SKU refusal stays fuzzed too.
    if len(str(body.get("customerId", ""))) % 3 == 0:
        return body
    mapped = _with_catalogue(body)
    # Never turn an invalid body into a valid one (or the reverse): a negative case stays negative, but now
    # reaches past the price lookup when what is wrong is elsewhere (e.g. the customer id).
    if mapped is None or _validator.is_valid(mapped) != _validator.is_valid(body):
        return body
    return mapped
