"""Process plumbing: the heap a service made to start is kept off the cyclic collector."""

from __future__ import annotations

import gc

from services.common.runtime import GC_YOUNG_THRESHOLD, settle_heap


def test_settle_heap_freezes_what_exists_and_collects_the_young_less_often() -> None:
    threshold = gc.get_threshold()
    started = [object() for _ in range(1000)]  # what a service made to start
    try:
        settle_heap()
        assert gc.get_freeze_count() >= len(started), "the start's objects are out of every collection"
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *threshold[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
