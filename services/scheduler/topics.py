"""The topics one scheduler reads and writes, by name, so a test or benchmark can run it on its own."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.topics import (
    JOBS_CONTROL,
    JOBS_DISPATCH,
    JOBS_EVENTS,
    JOBS_REQUESTED,
    SCHEDULER_QUEUE,
    SCHEDULER_SNAPSHOT,
    WORKERS_HEARTBEAT,
)


@dataclass(frozen=True, slots=True)
class SchedulerTopics:
    requested: str = JOBS_REQUESTED
    events: str = JOBS_EVENTS
    control: str = JOBS_CONTROL
    dispatch: str = JOBS_DISPATCH
    heartbeat: str = WORKERS_HEARTBEAT
    snapshot: str = SCHEDULER_SNAPSHOT
    queue: str = SCHEDULER_QUEUE

    @property
    def inputs(self) -> tuple[str, ...]:
        """The topics the state is a fold of, so the ones whose offsets a snapshot records."""
        return (self.requested, self.events, self.control, self.dispatch, self.heartbeat)
