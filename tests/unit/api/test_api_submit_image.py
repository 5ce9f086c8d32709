"""POST /v1/jobs with image_url: the image is stored before job.requested is published, and its key
travels in the request; a refused image publishes nothing."""

from __future__ import annotations

import asyncio
import uuid
from typing import cast

import httpx
import pytest

from schemas.events import JobRequested, TenantLimits
from services.api import images
from services.api.auth import StaticKeys
from services.api.main import app_state, create_app
from services.api.notify import JobNotifier
from services.api.publisher import Ack, JobPublisher
from services.api.settings import ApiSettings
from services.common.db import make_engine
from services.common.errors import BrokerUnavailable
from services.common.storage import Storage, input_image_key
from services.common.tenants import Caller

SETTINGS = ApiSettings(submit_deadline_seconds=15.0)
KEY = "rs_test-image-key"
CALLER = Caller(
    key_id=uuid.uuid4(),
    tenant="acme",
    admin=False,
    limits=TenantLimits(),
    max_queued_jobs=100,
    submits_per_second=1000.0,
    reads_per_second=1000.0,
)


class Journal:
    """What happened, in order: images stored and requests published."""

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.published: list[JobRequested] = []


class FailingPublisher:
    """Records the request, then fails like a broker that is away (so the route needs no database)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    async def requested(self, event: JobRequested, wait_seconds: float) -> Ack:
        self.journal.steps.append("published")
        self.journal.published.append(event)
        await asyncio.sleep(0)
        raise BrokerUnavailable("Kafka is away")


def client_with(journal: Journal) -> httpx.AsyncClient:
    app = create_app(SETTINGS)
    app.state.reelstream = app_state(
        SETTINGS,
        make_engine(SETTINGS),
        cast(JobPublisher, FailingPublisher(journal)),
        cast(Storage, None),
        JobNotifier(SETTINGS.database_url.get_secret_value()),
        keys=StaticKeys({KEY: CALLER}),
    )
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://api",
        headers={"Authorization": f"Bearer {KEY}"},
    )


async def test_the_image_is_stored_before_the_request_is_published(monkeypatch: pytest.MonkeyPatch) -> None:
    journal = Journal()

    async def stored(storage: object, job_id: uuid.UUID, url: str, field: str) -> str:
        journal.steps.append(f"stored {url} as {field}")
        return input_image_key(job_id)

    monkeypatch.setattr("services.api.routes.jobs.image_from_url", stored)
    body = {
        "prompt": "the kite lifts off",
        "model": "tiny-wan-i2v",
        "image_url": "https://images.example.com/k.png",
    }
    async with client_with(journal) as client:
        response = await client.post("/v1/jobs", json=body)
    assert response.status_code == 503, response.text  # the fake broker is away; what matters is the order
    assert journal.steps == ["stored https://images.example.com/k.png as image_url", "published"]
    (event,) = journal.published
    assert event.request.image_key == input_image_key(event.job_id)


async def test_a_refused_image_publishes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    journal = Journal()

    async def refused(storage: object, job_id: uuid.UUID, url: str, field: str) -> str:
        raise images.ImageTypeUnsupported(field, "not a PNG, JPEG or WebP image (judged by its first bytes)")

    monkeypatch.setattr("services.api.routes.jobs.image_from_url", refused)
    body = {
        "prompt": "the kite lifts off",
        "model": "tiny-wan-i2v",
        "image_url": "https://images.example.com/k.gif",
    }
    async with client_with(journal) as client:
        response = await client.post("/v1/jobs", json=body)
    assert response.status_code == 415 and response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["field"] == "image_url"
    assert journal.published == []


async def test_a_model_without_image_to_video_is_refused_before_any_fetch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    journal = Journal()

    async def never(*_: object) -> str:
        raise AssertionError("fetched an image for a model that takes none")

    monkeypatch.setattr("services.api.routes.jobs.image_from_url", never)
    body = {"prompt": "a fox", "model": "tiny-mochi", "image_url": "https://images.example.com/k.png"}
    async with client_with(journal) as client:
        response = await client.post("/v1/jobs", json=body)
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["field"] == "image_url" and "tiny-wan-i2v" in error["allowed"]
    assert journal.published == []
