"""The api as the CLI sees it: one httpx client, problem+json turned into one readable line, and the
job's Server-Sent Events read (and resumed with Last-Event-ID) as plain dictionaries."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

DEFAULT_API_URL: Final = "http://127.0.0.1:8000"
TERMINAL_EVENTS: Final = frozenset({"job.succeeded", "job.failed", "job.cancelled"})
# A stream that breaks before its terminal event is opened again from the last event id, this often.
STREAM_RETRIES: Final = 5


class ApiFailure(Exception):
    """The api refused a request (a problem+json answer), or could not be reached at all.

    `status` is the HTTP status, or None when no answer came back."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def describe(response: httpx.Response) -> str:
    """One line from a problem+json answer: the status, the title, and each field with what is allowed."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = " ".join(response.text.split())[:200] or response.reason_phrase
        return f"{response.status_code} {text}"
    title = str(body.get("title") or response.reason_phrase)
    fields = body.get("errors")
    if isinstance(fields, list) and fields:
        parts = []
        for item in fields:
            if not isinstance(item, dict):
                continue
            part = f"{item.get('field', '?')}: {item.get('message', 'invalid')}"
            if item.get("allowed"):
                part += f" (allowed: {item['allowed']})"
            parts.append(part)
        detail = "; ".join(parts)
    else:
        detail = str(body.get("detail") or "")
    line = f"{response.status_code} {title}"
    if detail and detail != title:
        line += f": {detail}"
    if retry := response.headers.get("retry-after"):
        line += f" (retry after {retry} s)"
    return line


@dataclass
class SseEvent:
    event: str
    id: str | None
    data: dict[str, Any] = field(default_factory=dict)


def parse_sse(lines: Iterator[str]) -> Iterator[SseEvent]:
    """SSE frames of a line iterator; comments (keep-alives) and `retry:` are skipped."""
    current: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "event" in current:
                try:
                    data = json.loads(current.get("data", "{}"))
                except ValueError:
                    data = {}
                yield SseEvent(current["event"], current.get("id"), data if isinstance(data, dict) else {})
            current = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(":")
            current[key] = value.removeprefix(" ")


class Api:
    """The REST routes the CLI uses. Every refusal raises `ApiFailure`, never an httpx exception."""

    def __init__(self, base_url: str, key: str | None, transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"User-Agent": "reelstream-cli"} | ({"Authorization": f"Bearer {key}"} if key else {})
        self.http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(30, read=60),
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise ApiFailure(f"cannot reach the api at {self.base_url}: {e.__class__.__name__} {e}") from e
        if response.is_error:
            raise ApiFailure(describe(response), response.status_code)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        body = self._call(method, path, **kwargs).json()
        if not isinstance(body, dict):
            raise ApiFailure(f"unexpected answer from {path}: {str(body)[:200]}")
        return body

    def submit(self, body: Mapping[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json("POST", "/v1/jobs", json=dict(body), headers=headers)

    def get(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/jobs/{job_id}")

    def jobs(self, status: str | None, limit: int, cursor: str | None) -> dict[str, Any]:
        params: dict[str, str | int] = {"limit": limit}
        if status:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        return self._json("GET", "/v1/jobs", params=params)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")

    def delete(self, job_id: str) -> None:
        self._call("DELETE", f"/v1/jobs/{job_id}")

    def models(self) -> list[dict[str, Any]]:
        data = self._json("GET", "/v1/models").get("data", [])
        return [m for m in data if isinstance(m, dict)]

    def download(self, job_id: str, variant: str | None, path: Path) -> tuple[int, str]:
        """Stream the job's content (the MP4, or `variant`) into `path` through a temporary file beside it,
        so an interrupted download never leaves a truncated file under the final name. Returns the byte
        count and the content type."""
        params = {"variant": variant} if variant else {}
        partial = path.with_name(path.name + ".part")
        try:
            with self.http.stream(
                "GET", f"/v1/jobs/{job_id}/content", params=params, timeout=httpx.Timeout(30, read=120)
            ) as response:
                if response.is_error:
                    response.read()
                    raise ApiFailure(describe(response), response.status_code)
                size = 0
                with partial.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
                        size += len(chunk)
                kind = response.headers.get("content-type", "application/octet-stream")
        except httpx.HTTPError as e:
            partial.unlink(missing_ok=True)
            raise ApiFailure(f"download from {self.base_url} broke off: {e.__class__.__name__} {e}") from e
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(path)
        return size, kind

    def events(self, job_id: str, retries: int = STREAM_RETRIES) -> Iterator[SseEvent]:
        """The job's events until its terminal one. A stream that breaks first is opened again after the
        last event id seen (`retries` times in a row at most), so no event is lost or repeated."""
        last_id: str | None = None
        failures = 0
        while True:
            headers = {"Last-Event-ID": last_id} if last_id is not None else {}
            try:
                with self.http.stream(
                    "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=httpx.Timeout(30, read=90)
                ) as response:
                    if response.is_error:
                        response.read()
                        raise ApiFailure(describe(response), response.status_code)
                    for event in parse_sse(response.iter_lines()):
                        failures = 0
                        if event.id is not None:
                            last_id = event.id
                        yield event
                        if event.event in TERMINAL_EVENTS:
                            return
            except httpx.HTTPError as e:
                failures += 1
                if failures > retries:
                    raise ApiFailure(
                        f"the event stream of job {job_id} broke {failures} times: {e.__class__.__name__}"
                    ) from e
            else:
                # The server ends a stream only after the terminal event; an early end is a broken stream.
                failures += 1
                if failures > retries:
                    raise ApiFailure(f"the event stream of job {job_id} ended before the job did")
            time.sleep(min(0.5 * failures, 2.0))
