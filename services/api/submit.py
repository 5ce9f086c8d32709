"""The submit deadline: a job exists only if Kafka appended its `job.requested` by the request's `accept_by`.

The api cannot take a record back from its producer once it gave up waiting for the ack: aiokafka keeps
it and may deliver it after a broker outage. So the request carries a deadline, the requested topic keeps
the broker's append time (`message.timestamp.type=LogAppendTime`), and every consumer treats a record
appended after its deadline as no job at all. The api answers 202 only for an ack whose append time is
within the deadline, and 503 otherwise, so its answer and the consumers' verdict agree.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Protocol

from prometheus_client import Counter

from schemas.events import JobRequested, utcnow
from services.api.errors import JobNotCreated
from services.api.publisher import Ack
from services.api.settings import ApiSettings
from services.common.errors import BrokerUnavailable

log = logging.getLogger(__name__)

REFUSED = Counter(
    "reelstream_api_submits_not_created_total",
    "Submits answered 503 because Kafka did not append them by their deadline",
    ["reason"],
)


class RequestPublisher(Protocol):
    async def requested(self, event: JobRequested, wait_seconds: float) -> Ack: ...


def accept_by(settings: ApiSettings, now: datetime | None = None) -> datetime:
    """The deadline of a request submitted `now`."""
    return (now or utcnow()) + timedelta(seconds=settings.submit_deadline_seconds)


async def publish_request(publisher: RequestPublisher, event: JobRequested, settings: ApiSettings) -> Ack:
    """Publish `event`; return Kafka's ack when the record is a job, else raise `JobNotCreated`.

    Waits until `accept_by` plus the clock-skew margin: a record the broker appends later than that bears
    an append time past its deadline (unless the broker's clock lags the api's by more than the margin),
    so its consumers drop it. An ack without an append time (a topic left on CreateTime) cannot be judged;
    consumers take such a record as a job, so it is answered as one.
    """
    if event.accept_by is None:
        raise ValueError("a job request published by the api always carries accept_by")
    wait = (event.accept_by - utcnow()).total_seconds() + settings.clock_skew_seconds
    try:
        ack = await publisher.requested(event, max(wait, 0.0))
    except BrokerUnavailable as e:
        REFUSED.labels(reason="no_ack").inc()
        raise JobNotCreated("Kafka did not acknowledge it in time", event.accept_by) from e
    if ack.appended_at is None:
        log.warning("the requested topic keeps CreateTime: submit deadlines cannot be enforced")
    elif event.arrived_late(ack.appended_at):
        REFUSED.labels(reason="late").inc()
        late = (ack.appended_at - event.accept_by).total_seconds()
        raise JobNotCreated(
            f"Kafka appended it at {ack.appended_at.isoformat()}, {late:.3f} s after its deadline",
            event.accept_by,
        )
    return ack
