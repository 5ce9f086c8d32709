"""The model catalog: what each model can do. The API validates against it, the worker loads from it.

Only data lives here (limits, defaults, the diffusers class name); loading code is in the worker.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from pydantic import BaseModel, ConfigDict, Field


class Quality(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class Speed(StrEnum):
    """How a job trades fidelity for GPU time. `exact` is the model's own sampler, bit for bit; `fast` and
    `fastest` are named recipes per model (`ModelSpec.speeds`) that skip work between denoising steps."""

    EXACT = "exact"
    FAST = "fast"
    FASTEST = "fastest"


class StepCache(StrEnum):
    """The diffusers cache hook a speed tier turns on for its transformer (`transformer.enable_cache`)."""

    NONE = "none"
    # FirstBlockCacheConfig(threshold): the first block always runs; when its residual changed by less
    # than `threshold` (relative mean) since the last full step, the other blocks' residual is reused.
    FIRST_BLOCK = "first_block"
    # TaylorSeerCacheConfig(use_lite_mode=True): `warmup_steps` full steps, then one full step in every
    # `cache_interval`; between them the blocks are skipped and the output projection is extrapolated
    # (first-order Taylor) from the last two full steps. A fixed schedule: the work saved is known.
    TAYLORSEER_LITE = "taylorseer_lite"


class SpeedTier(BaseModel):
    """One model's recipe for one speed tier, with what it is expected to gain and to cost."""

    model_config = ConfigDict(frozen=True)

    recipe: str = Field(description="Name of the recipe, e.g. `first-block-cache-0.08`.")
    description: str
    cache: StepCache = StepCache.NONE
    threshold: float | None = Field(default=None, gt=0, description="first_block: relative residual change.")
    cache_interval: int | None = Field(default=None, ge=2, description="taylorseer_lite: one full step in N.")
    warmup_steps: int | None = Field(default=None, ge=2, description="taylorseer_lite: full steps first.")
    fp8: bool = Field(
        default=False,
        description="FP8 weights for the transformer (torchao), on a CUDA GPU that has FP8 (compute"
        " capability 8.9+) and where torchao is installed; skipped elsewhere, and the worker logs why.",
    )
    compile: bool = Field(
        default=False, description="Per-block torch.compile of the tier's FP8 transformer (CUDA only)."
    )
    expected_speedup: float = Field(
        ge=1.0, description="Expected denoising time of `exact` divided by this tier's (see speedup_basis)."
    )
    speedup_basis: str = Field(description="Where `expected_speedup` comes from: measured, or published.")
    quality_cost: str = Field(description="What the tier costs in fidelity against `exact`, and how known.")

    @property
    def step_time_ratio(self) -> float:
        """Seconds per step of this tier over `exact`: the default the scheduler uses until measured."""
        return 1.0 / self.expected_speedup

    def full_steps(self, steps: int) -> int:
        """How many of `steps` run the whole transformer (fixed schedules only; otherwise all)."""
        if self.cache is not StepCache.TAYLORSEER_LITE:
            return steps
        warmup, interval = self.warmup_steps or 2, self.cache_interval or 2
        # diffusers' hook computes at step s when s < warmup or (s - warmup - 1) % interval == 0.
        return sum(1 for s in range(steps) if s < warmup or (s - warmup - 1) % interval == 0)


EXACT_TIER: Final = SpeedTier(
    recipe="exact",
    description="The model's own sampler, every step in full: bit-identical for a seed on one GPU type.",
    expected_speedup=1.0,
    speedup_basis="the reference",
    quality_cost="none",
)


def _default_speeds() -> dict[Speed, SpeedTier]:
    return {Speed.EXACT: EXACT_TIER}


class ModelSpec(BaseModel):
    """Limits and defaults of one model. Frame counts follow `frames = frame_step * k + 1`."""

    model_config = ConfigDict(frozen=True)

    name: str
    family: str
    pipeline_class: str
    description: str
    default_width: int
    default_height: int
    min_side: int
    max_side: int
    size_multiple: int
    frame_step: int
    min_frames: int
    max_frames: int
    default_frames: int
    default_fps: int
    min_fps: int = 1
    max_fps: int = 60
    steps: dict[Quality, int]
    default_guidance: float
    min_guidance: float = 0.0
    max_guidance: float = 20.0
    memory_gib: float = Field(description="Peak GPU memory at the default size, bf16, all weights resident.")
    tiny: bool = False
    speeds: dict[Speed, SpeedTier] = Field(
        default_factory=_default_speeds,
        description="The speed tiers this model offers (`exact` always), each a named recipe.",
    )
    text_to_video: bool = Field(default=True, description="Makes a video from a prompt alone.")
    image_to_video: bool = Field(
        default=False, description="Takes an input image (`image_url` or an upload) as the first frame."
    )

    def speed_tier(self, speed: Speed) -> SpeedTier | None:
        """The model's recipe for `speed`, or None when it does not offer that tier."""
        return self.speeds.get(speed)

    def frames_allowed(self, frames: int) -> bool:
        return self.min_frames <= frames <= self.max_frames and (frames - 1) % self.frame_step == 0

    def frames_rule(self) -> str:
        return (
            f"{self.frame_step}k+1 between {self.min_frames} and {self.max_frames}"
            if self.frame_step > 1
            else f"between {self.min_frames} and {self.max_frames}"
        )

    def nearest_frames(self, frames: int) -> int:
        """The allowed frame count nearest to `frames` (used to turn a duration into frames)."""
        k = max(0, round((frames - 1) / self.frame_step))
        candidate = k * self.frame_step + 1
        return min(max(candidate, self.min_frames), self.max_frames)


MOCHI_STEPS: Final = {Quality.LOW: 16, Quality.MEDIUM: 32, Quality.HIGH: 64}
# Wan's reference sampler runs 50 steps; 20-30 keep most of the quality at half the GPU time.
WAN_STEPS: Final = {Quality.LOW: 20, Quality.MEDIUM: 30, Quality.HIGH: 50}

_UNMEASURED: Final = (
    "not yet measured at full size (no GPU run of bench/gpu_quality.py yet): expect softer fine detail"
    " and motion where steps are skipped"
)
MOCHI_SPEEDS: Final = {
    Speed.EXACT: EXACT_TIER,
    Speed.FAST: SpeedTier(
        recipe="first-block-cache-0.08",
        description="First-block cache: the rest of the transformer is skipped at steps where the first"
        " block's residual changed by under 8% since the last full step.",
        cache=StepCache.FIRST_BLOCK,
        threshold=0.08,
        expected_speedup=1.5,
        speedup_basis="published: TeaCache (the same residual test on the input side) 1.5x on Mochi at its"
        " mild threshold; not yet measured here",
        quality_cost=_UNMEASURED + "; published: small at this threshold",
    ),
    Speed.FASTEST: SpeedTier(
        recipe="taylorseer-lite-4+1/3-fp8-compiled",
        description="TaylorSeer lite: 4 full steps, then one in 3; the steps between skip every block and"
        " extrapolate the output. On an FP8 GPU with torchao: FP8 transformer weights, compiled per block.",
        cache=StepCache.TAYLORSEER_LITE,
        warmup_steps=4,
        cache_interval=3,
        fp8=True,
        compile=True,
        expected_speedup=2.4,
        speedup_basis="the schedule: 13 of 32 steps run the transformer (2.5x on transformer time; 16"
        " steps 2.0x, 64 steps 2.7x); FP8 (published 1.2-1.5x on Wan) and compile (1.27x measured on"
        " Mochi, 163 frames) come on top where they apply; not yet measured",
        quality_cost=_UNMEASURED + "; the largest of the tiers",
    ),
}
WAN_SPEEDS: Final = {
    Speed.EXACT: EXACT_TIER,
    Speed.FAST: SpeedTier(
        recipe="first-block-cache-0.08",
        description="First-block cache per CFG branch: the rest of the transformer is skipped at steps"
        " where the first block's residual changed by under 8% since the last full step.",
        cache=StepCache.FIRST_BLOCK,
        threshold=0.08,
        expected_speedup=1.5,
        speedup_basis="published: first-block / Taylor caches 1.5-1.9x on Wan; not yet measured here",
        quality_cost=_UNMEASURED + "; published: small at this threshold",
    ),
    Speed.FASTEST: SpeedTier(
        recipe="taylorseer-lite-4+1/3-fp8-compiled",
        description="TaylorSeer lite: 4 full steps, then one in 3; the steps between skip every block and"
        " extrapolate the output. On an FP8 GPU with torchao: FP8 transformer weights, compiled per block.",
        cache=StepCache.TAYLORSEER_LITE,
        warmup_steps=4,
        cache_interval=3,
        fp8=True,
        compile=True,
        expected_speedup=2.4,
        speedup_basis="the schedule: 13 of 30 steps run the transformer (2.3x on transformer time); FP8"
        " (published 1.2-1.5x on Wan, H200) and compile come on top where they apply; not yet measured",
        quality_cost=_UNMEASURED + "; the largest of the tiers",
    ),
}
# The tiny model's random weights change much more from step to step than a trained model's, so its
# first-block threshold is set where it does skip steps: the tests check that the tiers skip work.
TINY_MOCHI_SPEEDS: Final = {
    Speed.EXACT: EXACT_TIER,
    Speed.FAST: MOCHI_SPEEDS[Speed.FAST].model_copy(
        update={
            "recipe": "first-block-cache-0.4",
            "threshold": 0.4,
            "speedup_basis": "tiny-mochi on the CPU, tests only",
            "quality_cost": "meaningless on random weights",
        }
    ),
    Speed.FASTEST: MOCHI_SPEEDS[Speed.FASTEST].model_copy(
        update={
            "recipe": "taylorseer-lite-2+1/2",
            "warmup_steps": 2,
            "cache_interval": 2,
            "expected_speedup": 1.6,
            "speedup_basis": "the schedule: 5 of 8 steps at high quality; FP8 and compile never apply on"
            " the CPU",
            "quality_cost": "meaningless on random weights",
        }
    ),
}

CATALOG: Final[dict[str, ModelSpec]] = {
    "mochi-1-preview": ModelSpec(
        name="mochi-1-preview",
        family="mochi",
        pipeline_class="MochiPipeline",
        description="genmo/mochi-1-preview: 10B asymmetric diffusion transformer, 848x480 native, 30 fps.",
        default_width=848,
        default_height=480,
        min_side=256,
        max_side=848,
        size_multiple=16,
        frame_step=6,
        min_frames=7,
        max_frames=163,
        default_frames=163,
        default_fps=30,
        steps=MOCHI_STEPS,
        default_guidance=4.5,
        memory_gib=60.0,
        speeds=MOCHI_SPEEDS,
    ),
    "tiny-mochi": ModelSpec(
        name="tiny-mochi",
        family="mochi",
        pipeline_class="MochiPipeline",
        description="The Mochi pipeline with tiny random weights, built offline: CPU development and tests.",
        default_width=96,
        default_height=64,
        min_side=32,
        max_side=256,
        size_multiple=16,
        frame_step=6,
        min_frames=7,
        max_frames=49,
        default_frames=25,
        default_fps=30,
        steps={Quality.LOW: 2, Quality.MEDIUM: 4, Quality.HIGH: 8},
        default_guidance=4.5,
        memory_gib=0.7,
        tiny=True,
        speeds=TINY_MOCHI_SPEEDS,
    ),
    "wan2.1-t2v-1.3b": ModelSpec(
        name="wan2.1-t2v-1.3b",
        family="wan",
        pipeline_class="WanPipeline",
        description=(
            "Wan-AI/Wan2.1-T2V-1.3B-Diffusers: 1.3B diffusion transformer with a umT5-XXL text encoder, "
            "832x480 native, 16 fps, 81 frames = 5 s."
        ),
        default_width=832,
        default_height=480,
        min_side=256,
        max_side=832,
        size_multiple=16,
        frame_step=4,
        min_frames=5,
        max_frames=81,
        default_frames=81,
        default_fps=16,
        steps=WAN_STEPS,
        default_guidance=5.0,
        memory_gib=20.0,
        speeds=WAN_SPEEDS,
    ),
    "wan2.1-i2v-14b-480p": ModelSpec(
        name="wan2.1-i2v-14b-480p",
        family="wan",
        pipeline_class="WanImageToVideoPipeline",
        description=(
            "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers: image-to-video, 14B diffusion transformer with a "
            "umT5-XXL text encoder and a CLIP image encoder; the input image is the first frame; "
            "832x480 native, 16 fps, 81 frames = 5 s."
        ),
        default_width=832,
        default_height=480,
        min_side=256,
        max_side=832,
        size_multiple=16,
        frame_step=4,
        min_frames=5,
        max_frames=81,
        default_frames=81,
        default_fps=16,
        steps=WAN_STEPS,
        default_guidance=5.0,
        memory_gib=48.0,
        text_to_video=False,
        image_to_video=True,
    ),
    "tiny-wan-i2v": ModelSpec(
        name="tiny-wan-i2v",
        family="wan",
        pipeline_class="WanImageToVideoPipeline",
        description=(
            "The Wan image-to-video pipeline with tiny random weights, built offline: CPU development and "
            "tests of image-to-video."
        ),
        default_width=96,
        default_height=64,
        min_side=32,
        max_side=256,
        size_multiple=16,
        frame_step=4,
        min_frames=5,
        max_frames=33,
        default_frames=9,
        default_fps=16,
        steps={Quality.LOW: 2, Quality.MEDIUM: 4, Quality.HIGH: 8},
        default_guidance=5.0,
        memory_gib=0.7,
        tiny=True,
        text_to_video=False,
        image_to_video=True,
    ),
}

DEFAULT_MODEL: Final = "mochi-1-preview"


class UnknownModel(ValueError):
    """A model name the catalog does not hold; `known` lists the ones it does."""

    def __init__(self, name: object) -> None:
        self.name = name
        self.known = ", ".join(CATALOG)
        super().__init__(f"model {name!r} is not in the catalog: {self.known}")


def model_spec(name: object) -> ModelSpec:
    """The catalog's entry for model `name`, or `UnknownModel`: the one check of a model name that the
    api (resolving a request, naming allowed values) and the worker (its settings, its engine) share."""
    spec = CATALOG.get(name) if isinstance(name, str) else None
    if spec is None:
        raise UnknownModel(name)
    return spec
