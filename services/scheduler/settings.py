"""Settings of the scheduler."""

from __future__ import annotations

from pydantic import Field

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
    tick_seconds: float = Field(default=0.5, gt=0, description="Longest wait between two planning rounds.")
