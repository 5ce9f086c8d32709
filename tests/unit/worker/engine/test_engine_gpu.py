"""The tiny model on a CUDA GPU in bf16: resume stays exact and inductor-compiled blocks match eager."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.worker.engine import Cancelled, CompileMode, DiffusersGenerator, EngineSettings, ResumeState

from .conftest import Recorder, make_request

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def gpu_settings(cpu_settings: EngineSettings) -> EngineSettings:
    return cpu_settings.model_copy(update={"device": "cuda"})


def test_resume_is_bit_identical_in_bf16_on_the_gpu(gpu_settings: EngineSettings) -> None:
    generator = DiffusersGenerator("tiny-mochi", gpu_settings)
    reference = generator.generate(make_request(), on_phase=lambda _: None, on_step=lambda _: None)
    rec = Recorder(raise_at=3, error=Cancelled())
    with pytest.raises(Cancelled):
        generator.generate(make_request(), checkpoint_every=2, **rec.callbacks())

    state = ResumeState.from_bytes(rec.checkpoints[0].to_bytes())
    video = DiffusersGenerator("tiny-mochi", gpu_settings).generate(
        make_request(), resume=state, on_phase=lambda _: None, on_step=lambda _: None
    )

    assert generator.dtype == torch.bfloat16
    assert np.array_equal(video.frames, reference.frames)


def test_inductor_compiled_blocks_match_eager_on_the_gpu(gpu_settings: EngineSettings) -> None:
    eager = DiffusersGenerator("tiny-mochi", gpu_settings)
    compiled_settings = gpu_settings.model_copy(update={"compile": CompileMode.BLOCKS})
    compiled = DiffusersGenerator("tiny-mochi", compiled_settings)
    request = make_request(num_frames=25)

    a = eager.generate(request, on_phase=lambda _: None, on_step=lambda _: None).frames.astype(np.float64)
    b = compiled.generate(request, on_phase=lambda _: None, on_step=lambda _: None).frames.astype(np.float64)

    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 2e-2
