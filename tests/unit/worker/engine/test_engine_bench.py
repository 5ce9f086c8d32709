"""bench/gpu_generate.py runs end to end on the CPU with the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import gpu_generate


def test_bench_prints_a_row_per_frame_count_and_writes_json(
    tiny_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
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

    rows = gpu_generate.main(
        [*argv, "--modes", "eager", "--tiny-cache-dir", str(tiny_cache), "--json", str(out)]
    )

    table = capsys.readouterr().out
    assert [(r.mode, r.frames) for r in rows] == [("eager", 7), ("eager", 13)]
    assert "| mode | frames |" in table
    assert "| eager | 7 | 64x96 | 2 |" in table
    assert "| eager | 13 | 64x96 | 2 |" in table
    report = json.loads(out.read_text())
    assert [r["frames"] for r in report["rows"]] == [7, 13]
    assert all(r["bare_s"] > 0 and r["engine_s"] > 0 for r in report["rows"])
