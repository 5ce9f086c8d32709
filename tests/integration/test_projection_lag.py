"""The api's read-your-writes marks for lists (`ProjectionLag`), against the real consumer_offsets table."""

from __future__ import annotations

import uuid

from sqlalchemy import delete

from schemas.topics import JOBS_REQUESTED
from services.api.admission import ProjectionLag
from services.common.db import make_engine, make_sessions
from services.common.readmodel import ConsumerOffset
from services.common.settings import CommonSettings


async def test_marks_the_projector_passed_are_forgotten_so_lists_stop_asking(
    settings: CommonSettings,
) -> None:
    consumer = f"test-lag-{uuid.uuid4().hex[:8]}"
    engine = make_engine(settings)
    sessions = make_sessions(engine)
    lag = ProjectionLag(consumer)
    try:
        lag.acked(0, 5)
        lag.acked(0, 7)
        lag.acked(1, 3)
        async with sessions() as session:
            session.add(ConsumerOffset(consumer=consumer, topic=JOBS_REQUESTED, partition=0, next_offset=6))
            await session.commit()
            assert not await lag.projected(session, lag.newest())
            assert lag.newest() == {0: 7, 1: 3}, "offset 5 was passed; 7 and partition 1 were not"
            await session.merge(
                ConsumerOffset(consumer=consumer, topic=JOBS_REQUESTED, partition=0, next_offset=8)
            )
            session.add(ConsumerOffset(consumer=consumer, topic=JOBS_REQUESTED, partition=1, next_offset=4))
            await session.commit()
            assert await lag.projected(session, lag.newest())
            assert lag.newest() == {}, "caught up: a list has nothing to wait for, nor to ask"
            assert (await lag.measure(session)).records == 0
    finally:
        async with sessions() as session:
            await session.execute(delete(ConsumerOffset).where(ConsumerOffset.consumer == consumer))
            await session.commit()
        await engine.dispose()
