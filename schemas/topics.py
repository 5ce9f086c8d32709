"""Kafka topic names and their keys: part of the public contract (see docs/design.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

PREFIX: Final = "reelstream"

JOBS_REQUESTED: Final = f"{PREFIX}.jobs.requested"
JOBS_DISPATCH: Final = f"{PREFIX}.jobs.dispatch"
JOBS_EVENTS: Final = f"{PREFIX}.jobs.events"
JOBS_CONTROL: Final = f"{PREFIX}.jobs.control"
WORKERS_HEARTBEAT: Final = f"{PREFIX}.workers.heartbeat"
DLQ: Final = f"{PREFIX}.dlq"

# The broker stamps each record with its own clock when it appends it. A job request carries a deadline
# (`JobRequested.accept_by`) that consumers judge against this stamp, so that a record the api gave up on
# and answered 503 for can never become a job, however late the producer delivers it.
BROKER_TIMESTAMPS: Final[Mapping[str, str]] = MappingProxyType({"message.timestamp.type": "LogAppendTime"})


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """How a topic is laid out. `partitions=None` means one partition per GPU slot."""

    name: str
    key: str
    partitions: int | None
    compacted: bool
    description: str
    configs: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Topic configs the contract depends on, beyond layout and retention (which are deployment choices)."""


def topic_specs(default_partitions: int = 6) -> tuple[TopicSpec, ...]:
    """Every topic of the contract, in the order they appear in the design."""
    n = default_partitions
    return (
        TopicSpec(
            JOBS_REQUESTED,
            "job id",
            n,
            False,
            "A job was accepted: full request, tenant, priority. Timestamps are the broker's append time.",
            BROKER_TIMESTAMPS,
        ),
        TopicSpec(
            JOBS_DISPATCH,
            "job id",
            None,
            False,
            "The scheduler's assignment; partition p is read by GPU slot p only.",
        ),
        TopicSpec(JOBS_EVENTS, "job id", n, False, "Every lifecycle event of every job, in order per job."),
        TopicSpec(
            JOBS_CONTROL,
            "job id",
            n,
            False,
            "Requests to whoever holds a job: cancel and preempt requests, and a copy of each job.retrying;"
            " every worker reads all of them.",
        ),
        TopicSpec(WORKERS_HEARTBEAT, "slot id", n, True, "Slot liveness, state, loaded model, s/step."),
        TopicSpec(DLQ, "original key", 1, False, "Poison messages with the reason; never silently dropped."),
    )


SCHEDULER_SNAPSHOT: Final = f"{PREFIX}.scheduler.snapshot"
# A snapshot holds every open job and the ids of every finished one: far above the broker's 1 MiB default.
SNAPSHOT_MAX_BYTES: Final = 64 * 1024 * 1024


SCHEDULER_QUEUE: Final = f"{PREFIX}.scheduler.queue"
# The queue view lists every waiting job (about 60 bytes each): 50,000 of them pass the 1 MiB default.
QUEUE_VIEW_MAX_BYTES: Final = 16 * 1024 * 1024


def internal_topic_specs() -> tuple[TopicSpec, ...]:
    """Topics among reelstream's own services (the scheduler's state for itself, its queue view for the
    api): their format may change with any release, so they are not in the public contract."""
    return (
        TopicSpec(
            SCHEDULER_QUEUE,
            "queue",
            1,
            True,
            "The scheduler's queue view: each waiting job's position and ETA (schemas/queue.py).",
            MappingProxyType({"max.message.bytes": str(QUEUE_VIEW_MAX_BYTES)}),
        ),
        TopicSpec(
            SCHEDULER_SNAPSHOT,
            "scheduler",
            1,
            True,
            "The scheduler's latest state snapshot and the input offsets it reflects (services/scheduler).",
            MappingProxyType({"max.message.bytes": str(SNAPSHOT_MAX_BYTES)}),
        ),
    )
