"""How the api's ETA turns the priced work into wait and run seconds (services/api/eta.py).

The pricing itself is SQL and is tested against Postgres in tests/integration/test_eta.py; here a fake
session stands in for it and returns the one row the estimate query gives.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.dialects import postgresql

from services.api.eta import Eta, _query, estimate
from services.common.readmodel import Job

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


class FakeResult:
    def __init__(self, row: tuple[Any, ...]) -> None:
        self.row = row

    def one(self) -> tuple[Any, ...]:
        return self.row


class FakeSession:
    """Answers every query with the one row the estimate query gives: the asked job's s/step, its run
    seconds, the seconds in front of it, the slots of other models, the seconds left on its own slot."""

    def __init__(self, row: tuple[Any, ...] | None) -> None:
        self.row = row
        self.queries = 0

    async def execute(self, statement: Any) -> FakeResult:
        assert self.row is not None, "no query expected"
        self.queries += 1
        return FakeResult(self.row)


def job(status: str = "queued", dispatched: bool = False) -> Job:
    return Job(
        id=uuid.uuid4(),
        status=status,
        priority="interactive",
        model="mochi-1-preview",
        request={"width": 848, "height": 480, "num_frames": 31, "num_inference_steps": 16},
        seconds_per_step=None,
        created_at=T0,
        queued_at=T0,
        dispatched_at=T0 if dispatched else None,
    )


async def estimate_with(row: tuple[Any, ...] | None, asked: Job, slots: int) -> Eta | None:
    session = FakeSession(row)
    eta = await estimate(session, asked, slots)  # type: ignore[arg-type]
    assert session.queries == (0 if row is None else 1)
    return eta


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
async def test_an_ended_job_has_no_eta_and_costs_no_query(status: str) -> None:
    assert await estimate_with(None, job(status), slots=2) is None


async def test_nothing_measured_for_the_model_means_no_eta() -> None:
    assert await estimate_with((None, None, 0.0, 0, 0.0), job(), slots=2) is None


async def test_the_work_in_front_is_shared_by_the_slots_of_the_model() -> None:
    assert await estimate_with((1.02, 19.32, 100.0, 0, 0.0), job(), slots=4) == Eta(25.0, 19.32)
    assert await estimate_with((1.02, 19.32, 100.0, 2, 0.0), job(), slots=4) == Eta(50.0, 19.32)


async def test_never_fewer_than_one_slot() -> None:
    assert await estimate_with((1.02, 19.32, 100.0, 4, 0.0), job(), slots=4) == Eta(100.0, 19.32)
    assert await estimate_with((1.02, 19.32, 100.0, 0, 0.0), job(), slots=0) == Eta(100.0, 19.32)


async def test_a_running_job_does_not_wait() -> None:
    assert await estimate_with((1.02, 10.0, 100.0, 0, 5.0), job("running"), slots=2) == Eta(0.0, 10.0)


async def test_a_dispatched_job_waits_only_for_the_job_on_its_slot() -> None:
    assert await estimate_with((1.02, 18.0, 100.0, 0, 0.0), job(dispatched=True), slots=2) == Eta(0.0, 18.0)
    assert await estimate_with((1.02, 19.0, 100.0, 0, 8.0), job(dispatched=True), slots=2) == Eta(8.0, 19.0)


async def test_nothing_in_front() -> None:
    assert await estimate_with((1.02, 19.32, None, None, None), job(), slots=2) == Eta(0.0, 19.32)


def test_the_estimate_is_one_statement_grouped_by_size() -> None:
    sql = str(_query(job(), 2).compile(dialect=postgresql.dialect()))
    assert sql.startswith("WITH pool AS")
    assert "GROUP BY ranked.width, ranked.height, ranked.num_frames" in sql
    assert "PARTITION BY pool.width, pool.height, pool.num_frames" in sql
