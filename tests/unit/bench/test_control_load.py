"""The control-plane benchmark's open loop: jobs start on their schedule, not after the one before."""

from __future__ import annotations

import asyncio

from bench.control_load import Hops, paced


async def test_paced_starts_on_schedule_however_long_each_takes() -> None:
    loop = asyncio.get_running_loop()
    begin = loop.time()
    starts: list[float] = []

    async def slow(n: int) -> int:
        starts.append(loop.time() - begin)
        await asyncio.sleep(0.2)  # each takes 4 of the schedule's gaps
        return n

    results, kept = await paced(20, 0.5, slow)

    assert results == list(range(10))  # in order, every one awaited
    assert starts[-1] < 0.5  # a closed loop would start the last one after 9 x 0.2 s
    assert starts == sorted(starts)
    assert 15 < kept <= 20
    assert loop.time() - begin < 0.8  # the last start (0.45 s) plus its 0.2 s


def test_hops_split_a_jobs_end_at_the_notify_that_woke_the_api() -> None:
    hops = Hops()
    hops.on_record(b"job-1", [("ce_type", b"io.reelstream.job.progress")])  # not an end
    hops.notified["job-1"] = [9.0, 10.030, 10.500]  # a progress; the end projected; after the client saw it
    hops.consumed["job-1"] = 10.005
    hops.on_record(b"job-1", [("ce_type", b"io.reelstream.job.succeeded")])  # a redelivery: the first stays

    worker, projected, client = hops.split("job-1", occurred=10.0, seen=10.040) or (0.0, 0.0, 0.0)

    assert (round(worker, 3), round(projected, 3), round(client, 3)) == (0.005, 0.025, 0.010)
    assert hops.consumed["job-1"] == 10.005


def test_hops_split_is_none_without_every_hop() -> None:
    hops = Hops()
    hops.on_record(b"job-1", [("ce_type", b"io.reelstream.job.failed")])
    assert "job-1" in hops.consumed
    assert hops.split("job-1", occurred=0.0, seen=1e12) is None  # no NOTIFY seen
    hops.on_notify("job-2")
    assert hops.split("job-2", occurred=0.0, seen=1e12) is None  # its record not consumed
