"""The committed AsyncAPI document: well-formed, one channel per topic, every reference resolves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator, Draft202012Validator, FormatChecker
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from schemas import export
from schemas.asyncapi_doc import OPERATIONS, SERVICES, channel_id, operation_id
from schemas.envelope import encode_event, encode_heartbeat
from schemas.events import EVENT_CLASSES
from schemas.samples import events, heartbeat
from schemas.topics import DLQ, topic_specs

SCHEMAS = Path(export.__file__).parent
DOC_URI = "urn:reelstream:asyncapi"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow one local `$ref` (`#/a/b/c`)."""
    ref = node.get("$ref")
    if ref is None:
        return node
    assert ref.startswith("#/"), ref
    target: Any = doc
    for part in ref[2:].split("/"):
        target = target[part]
    assert isinstance(target, dict)
    return target


def _headers_validator(doc: dict[str, Any], message: str) -> Draft202012Validator:
    registry: Registry[Any] = Registry().with_resource(DOC_URI, DRAFT202012.create_resource(doc))
    ref = {"$ref": f"{DOC_URI}#/components/messages/{message}/headers"}
    return Draft202012Validator(ref, registry=registry, format_checker=FormatChecker())


def test_is_asyncapi_3(doc: dict[str, Any]) -> None:
    assert str(doc["asyncapi"]).startswith("3.")
    assert doc["info"]["title"]
    assert doc["info"]["version"]
    assert doc["defaultContentType"] == "application/json"


def test_one_channel_per_topic_with_its_address_and_layout(doc: dict[str, Any]) -> None:
    specs = topic_specs()
    assert len(doc["channels"]) == len(specs)
    for spec in specs:
        channel = doc["channels"][channel_id(spec.name)]
        assert channel["address"] == spec.name
        kafka = channel["bindings"]["kafka"]
        assert kafka["topic"] == spec.name
        assert kafka.get("partitions") == spec.partitions
        assert kafka["topicConfiguration"]["cleanup.policy"] == ["compact" if spec.compacted else "delete"]
        assert spec.key in channel["description"]
        assert channel["messages"], spec.name


def test_every_message_payload_points_at_an_existing_schema_file(doc: dict[str, Any]) -> None:
    for channel in doc["channels"].values():
        for ref in channel["messages"].values():
            message = _resolve(doc, ref)
            assert message["bindings"]["kafka"]["key"]["type"] == "string"
            if channel["address"] == DLQ:
                assert message["payload"]["format"] == "binary"  # the original bytes, unparsed
                continue
            assert message["contentType"] == "application/json"
            schema_file = SCHEMAS / message["payload"]["$ref"]
            assert schema_file.is_file(), schema_file
            schema = json.loads(schema_file.read_text(encoding="utf-8"))
            assert schema["$id"] in json.dumps(message["headers"])


def test_every_event_type_is_on_some_channel(doc: dict[str, Any]) -> None:
    carried = {name for channel in doc["channels"].values() for name in channel["messages"]}
    assert {t.value for t in EVENT_CLASSES} | {"worker.heartbeat", "dead_letter"} == carried


def test_operations_point_at_channels_and_their_messages(doc: dict[str, Any]) -> None:
    assert set(doc["operations"]) == {operation_id(op) for op in OPERATIONS}
    for op_id, operation in doc["operations"].items():
        assert operation["action"] in {"send", "receive"}
        channel = _resolve(doc, operation["channel"])
        prefix = operation["channel"]["$ref"] + "/messages/"
        for ref in operation["messages"]:
            assert ref["$ref"].startswith(prefix), op_id
            assert ref["$ref"].removeprefix(prefix) in channel["messages"], op_id
        assert operation["tags"][0]["name"] in SERVICES


@pytest.mark.parametrize(
    ("service", "action", "topics"),
    [
        ("api", "send", {"jobs.requested", "jobs.control", "jobs.events"}),
        ("scheduler", "receive", {"jobs.requested", "jobs.events", "jobs.control", "workers.heartbeat"}),
        ("scheduler", "send", {"jobs.dispatch", "jobs.events", "jobs.control", "dlq"}),
        ("worker", "receive", {"jobs.dispatch", "jobs.control"}),
        ("worker", "send", {"jobs.events", "workers.heartbeat", "dlq"}),
        ("projector", "receive", {"jobs.requested", "jobs.events"}),
        ("projector", "send", {"jobs.events", "dlq"}),
        ("operators", "receive", {"dlq"}),
    ],
)
def test_who_sends_and_receives_what(
    doc: dict[str, Any], service: str, action: str, topics: set[str]
) -> None:
    found = {
        operation["channel"]["$ref"].removeprefix("#/channels/")
        for operation in doc["operations"].values()
        if operation["action"] == action and operation["tags"][0]["name"] == service
    }
    assert found == topics


def test_headers_of_real_records_match_the_documented_headers(doc: dict[str, Any]) -> None:
    for event in events().values():
        record = encode_event(event)  # type: ignore[arg-type]
        headers = {k: v.decode() for k, v in record.headers}
        _headers_validator(doc, event.type.value).validate(headers)  # type: ignore[attr-defined]
    beat = encode_heartbeat(heartbeat())
    _headers_validator(doc, "worker.heartbeat").validate({k: v.decode() for k, v in beat.headers})


def test_documented_headers_reject_a_wrong_type(doc: dict[str, Any]) -> None:
    record = encode_heartbeat(heartbeat())
    headers = {k: v.decode() for k, v in record.headers}
    errors = list(_headers_validator(doc, "job.progress").iter_errors(headers))
    assert errors, "a heartbeat's headers must not pass as a job.progress message's"


ONLY_IN_2020_12 = {
    "prefixItems",
    "$dynamicRef",
    "$dynamicAnchor",
    "$anchor",
    "$vocabulary",
    "unevaluatedProperties",
    "unevaluatedItems",
    "dependentSchemas",
    "dependentRequired",
    "minContains",
    "maxContains",
}


def _keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for value in node.values() for k in _keys(value)}
    if isinstance(node, list):
        return {k for value in node for k in _keys(value)}
    return set()


@pytest.mark.parametrize("path", sorted((SCHEMAS / "json").glob("*.json")), ids=lambda p: p.name)
def test_schema_reads_the_same_as_draft_07(path: Path) -> None:
    """AsyncAPI tooling reads payload schemas as draft-07: keep to keywords both drafts share."""
    schema = json.loads(path.read_text(encoding="utf-8"))
    assert not _keys(schema.get("properties", {})) & ONLY_IN_2020_12
    assert not _keys(schema.get("$defs", {})) & ONLY_IN_2020_12
    assert not set(schema) & ONLY_IN_2020_12
    example = SCHEMAS / "examples" / path.name
    if example.is_file():
        draft7 = {k: v for k, v in schema.items() if k != "$schema"}
        Draft7Validator(draft7).validate(json.loads(example.read_text(encoding="utf-8")))
