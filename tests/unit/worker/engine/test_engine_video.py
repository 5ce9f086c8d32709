"""MP4 and poster output."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from services.worker.engine import encode_mp4, poster_jpeg


def _frames(count: int = 12, height: int = 64, width: int = 96) -> np.ndarray:
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]
    frames = np.zeros((count, height, width, 3), dtype=np.uint8)
    for i in range(count):
        frames[i, ..., 0] = (rows * 3 + i * 10) % 256
        frames[i, ..., 1] = (cols * 2) % 256
    return frames


def test_mp4_is_h264_yuv420p_with_the_index_first(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"

    encode_mp4(_frames(), 30, path)

    data = path.read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat"), "faststart puts moov before mdat"
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert (stream.width, stream.height) == (96, 64)
        assert stream.average_rate == 30
        assert sum(1 for _ in container.decode(video=0)) == 12


def test_odd_sides_are_cropped_to_even(tmp_path: Path) -> None:
    path = tmp_path / "odd.mp4"

    encode_mp4(_frames(3, 33, 47), 16, path)

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (46, 32)


def test_frames_must_be_uint8_rgb(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_mp4(_frames().astype(np.float32), 30, tmp_path / "bad.mp4")


def test_poster_is_the_middle_frame_as_jpeg() -> None:
    frames = _frames()

    image = Image.open(io.BytesIO(poster_jpeg(frames)))

    assert (image.format, image.size) == ("JPEG", (96, 64))
    assert np.abs(np.asarray(image).astype(int) - frames[6].astype(int)).mean() < 8
