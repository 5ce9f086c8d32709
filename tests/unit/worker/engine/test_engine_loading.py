"""The catalog-to-weights mapping and the message when weights are missing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from schemas.catalog import CATALOG
from schemas.events import ErrorCode
from services.worker.engine import DiffusersGenerator, EngineSettings, GenerationError, build_generator
from services.worker.engine.loading import SOURCES


def test_every_catalog_model_has_a_source_with_the_same_pipeline_class() -> None:
    assert set(SOURCES) == set(CATALOG)
    for name, spec in CATALOG.items():
        assert SOURCES[name].pipeline_class == spec.pipeline_class
        assert (SOURCES[name].repo_id is None) == spec.tiny


def test_wan_follows_its_frame_and_size_rules() -> None:
    wan = CATALOG["wan2.1-t2v-1.3b"]

    assert (wan.default_frames, wan.default_fps, wan.default_width, wan.default_height) == (81, 16, 832, 480)
    assert wan.frames_allowed(81) and wan.frames_allowed(49) and not wan.frames_allowed(80)
    assert wan.default_width % wan.size_multiple == 0 == wan.default_height % wan.size_multiple


def test_missing_weights_say_where_the_worker_looked_and_how_to_provide_them(tmp_path: Path) -> None:
    settings = EngineSettings(device="cpu", model_dir=tmp_path / "models", hf_cache_dir=tmp_path / "hf")
    generator = build_generator("mochi-1-preview", settings)

    with pytest.raises(GenerationError) as raised:
        generator.load()

    error = raised.value
    assert error.code is ErrorCode.MODEL_UNAVAILABLE
    assert str(tmp_path / "models" / "mochi-1-preview") in error.message
    assert str(tmp_path / "hf") in error.message
    assert "genmo/mochi-1-preview" in error.message
    assert "hf download" in error.message
    assert not error.retryable


def test_an_unknown_model_is_unavailable() -> None:
    with pytest.raises(GenerationError) as raised:
        build_generator("sora-9", EngineSettings())
    assert raised.value.code is ErrorCode.MODEL_UNAVAILABLE

    with pytest.raises(GenerationError):
        DiffusersGenerator("sora-9", EngineSettings())


def test_a_broken_model_folder_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "mochi-1-preview"
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "MochiPipeline"}')
    generator = build_generator(
        "mochi-1-preview", EngineSettings(device="cpu", model_dir=tmp_path / "models")
    )

    with pytest.raises(GenerationError) as raised:
        generator.load()

    assert raised.value.code is ErrorCode.MODEL_UNAVAILABLE
    assert str(folder) in raised.value.message


def test_out_of_memory_while_loading_is_classified() -> None:
    def too_big() -> object:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    generator = DiffusersGenerator("mochi-1-preview", EngineSettings(device="cpu"), loader=too_big)

    with pytest.raises(GenerationError) as raised:
        generator.load()

    assert raised.value.code is ErrorCode.OUT_OF_MEMORY
    assert isinstance(raised.value.__cause__, torch.OutOfMemoryError)
