"""The one producer-renewal routine (services/common/kafka.py `Renewing`), on fake clients."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from services.common.kafka import Renewing


class FakeClient:
    def __init__(self, number: int, *, reachable: bool = True, stop_fails: bool = False) -> None:
        self.number, self.reachable, self.stop_fails = number, reachable, stop_fails
        self.started = self.stopped = False

    async def start(self) -> None:
        if not self.reachable:
            raise ConnectionError("no broker")
        self.started = True

    async def stop(self) -> None:
        self.stopped = True
        if self.stop_fails:
            raise RuntimeError("already broken")


def renewing(*clients: FakeClient) -> Renewing[FakeClient]:
    made = iter(clients)
    return Renewing("test", lambda: next(made), FakeClient.start, FakeClient.stop)


async def test_a_broken_client_is_replaced_and_closed() -> None:
    first, second = FakeClient(1, stop_fails=True), FakeClient(2)
    client = renewing(first, second)
    assert client.current is first
    await client.renew(first)
    assert client.current is second and second.started
    assert first.stopped  # its stop failed, which is ignored


async def test_concurrent_failures_of_one_client_renew_it_once() -> None:
    numbers = itertools.count(1)
    client = Renewing("test", lambda: FakeClient(next(numbers)), FakeClient.start, FakeClient.stop)
    first = client.current
    await asyncio.gather(*(client.renew(first) for _ in range(5)))
    assert client.current.number == 2
    await client.renew(first)  # a late report about the replaced client changes nothing
    assert client.current.number == 2


async def test_the_current_client_is_kept_while_a_fresh_one_cannot_connect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, unreachable, third = FakeClient(1), FakeClient(2, reachable=False), FakeClient(3)
    client = renewing(first, unreachable, third)
    await client.renew(first)
    assert client.current is first and not first.stopped
    assert "keeping the test producer" in caplog.text
    await client.renew(first)  # the next failure tries again
    assert client.current is third and first.stopped
