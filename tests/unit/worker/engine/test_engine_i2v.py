"""Image-to-video on the CPU: tiny-wan-i2v (diffusers' WanImageToVideoPipeline with tiny random weights)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from schemas.catalog import CATALOG
from schemas.events import ErrorCode
from schemas.jobs import JobRequest, ResolvedRequest, resolve
from services.worker.engine import DiffusersGenerator, EngineSettings, GenerationError
from services.worker.engine.loading import SOURCES

from .conftest import Recorder, make_request

RED = Image.new("RGB", (96, 64), (230, 20, 20))
BLUE = Image.new("RGB", (120, 80), (20, 20, 230))


@pytest.fixture(scope="session")
def i2v_generator(cpu_settings: EngineSettings) -> DiffusersGenerator:
    generator = DiffusersGenerator("tiny-wan-i2v", cpu_settings)
    generator.load()
    return generator


def i2v_request(seed: int = 1) -> ResolvedRequest:
    request = JobRequest(
        prompt="a red kite", model="tiny-wan-i2v", image_url="https://images.example.com/kite.png", seed=seed
    )
    return resolve(request, image_key="jobs/0/input/image")


def test_the_gpu_entry_and_the_tiny_one_share_the_pipeline_class() -> None:
    for name in ("wan2.1-i2v-14b-480p", "tiny-wan-i2v"):
        spec, source = CATALOG[name], SOURCES[name]
        assert spec.image_to_video and not spec.text_to_video
        assert spec.pipeline_class == source.pipeline_class == "WanImageToVideoPipeline"
    assert SOURCES["wan2.1-i2v-14b-480p"].repo_id == "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"


def test_an_image_becomes_a_video_deterministically(i2v_generator: DiffusersGenerator) -> None:
    request = i2v_request()
    recorder = Recorder()
    first = i2v_generator.generate(request, **recorder.callbacks(), image=RED, preview_every=2)
    again = i2v_generator.generate(request, **Recorder().callbacks(), image=RED)
    assert first.frames.shape == (9, 64, 96, 3) and first.frames.dtype == np.uint8
    assert np.array_equal(first.frames, again.frames)
    assert [info.step for info in recorder.steps] == [1, 2, 3, 4]
    # Wan latents have 16 channels: the Wan 2.1 factors apply; 9 frames -> 3 latent frames of 8x12.
    previews = [info.preview for info in recorder.steps if info.preview is not None]
    assert [p.step for p in previews] == [2, 4] and previews[0].image.shape == (128, 192, 3)


def test_the_image_conditions_the_video(i2v_generator: DiffusersGenerator) -> None:
    request = i2v_request()
    red = i2v_generator.generate(request, **Recorder().callbacks(), image=RED)
    blue = i2v_generator.generate(request, **Recorder().callbacks(), image=BLUE)
    assert not np.array_equal(red.frames, blue.frames)


def test_image_to_video_without_an_image_and_an_image_for_text_to_video_are_refused(
    i2v_generator: DiffusersGenerator, tiny_generator: DiffusersGenerator
) -> None:
    with pytest.raises(GenerationError) as info:
        i2v_generator.generate(i2v_request(), **Recorder().callbacks())
    assert info.value.code is ErrorCode.MODEL_REJECTED_INPUT and "input image" in info.value.message
    with pytest.raises(GenerationError) as info:
        tiny_generator.generate(make_request(), **Recorder().callbacks(), image=RED)
    assert info.value.code is ErrorCode.MODEL_REJECTED_INPUT
