"""Settings of the notifier service (webhooks)."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator

from schemas.topics import DLQ
from services.common.settings import Environment, JobTopicsReaderSettings


class NotifierSettings(JobTopicsReaderSettings):
    """The webhook deliveries: the consumer that queues them, the sender that makes them."""

    service_name: str = "notifier"
    consumer_name: str = Field(
        default="reelstream-notifier",
        description="Key of the notifier's rows in consumer_offsets (no Kafka consumer group is used).",
    )
    dlq_topic: str = DLQ

    batch_max_records: int = Field(
        default=2000, ge=1, le=100_000, description="Most records per transaction."
    )
    batch_interval_ms: int = Field(
        default=100,
        ge=0,
        le=10_000,
        description=(
            "While records keep arriving, at most one transaction per this interval: under a burst of"
            " submits the batches grow instead of the transactions. A record after a quiet spell is"
            " applied at once; a webhook leaves at most this much later. 0: a transaction per fetch."
        ),
    )

    retry_initial_seconds: float = Field(
        default=30.0, gt=0, description="Backoff after the first failed attempt (full jitter: 0 to this)."
    )
    retry_cap_seconds: float = Field(
        default=3600.0, gt=0, description="Longest backoff between two attempts of one delivery."
    )
    give_up_after_seconds: float = Field(
        default=86_400.0,
        gt=0,
        description="A delivery still failing this long after it was queued is dead (and dead-lettered).",
    )
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    request_timeout_seconds: float = Field(
        default=15.0, gt=0, le=300, description="Whole attempt: resolve, connect, send, read the answer."
    )
    max_response_bytes: int = Field(
        default=64 * 1024, ge=0, le=16 * 1024 * 1024, description="Most bytes of an answer that are read."
    )
    max_in_flight: int = Field(default=64, ge=1, le=10_000, description="Attempts under way at once.")
    max_in_flight_per_target: int = Field(
        default=8,
        ge=1,
        le=10_000,
        description="Attempts under way at once to one URL: a slow receiver with a backlog holds no more.",
    )
    claim_batch: int = Field(default=100, ge=1, le=10_000, description="Most deliveries claimed per query.")
    sender_poll_seconds: float = Field(
        default=1.0, gt=0, le=60, description="How often the sender looks for due deliveries when not woken."
    )
    lease_margin_seconds: float = Field(
        default=30.0,
        gt=0,
        description=(
            "A claim lapses this long after the attempt's timeout, so a crashed sender's claim is redone."
        ),
    )
    stats_interval_seconds: float = Field(
        default=10.0, gt=0, description="How often the pending/oldest/dead gauges are refreshed."
    )
    parked_keep_seconds: float = Field(
        default=7 * 86_400.0,
        gt=0,
        description=(
            "An event of a job whose job.requested was not read this long after the event is purged:"
            " the request missed its submit deadline, or fell out of the topic's retention."
        ),
    )
    max_event_age_seconds: float = Field(
        default=86_400.0,
        gt=0,
        description=(
            "Events that happened longer ago than this when read are not delivered: a notifier started for"
            " the first time does not call webhooks for the whole history of the topics, and one that was"
            " down longer than this gives those events up (as retries would have by then)."
        ),
    )
    delivery_keep_seconds: float = Field(
        default=30 * 86_400.0,
        gt=0,
        description=(
            "Delivered and dead deliveries (with their attempts) are deleted this long after they were"
            " queued, and jobs not heard of for this long are forgotten."
        ),
    )
    purge_interval_seconds: float = Field(
        default=3600.0, gt=0, description="How often old deliveries and stale parked events are purged."
    )
    shutdown_timeout_seconds: float = Field(
        default=20.0, gt=0, description="How long SIGTERM lets attempts under way finish."
    )

    allow_http: bool = Field(
        default=False, description="Allow http:// webhook URLs (local development and tests only)."
    )
    allow_private_targets: bool = Field(
        default=False,
        description=(
            "Allow webhook hosts that resolve to loopback, private, link-local, CGNAT, ULA or other"
            " non-public addresses (local development and tests only)."
        ),
    )

    @model_validator(mode="after")
    def _safe_in_production(self) -> Self:
        if self.environment is Environment.PRODUCTION and (self.allow_http or self.allow_private_targets):
            raise ValueError("allow_http and allow_private_targets are for development only")
        if self.retry_cap_seconds < self.retry_initial_seconds:
            raise ValueError("retry_cap_seconds must not be below retry_initial_seconds")
        return self
