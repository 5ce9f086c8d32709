"""Quality and speed of the speed tiers: the same prompts and seeds under each tier, measured against `exact`.

For each prompt and seed it renders the video under every tier through the engine's own `generate()` and
reports, per tier: PSNR and SSIM of its frames against exact's frames (PSNR over all pixels; SSIM on the
luma of each frame with an 11x11 Gaussian window, sigma 1.5, averaged over frames; both computed here
with numpy and torch), seconds per video and per step, the share of transformer block work it really
ran (attention query projections counted in every block, as the unit tests count them), peak GPU
memory, and whether a second render of the same seed gave the same frames. LPIPS is not reported: no
installed package ships its network weights, and nothing is downloaded.

Each tier renders the first prompt once untimed first (`--warmup`, also the determinism check and, for
`fastest` on a GPU, the FP8 build and compile), then every prompt and seed timed.

Quality needs trained weights: random weights give noise whose PSNR means nothing, so on a GPU it
refuses to run without real weights (`--model-dir`, or the Hugging Face cache). On the CPU with
`--model tiny-mochi` it runs end to end in seconds and checks that the tiers skip work:

    uv run python bench/gpu_quality.py --model mochi-1-preview --frames 31 --steps 32   # GPU, real weights
    uv run python bench/gpu_quality.py --model tiny-mochi --device cpu --frames 7 --steps 8
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from schemas.catalog import CATALOG, Quality, Speed
from schemas.jobs import Priority, ResolvedRequest
from services.worker.engine import DiffusersGenerator, EngineSettings, loading, memory

PROMPTS = (
    "A slow dolly shot through a misty pine forest at dawn, sunbeams between the trunks.",
    "A red fox trotting across fresh snow, close-up, shallow depth of field.",
    "Waves breaking on black volcanic rocks at sunset, spray catching the light.",
)
Frames = npt.NDArray[np.uint8]


@dataclass
class Row:
    model: str
    speed: str
    recipe: str
    prompt: int
    seed: int
    frames: int
    size: str
    steps: int
    psnr_db: float
    ssim: float
    s_video: float
    s_per_step: float
    work_fraction: float
    peak_gib: float | None
    fp8: bool
    compiled: bool


@dataclass
class Summary:
    speed: str
    recipe: str
    videos: int
    psnr_db: float
    ssim: float
    s_video: float
    speedup: float
    work_fraction: float
    deterministic: bool
    applied: str


def psnr(reference: Frames, other: Frames) -> float:
    """Peak signal-to-noise ratio in dB over all pixels of two uint8 videos; inf when identical."""
    mse = float(np.mean((reference.astype(np.float64) - other.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(reference: Frames, other: Frames) -> float:
    """Mean structural similarity of two uint8 videos (F, H, W, 3): luma per frame, Gaussian window
    11x11, sigma 1.5, constants K1=0.01 and K2=0.03 of the 255 range (Wang et al. 2004), valid region."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
    x = (torch.from_numpy(reference).to(torch.float64) @ weights)[:, None]  # (F, 1, H, W)
    y = (torch.from_numpy(other).to(torch.float64) @ weights)[:, None]
    window = _gaussian_window()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y = F.conv2d(x, window), F.conv2d(y, window)
    var_x = F.conv2d(x * x, window) - mu_x**2
    var_y = F.conv2d(y * y, window) - mu_y**2
    cov = F.conv2d(x * y, window) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


@contextmanager
def block_work(generator: DiffusersGenerator) -> Iterator[list[int]]:
    """Counts the blocks' attention query projections that really run (a skipped block runs none)."""
    calls = [0]

    def count(*_: object) -> None:
        calls[0] += 1

    blocks: list[Any] = list(memory.transformer_blocks(generator.pipe.transformer))
    handles = [block.attn1.to_q.register_forward_pre_hook(count) for block in blocks]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default="mochi-1-preview",
        choices=sorted(m for m in loading.SOURCES if CATALOG[m].text_to_video),
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--speeds", default="exact,fast,fastest", help="tiers; exact is always run first")
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help=f"how many of the {len(PROMPTS)}")
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    parser.add_argument("--frames", type=int, default=None, help="default: the model's default")
    parser.add_argument("--steps", type=int, default=None, help="default: the model's medium quality")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=1, help="untimed renders per tier first (0 or 1)")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument(
        "--tiny-cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "reelstream-tiny"
    )
    parser.add_argument("--json", type=Path, default=Path("out/gpu_quality.json"))
    return parser.parse_args(argv)


def make_request(
    args: argparse.Namespace, speed: Speed, prompt: str, seed: int, frames: int, steps: int
) -> ResolvedRequest:
    spec = CATALOG[args.model]
    return ResolvedRequest(
        prompt=prompt,
        negative_prompt=None,
        model=args.model,
        width=args.width or spec.default_width,
        height=args.height or spec.default_height,
        num_frames=frames,
        fps=spec.default_fps,
        quality=Quality.MEDIUM,
        speed=speed,
        num_inference_steps=steps,
        seed=seed,
        guidance_scale=spec.default_guidance,
        priority=Priority.BATCH,
    )


def _ignore(_: object) -> None:
    return None


def render(generator: DiffusersGenerator, request: ResolvedRequest) -> tuple[Frames, float, float, int]:
    """Frames, seconds for the video, seconds per step, block work counted."""
    device = generator.device
    memory.reset_peak_memory(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    with block_work(generator) as work:
        video = generator.generate(request, on_phase=_ignore, on_step=_ignore)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return video.frames, time.perf_counter() - started, video.seconds_per_step, work[0]


def make_generator(args: argparse.Namespace) -> DiffusersGenerator:
    settings = EngineSettings(
        device=args.device, model_dir=args.model_dir, tiny_cache_dir=args.tiny_cache_dir
    )
    if not CATALOG[args.model].tiny:
        # Quality of random weights means nothing: fail here, saying where weights were looked for.
        loading.locate(loading.source_for(args.model), settings)
    return DiffusersGenerator(args.model, settings)


def run(args: argparse.Namespace, generator: DiffusersGenerator) -> tuple[list[Row], list[Summary]]:
    spec = CATALOG[args.model]
    frames = args.frames or spec.default_frames
    steps = args.steps or spec.steps[Quality.MEDIUM]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    prompts = PROMPTS[: args.prompts]
    wanted = [Speed(s) for s in args.speeds.split(",") if s]
    speeds = [Speed.EXACT, *(s for s in wanted if s is not Speed.EXACT and s in spec.speeds)]
    references: dict[tuple[int, int], Frames] = {}
    exact_work: dict[tuple[int, int], int] = {}
    rows: list[Row] = []
    deterministic: dict[Speed, bool] = {}
    for speed in speeds:
        tier = spec.speeds[speed]
        warm: Frames | None = None
        for _ in range(args.warmup):
            warm, *_rest = render(generator, make_request(args, speed, prompts[0], seeds[0], frames, steps))
        for p, prompt in enumerate(prompts):
            for seed in seeds:
                video, s_video, s_step, work = render(
                    generator, make_request(args, speed, prompt, seed, frames, steps)
                )
                if (p, seed) == (0, seeds[0]) and warm is not None:
                    deterministic[speed] = bool(np.array_equal(warm, video))
                if speed is Speed.EXACT:
                    references[(p, seed)], exact_work[(p, seed)] = video, work
                reference = references[(p, seed)]
                applied = generator.last_speed
                rows.append(
                    Row(
                        model=args.model, speed=speed.value, recipe=tier.recipe, prompt=p, seed=seed,
                        frames=frames, size=f"{video.shape[1]}x{video.shape[2]}", steps=steps,
                        psnr_db=psnr(reference, video), ssim=ssim(reference, video), s_video=s_video,
                        s_per_step=s_step, work_fraction=work / max(exact_work[(p, seed)], 1),
                        peak_gib=memory.peak_memory_gib(generator.device),
                        fp8=bool(applied and applied.fp8), compiled=bool(applied and applied.compiled),
                    )
                )  # fmt: skip
    return rows, summarize(rows, speeds, deterministic, generator)


def summarize(
    rows: Sequence[Row],
    speeds: Sequence[Speed],
    deterministic: dict[Speed, bool],
    generator: DiffusersGenerator,
) -> list[Summary]:
    exact_s = float(np.mean([r.s_video for r in rows if r.speed == Speed.EXACT.value]))
    summaries = []
    for speed in speeds:
        mine = [r for r in rows if r.speed == speed.value]
        applied = [name for name, on in (("fp8", mine[0].fp8), ("compiled", mine[0].compiled)) if on] or [
            "cache only" if speed is not Speed.EXACT else "-"
        ]
        s_video = float(np.mean([r.s_video for r in mine]))
        summaries.append(
            Summary(
                speed=speed.value, recipe=mine[0].recipe, videos=len(mine),
                psnr_db=float(np.mean([r.psnr_db for r in mine])),
                ssim=float(np.mean([r.ssim for r in mine])),
                s_video=s_video, speedup=exact_s / s_video,
                work_fraction=float(np.mean([r.work_fraction for r in mine])),
                deterministic=deterministic.get(speed, False), applied=", ".join(applied),
            )
        )  # fmt: skip
    return summaries


COLUMNS = [
    ("speed", "speed"), ("recipe", "recipe"), ("videos", "videos"), ("PSNR dB", "psnr_db"), ("SSIM", "ssim"),
    ("s/video", "s_video"), ("speedup", "speedup"), ("block work", "work_fraction"),
    ("deterministic", "deterministic"), ("applied", "applied"),
]  # fmt: skip


def markdown_table(summaries: Sequence[Summary]) -> str:
    lines = ["| " + " | ".join(title for title, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for summary in summaries:
        values = asdict(summary)
        lines.append("| " + " | ".join(_cell(values[key]) for _, key in COLUMNS) + " |")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def environment(generator: DiffusersGenerator) -> dict[str, str]:
    device = generator.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": f"{device} ({name})", "dtype": str(generator.dtype), "torch": torch.__version__}


def main(argv: Sequence[str] | None = None) -> tuple[list[Row], list[Summary]]:
    """Run the benchmark, print the table, write the JSON; returns the rows and the per-tier summary."""
    args = parse_args(argv)
    generator = make_generator(args)
    generator.load()
    rows, summaries = run(args, generator)
    env = environment(generator)
    first = rows[0]
    print(
        f"{args.model} on {env['device']}, {env['dtype']}: {first.frames} frames {first.size}, {first.steps}"
        f" steps, {args.prompts} prompt(s) x {len(args.seeds.split(','))} seed(s); against exact\n"
    )
    print(markdown_table(summaries))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "environment": env,
        "summary": [asdict(s) for s in summaries],
        "rows": [asdict(r) for r in rows],
        "lpips": "not measured: no installed package ships LPIPS weights offline",
    }
    args.json.write_text(json.dumps(report, indent=2, default=str))
    return rows, summaries


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
