"""The official `openai` client against the running api's /v1/videos, and deleting a job for real: S3
objects gone, row gone, the tombstone on Kafka, the job's stream ended, a second delete a 404."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aioboto3
import av
import httpx
import openai
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from botocore.config import Config

from schemas.envelope import decode_event
from schemas.events import JobDeleted
from schemas.topics import JOBS_EVENTS
from services.cli.config import api_key
from services.common.kafka import partitions_of
from services.common.settings import CommonSettings
from tests.e2e.conftest import ROOT, read_sse, submit, wait_terminal

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(240),
    pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning"),
]
SETTINGS = CommonSettings()


@pytest.fixture
async def videos(services: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(api_key=api_key(ROOT), base_url=f"{services}/v1", max_retries=0) as client:
        yield client


async def s3_keys(job_id: str) -> list[str]:
    """Every object under the job's two prefixes, straight from the store."""
    session = aioboto3.Session(
        aws_access_key_id=SETTINGS.s3_access_key.get_secret_value(),
        aws_secret_access_key=SETTINGS.s3_secret_key.get_secret_value(),
        region_name=SETTINGS.s3_region,
    )
    config = Config(s3={"addressing_style": "path"})
    async with session.client("s3", endpoint_url=SETTINGS.s3_endpoint, config=config) as s3:
        keys = []
        for prefix in (f"jobs/{job_id}/", f"checkpoints/{job_id}/"):
            page = await s3.list_objects_v2(Bucket=SETTINGS.s3_bucket, Prefix=prefix)
            keys += [obj["Key"] for obj in page.get("Contents", [])]
        return keys


async def events_end() -> dict[TopicPartition, int]:
    """Where each partition of jobs.events ends now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=SETTINGS.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await partitions_of(SETTINGS, [JOBS_EVENTS])
        assert partitions, "jobs.events has no partitions"
        return dict(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


async def tombstones_since(start: dict[TopicPartition, int], job_id: str) -> list[JobDeleted]:
    """The job.deleted records of `job_id` appended to jobs.events after `start`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=SETTINGS.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    found: list[JobDeleted] = []
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        ends = await consumer.end_offsets(list(start))

        async def behind() -> bool:
            return any([await consumer.position(tp) < end for tp, end in ends.items()])

        while await behind():
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    event = decode_event(record.value)
                    if isinstance(event, JobDeleted) and str(event.job_id) == job_id:
                        found.append(event)
    finally:
        await consumer.stop()
    return found


async def test_the_openai_client_creates_polls_lists_downloads_and_deletes(
    videos: openai.AsyncOpenAI, client: httpx.AsyncClient
) -> None:
    created = await videos.videos.create(
        prompt="a paper boat on a pond",
        model="tiny-mochi",
        size="128x96",  # type: ignore[arg-type]
        seconds="1",  # type: ignore[arg-type]
    )
    assert created.object == "video" and created.status in {"queued", "in_progress"}
    assert (created.model, created.size, created.seconds) == ("tiny-mochi", "128x96", "1.03")

    done = await videos.videos.poll(created.id, poll_interval_ms=300)
    assert done.status == "completed", done.error
    assert done.progress == 100 and done.completed_at is not None and done.completed_at >= done.created_at
    same = await videos.videos.retrieve(created.id)
    assert same.id == created.id and same.status == "completed"

    newest = []
    async for video in videos.videos.list(limit=2):  # the client follows last_id while has_more
        newest.append(video)
        if video.id == created.id or len(newest) >= 100:
            break
    assert newest[-1].id == created.id
    assert [v.created_at for v in newest] == sorted((v.created_at for v in newest), reverse=True)
    first = await videos.videos.list(limit=2, order="asc")
    second = await videos.videos.list(limit=2, order="asc", after=first.data[-1].id)
    assert first.has_more and not {v.id for v in first.data} & {v.id for v in second.data}
    assert first.data[-1].created_at <= second.data[0].created_at

    content = await videos.videos.download_content(created.id)
    mp4 = content.read()
    assert mp4[4:8] == b"ftyp"
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (128, 96)
        assert len(list(container.decode(stream))) == 31
    thumbnail = await client.get(f"/v1/videos/{created.id}/content", params={"variant": "thumbnail"})
    if thumbnail.status_code == 200:
        assert thumbnail.content[:2] == b"\xff\xd8"  # a JPEG
    else:  # a result made without stills: a 404 naming the variant
        assert thumbnail.status_code == 404 and "thumbnail" in thumbnail.json()["detail"]
    bad = await client.get(f"/v1/videos/{created.id}/content", params={"variant": "gif"})
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"

    assert await s3_keys(created.id)
    deleted = await videos.videos.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "video.deleted", True)
    assert await s3_keys(created.id) == []
    with pytest.raises(openai.NotFoundError):
        await videos.videos.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        await videos.videos.delete(created.id)


async def test_a_bad_create_is_a_422_naming_the_field_and_what_is_allowed(videos: openai.AsyncOpenAI) -> None:
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"model": "sora-2"}, "model", "tiny-mochi"),
        ({"model": "tiny-mochi", "size": "1280x720"}, "size", "multiples of 16 from 32 to 256"),
        ({"model": "tiny-mochi", "seconds": "12"}, "seconds", "up to 1.63 s"),
    ]
    for fields, field, allowed in cases:
        with pytest.raises(openai.UnprocessableEntityError) as info:
            await videos.videos.create(prompt="a paper boat", **fields)
        assert isinstance(info.value.body, dict)
        (error,) = info.value.body["errors"]
        assert error["field"] == field and allowed in error["allowed"], error


async def test_deleting_a_running_job_cancels_it_and_leaves_nothing(client: httpx.AsyncClient) -> None:
    job = await submit(client, width=256, height=256, num_frames=49, quality="high", seed=3)
    job_id = job["id"]
    async with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        async for line in stream.aiter_lines():
            if line == "event: job.checkpointed":  # running, with objects in S3 already
                break
    before = await s3_keys(job_id)
    assert any(key.startswith("checkpoints/") for key in before)
    start = await events_end()
    watching = asyncio.create_task(read_sse(client, job_id))
    await asyncio.sleep(0.3)

    response = await client.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"] == job_id and answer["deleted"] is True and answer["objects_deleted"] >= 1

    # The stream that was open ends: with the tombstone, or with the job's cancellation when the slot
    # stopped before the tombstone was projected (the delete does not wait for the slot).
    events = await asyncio.wait_for(watching, timeout=30)
    assert events[-1].event in {"job.deleted", "job.cancelled"}, [e.event for e in events]
    assert "job.succeeded" not in {e.event for e in events}
    assert (await client.get(f"/v1/jobs/{job_id}")).status_code == 404
    again = await client.delete(f"/v1/jobs/{job_id}")
    assert again.status_code == 404 and again.headers["content-type"] == "application/problem+json"
    assert (await client.get(f"/v1/jobs/{job_id}/events")).status_code == 404
    listed = (await client.get("/v1/jobs", params={"limit": 100})).json()["data"]
    assert job_id not in {j["id"] for j in listed}

    (tombstone,) = await tombstones_since(start, job_id)
    assert tombstone.producer == "api" and tombstone.tenant == "default"
    assert tombstone.objects_deleted == answer["objects_deleted"]
    # Every object there was at the delete is gone. The slot stops within a step: what it wrote after
    # the delete goes with the sweeper's second look (tests/integration/test_retention.py).
    assert not set(before) & set(await s3_keys(job_id))


async def test_deleting_twice_or_an_unknown_job_is_a_404(client: httpx.AsyncClient) -> None:
    assert (await client.delete(f"/v1/jobs/{uuid.uuid4()}")).status_code == 404
    assert (await client.delete("/v1/jobs/not-a-uuid")).status_code == 422
    job = await wait_terminal(client, (await submit(client, seed=21))["id"])
    assert job["status"] == "succeeded"
    assert len(await s3_keys(job["id"])) >= 2  # video and poster at least
    first = await client.delete(f"/v1/jobs/{job['id']}")
    assert first.status_code == 200 and first.json()["objects_deleted"] >= 2
    assert await s3_keys(job["id"]) == []
    second = await client.delete(f"/v1/jobs/{job['id']}")
    assert second.status_code == 404 and second.json()["status"] == 404
    # A keyed resubmit would name the deleted job again: refused, with the way out.
    body, key = {"prompt": "again", "model": "tiny-mochi"}, {"Idempotency-Key": f"deleted-{uuid.uuid4()}"}
    keyed = await client.post("/v1/jobs", json=body, headers=key)
    assert keyed.status_code == 202
    await wait_terminal(client, keyed.json()["id"])
    assert (await client.delete(f"/v1/jobs/{keyed.json()['id']}")).status_code == 200
    replay = await client.post("/v1/jobs", json=body, headers=key)
    assert replay.status_code == 409 and "deleted" in replay.json()["detail"]
