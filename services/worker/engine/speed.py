"""Speed tiers in the engine: a tier's recipe (schemas.catalog.SpeedTier) applied around one pipeline call.

For the call only: the tier's diffusers cache hook is enabled on the transformer before and disabled after
(`transformer.enable_cache` / `disable_cache`), so the hook's state (cached residuals, Taylor factors)
starts empty for every job and never leaks into the next one, and an `exact` job runs the untouched
model. A resumed job therefore starts its cache afresh at the checkpoint's step: it equals a fresh run of
the same tier started from that checkpoint's latents, not the uninterrupted run (see docs/engine.md).

FP8 and compile (the `fastest` recipes) apply only on a CUDA GPU with FP8 (compute capability 8.9+)
and torchao installed: a second, FP8 copy of the transformer is built once, on the first job that asks,
compiled per block, and swapped in for that tier's calls, so `exact` keeps its bf16 weights. Where they
cannot apply (the CPU, an older GPU, no torchao, CPU offload, a failed build) the tier runs with its cache
alone, and the worker logs why once.
"""

from __future__ import annotations

import copy
import importlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import torch

from schemas.catalog import CATALOG, Speed, SpeedTier, StepCache
from schemas.events import ErrorCode
from services.worker.engine import memory
from services.worker.engine.generator import EngineSettings, GenerationError, Offload

log = logging.getLogger(__name__)

FP8_CAPABILITY: Final = (8, 9)  # Ada and Hopper have FP8 tensor cores


@dataclass(frozen=True, slots=True)
class AppliedSpeed:
    """What one call ran with: the tier, its recipe, and which parts applied (with why not)."""

    speed: Speed
    recipe: str
    cache: StepCache
    fp8: bool = False
    compiled: bool = False
    skipped: tuple[str, ...] = ()


def tier_for(model: str, speed: Speed) -> SpeedTier:
    """The catalog's recipe; a tier the model lacks is `GenerationError(MODEL_REJECTED_INPUT)` (the api
    refuses such a request, so only a record written by something else gets here)."""
    spec = CATALOG.get(model)
    tier = spec.speed_tier(speed) if spec is not None else None
    if spec is None or tier is None:
        offered = ", ".join(spec.speeds) if spec is not None else "none"
        raise GenerationError(
            ErrorCode.MODEL_REJECTED_INPUT, f"model {model} has no {speed.value!r} speed tier ({offered})"
        )
    return tier


def cache_config(tier: SpeedTier) -> Any | None:
    """The diffusers cache config for the tier's hook, or None for none."""
    if tier.cache is StepCache.NONE:
        return None
    hooks: Any = importlib.import_module("diffusers.hooks")  # heavy: only when a tier needs it
    if tier.cache is StepCache.FIRST_BLOCK:
        return hooks.FirstBlockCacheConfig(threshold=tier.threshold)
    return hooks.TaylorSeerCacheConfig(
        cache_interval=tier.cache_interval,
        disable_cache_before_step=tier.warmup_steps,
        use_lite_mode=True,
        # Lite mode keeps only the output projection's factors (a few MB): float32 costs nothing and keeps
        # the extrapolation out of bf16 rounding.
        taylor_factors_dtype=torch.float32,
    )


class SpeedTiers:
    """Applies speed tiers for one generator: its pipeline, device and settings."""

    def __init__(self, model_name: str, settings: EngineSettings) -> None:
        self.model_name = model_name
        self.settings = settings
        self._fp8_transformer: Any = None
        self._fp8_unavailable: str | None = None
        self._logged: set[str] = set()

    @contextmanager
    def applied(self, pipe: Any, speed: Speed, device: torch.device) -> Iterator[AppliedSpeed]:
        """While active, `pipe` runs `speed`'s recipe; afterwards it is exactly as before."""
        tier = tier_for(self.model_name, speed)
        if speed is Speed.EXACT:
            yield AppliedSpeed(speed, tier.recipe, StepCache.NONE)
            return
        original = pipe.transformer
        skipped: list[str] = []
        fp8 = None
        if tier.fp8:
            fp8, why = self._fp8_for(original, tier, device)
            if why is not None:
                skipped.append(why)
        if tier.compile and fp8 is None:
            # Compiling the shared transformer would change `exact` too (compiled kernels round
            # differently); the worker's `compile=blocks` setting compiles it for every tier instead.
            skipped.append("compile skipped: it compiles the FP8 transformer, which is not in use")
        for reason in skipped:
            self._log_once(reason)
        transformer = fp8 if fp8 is not None else original
        config = cache_config(tier)
        if fp8 is not None:
            pipe.transformer = fp8
        if config is not None:
            if transformer.is_cache_enabled:  # left behind by a call that failed inside disable_cache
                transformer.disable_cache()
            transformer.enable_cache(config)
        try:
            yield AppliedSpeed(
                speed,
                tier.recipe,
                tier.cache,
                fp8=fp8 is not None,
                compiled=fp8 is not None and tier.compile,
                skipped=tuple(skipped),
            )
        finally:
            if config is not None:
                transformer.disable_cache()
            if fp8 is not None:
                pipe.transformer = original

    def _fp8_for(self, transformer: Any, tier: SpeedTier, device: torch.device) -> tuple[Any, str | None]:
        """The FP8 transformer (built on first use), or None and why not."""
        if self._fp8_transformer is not None:
            return self._fp8_transformer, None
        if self._fp8_unavailable is None:
            self._fp8_unavailable = self._fp8_blocker(device)
        if self._fp8_unavailable is not None:
            return None, self._fp8_unavailable
        try:
            self._fp8_transformer = self._build_fp8(transformer, tier)
        except Exception as e:  # an optional speed-up: the tier still runs with its cache
            memory.free_memory(device)
            self._fp8_unavailable = f"FP8 weights skipped: building them failed ({type(e).__name__}: {e})"
            return None, self._fp8_unavailable
        return self._fp8_transformer, None

    def _fp8_blocker(self, device: torch.device) -> str | None:
        if device.type != "cuda":
            return f"FP8 weights skipped: the device is {device.type} (FP8 needs a CUDA GPU, capability 8.9+)"
        capability = torch.cuda.get_device_capability(device)
        if capability < FP8_CAPABILITY:
            name = torch.cuda.get_device_name(device)
            return f"FP8 weights skipped: {name} has compute capability {capability}, FP8 needs 8.9+"
        if self.settings.offload is not Offload.NONE:
            return f"FP8 weights skipped: offload {self.settings.offload} keeps one copy of the weights"
        try:
            importlib.import_module("torchao.quantization")
        except ImportError:
            return "FP8 weights skipped: torchao is not installed"
        return None

    def _build_fp8(self, transformer: Any, tier: SpeedTier) -> Any:
        quantization: Any = importlib.import_module("torchao.quantization")
        config_cls = getattr(quantization, "Float8DynamicActivationFloat8WeightConfig", None)
        config = (
            config_cls() if config_cls is not None else quantization.float8_dynamic_activation_float8_weight()
        )
        fp8 = copy.deepcopy(transformer)
        quantization.quantize_(fp8, config)
        if tier.compile:
            for block in memory.transformer_blocks(fp8):
                block.compile(backend=self.settings.compile_backend)
        log.info(
            "%s: built the FP8 transformer for %s (compiled: %s)", self.model_name, tier.recipe, tier.compile
        )
        return fp8

    def _log_once(self, reason: str) -> None:
        if reason not in self._logged:
            self._logged.add(reason)
            log.info("%s: %s", self.model_name, reason)
