"""The dead-letter record format: original headers kept, provenance added, readable back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from schemas import export
from schemas.dlq import (
    DLQ_CONSUMER,
    DLQ_HEADER_NAMES,
    DLQ_REASON,
    DLQ_SOURCE_OFFSET,
    DLQ_SOURCE_PARTITION,
    DLQ_SOURCE_TOPIC,
    MAX_REASON_CHARS,
    DeadLetter,
    NotADeadLetter,
)
from schemas.envelope import MalformedMessage, decode_event, encode_event
from schemas.events import EventType
from schemas.samples import events
from schemas.topics import JOBS_EVENTS

SCHEMAS = Path(export.__file__).parent


def _letter(
    original: list[tuple[str, bytes]], reason: str = "schema mismatch: progress: too big"
) -> DeadLetter:
    return DeadLetter(
        original_headers=tuple(original),
        reason=reason,
        source_topic=JOBS_EVENTS,
        source_partition=4,
        source_offset=120_394,
        consumer="projector/reelstream-projector",
    )


def _ce_headers() -> list[tuple[str, bytes]]:
    return encode_event(events()[EventType.PROGRESS]).headers  # type: ignore[arg-type]


def test_headers_keep_the_original_ones_then_add_provenance() -> None:
    original = _ce_headers()
    headers = _letter(original).headers()
    assert headers[: len(original)] == original
    assert dict(headers[len(original) :]) == {
        DLQ_REASON: b"schema mismatch: progress: too big",
        DLQ_SOURCE_TOPIC: JOBS_EVENTS.encode(),
        DLQ_SOURCE_PARTITION: b"4",
        DLQ_SOURCE_OFFSET: b"120394",
        DLQ_CONSUMER: b"projector/reelstream-projector",
    }


def test_a_record_dead_lettered_again_has_each_header_once() -> None:
    first = _letter(_ce_headers(), reason="first").headers()
    second = _letter(first, reason="second").headers()
    names = [k for k, _ in second]
    assert len(names) == len(set(names))
    assert dict(second)[DLQ_REASON] == b"second"


def test_long_reason_is_truncated() -> None:
    reason = dict(_letter([], reason="x" * 50_000).headers())[DLQ_REASON].decode()
    assert len(reason) == MAX_REASON_CHARS
    assert reason.endswith("…")


def test_read_back_from_headers() -> None:
    letter = _letter(_ce_headers())
    assert DeadLetter.from_headers(letter.headers()) == letter


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([], id="no-headers"),
        pytest.param([(n, b"1") for n in DLQ_HEADER_NAMES if n != DLQ_CONSUMER], id="missing-consumer"),
        pytest.param([(n, b"x") for n in DLQ_HEADER_NAMES], id="offset-not-a-number"),
    ],
)
def test_not_a_dead_letter(headers: list[tuple[str, bytes]]) -> None:
    with pytest.raises(NotADeadLetter):
        DeadLetter.from_headers(headers)


def test_a_poison_record_becomes_a_documented_dead_letter() -> None:
    with pytest.raises(MalformedMessage) as info:
        decode_event(b"\x00 not an event")
    headers = _letter([("content-type", b"application/json")], reason=str(info.value)).headers()
    doc: dict[str, Any] = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text(encoding="utf-8"))
    schema = doc["components"]["schemas"]["DeadLetterHeaders"]
    Draft202012Validator(schema).validate({k: v.decode() for k, v in headers})
    assert dict(headers)[DLQ_REASON].decode().startswith("value is not JSON")
