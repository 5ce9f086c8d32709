"""Settings of the scheduler."""

from __future__ import annotations

from pydantic import Field

from schemas.topics import SNAPSHOT_MAX_BYTES
from services.common.settings import CommonSettings


class SchedulerSettings(CommonSettings):
    service_name: str = "scheduler"
    dead_after_seconds: float = Field(
        default=10.0, gt=0, description="Heartbeat silence that marks a slot dead."
    )
    lost_grace_seconds: float = Field(
        default=3.0, ge=0, description="How long a slot may report another job before its assignment is lost."
    )
    max_attempts: int = Field(default=3, ge=1, description="Dispatches of one job before it fails for good.")
    reserved_interactive_slots: int = Field(
        default=0, ge=0, description="Slots kept free of batch work whenever interactive jobs may arrive."
    )
    lookahead_seconds: float = Field(
        default=2.0,
        ge=0,
        description=(
            "Dispatch a slot's next job this long before its current one should finish denoising, so the "
            "GPU does not wait for a dispatch round trip; 0 = only to idle slots."
        ),
    )
    balance_batch: bool = Field(
        default=True,
        description=(
            "Hand running batch jobs back (with a checkpoint) so the batch lane's last jobs do not run "
            "alone on a few slots while the others idle (needs workers with checkpoints on)."
        ),
    )
    balance_min_gain_seconds: float = Field(
        default=60.0,
        gt=0,
        description=(
            "A preemption must cut at least this much slot time from the work predicted to end after "
            "the balanced finish: well above what a preemption costs (the next attempt loads the "
            "checkpoint and encodes the prompt again) and the error of the predictions."
        ),
    )
    max_preemptions: int = Field(default=1, ge=0, description="Times one job may be preempted.")
    queue_ttl_seconds: float = Field(
        default=24 * 3600,
        ge=0,
        description="A job waiting for a slot this long after its submit fails (queue_timeout); 0 = never.",
    )
    unserviceable_after_seconds: float = Field(
        default=300.0,
        ge=0,
        description=(
            "A waiting job whose model no live slot has served for this long, while other slots are live,"
            " fails as model_unavailable; 0 = never. An outage of every slot is not judged."
        ),
    )
    tick_seconds: float = Field(default=0.5, gt=0, description="Longest wait between two planning rounds.")
    snapshot_interval_seconds: float = Field(
        default=30.0,
        ge=0,
        description=(
            "How often the live scheduler writes its state and input offsets to the snapshot topic (and"
            " once more at a clean shutdown), so a restart folds only the records after them; 0 = never."
        ),
    )
    snapshot_timeout_seconds: float = Field(
        default=20.0,
        gt=0,
        description=(
            "Longest wait for the broker to acknowledge one snapshot, or to return the latest at start;"
            " a snapshot that misses it is skipped (the next one, or a full replay, stands in)."
        ),
    )
    snapshot_restore: bool = Field(
        default=True,
        description="Start from the latest snapshot; false replays every topic from its beginning.",
    )
    queue_view_interval_seconds: float = Field(
        default=0.5,
        ge=0,
        description=(
            "How often the queue view (positions and ETAs of the waiting jobs, read by the api) is computed"
            " and, when the order changed, published; 0 = never (the api then shows no positions)."
        ),
    )
    queue_view_refresh_seconds: float = Field(
        default=5.0, gt=0, description="Longest time between two published queue views, changed or not."
    )
    queue_view_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Longest wait for the broker to acknowledge one queue view."
    )
    snapshot_max_bytes: int = Field(
        default=SNAPSHOT_MAX_BYTES,
        ge=1024 * 1024,
        le=SNAPSHOT_MAX_BYTES,
        description=(
            "Largest snapshot the producer sends and the reader fetches: at most the snapshot topic's"
            " max.message.bytes. A larger one is not written (logged); restarts then replay further."
        ),
    )
