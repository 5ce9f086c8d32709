"""Writing frames out: an H.264 MP4 that browsers play while downloading, and a poster JPEG."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
from PIL import Image

from services.worker.engine.generator import Frames


def _check_frames(frames: Frames) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must be uint8 (F, H, W, 3) with F >= 1, got {frames.dtype} {frames.shape}")


def even_crop(frames: Frames) -> Frames:
    """Drop a last row/column where height/width are odd: yuv420p needs even sides."""
    height, width = frames.shape[1] - frames.shape[1] % 2, frames.shape[2] - frames.shape[2] % 2
    if height == 0 or width == 0:
        raise ValueError(f"frames of {frames.shape[1]}x{frames.shape[2]} are too small for yuv420p")
    return frames[:, :height, :width]


def encode_mp4(frames: Frames, fps: int, path: Path, *, crf: int = 18, preset: str = "medium") -> None:
    """Encode uint8 RGB frames (F, H, W, 3) to H.264 yuv420p in an MP4 with `movflags=+faststart`.

    Faststart moves the index (moov) before the media data, so a browser starts playing while it
    downloads. Odd sides are cropped by one pixel. CRF 18 is visually lossless for generated video.
    """
    _check_frames(frames)
    frames = even_crop(frames)
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset}
        for frame in frames:
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def poster_jpeg(frames: Frames, *, quality: int = 85) -> bytes:
    """The middle frame as a JPEG: the first frame of a generated clip is often the least typical one."""
    _check_frames(frames)
    buffer = io.BytesIO()
    Image.fromarray(frames[len(frames) // 2]).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
