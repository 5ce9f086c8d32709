"""Domain errors of the api and their single mapping to RFC 9457 problem+json responses."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas.catalog import DEFAULT_MODEL, UnknownModel, model_spec
from schemas.jobs import RequestRejected
from services.common.errors import BrokerUnavailable, PermanentError, RetryableError

PROBLEM = "application/problem+json"
RETRY_AFTER_SECONDS = 5
log = logging.getLogger(__name__)
# What a read of the job database raises when Postgres is away, slow, or the pool has no connection left.
DB_ERRORS = (OperationalError, DBAPIError, PoolTimeout, OSError, TimeoutError)


class ApiError(PermanentError):
    status = 400
    title = "Bad request"
    retry_after: int | None = None  # seconds, sent as Retry-After
    headers: ClassVar[Mapping[str, str]] = {}

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class JobNotFound(ApiError):
    status = 404
    title = "Job not found"


class Conflict(ApiError):
    status = 409
    title = "Conflict"


class TooManyStreams(ApiError):
    status = 503
    title = "Too many open streams"
    retry_after = RETRY_AFTER_SECONDS


class IdempotencyMismatch(ApiError):
    status = 422
    title = "Idempotency-Key reused with a different body"


class JobNotCreated(BrokerUnavailable):
    """Kafka did not append a submit's job.requested by its `accept_by`: that job does not exist, and its
    consumers drop the record should the producer still deliver it."""

    def __init__(self, why: str, accept_by: datetime) -> None:
        super().__init__(f"{why}; submit deadline {accept_by.isoformat()}")
        self.why = why
        self.accept_by = accept_by

    def detail(self) -> str:
        return (
            f"The job was not created and will never run: {self.why} (submit deadline"
            f" {self.accept_by.isoformat()}). Submit it again after Retry-After seconds, with an"
            " Idempotency-Key: a retry with the same key names the same job, so it can never create a"
            " second one, and should Kafka have stored this submit after all (its acknowledgement lost on"
            " the way back) the retry returns that job."
        )


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details; `errors` lists the fields of a 422, each with what is allowed.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "field": {"type": "string"},
                    "message": {"type": "string"},
                    "allowed": {"type": "string"},
                },
            },
        },
    },
}
_WHY: Final = {
    400: "A header or query value this api did not issue (cursor, Last-Event-ID)",
    401: "No API key, or one that is unknown or revoked (`Authorization: Bearer <key>`)",
    403: "The key may not do this (admin routes)",
    404: "No such job",
    409: "The job is not in a state that allows this",
    413: "The request body is too large",
    416: "The Range cannot be served",
    422: "Invalid request: each field named, with the allowed values",
    429: "A limit was reached (the queue, the tenant's quota, or the key's request rate): `limit` names it;"
    " retry after Retry-After seconds",
    503: "A dependency is unavailable, or too many streams are open: retry after Retry-After seconds",
}


def problems(*statuses: int, why: Mapping[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the problem+json answers a route gives (422 and 503 always)."""
    described = {**_WHY, **(why or {})}
    content = {PROBLEM: {"schema": PROBLEM_SCHEMA}}
    always = {401, 422, 429, 503}
    return {s: {"description": described[s], "content": content} for s in sorted({*statuses, *always})}


def problem(
    status: int, title: str, detail: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _allowed_for(field: str, body: Any) -> str | None:
    """The model-specific allowed values for a field, so a type error still says what would be accepted."""
    model = body.get("model", DEFAULT_MODEL) if isinstance(body, dict) else DEFAULT_MODEL
    try:
        spec = model_spec(model)
    except UnknownModel as e:
        return e.known if field == "model" else None
    sides = f"integer multiple of {spec.size_multiple} from {spec.min_side} to {spec.max_side}"
    return {
        "width": sides,
        "height": sides,
        "num_frames": f"integer {spec.frames_rule()}",
        "fps": f"integer {spec.min_fps} to {spec.max_fps}",
        "duration_seconds": f"up to {spec.max_frames / spec.default_fps:.2f} s",
        "guidance_scale": f"{spec.min_guidance} to {spec.max_guidance}",
        "seed": "integer 0 to 4294967295",
    }.get(field)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    errors = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body",)]
        field = ".".join(loc) or "body"
        entry: dict[str, Any] = {"field": field, "message": err.get("msg", "invalid")}
        if (allowed := _allowed_for(loc[0] if loc else "", getattr(exc, "body", None))) is not None:
            entry["allowed"] = allowed
        errors.append(entry)
    return errors


def install(app: FastAPI) -> None:
    """Register the one place where errors become problem+json."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(exc)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem(422, "Invalid request", detail, errors=errors)

    @app.exception_handler(RequestRejected)
    async def _rejected(_: Request, exc: RequestRejected) -> JSONResponse:
        errors = [{"field": p.field, "message": p.message, "allowed": p.allowed} for p in exc.problems]
        return problem(422, "The model cannot do this request", str(exc), errors=errors)

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        headers = {**exc.headers}
        if exc.retry_after is not None:
            headers["Retry-After"] = str(exc.retry_after)
        return problem(exc.status, exc.title, exc.detail, headers, **exc.extra)

    @app.exception_handler(JobNotCreated)
    async def _not_created(_: Request, exc: JobNotCreated) -> JSONResponse:
        log.warning("job not created: %s", exc)
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        return problem(503, "Job not created", exc.detail(), headers, accept_by=exc.accept_by.isoformat())

    @app.exception_handler(RetryableError)
    async def _unavailable(_: Request, exc: RetryableError) -> JSONResponse:
        log.warning("dependency unavailable: %s", exc)
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        return problem(503, "Service unavailable", str(exc), headers=headers)

    # A query outside a request's session (health, SSE) that meets an unavailable database: still a
    # 503 problem, never a bare 500.
    for db_error in (OperationalError, DBAPIError, PoolTimeout):

        @app.exception_handler(db_error)
        async def _database(_: Request, exc: Exception) -> JSONResponse:
            log.warning("job database unavailable: %s", exc.__class__.__name__)
            detail = f"the job database is unavailable: {exc.__class__.__name__}"
            return problem(503, "Service unavailable", detail, {"Retry-After": str(RETRY_AFTER_SECONDS)})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = exc.headers
        if exc.status_code == 405:
            # Starlette names the methods of the first route on the path only; a client needs them all.
            headers = {**(headers or {}), "Allow": ", ".join(_methods_of(request))}
        return problem(exc.status_code, str(exc.detail), str(exc.detail), headers=headers)


def _methods_of(request: Request) -> list[str]:
    """Every method the request's path takes, from the OpenAPI document (routes stay FastAPI's own)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        if re.fullmatch(re.sub(r"\{[^/]+\}", "[^/]+", template), request.url.path):
            methods |= {m.upper() for m in operations}
    return sorted(methods | ({"HEAD"} if "GET" in methods else set()))
