"""An in-process fake of the api's job routes for the CLI: real request validation (the schema's own
`resolve`), problem+json refusals, pagination, and SSE streams that a test can break mid-way."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from schemas.catalog import CATALOG
from schemas.jobs import JobRequest, RequestRejected, resolve

KEY = "rs_test_key"
MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(range(256)) * 8
JPEG = b"\xff\xd8\xff\xe0fake-jpeg\xff\xd9"


def problem(status: int, title: str, detail: str, **extra: Any) -> httpx.Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json"})


@dataclass
class FakeJob:
    id: str
    request: dict[str, Any]
    status: str = "queued"
    phase: str = "queued"
    progress: float = 0.0
    step: int | None = None
    total_steps: int | None = None
    error: dict[str, str] | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def view(self) -> dict[str, Any]:
        done = self.status == "succeeded"
        req = self.request
        return {
            "id": self.id,
            "status": self.status,
            "phase": self.phase,
            "progress": self.progress,
            "step": self.step,
            "total_steps": self.total_steps,
            "queue_position": 2 if self.status == "queued" else None,
            "eta": {"wait_seconds": 3.0, "run_seconds": 4.0, "total_seconds": 7.0}
            if self.status == "queued"
            else None,
            "attempt": 1,
            "created_at": self.created_at,
            "dispatched_at": None,
            "started_at": None,
            "finished_at": None,
            "updated_at": self.created_at,
            "request": req,
            "result": {
                "content_type": "video/mp4",
                "size_bytes": len(MP4),
                "width": req["width"],
                "height": req["height"],
                "fps": req["fps"],
                "frames": req["num_frames"],
                "duration_seconds": req["num_frames"] / req["fps"],
            }
            if done
            else None,
            "error": self.error,
            "links": {},
        }


class FakeApi:
    """The routes the CLI calls, as an httpx transport. A prompt with "fail" or "cancel" in it ends that
    way when watched; `break_streams` makes each of the next N event streams end after two events."""

    def __init__(self) -> None:
        self.jobs: dict[str, FakeJob] = {}
        self.requests: list[httpx.Request] = []
        self.break_streams = 0
        self.delete_status = 405
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path, method = request.url.path, request.method
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [m.model_dump(mode="json") for m in CATALOG.values()]})
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return problem(401, "Unauthorized", "no valid API key")
        parts = path.strip("/").split("/")
        if parts[:2] != ["v1", "jobs"]:
            return problem(404, "Not Found", "Not Found")
        if len(parts) == 2:
            return self.submit(request) if method == "POST" else self.index(request)
        job = self.jobs.get(parts[2])
        if job is None:
            return problem(404, "Job not found", f"no job with id {parts[2]}")
        return self.job_route(request, job, parts[3] if len(parts) > 3 else "")

    def job_route(self, request: httpx.Request, job: FakeJob, tail: str) -> httpx.Response:
        method = request.method
        if tail == "" and method == "GET":
            return httpx.Response(200, json=job.view())
        if tail == "" and method == "DELETE":
            if self.delete_status == 204:
                del self.jobs[job.id]
                return httpx.Response(204)
            return problem(405, "Method Not Allowed", "Method Not Allowed")
        if tail == "cancel" and method == "POST":
            if job.status in ("succeeded", "failed", "cancelled"):
                return problem(409, "Conflict", f"job {job.id} already {job.status}")
            job.request = {**job.request, "prompt": job.request["prompt"] + " cancel"}
            return httpx.Response(202, json=job.view())
        if tail == "events":
            return self.events(request, job)
        if tail == "content":
            return self.content(request, job)
        return problem(405, "Method Not Allowed", "Method Not Allowed")

    def submit(self, request: httpx.Request) -> httpx.Response:
        try:
            resolved = resolve(JobRequest.model_validate_json(request.content))
        except ValidationError as e:
            errors = [{"field": ".".join(map(str, err["loc"])), "message": err["msg"]} for err in e.errors()]
            return problem(422, "Invalid request", "; ".join(x["message"] for x in errors), errors=errors)
        except RequestRejected as e:
            errors = [{"field": p.field, "message": p.message, "allowed": p.allowed} for p in e.problems]
            return problem(422, "The model cannot do this request", str(e), errors=errors)
        job = FakeJob(str(uuid.uuid4()), resolved.model_dump(mode="json"))
        self.jobs[job.id] = job
        return httpx.Response(202, json=job.view(), headers={"location": f"/v1/jobs/{job.id}"})

    def index(self, request: httpx.Request) -> httpx.Response:
        status = request.url.params.get("status")
        limit = int(request.url.params.get("limit", 20))
        start = int(request.url.params.get("cursor", 0))
        jobs = [j for j in reversed(self.jobs.values()) if status is None or j.status == status]
        page = jobs[start : start + limit]
        more = start + limit < len(jobs)
        body = {"data": [j.view() for j in page], "next_cursor": str(start + limit) if more else None}
        return httpx.Response(200, json=body)

    def content(self, request: httpx.Request, job: FakeJob) -> httpx.Response:
        if job.status != "succeeded":
            return problem(
                409, "Conflict", f"job {job.id} is {job.status}; the result exists once it has succeeded"
            )
        variant = request.url.params.get("variant", "video")
        if variant == "video":
            return httpx.Response(200, content=MP4, headers={"content-type": "video/mp4"})
        if variant == "poster":
            return httpx.Response(200, content=JPEG, headers={"content-type": "image/jpeg"})
        allowed = "video, poster"
        errors = [{"field": "variant", "message": f"unknown variant {variant!r}", "allowed": allowed}]
        return problem(422, "Invalid request", f"variant: unknown variant {variant!r}", errors=errors)

    def script(self, job: FakeJob) -> list[tuple[str, dict[str, Any]]]:
        """Every event of the job's life, by the outcome its prompt asks for."""
        total = job.request["num_inference_steps"]
        events: list[tuple[str, dict[str, Any]]] = [
            ("job.requested", {}),
            ("job.dispatched", {"slot": 0}),
            ("job.started", {"slot": 0, "worker_id": "w0"}),
        ]
        ending = (
            "cancel"
            if "cancel" in job.request["prompt"]
            else "fail"
            if "fail" in job.request["prompt"]
            else ""
        )
        for step in range(1, total + 1):
            progress = {
                "phase": "denoising",
                "progress": step / (total + 1),
                "step": step,
                "total_steps": total,
            }
            events.append(("job.progress", {**progress, "seconds_per_step": 0.5}))
            if ending == "cancel" and step == 2:
                return [*events, ("job.cancelled", {"reason": "requested by client", "at_step": 2})]
        if ending == "fail":
            return [
                *events,
                ("job.failed", {"error": {"code": "out_of_memory", "message": "CUDA out of memory"}}),
            ]
        preview = {"step": total, "total_steps": total, "preview_key": "p.jpg", "width": 32, "height": 32}
        decoding = {"phase": "decoding", "progress": 0.9, "step": None, "total_steps": None}
        return [
            *events,
            ("job.preview", preview),
            ("job.progress", decoding),
            ("job.progress", {"phase": "uploading", "progress": 0.99}),
            ("job.succeeded", {}),
        ]

    def events(self, request: httpx.Request, job: FakeJob) -> httpx.Response:
        after = int(request.headers.get("last-event-id", "-1"))
        script = self.script(job)
        frames = []
        if after < 0 and job.status == "queued":
            position = {"queue_position": 2, "eta": {"wait_seconds": 3.0, "run_seconds": 4.0}}
            frames.append(f"event: job.queue_position\ndata: {json.dumps(position)}\n\n")
        sent = 0
        for seq, (kind, data) in enumerate(script):
            if seq <= after:
                continue
            frames.append(f"id: {seq}\nevent: {kind}\ndata: {json.dumps({'seq': seq, **data})}\n\n")
            frames.append(": keep-alive\n\n")
            sent += 1
            if self.break_streams and sent == 2:
                self.break_streams -= 1
                break
        else:
            self._finish(job, script)
        return httpx.Response(
            200, content="retry: 2000\n\n" + "".join(frames), headers={"content-type": "text/event-stream"}
        )

    def _finish(self, job: FakeJob, script: list[tuple[str, dict[str, Any]]]) -> None:
        kind, data = script[-1]
        job.status = job.phase = kind.removeprefix("job.")
        job.step = job.total_steps = job.request["num_inference_steps"]
        job.progress = 1.0 if job.status == "succeeded" else 0.5
        job.error = data.get("error")

    def seen(self) -> list[tuple[str, str, str | None]]:
        """Method, path and Last-Event-ID of each request so far."""
        return [(r.method, r.url.path, r.headers.get("last-event-id")) for r in self.requests]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> FakeApi:
    monkeypatch.setenv("REELSTREAM_API_KEY", KEY)
    monkeypatch.chdir(tmp_path)
    return FakeApi()
