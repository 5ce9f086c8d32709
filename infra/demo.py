"""Submit one prompt to the running api with the `reelstream` CLI, follow it, and save the MP4 locally:
the commands it runs are printed, to be typed again by hand.

python infra/demo.py [--prompt TEXT] [--out DIR] [--api URL]
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

import av

from services.cli.config import api_key

ROOT = Path(__file__).resolve().parents[1]
REELSTREAM = Path(sys.executable).parent / "reelstream"


def reelstream(api: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run one CLI command as a user would: its progress and messages go to this terminal (stderr), its
    answer (a job id, a path) is returned."""
    print(f"$ reelstream {shlex.join(args)}", flush=True)
    return subprocess.run(  # noqa: S603 - our own entry point and arguments
        [str(REELSTREAM), "--api", api, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompt", default="A paper boat drifting down a rainy street, cinematic")
    parser.add_argument("--model", default="tiny-mochi")
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--api", default="http://127.0.0.1:8000")
    args = parser.parse_args(argv)
    key = api_key(ROOT)
    print(f"API key (local admin key of tenant 'default', from .run/api-key): {key}")
    print(f"  try: curl -H 'Authorization: Bearer {key}' {args.api}/v1/jobs")
    started = time.monotonic()
    submitted = reelstream(
        args.api, "submit", args.prompt, "-m", args.model, "-q", "medium", "--seed", "42", "--wait"
    )
    job_id = submitted.stdout.strip()
    if submitted.returncode != 0 or not job_id:
        if job_id:
            reelstream(args.api, "get", job_id)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    path = (args.out / f"{job_id}.mp4").resolve()
    if reelstream(args.api, "download", job_id, "-o", str(path)).returncode != 0:
        return 1
    shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        print(
            f"{shown}: {path.stat().st_size} bytes, {stream.codec_context.name}, "
            f"{stream.width}x{stream.height}, {frames} frames at {stream.average_rate} fps; "
            f"{time.monotonic() - started:.1f} s from submit to file"
        )
    print(
        f"the api stays up at {args.api} (the console at {args.api}/, API docs at /docs);"
        " 'make stop' stops the services"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
