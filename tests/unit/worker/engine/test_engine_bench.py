"""bench/gpu_generate.py runs end to end on the CPU with the tiny model."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[4] / "bench" / "gpu_generate.py"


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_generate", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_generate"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_bench_prints_a_row_per_frame_count_and_writes_json(
    tiny_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _load_bench()
    out = tmp_path / "bench.json"
    argv = [
        "--model",
        "tiny-mochi",
        "--device",
        "cpu",
        "--frames",
        "7,13",
        "--steps",
        "2",
        "--speeds",
        "exact",
    ]

    rows = bench.main([*argv, "--modes", "eager", "--tiny-cache-dir", str(tiny_cache), "--json", str(out)])

    table = capsys.readouterr().out
    assert [(r.mode, r.frames) for r in rows] == [("eager", 7), ("eager", 13)]
    assert "| mode | frames |" in table
    assert "| eager | 7 | 64x96 | 2 |" in table
    assert "| eager | 13 | 64x96 | 2 |" in table
    report = json.loads(out.read_text())
    assert [r["frames"] for r in report["rows"]] == [7, 13]
    assert all(r["bare_s"] > 0 and r["engine_s"] > 0 for r in report["rows"])
