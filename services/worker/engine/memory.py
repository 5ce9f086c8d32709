"""Memory and speed modes: device placement, CPU offload, VAE tiling, per-block compile, OOM recovery."""

from __future__ import annotations

import gc
import logging
from typing import Any

import torch

from schemas.events import ErrorCode
from services.worker.engine.generator import CompileMode, DType, EngineSettings, GenerationError, Offload

log = logging.getLogger(__name__)

BLOCK_LIST_NAMES = ("transformer_blocks", "blocks")
_DTYPES = {DType.BFLOAT16: torch.bfloat16, DType.FLOAT16: torch.float16, DType.FLOAT32: torch.float32}


def resolve_device(settings: EngineSettings) -> torch.device:
    """`auto` is CUDA when a GPU is visible, else the CPU. Asking for CUDA without one is an error."""
    if settings.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GenerationError(
            ErrorCode.MODEL_UNAVAILABLE, f"device {settings.device} asked for, no CUDA GPU seen"
        )
    return device


def resolve_dtype(settings: EngineSettings, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on a GPU and float32 on the CPU (CPU bf16 matmuls are slow and lossy)."""
    if settings.dtype is DType.AUTO:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[settings.dtype]


def place(pipe: Any, settings: EngineSettings, device: torch.device) -> None:
    """Put the pipeline on `device` per the offload mode and turn VAE tiling on or off."""
    if settings.offload is Offload.NONE:
        pipe.to(device)
    elif device.type != "cuda":
        raise GenerationError(ErrorCode.MODEL_UNAVAILABLE, f"offload {settings.offload} needs a CUDA device")
    elif settings.offload is Offload.MODEL_CPU_OFFLOAD:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "enable_tiling"):
        if settings.vae_tiling:
            vae.enable_tiling()
        else:
            vae.disable_tiling()


def transformer_blocks(transformer: Any) -> torch.nn.ModuleList:
    """The transformer's repeated blocks (Mochi: `transformer_blocks`, Wan: `blocks`)."""
    for name in BLOCK_LIST_NAMES:
        blocks = getattr(transformer, name, None)
        if isinstance(blocks, torch.nn.ModuleList):
            return blocks
    raise GenerationError(ErrorCode.INTERNAL, f"{type(transformer).__name__} has no block list to compile")


def compile_blocks(pipe: Any, settings: EngineSettings) -> int:
    """Compile each transformer block in place (`nn.Module.compile`); returns how many were compiled.

    Per block, not the whole model: diffusers' Mochi has no `_repeated_blocks`, so
    `compile_repeated_blocks()` raises there, and compiling blocks one by one keeps the warm-up to one
    graph per distinct block while the pipeline's Python glue stays eager. The first call at a new shape
    pays the compile (~15 s per shape for Mochi on an H100).
    """
    if settings.compile is CompileMode.NONE:
        return 0
    blocks = transformer_blocks(pipe.transformer)
    for block in blocks:
        block.compile(backend=settings.compile_backend)
    log.info("compiled %d transformer blocks with backend %s", len(blocks), settings.compile_backend)
    return len(blocks)


def free_memory(device: torch.device) -> None:
    """Return cached memory after a failure or cancel; the caller must have dropped its tensors."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak_memory(device: torch.device) -> None:
    """Start a fresh peak-memory window (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak allocated GPU memory since the last reset, in GiB; None on the CPU."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30
