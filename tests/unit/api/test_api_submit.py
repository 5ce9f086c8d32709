"""The api's submit decision: 202 only for an ack appended by the request's deadline, 503 otherwise.

A fake publisher stands in for Kafka. The 503 is checked through the real app and its error mapping: that
path never queries Postgres, so an engine that is never connected is enough.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import cast

import httpx
import pytest

from schemas.events import JobRequested, TenantLimits, utcnow
from schemas.jobs import JobRequest, resolve
from services.api.auth import StaticKeys
from services.api.errors import JobNotCreated
from services.api.main import app_state, create_app
from services.api.notify import JobNotifier
from services.api.publisher import Ack, JobPublisher
from services.api.settings import ApiSettings
from services.api.submit import accept_by, publish_request
from services.common.db import make_engine
from services.common.errors import BrokerUnavailable
from services.common.storage import Storage
from services.common.tenants import Caller

SETTINGS = ApiSettings(submit_deadline_seconds=15.0, clock_skew_seconds=2.0)
MS = timedelta(milliseconds=1)


class FakePublisher:
    """Acknowledges job requests with an append time relative to their deadline, or fails like a broker
    that is away. `None`: an ack without an append time (a topic on CreateTime)."""

    def __init__(self, appended: timedelta | None = -MS, *, fail: bool = False) -> None:
        self.appended = appended
        self.fail = fail
        self.waits: list[float] = []
        self.published: list[JobRequested] = []

    async def requested(self, event: JobRequested, wait_seconds: float) -> Ack:
        self.waits.append(wait_seconds)
        self.published.append(event)
        await asyncio.sleep(0)
        if self.fail:
            raise BrokerUnavailable(f"Kafka did not acknowledge {event.type} for job {event.job_id}")
        assert event.accept_by is not None
        appended_at = None if self.appended is None else event.accept_by + self.appended
        return Ack(partition=0, offset=7, appended_at=appended_at)


def job_request() -> JobRequested:
    now = utcnow()
    return JobRequested(
        job_id=uuid.uuid4(),
        producer="api",
        occurred_at=now,
        request=resolve(JobRequest(prompt="a lighthouse in fog", model="tiny-mochi")),
        request_hash="h",
        accept_by=accept_by(SETTINGS, now),
    )


async def test_an_ack_appended_by_the_deadline_is_a_job() -> None:
    publisher = FakePublisher(appended=timedelta(0))
    event = job_request()
    ack = await publish_request(publisher, event, SETTINGS)
    assert ack.appended_at == event.accept_by
    # The api waits for the ack until the deadline plus the clock-skew margin, no longer.
    assert 16.5 < publisher.waits[0] <= 17.0


async def test_an_ack_appended_after_the_deadline_is_not_a_job() -> None:
    with pytest.raises(JobNotCreated, match="after its deadline"):
        await publish_request(FakePublisher(appended=MS), job_request(), SETTINGS)


async def test_no_ack_in_time_is_not_a_job() -> None:
    with pytest.raises(JobNotCreated, match="did not acknowledge it in time") as raised:
        await publish_request(FakePublisher(fail=True), job_request(), SETTINGS)
    assert isinstance(raised.value.__cause__, BrokerUnavailable)


async def test_an_ack_without_a_broker_time_is_taken_as_its_consumers_take_it() -> None:
    ack = await publish_request(FakePublisher(appended=None), job_request(), SETTINGS)
    assert ack.appended_at is None


KEY = "rs_test-key"
CALLER = Caller(
    key_id=uuid.uuid4(),
    tenant="acme",
    admin=False,
    limits=TenantLimits(),
    max_queued_jobs=100,
    submits_per_second=1000.0,
    reads_per_second=1000.0,
)


def static_keys(**callers: Caller) -> StaticKeys:
    """The test key (tenant acme), and any more given as key=Caller."""
    return StaticKeys({KEY: CALLER, **callers})


def app_with(publisher: FakePublisher) -> httpx.AsyncClient:
    """The real app with a fake publisher; the lifespan (Kafka, Postgres, S3 clients) does not run."""
    app = create_app(SETTINGS)
    engine = make_engine(SETTINGS)
    app.state.reelstream = app_state(
        SETTINGS,
        engine,
        cast(JobPublisher, publisher),
        cast(Storage, None),
        JobNotifier(SETTINGS.database_url.get_secret_value()),
        keys=static_keys(),
    )
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(
        transport=transport, base_url="http://api", headers={"Authorization": f"Bearer {KEY}"}
    )


@pytest.mark.parametrize("publisher", [FakePublisher(appended=MS * 250), FakePublisher(fail=True)])
async def test_submit_answers_503_problem_saying_the_job_was_not_created(publisher: FakePublisher) -> None:
    body = {"prompt": "a lighthouse in fog", "model": "tiny-mochi"}
    async with app_with(publisher) as client:
        response = await client.post("/v1/jobs", json=body)
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "5"
    problem = response.json()
    (sent,) = publisher.published
    assert sent.accept_by is not None and problem["accept_by"] == sent.accept_by.isoformat()
    assert sent.accept_by - sent.occurred_at == timedelta(seconds=SETTINGS.submit_deadline_seconds)
    assert problem["title"] == "Job not created"
    assert problem["detail"].startswith("The job was not created and will never run")
    assert "Idempotency-Key" in problem["detail"]
