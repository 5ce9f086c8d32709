"""`tiny-mochi`: the real diffusers MochiPipeline with tiny random weights, built offline.

The component configs are the small ones of diffusers' own Mochi tests (T5 `d_model` equals the
transformer's `text_embed_dim`); the tokenizer is a T5 tokenizer over an in-memory vocabulary, so
nothing is downloaded. The pipeline is built once with fixed seeds, saved with `save_pretrained`, and
then loaded like real weights (`from_pretrained` on the folder), so every test runs the production
loading path.
"""

from __future__ import annotations

import importlib
import shutil
import string
import tempfile
from pathlib import Path
from typing import Any, Final

import torch

TINY_MOCHI_VERSION: Final = 1
"""Bump when the recipe changes, so caches built by an older recipe are not reused."""

TEXT_EMBED_DIM: Final = 32
MAX_SEQUENCE_LENGTH: Final = 16


def tiny_vocab() -> list[tuple[str, float]]:
    """A small SentencePiece-style vocabulary: T5's three specials, the space, letters, digits, signs."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + c, -3.0) for c in string.ascii_lowercase]
    vocab += [(c, -4.0) for c in string.ascii_lowercase + string.digits + string.punctuation]
    return vocab


def tiny_text_components() -> tuple[Any, Any]:
    """A tiny random T5 encoder (d_model 32, fixed seed) and a T5 tokenizer over `tiny_vocab()`."""
    transformers: Any = importlib.import_module("transformers")  # heavy: imported only when building
    tokenizer = transformers.T5TokenizerFast(vocab=tiny_vocab(), extra_ids=0)
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=len(tokenizer),
        d_model=TEXT_EMBED_DIM,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
    )
    return transformers.T5EncoderModel(config), tokenizer


def build_tiny_mochi() -> Any:
    """A `MochiPipeline` with tiny random weights; the same weights every call (fixed seeds)."""
    diffusers: Any = importlib.import_module("diffusers")  # heavy: imported only when building
    torch.manual_seed(0)
    transformer = diffusers.MochiTransformer3DModel(
        patch_size=2,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=2,
        pooled_projection_dim=16,
        in_channels=12,
        out_channels=None,
        qk_norm="rms_norm",
        text_embed_dim=TEXT_EMBED_DIM,
        time_embed_dim=4,
        activation_fn="swiglu",
        max_sequence_length=MAX_SEQUENCE_LENGTH,
    )
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLMochi(
        latent_channels=12,
        out_channels=3,
        encoder_block_out_channels=(32, 32, 32, 32),
        decoder_block_out_channels=(32, 32, 32, 32),
        layers_per_block=(1, 1, 1, 1, 1),
    )
    text_encoder, tokenizer = tiny_text_components()
    # The noise scheduler genmo/mochi-1-preview ships.
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(invert_sigmas=True)
    return diffusers.MochiPipeline(
        transformer=transformer, vae=vae, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer
    )


def ensure_tiny_mochi(cache_dir: Path) -> Path:
    """Return the tiny-mochi folder under `cache_dir`, building and saving it first if absent.

    The build goes to a temporary sibling folder that is renamed into place, so a concurrent or
    interrupted build never leaves a half-written model behind.
    """
    target = cache_dir / f"tiny-mochi-v{TINY_MOCHI_VERSION}"
    if (target / "model_index.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-mochi-", dir=cache_dir))
    try:
        build_tiny_mochi().save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
