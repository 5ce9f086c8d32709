"""bench/gpu_generate.py with speed tiers on the CPU: one table per tier, alternating repeats, and the
parts of a recipe that cannot apply on the CPU (FP8, compile) named with the reason."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[4] / "bench" / "gpu_generate.py"


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_generate_tiers", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_generate_tiers"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_bench_prints_one_table_per_tier_with_alternating_repeats(
    tiny_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    argv = ["--model", "tiny-mochi", "--device", "cpu", "--frames", "7", "--steps", "8", "--modes", "eager"]

    rows = _load_bench().main(
        [*argv, "--repeats", "2", "--tiny-cache-dir", str(tiny_cache), "--json", str(out)]
    )

    printed = capsys.readouterr().out
    assert [(r.speed, r.frames, r.repeats) for r in rows] == [
        ("exact", 7, 2),
        ("fast", 7, 2),
        ("fastest", 7, 2),
    ]
    assert "### tiny-mochi, exact: exact (applied: -)" in printed
    assert "### tiny-mochi, fast: first-block-cache-0.4 (applied: first_block)" in printed
    fastest = rows[2]
    assert fastest.applied.startswith("taylorseer_lite; FP8 weights skipped: the device is cpu")
    assert f"### tiny-mochi, fastest: taylorseer-lite-2+1/2 (applied: {fastest.applied})" in printed
    assert printed.count("| eager | 7 | 64x96 | 8 |") == 3
    assert all(r.bare_s > 0 and r.engine_s > 0 and r.s_per_step > 0 for r in rows)
    report = json.loads(out.read_text())
    assert [r["speed"] for r in report["rows"]] == ["exact", "fast", "fastest"]
