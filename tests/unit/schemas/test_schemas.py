"""The contracts: committed files match the models, every example parses and validates, the wire format."""

from __future__ import annotations

import functools
import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import FormatChecker
from jsonschema.validators import validator_for
from pydantic import BaseModel

from schemas import export
from schemas.envelope import (
    UPCASTERS,
    MalformedMessage,
    decode_event,
    decode_heartbeat,
    encode_event,
    encode_heartbeat,
)
from schemas.events import (
    EVENT_CLASSES,
    JOB_EVENT_ADAPTER,
    TERMINAL_TYPES,
    EventType,
    JobProgress,
    JobRequested,
    WorkerHeartbeat,
)
from schemas.jobs import JobRequest, JobStatus, ResolvedRequest, resolve

SCHEMAS = Path(export.__file__).parent
EXAMPLES = sorted((SCHEMAS / "examples").glob("*.v*.json"))
CE_HEADERS = ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_subject", "ce_time", "content-type")


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _name(path: Path) -> str:
    """`job.progress.v1.json` -> `job.progress`."""
    return path.name.rsplit(".v", 1)[0]


@functools.cache
def _validator(schema_file: Path) -> Any:
    schema = _load(schema_file)
    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=FormatChecker())


def _validate(schema_file: Path, instance: Any) -> None:
    _validator(schema_file).validate(instance)


def _parse(name: str, raw: bytes) -> BaseModel:
    """Parse an example the way its consumer does."""
    if name.startswith("job."):
        return decode_event(raw)
    if name == "worker.heartbeat":
        return decode_heartbeat(raw)
    if name == "job_request":
        return JobRequest.model_validate(json.loads(raw))
    if name == "resolved_request":
        return ResolvedRequest.model_validate(json.loads(raw))
    raise AssertionError(f"no parser for example {name}: teach this test how its consumer reads it")


def _headers(pairs: list[tuple[str, bytes]]) -> dict[str, str]:
    names = [k for k, _ in pairs]
    assert len(names) == len(set(names)), f"duplicate headers: {names}"
    return {k: v.decode() for k, v in pairs}


# --- committed files vs models -------------------------------------------------------------------------


def test_committed_files_match_the_models(capsys: pytest.CaptureFixture[str]) -> None:
    code = export.main(["--check"])
    assert code == 0, capsys.readouterr().err


def test_export_is_deterministic() -> None:
    assert export.render() == export.render()


def test_check_mode_reports_drift_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert export.main(["--check", "--root", str(tmp_path)]) == 1
    assert list(tmp_path.iterdir()) == []
    assert export.main(["--root", str(tmp_path)]) == 0
    assert export.write(tmp_path) == []
    progress = tmp_path / "json" / "job.progress.v1.json"
    progress.write_text(progress.read_text().replace('"maximum": 1.0', '"maximum": 100'))
    capsys.readouterr()
    assert export.main(["--check", "--root", str(tmp_path)]) == 1
    assert capsys.readouterr().err.splitlines()[1:] == [f"  {progress}"]


def test_every_contract_has_a_schema_and_every_event_an_example() -> None:
    names = {f"{_name(p)}" for p in EXAMPLES}
    expected = {t.value for t in EVENT_CLASSES} | {"worker.heartbeat", "job_request", "resolved_request"}
    assert expected <= names
    for contract in export.contracts():
        assert (SCHEMAS / "json" / contract.filename).is_file()


# --- examples -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_parses_and_matches_its_schema(path: Path) -> None:
    name = _name(path)
    parsed = _parse(name, path.read_bytes())
    if name.startswith("job."):
        assert parsed.type == name  # type: ignore[attr-defined]
        _validate(SCHEMAS / "json" / "job_event.v1.json", _load(path))
    _validate(SCHEMAS / "json" / path.name, _load(path))


def test_example_request_resolves_to_the_example_resolved_request() -> None:
    req = JobRequest.model_validate(_load(SCHEMAS / "examples" / "job_request.v1.json"))
    resolved = ResolvedRequest.model_validate(_load(SCHEMAS / "examples" / "resolved_request.v1.json"))
    assert resolve(req) == resolved


# --- the wire format ----------------------------------------------------------------------------------


def _current_examples(prefix: str) -> list[Path]:
    return [p for p in EXAMPLES if p.name.startswith(prefix) and p.name.endswith(".v1.json")]


@pytest.mark.parametrize("path", _current_examples("job."), ids=lambda p: p.name)
def test_event_round_trip_with_cloudevents_headers(path: Path) -> None:
    event = decode_event(path.read_bytes())
    record = encode_event(event)
    headers = _headers(record.headers)
    assert set(CE_HEADERS) <= headers.keys()
    assert headers["ce_specversion"] == "1.0"
    assert headers["ce_id"] == str(event.event_id)
    assert headers["ce_source"] == f"/reelstream/{event.producer}"
    assert headers["ce_type"] == f"io.reelstream.{event.type}"
    assert headers["ce_subject"] == str(event.job_id)
    assert datetime.fromisoformat(headers["ce_time"]) == event.occurred_at
    assert headers["ce_dataschema"] == _load(SCHEMAS / "json" / path.name)["$id"]
    assert headers["content-type"] == "application/json"
    assert record.key == str(event.job_id).encode()
    assert decode_event(record.value) == event
    assert json.loads(record.value) == _load(path)


def test_heartbeat_round_trip_with_cloudevents_headers() -> None:
    path = SCHEMAS / "examples" / "worker.heartbeat.v1.json"
    beat = decode_heartbeat(path.read_bytes())
    record = encode_heartbeat(beat)
    headers = _headers(record.headers)
    assert set(CE_HEADERS) <= headers.keys()
    assert headers["ce_type"] == "io.reelstream.worker.heartbeat"
    assert headers["ce_subject"] == f"slot-{beat.slot}"
    assert headers["ce_dataschema"] == _load(SCHEMAS / "json" / path.name)["$id"]
    assert record.key == str(beat.slot).encode()
    assert decode_heartbeat(record.value) == beat
    assert json.loads(record.value) == _load(path)


NAIVE = "occurred_at: Input should have timezone info"


def _progress(**changes: Any) -> bytes:
    payload = _load(SCHEMAS / "examples" / "job.progress.v1.json")
    for key, value in changes.items():
        if value is None:
            del payload[key]
        else:
            payload[key] = value
    return json.dumps(payload).encode()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param(None, "empty record value", id="no-value"),
        pytest.param(b"{not json", "not JSON", id="not-json"),
        pytest.param(b"\xff\xfe", "not JSON", id="not-utf8"),
        pytest.param(b"[1, 2]", "JSON list, expected an object", id="json-array"),
        pytest.param(_progress(type="job.exploded"), "'job.exploded'", id="unknown-type"),
        pytest.param(_progress(type=None), "type", id="no-type"),
        pytest.param(_progress(job_id=None), "job_id: Field required", id="missing-job-id"),
        pytest.param(_progress(occurred_at="2025-06-02T14:03:52"), NAIVE, id="naive-time"),
        pytest.param(_progress(progress=1.5), "progress: Input should be less than or equal to 1", id="big"),
        pytest.param(_progress(schema_version="one"), "schema_version is not an integer", id="bad-version"),
    ],
)  # fmt: skip
def test_decode_event_rejects_with_a_readable_reason(value: bytes | None, reason: str) -> None:
    with pytest.raises(MalformedMessage) as info:
        decode_event(value)
    assert reason in str(info.value)
    assert len(str(info.value)) < 1000


def _requested_with(**request: Any) -> bytes:
    clean = resolve(JobRequest(prompt="a fox", model="tiny-mochi"))
    event = JobRequested(job_id=uuid.uuid4(), producer="test", request=clean, request_hash="0" * 64)
    envelope = json.loads(encode_event(event).value)
    envelope["request"].update(request)
    return json.dumps(envelope).encode()


@pytest.mark.parametrize(
    "request_fields",
    [
        pytest.param({"prompt": "fox\u0000snow"}, id="nul-prompt"),
        pytest.param({"negative_prompt": "blur\u001b"}, id="escape-negative"),
        pytest.param({"metadata": {"ke\u0000y": "v"}}, id="nul-metadata-key"),
        pytest.param({"metadata": {"k": "\ud800"}}, id="surrogate-metadata-value"),
    ],
)
def test_a_job_requested_with_control_characters_is_malformed_for_every_consumer(
    request_fields: dict[str, Any],
) -> None:
    with pytest.raises(MalformedMessage, match="control character"):
        decode_event(_requested_with(**request_fields))


def test_decode_heartbeat_rejects_an_event() -> None:
    with pytest.raises(MalformedMessage, match="slot: Field required"):
        decode_heartbeat(_progress())


# --- versions and upcasters ---------------------------------------------------------------------------

PROGRESS_V0 = {
    "type": "job.progress",
    "schema_version": 0,
    "event_id": "4f6a2d1e-9b3c-4e5f-8a7b-6c5d4e3f2a1b",
    "job_id": "0b7e4c1a-5d2f-4e8a-9c31-7f6d2a8b9e40",
    "occurred_at": "2024-11-05T08:00:00Z",
    "producer": "worker-0",
    "attempt": 1,
    "phase": "denoising",
    "percent": 37.5,
}


def _progress_v0_to_v1(payload: dict[str, Any]) -> dict[str, Any]:
    """Synthetic history: v0 reported `percent` 0..100, v1 reports `progress` 0..1."""
    upgraded = {k: v for k, v in payload.items() if k != "percent"}
    upgraded["progress"] = payload["percent"] / 100
    return upgraded


@pytest.fixture
def progress_v0_upcaster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registers the v0 -> v1 upcaster for this test only; monkeypatch removes it afterwards."""
    assert ("job.progress", 0) not in UPCASTERS
    monkeypatch.setitem(UPCASTERS, ("job.progress", 0), _progress_v0_to_v1)


def test_old_version_parses_through_its_upcaster(progress_v0_upcaster: None) -> None:
    event = decode_event(json.dumps(PROGRESS_V0).encode())
    assert isinstance(event, JobProgress)
    assert event.schema_version == 1
    assert event.progress == pytest.approx(0.375)
    assert str(event.job_id) == PROGRESS_V0["job_id"]


def test_old_version_without_its_upcaster_is_malformed() -> None:
    with pytest.raises(MalformedMessage, match="progress: Field required"):
        decode_event(json.dumps(PROGRESS_V0).encode())


def test_upcaster_that_cannot_read_the_payload_gives_malformed(progress_v0_upcaster: None) -> None:
    broken = {k: v for k, v in PROGRESS_V0.items() if k != "percent"}
    with pytest.raises(MalformedMessage, match=r"cannot upcast job\.progress v0"):
        decode_event(json.dumps(broken).encode())


@pytest.mark.parametrize("path", [p for p in EXAMPLES if _name(p) in {t.value for t in EventType}], ids=_name)
def test_one_pass_decode_equals_the_dict_path(path: Path) -> None:
    """A record of a type without upcasters is validated straight from its bytes; that must read it as
    the dict path (parse, upcast, validate) does."""
    value = path.read_bytes()
    from_dict = JOB_EVENT_ADAPTER.validate_python(json.loads(value))
    assert decode_event(value) == from_dict
    assert decode_event(encode_event(from_dict).value) == from_dict


def test_a_type_with_an_upcaster_never_takes_the_one_pass_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """A current-version payload that validates as it is still goes through its type's upcasters."""
    monkeypatch.setitem(UPCASTERS, ("job.progress", 1), lambda p: {**p, "progress": p["progress"] / 2})
    event = decode_event(_progress())
    assert isinstance(event, JobProgress)
    assert event.schema_version == 2
    assert event.progress == pytest.approx(json.loads(_progress())["progress"] / 2)


def test_additive_fields_from_a_newer_producer_are_ignored() -> None:
    event = decode_event(_progress(eta_seconds=12.5))
    assert isinstance(event, JobProgress)


# --- status -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "terminal"),
    [
        (JobStatus.QUEUED, False),
        (JobStatus.RUNNING, False),
        (JobStatus.SUCCEEDED, True),
        (JobStatus.FAILED, True),
        (JobStatus.CANCELLED, True),
    ],
)
def test_job_status_is_terminal(status: JobStatus, terminal: bool) -> None:
    assert status.is_terminal() is terminal


def test_terminal_event_types_match_terminal_statuses() -> None:
    assert {t.value.removeprefix("job.") for t in TERMINAL_TYPES} == {
        s.value for s in JobStatus if s.is_terminal()
    }
    assert set(EventType) >= TERMINAL_TYPES


def test_heartbeat_type_is_not_a_job_event() -> None:
    assert WorkerHeartbeat.model_fields["type"].default not in set(EventType)
