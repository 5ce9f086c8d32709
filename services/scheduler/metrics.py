"""The scheduler's queue as the operator watches it: depth and oldest wait per lane and tenant, and how
long a (re)start took to rebuild the state before its first decision."""

from __future__ import annotations

from datetime import datetime
from typing import Final

from prometheus_client import Gauge, Histogram

from services.scheduler.state import SchedulerState

QUEUE_DEPTH: Final = Gauge(
    "reelstream_scheduler_queue_depth", "Jobs waiting for a slot, per lane and tenant", ["lane", "tenant"]
)
OLDEST_WAIT: Final = Gauge(
    "reelstream_scheduler_oldest_wait_seconds",
    "How long the longest-waiting job of a lane and tenant has waited (since it was queued)",
    ["lane", "tenant"],
)
REBUILD_SECONDS: Final = Histogram(
    "reelstream_scheduler_rebuild_seconds",
    "Time from start to the first decision: snapshot load and the fold of the records after it",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
LAST_REBUILD_SECONDS: Final = Gauge(
    "reelstream_scheduler_last_rebuild_seconds", "Rebuild time of this process's start"
)


class QueueGauges:
    """Sets the per-tenant gauges each round and removes the series of tenants no longer waiting, so a
    tenant's queue that emptied reads as gone rather than stuck at its last value."""

    def __init__(self) -> None:
        self.shown: set[tuple[str, str]] = set()

    def observe(self, state: SchedulerState, now: datetime) -> None:
        seen: set[tuple[str, str]] = set()
        for lane, tenants in state.by_tenant.items():
            for tenant, keys in tenants.items():
                if not keys:
                    continue
                labels = (lane.value, tenant)
                seen.add(labels)
                QUEUE_DEPTH.labels(*labels).set(len(keys))
                # Keys sort by the time the job was queued: the first waited longest.
                OLDEST_WAIT.labels(*labels).set(max((now - keys[0][0]).total_seconds(), 0.0))
        for labels in self.shown - seen:
            QUEUE_DEPTH.remove(*labels)
            OLDEST_WAIT.remove(*labels)
        self.shown = seen
