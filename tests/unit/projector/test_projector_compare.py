"""Comparing a replay with the live read model: equal states are equal, even without a jobs row."""

from __future__ import annotations

import uuid

from services.projector.replay import compare_snapshots
from services.projector.store import Snapshot


def test_events_of_a_job_without_a_row_on_either_side_are_no_difference() -> None:
    # A job.requested that every consumer refused leaves the job's later events (from a scheduler that
    # took it before the refusal rules) stored without a jobs row, in live and in replay alike.
    job, event = uuid.uuid4(), uuid.uuid4()
    row = {"job_id": job, "seq": 1, "applied": True}
    live = Snapshot(jobs={}, events={event: dict(row)})
    replayed = Snapshot(jobs={}, events={event: dict(row)})
    report = compare_snapshots(live, replayed)
    assert report.differences == []
    assert report.jobs_compared == 1


def test_a_row_on_one_side_only_is_still_a_difference() -> None:
    job, event = uuid.uuid4(), uuid.uuid4()
    row = {"job_id": job, "seq": 1, "applied": True}
    live = Snapshot(jobs={}, events={event: dict(row)})
    replayed = Snapshot(jobs={job: {"status": "queued"}}, events={event: dict(row)})
    assert compare_snapshots(live, replayed).differences == [f"job {job}: missing in live"]
