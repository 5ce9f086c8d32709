"""The Wan family through the production loading path: a tiny random WanPipeline saved under model_dir."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import torch

from services.worker.engine import DiffusersGenerator, EngineSettings, build_generator
from services.worker.engine.tiny import TEXT_EMBED_DIM, tiny_text_components

from .conftest import Recorder, make_request

WAN = "wan2.1-t2v-1.3b"
diffusers: Any = importlib.import_module("diffusers")


def _save_tiny_wan(folder: Path) -> None:
    """diffusers' own Wan test components, with Wan's default UniPC scheduler and our offline tokenizer."""
    text_encoder, tokenizer = tiny_text_components()  # d_model == text_dim == 32
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    torch.manual_seed(0)
    transformer = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=TEXT_EMBED_DIM,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    scheduler = diffusers.UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    pipe = diffusers.WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )
    pipe.save_pretrained(folder)


@pytest.fixture(scope="module")
def wan_generator(
    tmp_path_factory: pytest.TempPathFactory, cpu_settings: EngineSettings
) -> DiffusersGenerator:
    model_dir = tmp_path_factory.mktemp("models")
    _save_tiny_wan(model_dir / WAN)
    generator = build_generator(WAN, cpu_settings.model_copy(update={"model_dir": model_dir}))
    assert isinstance(generator, DiffusersGenerator)
    generator.load()
    return generator


def test_wan_loads_from_model_dir_with_a_float32_vae_and_generates_without_checkpoints(
    wan_generator: DiffusersGenerator,
) -> None:
    rec = Recorder()
    request = make_request(model=WAN, width=32, height=32, num_frames=9, num_inference_steps=3)

    video = wan_generator.generate(request, checkpoint_every=1, **rec.callbacks())

    assert type(wan_generator.pipe).__name__ == "WanPipeline"
    assert wan_generator.pipe.vae.dtype == torch.float32
    assert video.frames.shape == (9, 32, 32, 3)
    assert [s.step for s in rec.steps] == [1, 2, 3]
    # UniPC is a multistep solver: its state is more than the latents, so no checkpoint is offered.
    assert not wan_generator.supports_resume
    assert rec.checkpoints == []
