"""Which events a job's webhook gets, as pure functions: the per-request filter and the fence of stale
attempts. The fence follows the read model's rules (`services/projector/fold.is_applied`; services do not
import one another, so a unit test checks the two agree on random histories): the notifier and the api
never disagree on whether an event counts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Final

from schemas.events import TERMINAL_TYPES, EventType, JobDispatched, JobEvent, JobRetrying
from schemas.jobs import WebhookEvent

# The `jobs.events` types a webhook can be called for, and the name a request uses for each.
WEBHOOK_TYPES: Final[dict[EventType, WebhookEvent]] = {
    EventType.STARTED: WebhookEvent.STARTED,
    EventType.PROGRESS: WebhookEvent.PROGRESS,
    EventType.SUCCEEDED: WebhookEvent.SUCCEEDED,
    EventType.FAILED: WebhookEvent.FAILED,
    EventType.CANCELLED: WebhookEvent.CANCELLED,
}


def wanted(event_type: str, events: Iterable[str]) -> bool:
    """Whether a webhook subscribed to `events` (request names: `succeeded`, ...) gets `event_type`."""
    try:
        name = WEBHOOK_TYPES.get(EventType(event_type))
    except ValueError:
        return False
    return name is not None and name.value in set(events)


@dataclass(frozen=True, slots=True)
class Fence:
    """What a job's events so far say about the next one: the newest attempt and whether it ended."""

    attempt: int = 0
    terminal: bool = False


def admit(fence: Fence, event: JobEvent) -> tuple[bool, Fence]:
    """Whether `event` (of `jobs.events`, in partition order) counts, and the fence after it.

    An event of an attempt older than the newest dispatched or retried one, or any event after a counted
    terminal event, does not count: a stale attempt's success must not reach a client whose job ran again.
    """
    if not counts(fence, event):
        return False, fence
    moved_to = asserted_attempt(event)
    return True, replace(
        fence,
        attempt=max(fence.attempt, moved_to) if moved_to is not None else fence.attempt,
        terminal=fence.terminal or event.type in TERMINAL_TYPES,
    )


def asserted_attempt(event: JobEvent) -> int | None:
    """The attempt a dispatch or a retry moves the job to; None for other events."""
    if isinstance(event, JobDispatched):
        return event.attempt
    if isinstance(event, JobRetrying):
        return event.next_attempt
    return None


def counts(fence: Fence, event: JobEvent) -> bool:
    """Nothing counts after the terminal event; a dispatch counts unless it goes back to an older attempt,
    a retry only when it moves past the current one, anything else unless its attempt is older."""
    if event.type is EventType.REQUESTED:
        return True
    if fence.terminal:
        return False
    if isinstance(event, JobDispatched):
        return event.attempt >= fence.attempt
    if isinstance(event, JobRetrying):
        return event.next_attempt > fence.attempt
    return event.attempt >= fence.attempt


def deliverable(event: JobEvent) -> bool:
    """Whether some webhook could want `event` at all (others only move the fence)."""
    return event.type in WEBHOOK_TYPES
