"""Generation cost on one GPU: the engine's own path against the bare diffusers call, in one process.

For each mode (eager, then per-block compiled), each frame count and each speed tier it runs, on the same
pipeline: a warm-up (2 steps, latents only; for compiled mode this is the compile, for `fastest` on an
FP8 GPU the FP8 build), then `--repeats` pairs of the bare `pipe(...)` call and the engine's `generate()`
in alternating order (bare first, then engine first, ...), so neither side always runs on a warmer GPU;
then it encodes the engine's frames to MP4 and a poster. It prints one table per model and tier: seconds
per step and per video (medians), decode, MP4 encode, peak memory, and the engine's overhead over bare
diffusers (target < 2%). Under a tier the bare call runs with the same recipe (the same cache hook, the
same FP8 transformer), as a diffusers user would set it up, so the overhead compares like with like.

Without real weights it builds the full-size Mochi with random weights directly on the GPU in bf16
(timing does not depend on the values). On the CPU with `--model tiny-mochi` it runs end to end in
seconds:

    uv run python bench/gpu_generate.py                       # GPU: mochi, 31 and 163 frames, 8 steps
    uv run python bench/gpu_generate.py --model tiny-mochi --device cpu --frames 7,13 --steps 2

Speed tiers skip steps on a schedule that starts after a few full steps, so the default step count (8)
is enough for `fastest` to skip some; compare tiers at the same step count only.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from schemas.catalog import CATALOG, Quality, Speed
from schemas.events import ErrorCode
from schemas.jobs import Priority, ResolvedRequest
from services.worker.engine import (
    CompileMode,
    DiffusersGenerator,
    EngineSettings,
    GenerationError,
    encode_mp4,
    loading,
    memory,
    poster_jpeg,
)
from services.worker.engine.tiny import tiny_vocab

# Untyped libraries, used as such.
diffusers: Any = importlib.import_module("diffusers")
transformers: Any = importlib.import_module("transformers")

PROMPT = "A slow dolly shot through a misty pine forest at dawn, sunbeams between the trunks."
WARMUP_STEPS = 2  # Mochi's sigma schedule divides by num_steps // 2, so 1 step is not possible


@dataclass
class Row:
    model: str
    weights: str
    speed: str
    recipe: str
    applied: str
    mode: str
    frames: int
    size: str
    steps: int
    repeats: int
    warmup_s: float
    bare_s: float
    engine_s: float
    overhead_pct: float
    s_per_step: float
    encode_prompt_s: float
    denoise_s: float
    decode_s: float
    mp4_s: float
    poster_s: float
    peak_gib: float | None
    peak_rss_mib: float


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
    parser.add_argument("--frames", default="31,163", help="comma-separated frame counts")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps per run (bounded: time)")
    parser.add_argument("--speeds", default="exact,fast,fastest", help="speed tiers (those the model has)")
    parser.add_argument("--repeats", type=int, default=1, help="bare/engine pairs per row, order alternating")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--modes", default="eager,compiled", help="eager and/or compiled (per block)")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--weights", choices=["auto", "real", "random"], default="auto")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument(
        "--tiny-cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "reelstream-tiny"
    )
    parser.add_argument("--no-vae-tiling", action="store_true")
    parser.add_argument("--json", type=Path, default=Path("out/gpu_generate.json"))
    return parser.parse_args(argv)


def build_random_mochi(device: torch.device, dtype: torch.dtype) -> Any:
    """Full-size Mochi (T5-XXL 4.76B, transformer 10B, VAE 0.46B) with random weights, built on `device`.

    Created under that default device and dtype, so no float32 or CPU copy ever exists (~28 GiB in bf16).
    """
    previous = torch.get_default_dtype()
    torch.manual_seed(0)
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device):
            text_config = transformers.T5Config(
                vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                feed_forward_proj="gated-gelu", tie_word_embeddings=False,
            )  # fmt: skip
            text_encoder = transformers.T5EncoderModel(text_config)
            transformer = diffusers.MochiTransformer3DModel()
            vae = diffusers.AutoencoderKLMochi()
    finally:
        torch.set_default_dtype(previous)
    return diffusers.MochiPipeline(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=transformers.T5TokenizerFast(vocab=tiny_vocab(), extra_ids=0),
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(invert_sigmas=True),
    )


def make_generator(args: argparse.Namespace) -> tuple[DiffusersGenerator, str]:
    """The engine's generator and which weights it runs: tiny, real, or random full-size."""
    settings = EngineSettings(
        device=args.device,
        model_dir=args.model_dir,
        tiny_cache_dir=args.tiny_cache_dir,
        vae_tiling=not args.no_vae_tiling,
    )
    if args.model == "tiny-mochi":
        return DiffusersGenerator(args.model, settings), "tiny"
    if args.weights != "random":
        try:
            loading.locate(loading.source_for(args.model), settings)
            return DiffusersGenerator(args.model, settings), "real"
        except GenerationError as e:
            if args.weights == "real" or e.code is not ErrorCode.MODEL_UNAVAILABLE:
                raise
            print(f"no real weights ({e.message}); using random full-size weights", file=sys.stderr)
    if args.model != "mochi-1-preview":
        raise SystemExit("random full-size weights are built for mochi-1-preview only")
    device = memory.resolve_device(settings)
    dtype = memory.resolve_dtype(settings, device)
    return DiffusersGenerator(
        args.model, settings, loader=lambda: build_random_mochi(device, dtype)
    ), "random"


def make_request(
    args: argparse.Namespace, frames: int, height: int, width: int, speed: Speed = Speed.EXACT
) -> ResolvedRequest:
    spec = CATALOG[args.model]
    return ResolvedRequest(
        prompt=PROMPT,
        negative_prompt=None,
        model=args.model,
        width=width,
        height=height,
        num_frames=frames,
        fps=spec.default_fps,
        quality=Quality.MEDIUM,
        speed=speed,
        num_inference_steps=args.steps,
        seed=0,
        guidance_scale=spec.default_guidance,
        priority=Priority.BATCH,
    )


def bare_kwargs(generator: DiffusersGenerator, request: ResolvedRequest, steps: int) -> dict[str, Any]:
    """What a plain diffusers user passes: the same values, no callback, numpy output."""
    return {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "height": request.height,
        "width": request.width,
        "num_frames": request.num_frames,
        "num_inference_steps": steps,
        "guidance_scale": request.guidance_scale,
        "generator": torch.Generator("cpu").manual_seed(request.seed),
        "output_type": "np",
        **generator.source.call_kwargs,
    }


def timed(device: torch.device, action: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of `action`, with the GPU drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = action()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started, result


def measure(
    args: argparse.Namespace,
    generator: DiffusersGenerator,
    weights: str,
    mode: str,
    frames: int,
    speed: Speed = Speed.EXACT,
) -> Row:
    """Warm-up, then alternating bare and engine calls, and the MP4 encode, for one mode, size and tier."""
    spec, device, pipe = CATALOG[args.model], generator.device, generator.pipe
    height, width = args.height or spec.default_height, args.width or spec.default_width
    request = make_request(args, frames, height, width, speed)
    tier = spec.speeds[speed]

    def bare(steps: int, **overrides: Any) -> Any:
        # The same recipe as the engine's call: a diffusers user would enable the same cache.
        with generator.speeds.applied(pipe, speed, device):
            return pipe(**{**bare_kwargs(generator, request, steps), **overrides})

    warmup_s, _ = timed(device, lambda: bare(WARMUP_STEPS, output_type="latent"))
    bare_times: list[float] = []
    engine_runs: list[tuple[float, Any]] = []
    memory.reset_peak_memory(device)
    for repeat in range(max(args.repeats, 1)):
        for side in ("bare", "engine") if repeat % 2 == 0 else ("engine", "bare"):
            if side == "bare":
                bare_times.append(timed(device, lambda: bare(args.steps))[0])
            else:
                engine_runs.append(
                    timed(device, lambda: generator.generate(request, on_phase=_ignore, on_step=_ignore))
                )
    peak = memory.peak_memory_gib(device)
    bare_s, engine_s = statistics.median(bare_times), statistics.median(s for s, _ in engine_runs)
    # Per-step and per-phase figures from the engine run in the middle, not from the last one.
    video = sorted(engine_runs, key=lambda run: run[0])[(len(engine_runs) - 1) // 2][1]
    with tempfile.TemporaryDirectory() as scratch:
        mp4_s, _ = timed(device, lambda: encode_mp4(video.frames, video.fps, Path(scratch) / "out.mp4"))
    poster_s, _ = timed(device, lambda: poster_jpeg(video.frames))
    phases = {str(phase): seconds for phase, seconds in video.phase_seconds.items()}
    return Row(
        model=args.model, weights=weights, speed=speed.value, recipe=tier.recipe, applied=_applied(generator),
        mode=mode, frames=frames, size=f"{height}x{width}", steps=args.steps, repeats=len(engine_runs),
        warmup_s=warmup_s, bare_s=bare_s, engine_s=engine_s,
        overhead_pct=100.0 * (engine_s - bare_s) / bare_s, s_per_step=video.seconds_per_step,
        encode_prompt_s=phases.get("encoding_prompt", 0.0), denoise_s=phases.get("denoising", 0.0),
        decode_s=phases.get("decoding", 0.0), mp4_s=mp4_s, poster_s=poster_s, peak_gib=peak,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )  # fmt: skip


def _applied(generator: DiffusersGenerator) -> str:
    """Which parts of the tier's recipe ran ('-' for exact), and why the others did not."""
    applied = generator.last_speed
    if applied is None or applied.speed is Speed.EXACT:
        return "-"
    parts = [
        str(applied.cache),
        *(name for name, on in (("fp8", applied.fp8), ("compiled", applied.compiled)) if on),
    ]
    return " + ".join(parts) + "".join(f"; {why}" for why in applied.skipped)


def _ignore(_: object) -> None:
    return None


COLUMNS = [
    ("mode", "mode"), ("frames", "frames"), ("size", "size"), ("steps", "steps"), ("s/step", "s_per_step"),
    ("denoise s", "denoise_s"), ("decode s", "decode_s"), ("prompt s", "encode_prompt_s"),
    ("s/video", "engine_s"), ("mp4 s", "mp4_s"), ("bare s", "bare_s"), ("overhead %", "overhead_pct"),
    ("repeats", "repeats"),
    ("warm-up s", "warmup_s"), ("peak GiB", "peak_gib"), ("peak RSS MiB", "peak_rss_mib"),
]  # fmt: skip


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a markdown table, one line per mode and frame count."""
    lines = ["| " + " | ".join(title for title, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        values = asdict(row)
        cells = [_cell(values[key]) for _, key in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def environment(generator: DiffusersGenerator) -> dict[str, str]:
    """What ran: versions, device name, dtype."""
    device = generator.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "device": f"{device} ({name})",
        "dtype": str(generator.dtype),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
    }


def main(argv: Sequence[str] | None = None) -> list[Row]:
    """Run the benchmark, print the markdown table, write the JSON; returns the rows."""
    args = parse_args(argv)
    frame_counts = [int(f) for f in args.frames.split(",") if f]
    modes = [m for m in args.modes.split(",") if m]
    offered = CATALOG[args.model].speeds
    speeds = [Speed(s) for s in args.speeds.split(",") if s and Speed(s) in offered]
    generator, weights = make_generator(args)
    load_s, _ = timed(memory.resolve_device(generator.settings), generator.load)
    rows: list[Row] = []
    for mode in modes:
        if mode == "compiled":
            compiled = generator.settings.model_copy(
                update={"compile": CompileMode.BLOCKS, "compile_backend": args.compile_backend}
            )
            memory.compile_blocks(generator.pipe, compiled)
        rows.extend(
            measure(args, generator, weights, mode, frames, speed)
            for speed in speeds
            for frames in frame_counts
        )
    env = environment(generator)
    header = f"{args.model} ({weights} weights) on {env['device']}, {env['dtype']}, load {load_s:.1f} s"
    print(header)
    for speed in speeds:  # one table per model and tier
        mine = [row for row in rows if row.speed == speed.value]
        print(f"\n### {args.model}, {speed.value}: {mine[0].recipe} (applied: {mine[0].applied})\n")
        print(markdown_table(mine))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {"environment": env, "load_s": load_s, "rows": [asdict(r) for r in rows]}
    args.json.write_text(json.dumps(report, indent=2))
    return rows


if __name__ == "__main__":
    main()
