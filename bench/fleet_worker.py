"""One GPU slot of the simulated fleet: the real worker process with a generator that sleeps for the GPU.

Everything but the GPU is real: Kafka, heartbeats, checkpoints to S3, the MP4 encode and upload. The GPU
time follows the request, as on an H100, divided by --scale: the prompt encode, each denoising step (by
frame count) and the VAE decode. The MP4 encode of the small simulated frames is real and is stretched
to the time 848x480 frames take on the host (`fleet_stats.encode_seconds`), on the same thread, while
the slot denoises its next job, as in production. Settings come from the environment (REELSTREAM_*),
which the fleet benchmark sets to production's values (bench/fleet_settings.py).

    python -m bench.fleet_worker --slot 3 --slots 8 --scale 50
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.fleet_stats import (
    PACING_HELP,
    PACINGS,
    decode_seconds,
    encode_seconds,
    prompt_seconds,
    step_seconds,
)
from schemas.jobs import ResolvedRequest
from services.common.logging import configure
from services.common.runtime import run_until_signalled
from services.worker import artifacts
from services.worker.engine.generator import GeneratedVideo
from services.worker.engine.simulated import SimulatedGenerator
from services.worker.main import serve
from services.worker.settings import WorkerSettings


class StepTimeGenerator(SimulatedGenerator):
    """A `SimulatedGenerator` whose GPU times follow the request's frame count (H100's / `scale`)."""

    def __init__(
        self, model_name: str, scale: float, pacing: str = "sleep", costs: bool = True, **options: Any
    ) -> None:
        super().__init__(
            model_name, seconds_per_step=step_seconds(31, scale), discount_wakeups=pacing == "gpu", **options
        )
        self.scale, self.costs = scale, costs

    def generate(self, request: ResolvedRequest, **kwargs: Any) -> GeneratedVideo:
        """`SimulatedGenerator.generate` (whatever options the engine passes) with this request's times."""
        self.seconds_per_step = step_seconds(request.num_frames, self.scale)
        if self.costs:
            self.encode_prompt_seconds = prompt_seconds(self.scale)
            self.decode_seconds = decode_seconds(request.num_frames, self.scale)
        return super().generate(request, **kwargs)


def stretched_encode(
    encode: Callable[..., None], scale: float, sleep: Callable[[float], None] = time.sleep
) -> Callable[..., None]:
    """`encode` (the worker's `encode_mp4`) lasting at least what 848x480 frames take on the host."""

    def encode_mp4(frames: Any, fps: int, path: Path, **kwargs: Any) -> None:
        started = time.perf_counter()
        encode(frames, fps, path, **kwargs)
        left = encode_seconds(len(frames), scale) - (time.perf_counter() - started)
        if left > 0:
            sleep(left)

    return encode_mp4


def use_realistic_encode(scale: float) -> None:
    """In this worker process only: the video encode the runner calls takes the host's real time."""
    artifacts.encode_mp4 = stretched_encode(artifacts.encode_mp4, scale)  # type: ignore[assignment]


def add_slot_options(p: argparse.ArgumentParser) -> None:
    """What a simulated slot runs like, for this script and the naive design's workers alike."""
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--scale", type=float, default=50.0)
    p.add_argument("--model", default="mochi-1-preview")
    p.add_argument("--step-pacing", choices=PACINGS, default="sleep", help=PACING_HELP)
    p.add_argument(
        "--no-costs",
        dest="costs",
        action="store_false",
        help="spend only the denoising steps (no prompt encode, VAE decode or realistic MP4 encode)",
    )
    p.add_argument("--scratch-dir", type=Path, default=Path(".run/bench-fleet/scratch"))


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slot", type=int, required=True)
    add_slot_options(p)
    return p.parse_args(argv)


def settings_of(args: argparse.Namespace, name: str) -> WorkerSettings:
    """The worker's own settings class: the slot from the arguments, the rest from the environment."""
    return WorkerSettings(
        slot=args.slot,
        gpu_slots=args.slots,
        hostname=f"{name}-{args.slot}",
        model=args.model,
        simulate=True,
        scratch_dir=args.scratch_dir / f"{name}-{args.slot}",
    )


def generator_of(args: argparse.Namespace) -> StepTimeGenerator:
    if args.costs:
        use_realistic_encode(args.scale)
    generator = StepTimeGenerator(args.model, args.scale, args.step_pacing, args.costs)
    generator.load()
    return generator


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    settings = settings_of(args, "fleet")
    configure(f"fleet-worker-{args.slot}", settings.log_level)
    generator = generator_of(args)
    run_until_signalled(lambda stop: serve(settings, stop, generator=generator))


if __name__ == "__main__":
    main()
