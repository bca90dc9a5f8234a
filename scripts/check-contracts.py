#!/usr/bin/env python3
"""Validate the published contracts against their official JSON Schemas, as far as PyPI ships them.

Run by scripts/check-contracts inside its venv (pinned jsonschema, openapi-spec-validator). Checks:
- schemas/openapi.yaml against the OpenAPI 3.1 schema bundled in openapi-spec-validator, and every
  component schema as a JSON Schema 2020-12 schema (the OpenAPI 3.1 dialect);
- every schemas/<type>/v<N>.schema.json against the JSON Schema 2020-12 meta-schema, and its examples
  against it; the same for the example participants' Examples/<name>/schemas/<type>/v<N>.schema.json;
- schemas/asyncapi.yaml: no package on PyPI bundles the AsyncAPI 3.0 JSON Schema (checked:
  asyncapi-python-parser-jonaslagoni, asyncapi3, asyncapi-python, asyncapi-payload-validator,
  asyncapi-viewer, asyncapi-mate), so this checks what AsyncAPI 3.0 requires of this document by hand:
  the version, info, every $ref resolving (to this file or to a schema file), channel addresses and
  messages, operations (action, channel, messages of that channel), component names, header schemas;
  and every message's payload, with its $refs resolved, accepts the envelope example carrying that
  type's own example and refuses it with another type or version.
Exit status 0 when everything holds, 1 otherwise (each problem on its own line).
"""
import copy
import json
import pathlib
import re
import sys

import yaml
from jsonschema import Draft7Validator, Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator
from openapi_spec_validator.readers import read_from_filename

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
problems = []


def problem(message):
    problems.append(message)


def check_openapi():
    spec, base_uri = read_from_filename(str(SCHEMAS / "openapi.yaml"))
    if spec.get("openapi") != "3.1.0":
        problem("openapi.yaml: openapi must be 3.1.0")
    for error in OpenAPIV31SpecValidator(spec, base_uri=base_uri).iter_errors():
        problem("openapi.yaml: %s" % error.message)
    for name, schema in spec.get("components", {}).get("schemas", {}).items():
        for error in Draft202012Validator(Draft202012Validator.META_SCHEMA).iter_errors(schema):
            problem("openapi.yaml: components/schemas/%s: %s" % (name, error.message))
    return spec


def check_event_schemas():
    files = {}
    for path in sorted(SCHEMAS.glob("*/v*.schema.json")):
        name = path.relative_to(SCHEMAS).as_posix()
        schema = json.loads(path.read_text(encoding="utf-8"))
        files[name] = schema
        for error in Draft202012Validator(Draft202012Validator.META_SCHEMA).iter_errors(schema):
            problem("%s: %s" % (name, error.message))
        validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
        for i, example in enumerate(schema.get("examples", [])):
            for error in validator.iter_errors(example):
                problem("%s: examples[%d]: %s" % (name, i, error.message))
    return files


def check_example_schemas():
    """The event schemas of the example participants (Examples/<name>/schemas/<type>/v<N>.schema.json)."""
    for path in sorted(ROOT.glob("Examples/*/schemas/*/v*.schema.json")):
        name = path.relative_to(ROOT).as_posix()
        schema = json.loads(path.read_text(encoding="utf-8"))
        for error in Draft202012Validator(Draft202012Validator.META_SCHEMA).iter_errors(schema):
            problem("%s: %s" % (name, error.message))
        validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
        for i, example in enumerate(schema.get("examples", [])):
            for error in validator.iter_errors(example):
                problem("%s: examples[%d]: %s" % (name, i, error.message))


def pointer(document, fragment, where):
    node = document
    for part in fragment.lstrip("/").split("/") if fragment else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            raise KeyError("%s: $ref #%s does not resolve" % (where, fragment))
        node = node[part]
    return node


def resolve(node, document, files, where, depth=0):
    """`node` with every $ref to this document or to a schema file replaced by its target."""
    if depth > 50:
        raise KeyError("%s: $ref cycle" % where)
    if isinstance(node, list):
        return [resolve(item, document, files, where, depth) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node and isinstance(node["$ref"], str):
        ref = node["$ref"]
        if ref.startswith("#"):
            return resolve(pointer(document, ref[1:], where), document, files, where, depth + 1)
        path, _, fragment = ref.partition("#")
        if path not in files:
            raise KeyError("%s: $ref %s names no schema file under schemas/" % (where, ref))
        return copy.deepcopy(pointer(files[path], fragment, where))  # a schema file keeps its own $id and $defs
    return {key: resolve(value, document, files, where, depth) for key, value in node.items()}


COMPONENT_NAME = re.compile(r"^[a-zA-Z0-9\.\-_]+$")


def check_asyncapi(files):
    document = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text(encoding="utf-8"))
    if document.get("asyncapi") != "3.0.0":
        problem("asyncapi.yaml: asyncapi must be 3.0.0")
    info = document.get("info", {})
    if not isinstance(info.get("title"), str) or not isinstance(info.get("version"), str):
        problem("asyncapi.yaml: info needs a title and a version (strings)")
    for name, server in document.get("servers", {}).items():
        if not {"host", "protocol"} <= set(server):
            problem("asyncapi.yaml: servers/%s needs host and protocol" % name)
    # Every $ref anywhere resolves.
    def walk(node, where):
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                try:
                    resolve({"$ref": node["$ref"]}, document, files, where)
                except KeyError as error:
                    problem("asyncapi.yaml: %s" % error.args[0])
            for key, value in node.items():
                walk(value, "%s/%s" % (where, key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, "%s/%d" % (where, i))
    walk(document, "")
    components = document.get("components", {})
    for kind, entries in components.items():
        for name in entries:
            if not COMPONENT_NAME.match(name):
                problem("asyncapi.yaml: components/%s/%s: name must match %s" % (kind, name, COMPONENT_NAME.pattern))
    channels = document.get("channels", {})
    for name, channel in channels.items():
        if not isinstance(channel.get("address"), str):
            problem("asyncapi.yaml: channels/%s: no address" % name)
        if not channel.get("messages"):
            problem("asyncapi.yaml: channels/%s: no messages" % name)
    for name, operation in document.get("operations", {}).items():
        if operation.get("action") not in ("send", "receive"):
            problem("asyncapi.yaml: operations/%s: action must be send or receive" % name)
        channel_ref = operation.get("channel", {}).get("$ref", "")
        if not channel_ref.startswith("#/channels/"):
            problem("asyncapi.yaml: operations/%s: channel must be a $ref to #/channels/..." % name)
            continue
        for message in operation.get("messages", []):
            if not message.get("$ref", "").startswith(channel_ref + "/messages/"):
                problem("asyncapi.yaml: operations/%s: message %s is not one of its channel's" % (name, message))
    envelope_example = files["envelope/v1.schema.json"]["examples"][0]
    for name, message in components.get("messages", {}).items():
        where = "components/messages/%s" % name
        try:
            message = resolve(message, document, files, where)
        except KeyError as error:
            problem("asyncapi.yaml: %s" % error.args[0])
            continue
        headers = message.get("headers")
        if headers is not None:
            if headers.get("type") != "object":
                problem("asyncapi.yaml: %s: headers must be an object schema" % where)
            for error in Draft7Validator(Draft7Validator.META_SCHEMA).iter_errors(headers):
                problem("asyncapi.yaml: %s/headers: %s" % (where, error.message))
        payload = message.get("payload")
        if not isinstance(payload, dict):
            problem("asyncapi.yaml: %s: no payload schema" % where)
            continue
        match = re.match(r"^([a-z]+\.[a-z]+)\.v([1-9][0-9]*)$", name)
        if not match:
            continue
        type_name, version = match.group(1), int(match.group(2))
        schema_file = "%s/v%d.schema.json" % (type_name, version)
        if schema_file not in files:
            problem("asyncapi.yaml: %s: no schemas/%s" % (where, schema_file))
            continue
        event = dict(envelope_example, type=type_name, version=version, data=files[schema_file]["examples"][0])
        validator = Draft202012Validator(payload, format_checker=Draft202012Validator.FORMAT_CHECKER)
        for error in validator.iter_errors(event):
            problem("asyncapi.yaml: %s: refuses the example event: %s" % (where, error.message))
        if validator.is_valid(dict(event, version=version + 1)):
            problem("asyncapi.yaml: %s: accepts another version" % where)
    for schema_file in files:
        type_name, _, rest = schema_file.partition("/")
        if type_name == "envelope":
            continue
        name = "%s.%s" % (type_name, rest[: -len(".schema.json")])
        if name not in components.get("messages", {}):
            problem("asyncapi.yaml: schemas/%s has no message %s" % (schema_file, name))


def main():
    check_openapi()
    files = check_event_schemas()
    check_example_schemas()
    check_asyncapi(files)
    for message in problems:
        print("contracts: " + message)
    if problems:
        print("contracts: %d problem(s)" % len(problems))
        return 1
    print("contracts: openapi.yaml valid (OpenAPI 3.1 schema); %d event schemas valid (JSON Schema 2020-12) with"
          " their examples; asyncapi.yaml checked (structure, $refs, payloads; no official AsyncAPI 3.0 schema on PyPI)"
          % len(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
