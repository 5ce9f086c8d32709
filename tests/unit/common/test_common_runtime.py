"""Process plumbing: a service runs on uvloop until SIGTERM, the heap it made to start is kept off the
cyclic collector, and a batch's objects are not walked while it runs."""

from __future__ import annotations

import asyncio
import gc
import os
import signal

import uvloop

from services.common.runtime import GC_YOUNG_THRESHOLD, collector_paused, run_until_signalled, settle_heap


def test_run_until_signalled_runs_on_uvloop_and_sigterm_sets_stop() -> None:
    seen: list[object] = []

    async def main(stop: asyncio.Event) -> None:
        seen.append(asyncio.get_running_loop())
        os.kill(os.getpid(), signal.SIGTERM)  # what Kubernetes sends: a clean stop, not a dead process
        async with asyncio.timeout(5):
            await stop.wait()
        seen.append("stopped")

    run_until_signalled(main, settle=False)
    assert isinstance(seen[0], uvloop.Loop)
    assert seen[1:] == ["stopped"]


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


def test_collector_paused_stops_automatic_collections_until_the_last_open_block_ends() -> None:
    watching = False
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and watching:
            collections.append(info["generation"])

    def allocate() -> None:
        garbage = [[] for _ in range(10 * gc.get_threshold()[0])]  # enough for several young collections
        del garbage

    async def batch(entered: asyncio.Event, leave: asyncio.Event) -> None:
        with collector_paused():
            entered.set()
            await leave.wait()

    async def interleaved() -> None:
        nonlocal watching
        first_in, first_out, second_in, second_out = (asyncio.Event() for _ in range(4))
        first = asyncio.create_task(batch(first_in, first_out))
        second = asyncio.create_task(batch(second_in, second_out))
        await first_in.wait()
        await second_in.wait()
        watching = True
        allocate()
        first_out.set()
        await first
        assert not gc.isenabled(), "the second block is still open"
        allocate()
        watching = False
        second_out.set()
        await second

    gc.callbacks.append(count)
    try:
        watching = True
        allocate()
        watching = False
        assert collections, "the same allocations collect when nothing is paused"
        collections.clear()
        asyncio.run(interleaved())
    finally:
        gc.callbacks.remove(count)
    assert collections == [], "no automatic collection ran while a block was open"
    assert gc.isenabled(), "back on once the last block ended"


def test_collector_paused_leaves_a_collector_switched_off_elsewhere_off() -> None:
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled(), "whoever switched it off switches it back on"
    finally:
        gc.enable()
