"""bench/gpu_quality.py on the CPU with tiny-mochi: the tiers skip transformer work, are deterministic,
and are scored against exact with PSNR and SSIM (whose values mean nothing on random weights)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from schemas.catalog import CATALOG, Speed

BENCH = Path(__file__).resolve().parents[4] / "bench" / "gpu_quality.py"


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_quality", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_quality"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _load_bench()


def test_psnr_and_ssim_on_known_videos(bench: ModuleType) -> None:
    rng = np.random.default_rng(0)
    video = rng.integers(0, 250, size=(3, 40, 48, 3), dtype=np.uint8)
    assert bench.psnr(video, video) == math.inf
    assert bench.ssim(video, video) == pytest.approx(1.0)
    # Every pixel off by one: MSE 1, so PSNR = 10 log10(255^2) = 48.13 dB; structure unchanged.
    assert bench.psnr(video, video + 1) == pytest.approx(48.1308, abs=1e-4)
    assert bench.ssim(video, video + 1) == pytest.approx(1.0, abs=1e-3)
    noisy = np.clip(video.astype(int) + rng.normal(0, 40, video.shape), 0, 255).astype(np.uint8)
    assert 0.0 < bench.ssim(video, noisy) < 0.9
    assert bench.psnr(video, noisy) < 25


def test_quality_bench_scores_the_tiers_against_exact(
    bench: ModuleType, tiny_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "quality.json"
    argv = ["--model", "tiny-mochi", "--device", "cpu", "--frames", "7", "--steps", "8", "--prompts", "1"]
    rows, summaries = bench.main(
        [*argv, "--seeds", "3", "--tiny-cache-dir", str(tiny_cache), "--json", str(out)]
    )

    table = capsys.readouterr().out
    by_speed = {s.speed: s for s in summaries}
    assert list(by_speed) == ["exact", "fast", "fastest"]
    assert by_speed["exact"].psnr_db == math.inf and by_speed["exact"].ssim == pytest.approx(1.0)
    # The tiers really skip work: the fixed schedule exactly, the first-block cache at some steps.
    assert by_speed["fastest"].work_fraction == CATALOG["tiny-mochi"].speeds[Speed.FASTEST].full_steps(8) / 8
    assert by_speed["fast"].work_fraction < 1.0
    # And they change the frames, deterministically (the warm-up render equals the timed one).
    for speed in ("fast", "fastest"):
        assert math.isfinite(by_speed[speed].psnr_db) and -1.0 <= by_speed[speed].ssim < 1.0
    assert all(s.deterministic for s in summaries)
    assert all(not r.fp8 and not r.compiled for r in rows)  # never on the CPU
    assert "| fastest | taylorseer-lite-2+1/2 | 1 |" in table
    report = json.loads(out.read_text())
    assert [s["speed"] for s in report["summary"]] == ["exact", "fast", "fastest"]
    assert "LPIPS" in report["lpips"]
