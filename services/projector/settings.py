"""Settings of the projector service."""

from __future__ import annotations

from pydantic import Field

from services.common.settings import JobTopicsReaderSettings


class ProjectorSettings(JobTopicsReaderSettings):
    """The projection of both job topics into the read model, and the retention sweeper beside it."""

    service_name: str = "projector"
    consumer_name: str = Field(
        default="reelstream-projector",
        description="Key of this projection's rows in consumer_offsets (no Kafka consumer group is used).",
    )
    batch_max_records: int = Field(
        default=5000,
        ge=1,
        le=100_000,
        description=(
            "Most records one transaction applies. A transaction costs about ten events, so under a backlog"
            " (a burst, a restart) big batches are what lets the projector fold 10,000 events/s"
            " (bench/projector_throughput.py); live batches stay what arrives in batch_interval_ms."
        ),
    )
    batch_interval_ms: int = Field(
        default=50,
        ge=0,
        le=10_000,
        description=(
            "While records keep arriving, at most one transaction per this interval: batches grow with the"
            " load instead of the transactions (a transaction costs as much as ten events). A record that"
            " arrives after a quiet spell is applied at once, and so is a job's lifecycle event (anything"
            " on jobs.events but progress and previews ends the gather). 0: a transaction per fetch."
        ),
    )
    stall_seconds: float = Field(
        default=5.0,
        gt=0,
        description=(
            "The live loop counts as stalled (gauge reelstream_projector_stalled) when it has not got"
            " through a poll and its transaction for this long: Postgres or Kafka failing or hanging."
        ),
    )
    replay_stall_seconds: float = Field(
        default=120.0, gt=0, description="A replay that reads nothing for this long gives up."
    )
    sweep_interval_seconds: float = Field(
        default=300.0, gt=0, description="How often the sweeper deletes expired jobs (retention_days)."
    )
    sweep_timeout_seconds: float = Field(
        default=240.0, gt=0, description="Longest one sweep may take; what it did not reach, the next does."
    )
    sweep_batch: int = Field(default=100, ge=1, le=10_000, description="Jobs the sweeper reads per query.")
    deleted_grace_seconds: float = Field(
        default=600.0,
        ge=0,
        description=(
            "After a job's tombstone, when the sweeper empties its S3 prefixes once more: a slot that was"
            " running the job may still have written an object after the delete."
        ),
    )
    deleted_recheck_window_seconds: float = Field(
        default=3600.0,
        gt=0,
        description=(
            "How long after its grace a tombstone is still looked for (once): covers a projector that"
            " projected it late, and a sweeper restarted meanwhile."
        ),
    )
