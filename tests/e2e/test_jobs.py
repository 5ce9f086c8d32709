"""A user's session with reelstream: submit, follow, download, cancel, resume a stream, retry a submit."""

from __future__ import annotations

import asyncio
import io
import uuid

import av
import httpx
import pytest

from tests.e2e.conftest import read_sse, submit, wait_terminal

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
TERMINAL = {"job.succeeded", "job.failed", "job.cancelled"}


async def test_submit_follow_download_and_play(client: httpx.AsyncClient) -> None:
    job = await submit(client, width=128, height=96, num_frames=13, fps=24, quality="medium", seed=7)
    events = await read_sse(client, job["id"])
    ids = [int(e.id) for e in events if e.id is not None]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    types = [e.event for e in events if e.id is not None]
    assert types[0] == "job.requested" and types[-1] == "job.succeeded"
    assert types.index("job.dispatched") < types.index("job.started") < types.index("job.succeeded")
    steps = [e.data["step"] for e in events if e.event == "job.progress" and e.data.get("step")]
    # Progress is throttled and droppable, so a fast job may show few step numbers; they only rise.
    assert steps == sorted(steps) and all(1 <= s <= 4 for s in steps)
    assert any(e.event == "job.progress" for e in events)

    done = (await client.get(f"/v1/jobs/{job['id']}")).json()
    assert done["status"] == "succeeded" and done["progress"] == 1.0
    stills = {"poster_url", "thumbnail_url", "spritesheet_url", "spritesheet"}
    assert {k: v for k, v in done["result"].items() if k not in stills} == {
        "content_type": "video/mp4",
        "size_bytes": done["result"]["size_bytes"],
        "width": 128,
        "height": 96,
        "fps": 24,
        "frames": 13,
        "duration_seconds": pytest.approx(13 / 24),
    }
    for variant in ("poster", "thumbnail", "spritesheet"):
        assert done["result"][f"{variant}_url"].endswith(f"/v1/jobs/{job['id']}/content?variant={variant}")
    assert done["result"]["spritesheet"]["frame_indices"] == list(range(13))
    link = (await client.get(f"/v1/jobs/{job['id']}/result", params={"redirect": "false"})).json()
    assert set(link) == {"url", "expires_at"}
    async with httpx.AsyncClient() as plain:  # no api involved: straight to the store
        video = await plain.get(link["url"])
    assert video.status_code == 200 and len(video.content) == done["result"]["size_bytes"]
    with av.open(io.BytesIO(video.content)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        assert (stream.width, stream.height, stream.average_rate) == (128, 96, 24)
        assert len(frames) == 13 and stream.codec_context.name == "h264"
        assert frames[0].format.name == "yuv420p"
    # +faststart: the index (moov) comes before the media data so a browser plays while downloading.
    assert video.content.find(b"moov") < video.content.find(b"mdat")


async def test_result_redirects_and_content_serves_ranges(client: httpx.AsyncClient) -> None:
    job = await wait_terminal(client, (await submit(client, seed=11))["id"])
    redirect = await client.get(f"/v1/jobs/{job['id']}/result")
    assert redirect.status_code == 302 and "X-Amz-Signature" in redirect.headers["location"]
    whole = await client.get(f"/v1/jobs/{job['id']}/content")
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    part = await client.get(f"/v1/jobs/{job['id']}/content", headers={"Range": "bytes=10-99"})
    assert part.status_code == 206 and part.content == whole.content[10:100]
    assert part.headers["content-range"] == f"bytes 10-99/{len(whole.content)}"
    beyond = await client.get(f"/v1/jobs/{job['id']}/content", headers={"Range": "bytes=999999999-"})
    assert beyond.status_code == 416 and beyond.headers["content-type"] == "application/problem+json"


async def test_cancel_a_running_job_stops_it_and_leaves_no_result(client: httpx.AsyncClient) -> None:
    job = await submit(client, width=256, height=256, num_frames=49, quality="high", seed=5)
    async with client.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
        async for line in stream.aiter_lines():
            if line == "event: job.progress":
                break
    cancel = await client.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancel.status_code == 202
    events = await read_sse(client, job["id"])
    assert events[-1].event == "job.cancelled"
    steps = [e.data["step"] for e in events if e.event == "job.progress" and e.data.get("step")]
    assert not steps or max(steps) < 8
    done = (await client.get(f"/v1/jobs/{job['id']}")).json()
    assert done["status"] == "cancelled" and done["result"] is None
    assert (await client.get(f"/v1/jobs/{job['id']}/result")).status_code == 409
    again = await client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]


async def test_cancel_a_queued_job_means_it_never_starts(client: httpx.AsyncClient) -> None:
    blockers = [await submit(client, width=256, height=256, num_frames=49, quality="high") for _ in range(2)]
    queued = await submit(client)
    assert (await client.post(f"/v1/jobs/{queued['id']}/cancel")).status_code == 202
    events = await read_sse(client, queued["id"])
    assert [e.event for e in events if e.id] in (
        ["job.requested", "job.cancelled"],
        ["job.requested", "job.dispatched", "job.cancelled"],
    )
    for blocker in blockers:
        await client.post(f"/v1/jobs/{blocker['id']}/cancel")


async def test_sse_resumes_after_last_event_id_without_gap_or_duplicate(client: httpx.AsyncClient) -> None:
    job = await submit(client, quality="high", seed=3)
    first = await read_sse(client, job["id"], stop_after=3)
    last_id = [e.id for e in first if e.id][-1]
    rest = await read_sse(client, job["id"], last_event_id=last_id)
    everything = await read_sse(client, job["id"])
    joined = [e.id for e in first if e.id] + [e.id for e in rest if e.id]
    assert joined == [e.id for e in everything if e.id]
    assert rest[-1].event in TERMINAL


async def test_many_clients_follow_one_job(client: httpx.AsyncClient) -> None:
    job = await submit(client, seed=9)
    streams = await asyncio.gather(*(read_sse(client, job["id"]) for _ in range(8)))
    ids = {tuple(e.id for e in s if e.id) for s in streams}
    assert len(ids) == 1 and streams[0][-1].event in TERMINAL


async def test_get_right_after_202_never_404s(client: httpx.AsyncClient) -> None:
    ids = []
    for _ in range(50):
        job = await submit(client, priority="batch")
        response = await client.get(f"/v1/jobs/{job['id']}")
        assert response.status_code == 200, response.text
        ids.append(job["id"])
    positions = [(await client.get(f"/v1/jobs/{i}")).json()["queue_position"] for i in ids[-3:]]
    assert all(p is None or p >= 1 for p in positions)
    await asyncio.gather(*(client.post(f"/v1/jobs/{i}/cancel") for i in ids))


async def test_idempotency_key_gives_one_job(client: httpx.AsyncClient) -> None:
    key = f"order-{uuid.uuid4()}"
    body = {"prompt": "a kite over the dunes", "model": "tiny-mochi", "quality": "low", "seed": 1}
    first = await client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
    second = await client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers.get("idempotent-replayed") == "true"
    other = await client.post(
        "/v1/jobs", json={**body, "prompt": "another"}, headers={"Idempotency-Key": key}
    )
    assert other.status_code == 422 and other.headers["content-type"] == "application/problem+json"
    listed = (await client.get("/v1/jobs", params={"limit": 100})).json()["data"]
    assert sum(1 for j in listed if j["id"] == first.json()["id"]) == 1
