"""bench/projector.py end to end on the real Postgres, small: its event log and its bookkeeping."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from bench import projector as bench
from services.common.db import make_engine
from services.common.settings import CommonSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_event_log_is_a_burst_then_jobs_eight_at_a_time() -> None:
    log = bench.event_log(jobs=10, slots=8, seed=1)
    assert [r.event.type.value for r in log[:10]] == ["job.requested"] * 10
    jobs = {r.event.job_id for r in log}
    assert len(jobs) == 10
    ends = [max(i for i, r in enumerate(log) if r.event.job_id == job) for job in jobs]
    assert all(log[i].event.type.value == "job.succeeded" for i in ends)
    per_partition: dict[tuple[str, int], list[int]] = {}
    for r in log:
        per_partition.setdefault((r.topic, r.partition), []).append(r.offset)
    assert all(offsets == list(range(len(offsets))) for offsets in per_partition.values())


async def test_measures_each_batch_size_and_leaves_no_schema(settings: CommonSettings) -> None:
    results = await bench.run(bench.parse_args(["--jobs", "6", "--batches", "1,50"]))
    events = len(bench.event_log(6, 8, 7))
    assert [(r["batch"], r["events"], r["transactions"]) for r in results] == [
        (1, events, events),
        (50, events, -(-events // 50)),
    ]
    assert all(r["projector_cpu_us_per_event"] > 0 and r["events_per_s"] > 0 for r in results)
    engine = make_engine(settings)
    try:
        async with engine.connect() as conn:
            left = await conn.scalar(
                text("SELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE :name"),
                {"name": "bench_projector_%"},
            )
    finally:
        await engine.dispose()
    assert left == 0
