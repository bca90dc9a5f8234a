"""schemathesis hooks for scripts/fuzz-api (loaded through SCHEMATHESIS_HOOKS=fuzz_api_hooks).

A generated order whose SKUs are random strings is refused with a 400 for an unknown SKU before it reaches
the database, so random valid bodies would never test the path that stores an order. When a generated body
is valid by the document, this points most of its lines at SKUs of the demo catalogue (priced in EUR) and
its currency at EUR: the body stays valid, and the customer id, quantities and number of lines the fuzzer
chose reach PostgreSQL, the order.created schema and the outbox. Invalid bodies (negative mode) are left as
generated.
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


@schemathesis.hook
def map_body(context, body):
    if not isinstance(body, dict) or not _validator.is_valid(body):
        return body
    # Every third customer keeps its random SKUs and currency: the unknown-SKU refusal stays fuzzed too.
    if len(body["customerId"]) % 3 == 0:
        return body
    lines = [dict(line, sku=CATALOGUE[len(line["sku"]) % len(CATALOGUE)]) for line in body["lines"]]
    return dict(body, currency="EUR", lines=lines)
