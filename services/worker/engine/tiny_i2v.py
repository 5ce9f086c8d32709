"""`tiny-wan-i2v`: diffusers' WanImageToVideoPipeline with tiny random weights, built offline.

The image-to-video counterpart of `tiny-mochi` (Mochi has no image-to-video pipeline in diffusers): the
same pipeline class as the GPU entry `wan2.1-i2v-14b-480p`, with the component configs of diffusers' own
Wan image-to-video tests (a 2-layer transformer with 36 input channels = 16 noise + 4 mask + 16 image
latents, a 3-channel-base Wan VAE, a 2-layer CLIP vision encoder on 32x32 crops), a umT5 encoder of
`d_model` 32 over `tiny.tiny_vocab()`, and the flow-matching Euler noise scheduler. Built once with fixed
seeds, saved, and loaded with `from_pretrained` like real weights. Nothing is downloaded.

The input image really conditions the video (the VAE encodes it into the first latent frame and the CLIP
encoder into the cross-attention), so different images give different frames; with random weights the
first frame is not a copy of the image.
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
from pathlib import Path
from typing import Any, Final

import torch

from services.worker.engine.tiny import TEXT_EMBED_DIM, tiny_vocab

TINY_WAN_I2V_VERSION: Final = 1
"""Bump when the recipe changes, so caches built by an older recipe are not reused."""

MAX_SEQUENCE_LENGTH: Final = 16


def build_tiny_wan_i2v() -> Any:
    """A `WanImageToVideoPipeline` with tiny random weights; the same weights every call (fixed seeds)."""
    diffusers: Any = importlib.import_module("diffusers")  # heavy: imported only when building
    transformers: Any = importlib.import_module("transformers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    torch.manual_seed(0)
    tokenizer = transformers.T5TokenizerFast(vocab=tiny_vocab(), extra_ids=0)
    text_encoder = transformers.UMT5EncoderModel(
        transformers.UMT5Config(
            vocab_size=len(tokenizer),
            d_model=TEXT_EMBED_DIM,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
        )
    )
    torch.manual_seed(0)
    transformer = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=36,
        out_channels=16,
        text_dim=TEXT_EMBED_DIM,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
        image_dim=4,
    )
    torch.manual_seed(0)
    image_encoder = transformers.CLIPVisionModel(
        transformers.CLIPVisionConfig(
            hidden_size=4,
            projection_dim=4,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            intermediate_size=16,
            patch_size=1,
        )
    )
    image_processor = transformers.CLIPImageProcessor(crop_size=32, size=32)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0)
    return diffusers.WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        image_processor=image_processor,
        image_encoder=image_encoder,
        transformer=transformer,
    )


def ensure_tiny_wan_i2v(cache_dir: Path) -> Path:
    """The tiny-wan-i2v folder under `cache_dir`, built and saved first if absent (through a temporary
    sibling folder renamed into place, so no half-written model is ever seen)."""
    target = cache_dir / f"tiny-wan-i2v-v{TINY_WAN_I2V_VERSION}"
    if (target / "model_index.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-wan-i2v-", dir=cache_dir))
    try:
        build_tiny_wan_i2v().save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
