"""Where each catalog model's weights come from, and loading them into a diffusers pipeline.

Order of places looked at by `locate()`: `model_dir/<catalog name>` (a folder with `model_index.json`),
then the Hugging Face cache. Nothing is fetched unless `EngineSettings.allow_download` is set, and then
only inside `load()`, never at import. `tiny-mochi` has no repository: it is built offline into
`tiny_cache_dir` and then loaded from that folder like any other.
"""

from __future__ import annotations

import logging
import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import torch

from schemas.catalog import CATALOG
from schemas.events import ErrorCode
from services.worker.engine import tiny, tiny_i2v
from services.worker.engine.generator import EngineSettings, GenerationError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelSource:
    """How the worker gets one catalog model: its diffusers class and where its weights live."""

    name: str
    pipeline_class: str
    repo_id: str | None = None
    build: Callable[[Path], Path] | None = None
    fp32_vae_class: str | None = None
    call_kwargs: Mapping[str, Any] = field(default_factory=dict)
    fp32_image_encoder: bool = False
    """Load the CLIP image encoder (`image_encoder/`) in float32, as Wan's image-to-video recommends."""


SOURCES: Final[dict[str, ModelSource]] = {
    "mochi-1-preview": ModelSource(
        name="mochi-1-preview", pipeline_class="MochiPipeline", repo_id="genmo/mochi-1-preview"
    ),
    "tiny-mochi": ModelSource(
        name="tiny-mochi",
        pipeline_class="MochiPipeline",
        build=tiny.ensure_tiny_mochi,
        call_kwargs={"max_sequence_length": tiny.MAX_SEQUENCE_LENGTH},
    ),
    "wan2.1-t2v-1.3b": ModelSource(
        name="wan2.1-t2v-1.3b",
        pipeline_class="WanPipeline",
        repo_id="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        # Wan's authors recommend decoding in float32; the VAE is small (0.5 GB).
        fp32_vae_class="AutoencoderKLWan",
    ),
    "wan2.1-i2v-14b-480p": ModelSource(
        name="wan2.1-i2v-14b-480p",
        pipeline_class="WanImageToVideoPipeline",
        repo_id="Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
        fp32_vae_class="AutoencoderKLWan",
        fp32_image_encoder=True,
    ),
    "tiny-wan-i2v": ModelSource(
        name="tiny-wan-i2v",
        pipeline_class="WanImageToVideoPipeline",
        build=tiny_i2v.ensure_tiny_wan_i2v,
        call_kwargs={"max_sequence_length": tiny_i2v.MAX_SEQUENCE_LENGTH},
    ),
}


def source_for(model: str) -> ModelSource:
    """The source of a catalog model; an unknown name is `GenerationError(MODEL_UNAVAILABLE)`."""
    source = SOURCES.get(model)
    if source is None or model not in CATALOG:
        known = ", ".join(sorted(set(SOURCES) & set(CATALOG)))
        msg = f"unknown model {model!r}; this worker knows {known}"
        raise GenerationError(ErrorCode.MODEL_UNAVAILABLE, msg)
    return source


def locate(source: ModelSource, settings: EngineSettings) -> Path:
    """The local folder holding the model's weights, or `GenerationError(MODEL_UNAVAILABLE)` saying where
    it looked and how to provide them."""
    if source.build is not None:
        return source.build(settings.tiny_cache_dir)
    looked: list[str] = []
    if settings.model_dir is not None:
        folder = settings.model_dir / source.name
        if (folder / "model_index.json").is_file():
            return folder
        looked.append(f"{folder} (no model_index.json)")
    if source.repo_id is not None:
        cached, why = _from_hf_cache(source.repo_id, settings)
        if cached is not None:
            return cached
        looked.append(why)
    raise GenerationError(ErrorCode.MODEL_UNAVAILABLE, _missing_message(source, settings, looked))


def _from_hf_cache(repo_id: str, settings: EngineSettings) -> tuple[Path | None, str]:
    import diffusers  # noqa: PLC0415 - heavy import, only when loading
    from huggingface_hub import constants  # noqa: PLC0415 - only when loading

    cache = settings.hf_cache_dir or Path(constants.HF_HUB_CACHE)
    token = settings.hf_token.get_secret_value() if settings.hf_token is not None else None
    try:
        # diffusers' own resolver: it fetches (when allowed) only the files the pipeline needs, and only
        # the asked-for variant, where a plain snapshot would take every variant in the repository.
        folder = diffusers.DiffusionPipeline.download(
            repo_id,
            cache_dir=cache,
            token=token,
            local_files_only=not settings.allow_download,
            variant=settings.variant,
        )
    except Exception as e:  # the hub raises several unrelated types for "not here", "offline", "no access"
        return None, f"the Hugging Face cache {cache} (repo {repo_id}: {type(e).__name__})"
    return Path(str(folder)), ""


def _missing_message(source: ModelSource, settings: EngineSettings, looked: list[str]) -> str:
    root = settings.model_dir if settings.model_dir is not None else "<model_dir>"
    target = f"{root}/{source.name}"
    how = (
        f"download them with `hf download {source.repo_id} --local-dir {target}`, "
        f"or into the Hugging Face cache with `hf download {source.repo_id}` (HF_TOKEN for gated repos), "
        "or let the worker fetch them at start (allow_download)"
    )
    where = "; ".join(looked)
    return f"weights for model {source.name} not found; looked in {where}. To provide them: {how}."


def load_pipeline(source: ModelSource, folder: Path, settings: EngineSettings, dtype: torch.dtype) -> Any:
    """Load the pipeline class named by the catalog from `folder`; load errors are MODEL_UNAVAILABLE."""
    import diffusers  # noqa: PLC0415 - heavy import, only when loading

    pipeline_cls = getattr(diffusers, source.pipeline_class)
    _ensure_prompt_cleaner(pipeline_cls)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if settings.variant is not None:
        kwargs["variant"] = settings.variant
    try:
        if source.fp32_vae_class is not None:
            vae_cls = getattr(diffusers, source.fp32_vae_class)
            kwargs["vae"] = vae_cls.from_pretrained(folder, subfolder="vae", dtype=torch.float32)
        if source.fp32_image_encoder:
            import transformers  # noqa: PLC0415 - heavy import, only when loading

            kwargs["image_encoder"] = transformers.CLIPVisionModel.from_pretrained(
                folder, subfolder="image_encoder", dtype=torch.float32
            )
        pipe = pipeline_cls.from_pretrained(folder, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        msg = f"weights for model {source.name} in {folder} could not be loaded: {e}"
        raise GenerationError(ErrorCode.MODEL_UNAVAILABLE, msg) from e
    log.info("loaded %s (%s) from %s as %s", source.name, source.pipeline_class, folder, dtype)
    return pipe


def _ensure_prompt_cleaner(pipeline_cls: type) -> None:
    """diffusers' Wan pipelines clean prompts with `ftfy.fix_text`, and fail with a NameError at the
    first prompt when the optional `ftfy` package is not installed. Without it, prompts are cleaned
    of HTML entities and extra whitespace only (mojibake is left as it is): logged once per pipeline."""
    module = sys.modules.get(pipeline_cls.__module__)
    if module is None or not hasattr(module, "basic_clean") or hasattr(module, "ftfy"):
        return
    log.warning("ftfy is not installed: %s prompts are not repaired of mojibake", pipeline_cls.__name__)
    module.ftfy = types.SimpleNamespace(fix_text=lambda text: text)  # type: ignore[attr-defined]
