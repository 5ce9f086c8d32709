"""The `reelstream` command as a user runs it, in a subprocess against the running services: submit and
follow, read, list, download an MP4 that plays, and a refusal as one line."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import av
import pytest

from tests.e2e.conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
REELSTREAM = Path(sys.executable).parent / "reelstream"


def reelstream(api: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The installed entry point; the key comes from .run/api-key (the working directory is the repo)."""
    return subprocess.run(
        [str(REELSTREAM), "--api", api, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_submit_wait_get_list_and_download_an_mp4(services: str, tmp_path: Path) -> None:
    submitted = reelstream(
        services, "submit", "a lighthouse in a storm, from the cli", "-m", "tiny-mochi", "-q", "low",
        "--width", "128", "--height", "96", "--num-frames", "13", "--seed", "5", "--metadata", "via=cli",
        "--wait",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = str(uuid.UUID(submitted.stdout.strip()))
    lines = submitted.stderr.splitlines()
    assert lines[0].startswith(f"job {job_id} queued: tiny-mochi 128x96, 13 frames")
    # One line per change of phase (a 2-step job may show no step: progress events are throttled).
    phases = [line.split()[1] for line in lines[1:-1]]
    assert "encoding_video" in phases and phases[-1] == "succeeded", submitted.stderr
    assert lines[-1] == f"job {job_id} succeeded (128x96, 13 frames): reelstream download {job_id}"

    got = reelstream(services, "get", job_id, "--json")
    assert got.returncode == 0, got.stderr
    job = json.loads(got.stdout)
    assert job["status"] == "succeeded" and job["request"]["metadata"] == {"via": "cli"}
    table = reelstream(services, "get", job_id)
    assert "succeeded" in table.stdout and "from the cli" in table.stdout

    listed = reelstream(services, "list", "--status", "succeeded", "--limit", "100", "--json")
    assert listed.returncode == 0, listed.stderr
    assert job_id in [j["id"] for j in json.loads(listed.stdout)]

    target = tmp_path / "lighthouse.mp4"
    downloaded = reelstream(services, "download", job_id, "-o", str(target))
    assert downloaded.returncode == 0, downloaded.stderr
    assert downloaded.stdout.strip() == str(target)
    data = target.read_bytes()
    assert data[4:8] == b"ftyp" and len(data) == job["result"]["size_bytes"]
    with av.open(str(target)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (128, 96)
        assert sum(1 for _ in container.decode(stream)) == 13

    again = reelstream(services, "watch", job_id)
    assert again.returncode == 0 and again.stderr.strip().endswith(f"reelstream download {job_id}")

    deleted = reelstream(services, "delete", job_id)
    assert deleted.returncode == 0, deleted.stderr
    gone = reelstream(services, "get", job_id)
    assert gone.returncode == 2 and gone.stderr.startswith("error: 404 ")


def test_refusals_are_one_line_and_exit_2(services: str) -> None:
    bad = reelstream(services, "submit", "a fox", "-m", "tiny-mochi", "--width", "100")
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("error: 422 ") and "width" in bad.stderr and "allowed" in bad.stderr
    missing = reelstream(services, "get", str(uuid.uuid4()))
    assert missing.returncode == 2 and missing.stderr.startswith("error: 404 Job not found")
