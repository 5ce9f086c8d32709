"""Submit one prompt to the running api, follow its progress over SSE, and save the MP4 locally.

python infra/demo.py [--prompt TEXT] [--out DIR] [--api URL]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import av
import httpx

from services.cli.config import api_key


def follow(client: httpx.Client, job_id: str) -> str:
    """Print each SSE event of the job until the stream ends; returns the terminal event type."""
    last = ""
    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(10, read=120)) as stream:
        kind = ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                step = f" step {data['step']}/{data['total_steps']}" if data.get("step") else ""
                phase = f" {data['phase']}" if data.get("phase") else ""
                where = f" position {data['queue_position']}" if "queue_position" in data else ""
                print(f"  {kind}{phase}{step}{where}", flush=True)
                last = kind
    return last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompt", default="A paper boat drifting down a rainy street, cinematic")
    parser.add_argument("--model", default="tiny-mochi")
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--api", default="http://127.0.0.1:8000")
    args = parser.parse_args(argv)
    key = api_key(Path(__file__).resolve().parents[1])
    print(f"API key (local admin key of tenant 'default', from .run/api-key): {key}")
    print(f"  try: curl -H 'Authorization: Bearer {key}' {args.api}/v1/jobs")
    with httpx.Client(base_url=args.api, timeout=30, headers={"Authorization": f"Bearer {key}"}) as client:
        started = time.monotonic()
        body = {"prompt": args.prompt, "model": args.model, "quality": "medium", "seed": 42}
        response = client.post("/v1/jobs", json=body)
        if response.status_code != 202:
            print(f"submit failed: {response.status_code} {response.text}", file=sys.stderr)
            return 1
        job = response.json()
        print(
            f"job {job['id']} accepted ({job['request']['width']}x{job['request']['height']}, "
            f"{job['request']['num_frames']} frames, {job['request']['num_inference_steps']} steps)"
        )
        if follow(client, job["id"]) != "job.succeeded":
            print(json.dumps(client.get(f"/v1/jobs/{job['id']}").json(), indent=2), file=sys.stderr)
            return 1
        link = client.get(f"/v1/jobs/{job['id']}/result", params={"redirect": "false"}).json()
        video = httpx.get(link["url"], timeout=60)
        video.raise_for_status()
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"{job['id']}.mp4"
        path.write_bytes(video.content)
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = sum(1 for _ in container.decode(stream))
            print(
                f"saved {path} ({len(video.content)} bytes, {stream.codec_context.name}, "
                f"{stream.width}x{stream.height}, {frames} frames at {stream.average_rate} fps) "
                f"in {time.monotonic() - started:.1f} s"
            )
    print(
        f"the api stays up at {args.api} (web page at /, API docs at /docs); 'make stop' stops the services"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
