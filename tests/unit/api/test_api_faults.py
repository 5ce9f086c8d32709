"""Bad input and unavailable parts meet a clear 4xx or a 503 problem, never a 500 or a frozen read model.

The real app with a fake publisher in place of Kafka; the database is either never queried on these
paths or deliberately unreachable (a port nothing listens on), which is the fault under test.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from importlib.resources import files
from typing import cast

import httpx
import pytest
from pydantic import SecretStr

from services.api.content import RangeNotSatisfiable, _check_range
from services.api.main import app_state, create_app
from services.api.notify import JobNotifier
from services.api.publisher import JobPublisher
from services.api.settings import ApiSettings
from services.api.streams import StreamLimit
from services.common.db import make_engine
from services.common.storage import Storage
from tests.unit.api.test_api_submit import KEY, FakePublisher, static_keys

NOWHERE = SecretStr("postgresql+asyncpg://reelstream:reelstream@127.0.0.1:9/reelstream")
BODY = {"prompt": "a lighthouse in fog", "model": "tiny-mochi"}


def app_with(
    publisher: FakePublisher, streams: StreamLimit | None = None, **overrides: object
) -> httpx.AsyncClient:
    settings = ApiSettings(database_url=NOWHERE, projection_wait_seconds=0.5, **overrides)  # type: ignore[arg-type]
    app = create_app(settings)
    engine = make_engine(settings)
    app.state.reelstream = app_state(
        settings,
        engine,
        cast(JobPublisher, publisher),
        cast(Storage, None),
        JobNotifier(settings.database_url.get_secret_value()),
        streams=streams,
        keys=static_keys(),
    )
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(
        transport=transport, base_url="http://api", headers={"Authorization": f"Bearer {KEY}"}
    )


def cursor_of(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def problem_of(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    return body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "fox\u0000snow"}, "prompt"),
        ({"prompt": "fox", "negative_prompt": "blur\u001b[31m"}, "negative_prompt"),
        ({"prompt": "fox", "metadata": {"k\u0000": "v"}}, "metadata.k\u0000.[key]"),
        ({"prompt": "fox", "metadata": {"k": "v\u0000"}}, "metadata.k"),
        ({"prompt": "fox", "model": "tiny\u0000mochi"}, "model"),
    ],
)
async def test_a_control_character_in_any_string_is_a_422_naming_the_field(
    body: dict[str, object], field: str
) -> None:
    publisher = FakePublisher()
    async with app_with(publisher) as client:
        response = await client.post("/v1/jobs", json={**BODY, **body})
    problem = problem_of(response, 422)
    errors = cast(list[dict[str, str]], problem["errors"])
    assert [e["field"] for e in errors] == [field]
    assert "control character U+00" in errors[0]["message"] and "allowed" in errors[0]["message"]
    assert publisher.published == []  # nothing reached Kafka, so nothing can reach the projector


async def test_tabs_and_line_breaks_stay_allowed_in_a_prompt() -> None:
    publisher = FakePublisher()
    async with app_with(publisher) as client:
        response = await client.post("/v1/jobs", json={**BODY, "prompt": "a fox\n\tin snow\r\n"})
    assert response.status_code == 202, response.text


async def test_a_submit_kafka_acknowledged_is_202_even_when_the_read_model_is_away() -> None:
    publisher = FakePublisher()
    async with app_with(publisher) as client:
        response = await client.post("/v1/jobs", json=BODY)
    assert response.status_code == 202, response.text
    (sent,) = publisher.published
    job = response.json()
    assert job["id"] == str(sent.job_id) and job["status"] == "queued"
    assert response.headers["location"] == f"/v1/jobs/{sent.job_id}"


async def test_a_read_with_the_database_away_is_a_503_problem() -> None:
    async with app_with(FakePublisher()) as client:
        response = await client.get("/v1/jobs")
    problem_of(response, 503)
    assert response.headers["retry-after"] == "5"


@pytest.mark.parametrize(
    "cursor",
    [
        "x",
        "!!!",
        cursor_of(["2026-01-01T00:00:00", str(uuid.UUID(int=0))]),  # no time zone
        cursor_of(["0001-01-01T00:00:00+01:00", str(uuid.UUID(int=0))]),  # before year 1 in UTC
        cursor_of(["2026-01-01T00:00:00+00:00", "not a uuid"]),
        cursor_of([1, 2]),
        cursor_of(None),
    ],
)
async def test_a_crafted_cursor_is_a_400(cursor: str) -> None:
    async with app_with(FakePublisher()) as client:
        response = await client.get("/v1/jobs", params={"cursor": cursor})
    assert problem_of(response, 400)["title"] == "Invalid cursor"


async def test_an_overlong_cursor_is_a_422() -> None:
    async with app_with(FakePublisher()) as client:
        response = await client.get("/v1/jobs", params={"cursor": "A" * 600})
    problem_of(response, 422)


@pytest.mark.parametrize("header", ["99999999999999", "-2", "abc", "1e3"])
async def test_a_last_event_id_out_of_range_is_a_400(header: str) -> None:
    async with app_with(FakePublisher()) as client:
        response = await client.get(f"/v1/jobs/{uuid.uuid4()}/events", headers={"Last-Event-ID": header})
    assert problem_of(response, 400)["title"] == "Invalid Last-Event-ID"


async def test_an_after_out_of_range_is_a_422() -> None:
    async with app_with(FakePublisher()) as client:
        response = await client.get(f"/v1/jobs/{uuid.uuid4()}/events", params={"after": 2**40})
    problem_of(response, 422)


@pytest.mark.parametrize("path", ["events", "content"])
async def test_over_the_stream_cap_a_new_stream_is_a_503_with_retry_after(path: str) -> None:
    streams = StreamLimit(2)
    with streams.held(), streams.held():
        async with app_with(FakePublisher(), streams) as client:
            response = await client.get(f"/v1/jobs/{uuid.uuid4()}/{path}")
    problem = problem_of(response, 503)
    assert response.headers["retry-after"] == "5"
    assert "at most 2" in str(problem["detail"])
    assert streams.open == 0


@pytest.mark.parametrize("header", ["bytes=500-100", "bytes=-", "bytes=1-2,5-6", "items=0-1"])
def test_a_range_that_is_not_one_satisfiable_span_is_refused(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        _check_range(header)


def test_the_web_page_never_turns_server_text_into_markup() -> None:
    page = files("services.api.web").joinpath("index.html").read_text()
    assert not re.search(r"\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML|document\.write", page)


async def test_a_full_queue_is_a_429_naming_the_limit_and_nothing_is_published() -> None:
    publisher = FakePublisher()
    async with app_with(publisher, max_queued_jobs=3) as client:
        queue = client._transport.app.state.reelstream.queue  # type: ignore[attr-defined]
        queue.value, queue._read_at = 3, time.monotonic() + 3600  # counted just now
        response = await client.post("/v1/jobs", json=BODY)
    problem = problem_of(response, 429)
    assert response.headers["retry-after"] == "5"
    assert problem["limit"] == "max_queued_jobs" and "at most 3" in str(problem["detail"])
    assert publisher.published == []


async def test_a_body_over_the_limit_is_a_413_before_it_is_read() -> None:
    publisher = FakePublisher()
    async with app_with(publisher) as client:
        response = await client.post("/v1/jobs", json={**BODY, "prompt": "x" * 70_000})
    assert problem_of(response, 413)["title"] == "Request body too large"
    assert publisher.published == []


def test_every_error_answer_of_every_route_is_documented_as_problem_json() -> None:
    spec = create_app(ApiSettings()).openapi()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if int(status) >= 400 and path != "/healthz":
                    assert list(answer["content"]) == ["application/problem+json"], (method, path, status)


async def test_a_method_the_path_does_not_take_is_a_405_naming_every_method_it_does() -> None:
    async with app_with(FakePublisher()) as client:
        response = await client.request("OPTIONS", "/v1/jobs")
    assert problem_of(response, 405)
    assert response.headers["allow"] == "GET, HEAD, POST"
