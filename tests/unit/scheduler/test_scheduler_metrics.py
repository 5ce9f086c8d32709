"""The scheduler's queue metrics: depth and oldest wait per lane and tenant, gone once a queue empties;
the rebuild time and the consumer lag are exposed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import REGISTRY, generate_latest

from schemas.jobs import Priority
from services.scheduler import main as scheduler_main  # registers the scheduler's own metrics
from services.scheduler.metrics import QueueGauges
from services.scheduler.state import SchedulerState

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def sample(name: str, lane: str, tenant: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"lane": lane, "tenant": tenant})


def state() -> SchedulerState:
    return SchedulerState(
        slots_total=2, dead_after=timedelta(seconds=15), lost_grace=timedelta(seconds=5), max_attempts=3
    )


def test_depth_and_oldest_wait_per_lane_and_tenant_and_an_emptied_queue_is_removed() -> None:
    s, gauges = state(), QueueGauges()
    s.by_tenant[Priority.INTERACTIVE]["acme"] = [(NOW - timedelta(seconds=42), "a"), (NOW, "b")]
    s.by_tenant[Priority.BATCH]["zeta"] = [(NOW - timedelta(seconds=300), "c")]
    gauges.observe(s, NOW)
    assert sample("reelstream_scheduler_queue_depth", "interactive", "acme") == 2
    assert sample("reelstream_scheduler_oldest_wait_seconds", "interactive", "acme") == 42
    assert sample("reelstream_scheduler_queue_depth", "batch", "zeta") == 1
    assert sample("reelstream_scheduler_oldest_wait_seconds", "batch", "zeta") == 300
    del s.by_tenant[Priority.BATCH]["zeta"]
    gauges.observe(s, NOW + timedelta(seconds=1))
    assert sample("reelstream_scheduler_queue_depth", "batch", "zeta") is None
    assert sample("reelstream_scheduler_oldest_wait_seconds", "interactive", "acme") == 43


def test_the_scheduler_metrics_are_exposed() -> None:
    assert scheduler_main.DECISIONS is not None
    text = generate_latest(REGISTRY).decode()
    for name, kind in (
        ("reelstream_scheduler_queue_depth", "gauge"),
        ("reelstream_scheduler_oldest_wait_seconds", "gauge"),
        ("reelstream_scheduler_rebuild_seconds", "histogram"),
        ("reelstream_scheduler_last_rebuild_seconds", "gauge"),
        ("reelstream_consumer_lag_records", "gauge"),
        ("reelstream_dead_letters_total", "counter"),
    ):
        assert f"# TYPE {name} {kind}" in text, name
