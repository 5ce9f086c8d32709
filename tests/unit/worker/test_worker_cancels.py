"""The worker's memory of cancels: bounded, oldest out, and cheap however many arrive."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.worker import slot
from services.worker.slot import remember_cancel

T0 = datetime(2026, 12, 5, tzinfo=UTC)


def test_cancels_past_the_look_back_are_forgotten_oldest_first() -> None:
    kept: dict[uuid.UUID, datetime] = {}
    old, recent = uuid.uuid4(), uuid.uuid4()
    remember_cancel(kept, old, T0, lookback_seconds=3600)
    remember_cancel(kept, recent, T0 + timedelta(minutes=30), lookback_seconds=3600)
    remember_cancel(kept, uuid.uuid4(), T0 + timedelta(minutes=61), lookback_seconds=3600)
    assert old not in kept and recent in kept


def test_a_repeated_cancel_moves_to_the_newest_end() -> None:
    kept: dict[uuid.UUID, datetime] = {}
    first, second = uuid.uuid4(), uuid.uuid4()
    remember_cancel(kept, first, T0, lookback_seconds=3600)
    remember_cancel(kept, second, T0, lookback_seconds=3600)
    remember_cancel(kept, first, T0 + timedelta(minutes=1), lookback_seconds=3600)
    assert list(kept) == [second, first]


def test_a_burst_of_cancels_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slot, "MAX_CANCELS_KEPT", 1_000)
    kept: dict[uuid.UUID, datetime] = {}
    ids = [uuid.uuid4() for _ in range(30_000)]
    for i, job_id in enumerate(ids):
        remember_cancel(kept, job_id, T0 + timedelta(milliseconds=i), lookback_seconds=3600)
    assert list(kept) == ids[-1_000:]
