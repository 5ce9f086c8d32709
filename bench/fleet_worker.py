"""One GPU slot of the simulated fleet: the real worker process with a generator that sleeps per step.

Everything but the denoising is real: Kafka, heartbeats, checkpoints to S3, the MP4 encode and upload.
The step time depends on the request, as on a GPU: Mochi's H100 step time for its frame count / scale.

    python bench/fleet_worker.py --slot 3 --slots 8 --scale 50
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from fleet_stats import PACING_HELP, PACINGS, step_seconds

from schemas.jobs import ResolvedRequest
from services.common.logging import configure
from services.common.runtime import run_until_signalled
from services.worker.engine.generator import (
    CheckpointCallback,
    GeneratedVideo,
    PhaseCallback,
    ResumeState,
    StepCallback,
)
from services.worker.engine.simulated import SimulatedGenerator
from services.worker.main import serve
from services.worker.settings import WorkerSettings


class StepTimeGenerator(SimulatedGenerator):
    """A `SimulatedGenerator` whose seconds per step follow the request's frame count."""

    def __init__(self, model_name: str, scale: float, pacing: str = "gpu") -> None:
        super().__init__(
            model_name, seconds_per_step=step_seconds(31, scale), discount_wakeups=pacing == "gpu"
        )
        self.scale = scale

    def generate(
        self,
        request: ResolvedRequest,
        *,
        on_phase: PhaseCallback,
        on_step: StepCallback,
        resume: ResumeState | None = None,
        checkpoint_every: int = 0,
        on_checkpoint: CheckpointCallback | None = None,
    ) -> GeneratedVideo:
        self.seconds_per_step = step_seconds(request.num_frames, self.scale)
        return super().generate(
            request,
            on_phase=on_phase,
            on_step=on_step,
            resume=resume,
            checkpoint_every=checkpoint_every,
            on_checkpoint=on_checkpoint,
        )


def add_slot_options(p: argparse.ArgumentParser) -> None:
    """What a simulated slot runs like, for this script and the naive design's workers alike."""
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--scale", type=float, default=50.0)
    p.add_argument("--model", default="mochi-1-preview")
    p.add_argument("--checkpoint-every", type=int, default=8)
    p.add_argument(
        "--checkpoint-min-seconds",
        type=float,
        default=0.6,
        help="no checkpoint within this long of the start or the last one (production's 30 s / 50)",
    )
    p.add_argument("--progress-interval", type=float, default=0.5)
    p.add_argument("--step-pacing", choices=PACINGS, default="gpu", help=PACING_HELP)
    p.add_argument("--scratch-dir", type=Path, default=Path(".run/bench-fleet/scratch"))


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slot", type=int, required=True)
    add_slot_options(p)
    return p.parse_args(argv)


def settings_of(args: argparse.Namespace, name: str) -> WorkerSettings:
    """The worker's own settings class; explicit values win over the environment."""
    return WorkerSettings(
        slot=args.slot,
        gpu_slots=args.slots,
        hostname=f"{name}-{args.slot}",
        model=args.model,
        simulate=True,
        checkpoint_every=args.checkpoint_every,
        checkpoint_min_seconds=args.checkpoint_min_seconds,
        progress_interval_seconds=args.progress_interval,
        scratch_dir=args.scratch_dir / f"{name}-{args.slot}",
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    settings = settings_of(args, "fleet")
    configure(f"fleet-worker-{args.slot}", settings.log_level)
    generator = StepTimeGenerator(args.model, args.scale, args.step_pacing)
    generator.load()
    run_until_signalled(lambda stop: serve(settings, stop, generator=generator))


if __name__ == "__main__":
    main()
