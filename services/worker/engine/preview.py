"""Previews of a generation in progress: the latents after a step, projected to RGB without the VAE.

A VAE decode of Mochi's 163 frames takes seconds and gigabytes; a preview must cost next to nothing. Each
latent channel contributes linearly to the colour of its pixel, so a fixed channels x 3 matrix and a bias
give a recognisable low-resolution picture (one pixel per latent pixel, 1/8 of the video's side). The
factors are the published ones fitted for these VAEs (ComfyUI's `latent_formats.py`: `Mochi`, `Wan21`),
which apply to the normalised latents the pipelines denoise. A latent with another channel count (a tiny
test model of another design) gets a fixed pseudo-random projection: still deterministic, never an error.

What is projected is the middle latent frame of the current (noisy) latents, not a prediction of the
clean video: early previews are mostly noise, later ones converge on the picture.
"""

from __future__ import annotations

import io
from typing import Final

import numpy as np
import torch
from PIL import Image

from services.worker.engine.generator import Frames

# (channels x RGB) factors and RGB bias; rows in latent channel order.
MOCHI_FACTORS: Final = (
    (-0.0069, -0.0045, 0.0018),
    (0.0154, -0.0692, -0.0274),
    (0.0333, 0.0019, 0.0206),
    (-0.1390, 0.0628, 0.1678),
    (-0.0725, 0.0134, -0.1898),
    (0.0074, -0.0270, -0.0209),
    (-0.0176, -0.0277, -0.0221),
    (0.5294, 0.5204, 0.3852),
    (-0.0326, -0.0446, -0.0143),
    (-0.0659, 0.0153, -0.0153),
    (0.0185, -0.0217, 0.0014),
    (-0.0396, -0.0495, -0.0281),
)
MOCHI_BIAS: Final = (-0.0940, -0.1418, -0.1453)
WAN21_FACTORS: Final = (
    (-0.1299, -0.1692, 0.2932),
    (0.0671, 0.0406, 0.0442),
    (0.3568, 0.2548, 0.1747),
    (0.0372, 0.2344, 0.1420),
    (0.0313, 0.0189, -0.0328),
    (0.0296, -0.0956, -0.0665),
    (-0.3477, -0.4059, -0.2925),
    (0.0166, 0.1902, 0.1975),
    (-0.0412, 0.0267, -0.1364),
    (-0.1293, 0.0740, 0.1636),
    (0.0680, 0.3019, 0.1128),
    (0.0032, 0.0581, 0.0639),
    (-0.1251, 0.0927, 0.1699),
    (0.0060, -0.0633, 0.0005),
    (0.3477, 0.2275, 0.2950),
    (0.1984, 0.0913, 0.1861),
)
WAN21_BIAS: Final = (-0.1835, -0.0868, -0.3360)
FAMILY_FACTORS: Final = {"mochi": (MOCHI_FACTORS, MOCHI_BIAS), "wan": (WAN21_FACTORS, WAN21_BIAS)}
MIN_PREVIEW_WIDTH: Final = 192
"""Previews narrower than this are enlarged by a whole factor (tiny models' latents are a dozen pixels)."""


def projection(family: str, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (channels, 3) matrix and (3,) bias for a model family's latents."""
    known = FAMILY_FACTORS.get(family)
    if known is not None and len(known[0]) == channels:
        return torch.tensor(known[0], dtype=torch.float32), torch.tensor(known[1], dtype=torch.float32)
    generator = torch.Generator("cpu").manual_seed(channels)
    matrix = torch.randn(channels, 3, generator=generator) / channels**0.5 * 0.5
    return matrix, torch.zeros(3)


def latents_to_rgb(latents: torch.Tensor, family: str) -> Frames:
    """The middle latent frame of `latents` (batch, channels, frames, height, width) as uint8 RGB
    (height, width, 3). The projection runs where the latents are; only the small image is copied."""
    if latents.ndim != 5:
        shape = tuple(latents.shape)
        raise ValueError(f"expected latents (batch, channels, frames, height, width), got {shape}")
    frame = latents[0, :, latents.shape[2] // 2].float()  # (channels, height, width)
    matrix, bias = projection(family, frame.shape[0])
    rgb = torch.einsum("chw,cr->hwr", frame, matrix.to(frame.device)) + bias.to(frame.device)
    as_bytes = ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).round().to(torch.uint8)
    image: Frames = as_bytes.cpu().numpy()
    return image


def enlarged(image: Frames, min_width: int = MIN_PREVIEW_WIDTH) -> Frames:
    """`image` scaled up (bilinear) by a whole factor until it is at least `min_width` wide."""
    factor = max(1, -(-min_width // image.shape[1]))
    if factor == 1:
        return image
    size = (image.shape[1] * factor, image.shape[0] * factor)
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def preview_jpeg(image: Frames, *, quality: int = 80) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def preview_due(step: int, every: int) -> bool:
    """Whether the step gets a preview: every `every` steps (0: never)."""
    return every > 0 and step % every == 0
