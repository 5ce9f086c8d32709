"""Chaos: kill -9 a worker mid-denoise, the scheduler mid-dispatch, the projector mid-batch, and restart
the Kafka broker during a run. In every case every accepted job ends in exactly one terminal state, each
success has exactly one MP4, and the read model equals a replay of Kafka (`check_delivery`).

Each test leaves the stack and every service running as it found them (`restore` in the fixture), and
runs inside the e2e session's lock on `.run/services.lock`, so nobody else uses the services meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from schemas.jobs import Phase
from schemas.topics import JOBS_DISPATCH, JOBS_EVENTS, WORKERS_HEARTBEAT
from services.common.readmodel import Job
from tests.e2e.chaos import (
    LONG_JOB,
    SERVICES,
    SETTINGS,
    SHORT_JOB,
    LogMark,
    Seen,
    Tap,
    api_healthy,
    check_delivery,
    delivery_problems,
    dispatches_to_dead_slot,
    jobs_with_prompt,
    kill,
    pid_of,
    pids,
    restore,
    silent_slots,
    stack_up,
    start_services,
    wait_all_terminal,
    wait_slots_idle,
    wait_until,
)
from tests.e2e.conftest import read_sse, submit

pytestmark = [pytest.mark.e2e]
DENOISING = {Phase.LOADING, Phase.ENCODING_PROMPT, Phase.DENOISING}
OUTAGE_SECONDS = 20


async def _open_jobs() -> int:
    engine = create_async_engine(SETTINGS.database_url.get_secret_value())
    try:
        async with engine.connect() as conn:
            query = select(func.count()).select_from(Job).where(Job.status.in_(("queued", "running")))
            return int((await conn.execute(query)).scalar_one())
    finally:
        await engine.dispose()


@pytest.fixture
async def chaos(services: str) -> AsyncIterator[LogMark]:
    """Everything running before the test (and idle, within reason); everything running again after it."""
    if pid_of("kafka") is None or any(pid is None for pid in pids().values()):
        await restore()
    deadline = time.monotonic() + 30
    while await _open_jobs() and time.monotonic() < deadline:  # jobs of earlier tests still running
        await asyncio.sleep(0.5)
    await wait_slots_idle(60)  # and stale attempts a restarted worker may still be running
    logs = LogMark()
    try:
        yield logs
    finally:
        await restore()


def of(job_id: str, type: str, attempt: int | None = None) -> Callable[[Seen], bool]:
    def match(s: Seen) -> bool:
        return (
            str(s.event.job_id) == job_id
            and s.type == type
            and (attempt is None or s.event.attempt == attempt)
        )

    return match


@dataclass(frozen=True, slots=True)
class Killed:
    slot: int
    at: float  # time.monotonic() right after the process was gone
    boot_id: Any  # of the killed process, from its last heartbeat
    checkpoint: Seen  # the newest attempt-1 checkpoint on Kafka


async def _kill_mid_denoise(tap: Tap, job_id: str) -> Killed:
    """Kill -9 the worker that runs attempt 1 of `job_id` right after its first checkpoint, and check
    that the kill landed mid-denoise."""
    started = await tap.wait_for(of(job_id, "job.started", 1), 90, f"job.started of {job_id}")
    slot: int = started.event.slot
    await tap.wait_for(of(job_id, "job.checkpointed", 1), 60, f"first checkpoint of {job_id}")
    await kill(f"worker-{slot}")
    killed_at = time.monotonic()
    beats = [s for s in tap.events(topic=WORKERS_HEARTBEAT) if s.event.slot == slot]
    await asyncio.sleep(1)  # let records the worker sent just before it died reach the tap
    attempt1 = tap.events(job_id, attempt=1)
    beyond = [
        s.type if s.type != "job.progress" else s.event.phase.value
        for s in attempt1
        if s.type in ("job.succeeded", "job.failed")
        or (s.type == "job.progress" and s.event.phase not in DENOISING)
    ]
    assert not beyond, f"the kill landed too late, attempt 1 was already at {beyond}"
    steps = [s.event.step for s in attempt1 if s.type == "job.progress" and s.event.step]
    checkpoints = sorted(tap.events(job_id, "job.checkpointed", 1), key=lambda s: s.event.step)
    last_beat = (
        f"{killed_at - beats[-1].at:.1f}s before the kill, job={beats[-1].event.job_id}" if beats else "none"
    )
    print(
        f"\nkilled worker-{slot} {killed_at - started.at:.1f}s after job.started, at step "
        f"{max(steps, default=0)}, checkpoints at steps {[c.event.step for c in checkpoints]}; "
        f"its last heartbeat {last_beat}"
    )
    return Killed(slot, killed_at, beats[-1].event.boot_id if beats else None, checkpoints[-1])


def _sse_attempts(events: list[Any]) -> list[tuple[str, int]]:
    return [(e.event, e.data["attempt"]) for e in events if e.id is not None and e.event != "job.progress"]


def _finished(job_id: str) -> Callable[[Seen], bool]:
    return lambda s: str(s.event.job_id) == job_id and s.type in ("job.succeeded", "job.failed")


def _no_work_for_the_dead(tap: Tap, job_id: str, killed: Killed, retrying: Seen) -> None:
    """A slot whose worker is dead must get no work until a new worker process of it heartbeats."""
    to_dead = dispatches_to_dead_slot(tap, job_id, killed.slot, killed.at, killed.boot_id)
    assert not to_dead, (
        f"the scheduler dispatched the job to slot {killed.slot} while its worker was dead (killed, no "
        f"heartbeat from a new process yet): {to_dead}; the retry said {retrying.event.reason!r}. That "
        "attempt waits on the dead slot's partition until the silence is noticed, and a restarted worker "
        "then runs it although the job was retried elsewhere or has ended."
    )


@pytest.mark.timeout(300)
async def test_worker_killed_mid_denoise_and_restarted_resumes_from_checkpoint(
    client: httpx.AsyncClient, chaos: LogMark
) -> None:
    async with Tap(JOBS_EVENTS, WORKERS_HEARTBEAT) as tap:
        job_id = (await submit(client, **LONG_JOB, seed=101, prompt="chaos: a worker dies mid-denoise"))["id"]
        killed = await _kill_mid_denoise(tap, job_id)
        restart = asyncio.create_task(start_services())  # the killed worker comes back (model load included)
        try:
            retrying = await tap.wait_for(of(job_id, "job.retrying"), 90, "job.retrying after the kill")
            done = await tap.wait_for(_finished(job_id), 150, "a terminal event after the retry")
        finally:
            await restart
        dispatches = [(s.event.attempt, s.event.slot) for s in tap.events(job_id, "job.dispatched")]
    print(f"retried {retrying.at - killed.at:.1f}s after the kill: {retrying.event.reason!r}; {dispatches=}")
    _no_work_for_the_dead(tap, job_id, killed, retrying)
    assert retrying.event.attempt == 1 and retrying.event.next_attempt == 2
    assert (done.type, done.event.attempt) == ("job.succeeded", 2), (
        f"{done.type} by attempt {done.event.attempt}"
    )
    dispatched = tap.events(job_id, "job.dispatched", 2)[0]
    assert dispatched.event.resume_checkpoint == killed.checkpoint.event.checkpoint_key
    assert pid_of(f"worker-{killed.slot}") is not None, f"worker-{killed.slot} did not come back"
    resumed = chaos.grep(
        f"worker-{dispatched.event.slot}",
        f"job={job_id} attempt=2 resumes at step {killed.checkpoint.event.step}",
    )
    assert resumed, "attempt 2 did not resume from the checkpoint of attempt 1"

    sse = _sse_attempts(await read_sse(client, job_id))
    assert sse[0] == ("job.requested", 0) and sse[-1] == ("job.succeeded", 2)
    order = [
        sse.index(("job.dispatched", 1)),
        sse.index(("job.retrying", 1)),
        sse.index(("job.dispatched", 2)),
    ]
    assert order == sorted(order) and sse.count(("job.dispatched", 2)) == 1
    assert not {"job.failed", "job.cancelled"} & {t for t, _ in sse}

    outcome = (await check_delivery(client, [job_id], chaos))[job_id]
    assert outcome.attempt == 2 and outcome.result is not None
    assert outcome.result["video_key"] == f"jobs/{job_id}/attempt-2/video.mp4"


@pytest.mark.timeout(300)
async def test_worker_killed_and_left_down_the_other_slot_takes_over(
    client: httpx.AsyncClient, chaos: LogMark
) -> None:
    async with Tap(JOBS_EVENTS, WORKERS_HEARTBEAT) as tap:
        job_id = (await submit(client, **LONG_JOB, seed=102, prompt="chaos: a worker dies for good"))["id"]
        killed = await _kill_mid_denoise(tap, job_id)
        retrying = await tap.wait_for(of(job_id, "job.retrying"), 60, "job.retrying after the silence")
        done = await tap.wait_for(_finished(job_id), 120, "a terminal event after the retry")
        assert pid_of(f"worker-{killed.slot}") is None, "nobody may restart the killed worker in this test"
        dispatches = [(s.event.attempt, s.event.slot) for s in tap.events(job_id, "job.dispatched")]
    print(f"retried {retrying.at - killed.at:.1f}s after the kill: {retrying.event.reason!r}; {dispatches=}")
    _no_work_for_the_dead(tap, job_id, killed, retrying)
    assert (done.type, done.event.attempt) == ("job.succeeded", 2), (
        f"{done.type} by attempt {done.event.attempt}"
    )
    dispatched = tap.events(job_id, "job.dispatched", 2)[0]
    assert dispatched.event.slot != killed.slot
    assert dispatched.event.resume_checkpoint == killed.checkpoint.event.checkpoint_key

    await start_services()  # the slot comes back empty-handed and takes new work again
    later = await submit(client, seed=103, prompt="chaos: after the slot came back")
    outcomes = await check_delivery(client, [job_id, later["id"]], chaos)
    assert outcomes[job_id].attempt == 2 and outcomes[job_id].slot == dispatched.event.slot
    assert outcomes[later["id"]].attempt == 1


@pytest.mark.timeout(300)
async def test_worker_paused_past_the_silence_stops_its_stale_attempt(
    client: httpx.AsyncClient, chaos: LogMark
) -> None:
    """A worker that is only cut off (SIGSTOP, as in a long GC pause or a network partition) is taken
    for dead; when it comes back (SIGCONT) its attempt is stale: it must stop without storing a video
    or sending an event that counts, while the newer attempt finishes the job."""
    async with Tap(JOBS_EVENTS, WORKERS_HEARTBEAT) as tap:
        job_id = (await submit(client, **LONG_JOB, seed=104, prompt="chaos: a worker pauses"))["id"]
        started = await tap.wait_for(of(job_id, "job.started", 1), 90, f"job.started of {job_id}")
        slot: int = started.event.slot
        await tap.wait_for(of(job_id, "job.checkpointed", 1), 60, f"first checkpoint of {job_id}")
        pid = pid_of(f"worker-{slot}")
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            retrying = await tap.wait_for(of(job_id, "job.retrying"), 60, "job.retrying after the silence")
        finally:
            os.kill(pid, signal.SIGCONT)
        done = await tap.wait_for(_finished(job_id), 150, "a terminal event after the retry")
        await asyncio.sleep(3)  # what the stale attempt sends after it woke up reaches the tap
    stale = [s.type for s in tap.events(job_id, attempt=1) if s.at > retrying.at]
    assert not {"job.succeeded", "job.failed", "job.cancelled"} & set(stale), stale
    assert (done.type, done.event.attempt) == ("job.succeeded", 2)
    assert chaos.grep(f"worker-{slot}", f"job={job_id}: attempt 1 was given up on"), (
        "the paused worker did not learn that its attempt was given up on"
    )
    outcome = (await check_delivery(client, [job_id], chaos))[job_id]  # one MP4, no checkpoints left
    assert outcome.attempt == 2


def new_dispatch(ours: set[str], before: list[Seen]) -> Callable[[Seen], bool]:
    """A record on jobs.dispatch for one of `ours` that is not among `before`."""
    known = {(s.partition, s.offset) for s in before}

    def match(s: Seen) -> bool:
        return (
            s.topic == JOBS_DISPATCH and str(s.event.job_id) in ours and (s.partition, s.offset) not in known
        )

    return match


@pytest.mark.timeout(240)
async def test_scheduler_killed_mid_dispatch_loses_and_duplicates_nothing(
    client: httpx.AsyncClient, chaos: LogMark
) -> None:
    async with Tap(JOBS_EVENTS, JOBS_DISPATCH) as tap:
        jobs = await asyncio.gather(
            *(submit(client, **SHORT_JOB, seed=200 + i, prompt=f"chaos: burst {i}") for i in range(10))
        )
        ids = [job["id"] for job in jobs]
        ours = set(ids)
        kills = 0
        for _ in range(2):
            dispatched = tap.events(topic=JOBS_DISPATCH)
            if {str(s.event.job_id) for s in dispatched} >= ours:
                break  # everything was dispatched already
            await tap.wait_for(new_dispatch(ours, dispatched), 60, "a new dispatch record of the burst")
            await kill("scheduler")
            kills += 1
            await start_services()  # rebuilds its state from the topics before it decides anything
        await wait_all_terminal(client, ids, 120, chaos)
        records = Counter(
            (str(s.event.job_id), s.event.attempt)
            for s in tap.events(topic=JOBS_DISPATCH)
            if str(s.event.job_id) in ours
        )
    print(f"scheduler killed {kills} times; rebuilt: {chaos.grep('scheduler', 'rebuilt state')}")
    assert kills >= 1
    assert len(chaos.grep("scheduler", "rebuilt state")) == kills
    twice = {key: n for key, n in records.items() if n != 1}
    assert not twice, f"dispatch records per (job, attempt) other than one: {twice}"
    assert {job for job, _ in records} == ours, f"never dispatched: {ours - {job for job, _ in records}}"
    problems, outcomes = await delivery_problems(client, ids)
    # Each dispatch record must also be announced as job.dispatched on jobs.events (re-announced after a
    # restart if the kill fell between the two), or the read model never learns the attempt.
    unannounced = sorted(job for job, o in outcomes.items() if len(o.applied("job.dispatched")) != 1)
    if unannounced:
        problems.append(
            f"{len(unannounced)} jobs have a record on jobs.dispatch but no job.dispatched on jobs.events: "
            + "; ".join(
                f"{job}: {[e['type'] for e in outcomes[job].applied() if e['type'] != 'job.progress']}"
                for job in unannounced
            )
        )
    retried = {job: o.attempt for job, o in outcomes.items() if o.attempt > 1}
    if retried:
        problems.append(f"a scheduler restart made healthy jobs run again (job: attempt): {retried}")
    assert not problems, (
        "the scheduler kills broke guarantees:\n" + "\n".join(problems) + "\n" + chaos.problems()
    )


@pytest.mark.timeout(240)
async def test_projector_killed_mid_batch_read_model_equals_replay(
    client: httpx.AsyncClient, chaos: LogMark
) -> None:
    async with Tap() as tap:
        jobs = await asyncio.gather(
            *(submit(client, **SHORT_JOB, seed=300 + i, prompt=f"chaos: projected {i}") for i in range(12))
        )
        ids = [job["id"] for job in jobs]
        ours = set(ids)
        # Kill while the projector is busy with this burst: its jobs are producing events right now.
        await wait_until(
            lambda: len([s for s in tap.events() if str(s.event.job_id) in ours]) >= 20,
            90,
            "the burst produces job events",
            every=0.02,
        )
        await kill("projector")
        # Accepted while the projector is down: durable in Kafka, the 202 comes after the bounded wait.
        late = await asyncio.gather(
            *(submit(client, seed=310 + i, prompt=f"chaos: unprojected {i}") for i in range(2))
        )
        ids += [job["id"] for job in late]
        await start_services()
    for job in late:
        response = await client.get(f"/v1/jobs/{job['id']}")
        assert response.status_code == 200, f"a job accepted while the projector was down: {response.text}"
    outcomes = await check_delivery(client, ids, chaos)
    streams = await asyncio.gather(*(read_sse(client, job_id) for job_id in ids))
    for job_id, events in zip(ids, streams, strict=True):
        seqs = [int(e.id) for e in events if e.id is not None]
        applied = [e["seq"] for e in outcomes[job_id].applied()]
        assert seqs == applied and events[-1].event == "job.succeeded", (
            f"SSE of {job_id}: {seqs} vs {applied}"
        )


@pytest.mark.timeout(480)
async def test_kafka_broker_restart_during_a_run(client: httpx.AsyncClient, chaos: LogMark) -> None:
    """The broker goes away (SIGTERM) while jobs run and wait, and comes back with `make up`. Nobody
    restarts a service: each must reconnect by itself. Every finding is collected and reported at once."""
    before = pids()
    assert all(before.values()), f"a service is down before the test: {before}"
    findings: list[str] = []
    async with Tap() as tap:
        ids = []
        for i in range(4):
            job = await submit(
                client, **LONG_JOB, seed=400 + i, prompt=f"chaos: through a broker restart {i}"
            )
            ids.append(job["id"])
        await wait_until(
            lambda: len({str(s.event.job_id) for s in tap.events(type="job.checkpointed")} & set(ids)) >= 2,
            90,
            "two jobs denoising",
            every=0.05,
        )
    broker = await kill("kafka", signal.SIGTERM, timeout=60)
    down_at = time.monotonic()
    # A submit while the broker is down: refused with 503 + Retry-After, or (if the broker came back
    # within the api's wait) accepted. A 503 must mean that no job was created.
    probe_prompt = f"chaos: while the broker is down {uuid.uuid4()}"
    probe_body = {"prompt": probe_prompt, "model": "tiny-mochi", **SHORT_JOB}
    probe = asyncio.create_task(client.post("/v1/jobs", json=probe_body, timeout=90))
    # The outage outlasts the 15 s Kafka request timeout of every client and the api's wait for an ack.
    await asyncio.sleep(OUTAGE_SECONDS)
    await stack_up()
    print(f"\nbroker pid {broker} down for {time.monotonic() - down_at:.1f}s (SIGTERM, then make up)")
    refused = await probe
    if refused.status_code == 202:
        ids.append(refused.json()["id"])
    elif refused.status_code != 503 or "retry-after" not in refused.headers:
        findings.append(f"submit with the broker down answered {refused.status_code}: {refused.text[:300]}")
    await wait_until(api_healthy, 90, "the api reports healthy after the broker restart")

    back_at = time.monotonic()
    after: list[str] = []
    while len(after) < 2:  # a client honours Retry-After; the api must take jobs again soon
        body = {"prompt": f"chaos: after the broker restart {len(after)}", "model": "tiny-mochi", **SHORT_JOB}
        response = await client.post("/v1/jobs", json=body)
        if response.status_code == 202:
            after.append(response.json()["id"])
            continue
        assert response.status_code == 503, response.text
        assert time.monotonic() - back_at < 60, "the api still refuses jobs 60 s after the broker returned"
        await asyncio.sleep(float(response.headers.get("retry-after", "1")))
    print(f"the api accepted jobs again {time.monotonic() - back_at:.1f}s after the broker was ready")
    ids += after

    silent = await silent_slots(30)
    if silent:
        findings.append(
            f"worker slot(s) {sorted(silent)} publish no heartbeat 30 s after the broker returned, "
            "although the process runs; their last Kafka errors:\n"
            + "\n".join(
                line
                for slot in sorted(silent)
                for line in chaos.grep(f"worker-{slot}", "level=WARNING", "Kafka")[-4:]
            )
        )
        # Recorded; now restart them so the remaining jobs can finish and the rest can be checked.
        for slot in silent:
            if pid_of(f"worker-{slot}") is not None:
                await kill(f"worker-{slot}")
        await start_services()

    problems, outcomes = await delivery_problems(client, ids, timeout=240)
    findings += problems
    if refused.status_code == 503 and (created := await jobs_with_prompt(probe_prompt)):
        findings.append(
            "POST /v1/jobs answered 503 while the broker was down, yet the job was created once the broker "
            f"returned (a client that retries creates a duplicate): {created}"
        )
    now, restarted = pids(), {f"worker-{slot}" for slot in silent}
    gone = {n: (before[n], now[n]) for n in SERVICES if now[n] != before[n] and n not in restarted}
    if gone:
        findings.append(
            "services exited during the broker restart (name: (pid before, pid now)): "
            f"{gone}\n" + "\n".join(f"--- {name}:\n{chaos.since(name)[-2500:]}" for name in gone)
        )
    print("attempts:", {job[-6:]: o.attempt for job, o in outcomes.items()})
    assert not findings, "the broker restart broke guarantees:\n" + "\n".join(findings)
