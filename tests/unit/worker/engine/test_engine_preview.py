"""Previews of the latents: the latent-to-RGB projection, the cadence, and previews from tiny-mochi."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from schemas.jobs import Phase
from services.worker.engine import DiffusersGenerator
from services.worker.engine.generator import StepInfo
from services.worker.engine.preview import (
    MOCHI_BIAS,
    MOCHI_FACTORS,
    enlarged,
    latents_to_rgb,
    preview_due,
    preview_jpeg,
    projection,
)
from services.worker.engine.progress import StepTracker

from .conftest import Recorder, make_request


def latents(channels: int = 12, frames: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, channels, frames, 8, 12, generator=torch.Generator("cpu").manual_seed(seed))


def test_projection_is_the_middle_latent_frame_as_rgb_bytes() -> None:
    x = latents()
    image = latents_to_rgb(x, "mochi")
    assert image.shape == (8, 12, 3) and image.dtype == np.uint8
    # By hand for one pixel of frame 2 (the middle of 5): factors, bias, then [-1, 1] -> [0, 255].
    pixel = x[0, :, 2, 3, 4]
    rgb = pixel @ torch.tensor(MOCHI_FACTORS) + torch.tensor(MOCHI_BIAS)
    expected = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    assert np.array_equal(image[3, 4], expected)


def test_projection_is_deterministic_and_follows_the_latents() -> None:
    assert np.array_equal(latents_to_rgb(latents(), "mochi"), latents_to_rgb(latents(), "mochi"))
    assert not np.array_equal(latents_to_rgb(latents(), "mochi"), latents_to_rgb(latents(seed=1), "mochi"))


def test_each_family_has_its_factors_and_other_channel_counts_a_fixed_projection() -> None:
    assert projection("mochi", 12)[0].shape == (12, 3)
    assert projection("wan", 16)[0].shape == (16, 3)
    odd, bias = projection("mochi", 7)  # a latent the factors do not fit: fixed, never an error
    assert odd.shape == (7, 3) and torch.equal(odd, projection("mochi", 7)[0]) and not bias.any()
    assert latents_to_rgb(latents(channels=16), "wan").shape == (8, 12, 3)


def test_projection_refuses_latents_that_are_not_video() -> None:
    with pytest.raises(ValueError, match="batch, channels, frames"):
        latents_to_rgb(torch.zeros(1, 12, 8, 12), "mochi")


def test_small_previews_are_enlarged_by_a_whole_factor_and_encode_as_jpeg() -> None:
    small = latents_to_rgb(latents(), "mochi")
    big = enlarged(small)
    assert big.shape == (8 * 16, 12 * 16, 3)
    wide = np.zeros((60, 212, 3), dtype=np.uint8)
    assert enlarged(wide) is wide
    assert Image.open(io.BytesIO(preview_jpeg(big))).size == (192, 128)


@pytest.mark.parametrize(("every", "steps"), [(0, []), (2, [2, 4, 6]), (4, [4]), (7, [])])
def test_cadence(every: int, steps: list[int]) -> None:
    assert [s for s in range(1, 7) if preview_due(s, every)] == steps


def test_the_tracker_puts_a_preview_in_every_nth_step_and_survives_a_failing_projection() -> None:
    seen: list[StepInfo] = []
    calls = iter(
        [np.zeros((2, 2, 3), dtype=np.uint8), RuntimeError("boom"), np.ones((2, 2, 3), dtype=np.uint8)]
    )

    def project(_: torch.Tensor) -> np.ndarray:
        value = next(calls)
        if isinstance(value, Exception):
            raise value
        return value

    tracker = StepTracker(
        total_steps=6,
        start_step=0,
        fingerprint="f",
        model="tiny-mochi",
        on_phase=lambda _: None,
        on_step=seen.append,
        preview_every=2,
        project=project,
    )
    tracker.phase(Phase.DENOISING)
    for _ in range(6):
        tracker.step_done(torch.zeros(1))
    previews = [(info.step, info.preview) for info in seen]
    assert [step for step, preview in previews if preview is not None] == [2, 6]  # step 4's failed
    assert all(preview is None for step, preview in previews if step % 2)


def test_tiny_mochi_offers_previews_without_changing_the_video(tiny_generator: DiffusersGenerator) -> None:
    request = make_request()
    plain, with_previews = Recorder(), Recorder()
    first = tiny_generator.generate(request, **plain.callbacks())
    second = tiny_generator.generate(request, **with_previews.callbacks(), preview_every=2)
    assert np.array_equal(first.frames, second.frames)
    assert all(info.preview is None for info in plain.steps)
    previews = [info.preview for info in with_previews.steps if info.preview is not None]
    assert [p.step for p in previews] == [2, 4] and all(p.total_steps == 4 for p in previews)
    # 13 frames of 64x96 -> 3 latent frames of 8x12, enlarged 16 times.
    assert {(p.height, p.width) for p in previews} == {(128, 192)}
    assert not np.array_equal(previews[0].image, previews[1].image)
