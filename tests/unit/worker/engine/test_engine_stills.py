"""Thumbnail and spritesheet of a result."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from services.worker.engine.video import spritesheet_frames, spritesheet_jpeg, thumbnail_jpeg


def numbered(count: int, height: int = 90, width: int = 160) -> np.ndarray:
    """Frames whose red channel is their index, so a tile tells which frame it shows."""
    frames = np.zeros((count, height, width, 3), dtype=np.uint8)
    frames[..., 0] = np.arange(count, dtype=np.uint8)[:, None, None] * 10
    return frames


def test_thumbnail_is_the_middle_frame_320_wide() -> None:
    frames = numbered(25, 480, 848)
    image = Image.open(io.BytesIO(thumbnail_jpeg(frames)))
    assert image.format == "JPEG" and image.size == (320, 181)
    assert abs(int(np.asarray(image)[90, 160, 0]) - 120) <= 3  # frame 12


def test_a_small_clip_keeps_its_size_in_the_thumbnail() -> None:
    image = Image.open(io.BytesIO(thumbnail_jpeg(numbered(7, 64, 96))))
    assert image.size == (96, 64)


@pytest.mark.parametrize(
    ("count", "expected"),
    [(1, [0]), (5, [0, 1, 2, 3, 4]), (25, [0, 2, 3, 5, 6, 8, 10, 11, 13, 14, 16, 18, 19, 21, 22, 24])],
)
def test_spritesheet_frames_are_evenly_spaced_from_first_to_last(count: int, expected: list[int]) -> None:
    assert spritesheet_frames(count) == expected


def test_spritesheet_is_a_grid_of_the_listed_frames() -> None:
    frames = numbered(25, 480, 848)
    data, layout = spritesheet_jpeg(frames)
    image = np.asarray(Image.open(io.BytesIO(data)))
    assert (layout.columns, layout.rows, layout.tile_width, layout.tile_height) == (4, 4, 160, 91)
    assert image.shape == (4 * 91, 4 * 160, 3)
    for n, frame in enumerate(layout.frame_indices):
        row, column = divmod(n, layout.columns)
        center = image[row * 91 + 45, column * 160 + 80, 0]
        assert abs(int(center) - frame * 10) <= 3, (n, frame, center)


def test_a_short_clip_gets_one_tile_per_frame_in_one_row() -> None:
    data, layout = spritesheet_jpeg(numbered(3, 64, 96))
    assert (layout.columns, layout.rows, layout.tile_width, layout.frame_indices) == (3, 1, 96, [0, 1, 2])
    assert Image.open(io.BytesIO(data)).size == (3 * 96, 64)
