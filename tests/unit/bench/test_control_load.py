"""The control-plane benchmark's open loop: jobs start on their schedule, not after the one before."""

from __future__ import annotations

import asyncio

from bench.control_load import paced


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
