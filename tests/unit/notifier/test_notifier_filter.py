"""Which events a job's webhook is called for: the request's `webhook_events` and the attempt fence."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.events import (
    JobCancelled,
    JobCheckpointed,
    JobDispatched,
    JobError,
    JobEvent,
    JobFailed,
    JobProgress,
    JobRetrying,
    JobStarted,
    JobSucceeded,
    VideoResult,
)
from schemas.jobs import DEFAULT_WEBHOOK_EVENTS, JobRequest, Phase, RequestRejected, ResolvedRequest, resolve
from schemas.samples import resolved_request
from services.notifier.subscriptions import Fence, admit, deliverable, wanted
from services.projector.fold import EMPTY_HISTORY
from services.projector.fold import admit as admit_to_read_model

JOB = uuid.uuid4()


def _request(**fields: Any) -> JobRequest:
    return JobRequest(prompt="a fox", model="tiny-mochi", webhook_url="https://hooks.example.com/x", **fields)


def test_without_webhook_events_the_terminal_ones_are_sent() -> None:
    assert [e.value for e in resolve(_request()).webhook_events] == ["succeeded", "failed", "cancelled"]


def test_named_events_are_kept_once_each_in_a_fixed_order() -> None:
    resolved = resolve(_request(webhook_events=["succeeded", "started", "progress", "started"]))
    assert [e.value for e in resolved.webhook_events] == ["started", "progress", "succeeded"]
    assert resolve(_request(webhook_events=[])).webhook_events == []


def test_an_unknown_event_is_a_problem_naming_the_allowed_values() -> None:
    with pytest.raises(RequestRejected) as caught:
        resolve(_request(webhook_events=["succeeded", "finished"]))
    (problem,) = caught.value.problems
    assert problem.field == "webhook_events"
    assert "'finished'" in problem.message
    assert problem.allowed == "started, progress, succeeded, failed, cancelled"


def test_a_non_string_event_is_refused_by_validation() -> None:
    with pytest.raises(ValidationError):
        JobRequest.model_validate({"prompt": "x", "webhook_events": [1]})


def test_a_record_written_before_the_field_gets_the_default() -> None:
    old = resolved_request().model_dump(mode="json")
    old.pop("webhook_events", None)
    assert tuple(ResolvedRequest.model_validate(old).webhook_events) == DEFAULT_WEBHOOK_EVENTS


@pytest.mark.parametrize(
    ("event_type", "subscribed", "expected"),
    [
        ("job.succeeded", ["succeeded", "failed", "cancelled"], True),
        ("job.progress", ["succeeded", "failed", "cancelled"], False),
        ("job.progress", ["progress"], True),
        ("job.started", ["started"], True),
        ("job.cancelled", ["cancelled"], True),
        ("job.failed", [], False),
        ("job.dispatched", ["started", "progress", "succeeded", "failed", "cancelled"], False),
        ("job.checkpointed", ["progress"], False),
        ("not.a.type", ["progress"], False),
    ],
)
def test_the_filter(event_type: str, subscribed: list[str], expected: bool) -> None:
    assert wanted(event_type, subscribed) is expected


def _ev(kind: type[JobEvent], attempt: int, **fields: Any) -> JobEvent:
    return kind(job_id=JOB, producer="test", attempt=attempt, **fields)  # type: ignore[operator, no-any-return]


def _succeeded(attempt: int) -> JobEvent:
    result = VideoResult(
        video_key="v", poster_key=None, size_bytes=1, width=8, height=8, fps=8, frames=9, duration_seconds=1.1
    )
    return _ev(JobSucceeded, attempt, result=result, generation_seconds=1.0)


def _run(events: list[JobEvent]) -> list[str]:
    """The types of the events that count and that a webhook could get."""
    fence, sent = Fence(), []
    for event in events:
        applied, fence = admit(fence, event)
        if applied and deliverable(event):
            sent.append(f"{event.type.value}@{event.attempt}")
    return sent


def test_a_stale_attempts_events_are_fenced_off() -> None:
    sent = _run([
        _ev(JobDispatched, 1, slot=0, request=resolved_request()),
        _ev(JobStarted, 1, slot=0, worker_id="w0"),
        _ev(JobRetrying, 1, reason="slot silent", next_attempt=2),
        _ev(JobDispatched, 2, slot=1, request=resolved_request()),
        _ev(JobStarted, 2, slot=1, worker_id="w1"),
        _ev(JobProgress, 1, phase=Phase.DENOISING, progress=0.5),  # the paused worker wakes up
        _succeeded(1),
        _ev(JobCheckpointed, 2, step=2, total_steps=4, checkpoint_key="k"),
        _succeeded(2),
    ])  # fmt: skip
    assert sent == ["job.started@1", "job.started@2", "job.succeeded@2"]


def test_nothing_counts_after_a_terminal_event() -> None:
    error = JobError(code="internal", message="x")
    sent = _run([
        _ev(JobDispatched, 1, slot=0, request=resolved_request()),
        _ev(JobCancelled, 1),
        _ev(JobFailed, 1, error=error),
        _succeeded(1),
    ])  # fmt: skip
    assert sent == ["job.cancelled@1"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["dispatched", "retrying", "started", "succeeded", "cancelled"]),
                          st.integers(min_value=0, max_value=4)), max_size=25))  # fmt: skip
def test_the_fence_agrees_with_the_read_model_on_any_history(steps: list[tuple[str, int]]) -> None:
    """The notifier keeps its own copy of the projector's fencing rule; they must never disagree."""
    fence, history = Fence(), EMPTY_HISTORY
    for kind, attempt in steps:
        event = {
            "dispatched": lambda a: _ev(JobDispatched, a, slot=0, request=resolved_request()),
            "retrying": lambda a: _ev(JobRetrying, a, reason="r", next_attempt=a + 1),
            "started": lambda a: _ev(JobStarted, a, slot=0, worker_id="w"),
            "succeeded": _succeeded,
            "cancelled": lambda a: _ev(JobCancelled, a),
        }[kind](attempt)
        ours, fence = admit(fence, event)
        stored, history = admit_to_read_model(history, event)
        assert stored is not None
        assert ours == stored.applied, (kind, attempt, fence, history)
        assert (fence.attempt, fence.terminal) == (history.attempt, history.terminal)
