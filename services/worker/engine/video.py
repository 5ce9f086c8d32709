"""Writing frames out: an H.264 MP4 that browsers play while downloading, a poster, a thumbnail and a
spritesheet (JPEGs)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import av
import numpy as np
from PIL import Image

from schemas.events import Spritesheet
from services.worker.engine.generator import Frames

THUMBNAIL_WIDTH = 320
SPRITESHEET_TILES = 16
SPRITESHEET_COLUMNS = 4
SPRITESHEET_TILE_WIDTH = 160


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


def _scaled(frame: Image.Image, width: int) -> Image.Image:
    """`frame` at `width` pixels wide (never wider than it is), the height in proportion."""
    width = min(width, frame.width)
    height = max(1, round(frame.height * width / frame.width))
    return frame if (width, height) == frame.size else frame.resize((width, height), Image.Resampling.LANCZOS)


def thumbnail_jpeg(frames: Frames, *, width: int = THUMBNAIL_WIDTH, quality: int = 80) -> bytes:
    """The poster's frame, `width` pixels wide (smaller clips keep their size): for lists and galleries."""
    _check_frames(frames)
    buffer = io.BytesIO()
    _scaled(Image.fromarray(frames[len(frames) // 2]), width).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def spritesheet_frames(count: int, tiles: int = SPRITESHEET_TILES) -> list[int]:
    """`tiles` frame indices evenly spaced from the first frame to the last (all of them when fewer)."""
    if count <= tiles:
        return list(range(count))
    return [round(i * (count - 1) / (tiles - 1)) for i in range(tiles)]


def spritesheet_jpeg(
    frames: Frames,
    *,
    tiles: int = SPRITESHEET_TILES,
    columns: int = SPRITESHEET_COLUMNS,
    tile_width: int = SPRITESHEET_TILE_WIDTH,
    quality: int = 75,
) -> tuple[bytes, Spritesheet]:
    """A grid of evenly spaced frames, left to right then top to bottom, for scrubbing previews; with
    its layout. Tiles are `tile_width` wide (or the frame's width, when smaller)."""
    _check_frames(frames)
    indices = spritesheet_frames(len(frames), max(1, tiles))
    columns = max(1, min(columns, len(indices)))
    rows = math.ceil(len(indices) / columns)
    tiles_images = [_scaled(Image.fromarray(frames[i]), tile_width) for i in indices]
    width, height = tiles_images[0].size
    sheet = Image.new("RGB", (columns * width, rows * height))
    for n, tile in enumerate(tiles_images):
        sheet.paste(tile, ((n % columns) * width, (n // columns) * height))
    buffer = io.BytesIO()
    sheet.save(buffer, format="JPEG", quality=quality)
    layout = Spritesheet(
        columns=columns, rows=rows, tile_width=width, tile_height=height, frame_indices=indices
    )
    return buffer.getvalue(), layout
