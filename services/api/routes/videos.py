"""/v1/videos: OpenAI's video API (`client.videos.*` of the `openai` package) over the same jobs as /v1/jobs.

A video is a job: same id, same tenant scoping, same admission, limits and events. OpenAI's fields map
onto the job request: `size` "WxH" is width and height, `seconds` is duration_seconds, `model` a model of
the catalog (/v1/models), `input_reference` an uploaded image (image-to-video). Any other request field
of /v1/jobs may come too (quality, speed, seed, negative_prompt, ...). The body is multipart/form-data (as
the openai client sends it), JSON, or a urlencoded form. Statuses: queued, in_progress, completed, failed
(a cancelled job is failed with error code `cancelled`); `progress` is 0..100. Beside OpenAI's fields a
video carries the job's own (`job_status`, `phase`, `queue_position`, `eta`, `result`, `links`).
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import MIMEPart
from enum import StrEnum
from typing import Annotated, Any, Final, Literal
from urllib.parse import parse_qsl

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import select

from schemas.catalog import CATALOG, DEFAULT_MODEL, ModelSpec
from schemas.jobs import JobRequest, JobStatus, RequestRejected, resolve
from services.api.auth import CallerDep, SubmitterDep
from services.api.content import MEDIA_TYPES, ContentVariant, stream_object, variant_key
from services.api.deletion import delete_job
from services.api.deps import AppState, SessionDep, StateDep
from services.api.errors import ApiError, problems
from services.api.queries import get_job, past
from services.api.routes import jobs
from services.api.views import EtaOut, JobOut, ResultOut, job_out
from services.common.readmodel import JOBS, JobRow

router = APIRouter(prefix="/v1/videos", tags=["videos"])

POLL_AFTER_MS: Final = 1000
_SIZE: Final = re.compile(r"^([0-9]{1,5})x([0-9]{1,5})$")
_SECONDS: Final = re.compile(r"^[0-9]{1,2}(\.[0-9]{1,3})?$")
# Fields of the job request that keep their name here (as strings in a form, their JSON type in JSON).
_PASSTHROUGH: Final[dict[str, type]] = {
    "negative_prompt": str,
    "quality": str,
    "speed": str,
    "seed": int,
    "fps": int,
    "guidance_scale": float,
    "priority": str,
    "webhook_url": str,
}
_FIELDS: Final = ("prompt", "model", "size", "seconds", "input_reference", *_PASSTHROUGH, "metadata")
# What the job request calls what this api's client named otherwise.
_RENAMED: Final = {"width": "size", "height": "size", "duration_seconds": "seconds", "num_frames": "seconds"}


class InvalidVideo(ApiError):
    status = 422
    title = "Invalid request"


class UnsupportedBody(ApiError):
    status = 415
    title = "Unsupported media type"


class BadAfter(ApiError):
    status = 400
    title = "Invalid after"


def invalid(field: str, message: str, allowed: str) -> InvalidVideo:
    return InvalidVideo(
        f"{field}: {message} (allowed: {allowed})",
        errors=[{"field": field, "message": message, "allowed": allowed}],
    )


# --- the request -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Upload:
    """A file part of a multipart body."""

    data: bytes
    content_type: str | None
    filename: str | None


Fields = dict[str, Any]


def parse_multipart(body: bytes, content_type: str) -> Fields:
    """The parts of a multipart/form-data body: text fields as str, file parts as `Upload`.

    The standard library's MIME parser reads it (the api carries no multipart dependency); a body that is
    not multipart gives no fields, which the request check then names.
    """
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    try:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        parts = list(message.iter_parts()) if message.is_multipart() else []
        return dict(_field(part) for part in parts if _name(part))
    except (ValueError, LookupError, TypeError, AttributeError) as e:  # a header the parser cannot read
        raise invalid(
            "body", f"is not a readable multipart/form-data body ({e})", "multipart/form-data"
        ) from None


def _name(part: MIMEPart) -> str:
    name = part.get_param("name", header="content-disposition")
    return name if isinstance(name, str) else ""


def _field(part: MIMEPart) -> tuple[str, str | Upload]:
    name = _name(part)
    data = part.get_payload(decode=True)
    data = data if isinstance(data, bytes) else b""
    filename = part.get_filename()
    if filename is not None or name == "input_reference":
        return name, Upload(data, part.get_content_type(), filename)
    try:
        return name, data.decode()
    except UnicodeDecodeError:
        raise invalid(name, "is not UTF-8 text", "UTF-8 text") from None


def _nest(fields: Fields) -> Fields:
    """`metadata[k]=v` and `input_reference[image_url]=u` (how the openai client writes objects into a
    form) as objects."""
    out: Fields = {}
    for key, value in fields.items():
        outer, bracket, inner = key.partition("[")
        if bracket and inner.endswith("]") and outer in {"metadata", "input_reference"}:
            nested = out.setdefault(outer, {})
            if isinstance(nested, dict):
                nested[inner[:-1]] = value
        else:
            out[key] = value
    return out


async def read_fields(request: Request) -> tuple[Fields, bool]:
    """The body's fields, and whether they came as text (a form: numbers still to be parsed)."""
    content_type = request.headers.get("content-type", "application/json")
    media = content_type.split(";", 1)[0].strip().lower()
    body = await request.body()
    if media == "multipart/form-data":
        return _nest(parse_multipart(body, content_type)), True
    if media == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(body.decode(), keep_blank_values=True)
        except UnicodeDecodeError:
            raise invalid("body", "is not UTF-8", "a UTF-8 form") from None
        return _nest(dict(pairs)), True
    if media in {"application/json", ""} or media.endswith("+json"):
        try:
            parsed = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise invalid("body", "is not JSON", "a JSON object") from None
        if not isinstance(parsed, dict):
            raise invalid("body", "is not a JSON object", "a JSON object")
        return parsed, False
    raise UnsupportedBody(
        f"content type {media!r} is not taken here; send multipart/form-data, application/json or"
        " application/x-www-form-urlencoded"
    )


def _spec(model: object) -> ModelSpec:
    if not isinstance(model, str) or model not in CATALOG:
        raise invalid("model", f"unknown model {model!r}", ", ".join(CATALOG))
    return CATALOG[model]


def sizes_allowed(spec: ModelSpec) -> str:
    return (
        f"WxH, each side a multiple of {spec.size_multiple} from {spec.min_side} to {spec.max_side}"
        f" (default {spec.default_width}x{spec.default_height})"
    )


def seconds_allowed(spec: ModelSpec) -> str:
    longest = spec.max_frames / spec.default_fps
    return f"a number of seconds above 0, up to {longest:.2f} at {spec.default_fps} fps"


def _size(value: object, spec: ModelSpec) -> tuple[int, int]:
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        raise invalid("size", f"{value!r} is not a size", sizes_allowed(spec))
    return int(match[1]), int(match[2])


def _seconds(value: object, spec: ModelSpec) -> float:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    text = isinstance(value, str) and _SECONDS.match(value) is not None
    seconds = float(value) if number or text else None  # type: ignore[arg-type]
    if seconds is None or not 0 < seconds <= 60:  # JobRequest's own bound
        raise invalid("seconds", f"{value!r} is not a duration", seconds_allowed(spec))
    return seconds


def _typed(name: str, value: object, as_text: bool) -> object:
    """A form's text as the field's type (JSON keeps its own types, checked by the job request)."""
    kind = _PASSTHROUGH[name]
    if not as_text or kind is str or not isinstance(value, str):
        return value
    try:
        return kind(value)
    except ValueError:
        raise invalid(name, f"{value!r} is not a {kind.__name__}", f"a {kind.__name__}") from None


def video_request(fields: Mapping[str, Any], as_text: bool) -> tuple[JobRequest, Upload | None]:
    """The job request that an OpenAI-style create body asks for, and its input image if one was uploaded.

    Every refusal is a 422 naming the field (OpenAI's name: size, seconds) and what the model allows.
    """
    unknown = sorted(set(fields) - set(_FIELDS))
    if unknown:
        raise invalid(unknown[0], "is not a field of this request", ", ".join(_FIELDS))
    spec = _spec(fields.get("model", DEFAULT_MODEL))
    body: dict[str, Any] = {"prompt": fields.get("prompt"), "model": spec.name}
    if "size" in fields:
        body["width"], body["height"] = _size(fields["size"], spec)
    if "seconds" in fields:
        body["duration_seconds"] = _seconds(fields["seconds"], spec)
    for name in _PASSTHROUGH:
        if name in fields:
            body[name] = _typed(name, fields[name], as_text)
    if "metadata" in fields:
        body["metadata"] = fields["metadata"]
    upload = _input_reference(fields.get("input_reference"), body)
    try:
        request = JobRequest.model_validate(body)
    except ValidationError as e:
        errors = [_renamed(err) for err in e.errors()]
        detail = "; ".join(f"{err['field']}: {err['message']}" for err in errors)
        raise InvalidVideo(detail, errors=errors) from None
    return request, upload


def _input_reference(value: object, body: dict[str, Any]) -> Upload | None:
    """An uploaded file, or `{"image_url": ...}` (the job request's image_url)."""
    if value is None or value == "":
        return None
    if isinstance(value, Upload):
        return value
    if isinstance(value, dict) and set(value) == {"image_url"}:
        body["image_url"] = value["image_url"]
        return None
    allowed = 'an uploaded image file (multipart/form-data), or {"image_url": "https://..."}'
    if isinstance(value, dict) and "file_id" in value:
        raise invalid("input_reference", "file ids are not kept here", allowed)
    raise invalid("input_reference", "is neither an image file nor an image_url", allowed)


def _renamed(err: Mapping[str, Any]) -> dict[str, str]:
    loc = [str(p) for p in err.get("loc", ())]
    field = ".".join(loc) or "body"
    if loc and loc[0] in _RENAMED:
        field = _RENAMED[loc[0]]
    if loc and loc[0] == "image_url":
        field = "input_reference.image_url"
    return {"field": field, "message": str(err.get("msg", "invalid"))}


def check(request: JobRequest, upload: Upload | None) -> None:
    """What the model cannot do, as a 422 in this api's field names (resolve() speaks of width, height
    and duration_seconds)."""
    try:
        resolve(request, image_field="input_reference" if upload is not None else None)
    except RequestRejected as e:
        merged: dict[str, dict[str, str]] = {}
        for p in e.problems:
            field = _RENAMED.get(p.field, p.field) if p.field != "image_url" else "input_reference"
            message = f"{p.field} {p.message}" if field != p.field else p.message
            if field in merged:  # width and height are both the size
                merged[field]["message"] += f"; {message}"
            else:
                merged[field] = {"field": field, "message": message, "allowed": p.allowed}
        errors = list(merged.values())
        detail = "; ".join(f"{err['field']}: {err['message']} (allowed: {err['allowed']})" for err in errors)
        raise InvalidVideo(detail, errors=errors) from None


# --- the answers -----------------------------------------------------------------------------------------


class VideoError(BaseModel):
    code: str
    message: str


class Video(BaseModel):
    """OpenAI's Video object, with the job's own fields after OpenAI's."""

    id: str
    object: Literal["video"] = "video"
    status: Literal["queued", "in_progress", "completed", "failed"]
    progress: int = Field(ge=0, le=100)
    created_at: int = Field(description="Unix seconds.")
    completed_at: int | None = Field(description="Unix seconds; set once the job has ended.")
    expires_at: int | None = Field(description="Unix seconds when retention deletes it; None: kept.")
    model: str
    size: str = Field(description="WxH")
    seconds: str
    prompt: str
    remixed_from_video_id: str | None = None
    error: VideoError | None
    job_status: JobStatus = Field(description="The job's own status (cancelled shows as failed above).")
    phase: str
    step: int | None
    total_steps: int | None
    queue_position: int | None
    eta: EtaOut | None
    result: ResultOut | None
    links: dict[str, str]


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Video]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: Literal[True] = True


_STATUS: Final = {
    JobStatus.QUEUED: "queued",
    JobStatus.RUNNING: "in_progress",
    JobStatus.SUCCEEDED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "failed",
}


def _unix(when: datetime | None) -> int | None:
    return None if when is None else int(when.timestamp())


def _seconds_text(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def video_of(job: JobOut, retention_days: float | None) -> Video:
    """The OpenAI view of a job as /v1/jobs shows it."""
    request = job.request
    error = None
    if job.error is not None:
        error = VideoError(code=job.error.code.value, message=job.error.message)
    elif job.status is JobStatus.CANCELLED:
        error = VideoError(code="cancelled", message="the job was cancelled")
    expires = None
    if retention_days is not None and job.finished_at is not None:
        expires = _unix(job.finished_at + timedelta(days=retention_days))
    progress = 100 if job.status is JobStatus.SUCCEEDED else min(100, max(0, round(job.progress * 100)))
    return Video(
        id=str(job.id),
        status=_STATUS[job.status],
        progress=progress,
        created_at=_unix(job.created_at) or 0,
        completed_at=_unix(job.finished_at),
        expires_at=expires,
        model=request.model,
        size=f"{request.width}x{request.height}",
        seconds=_seconds_text(request.num_frames / request.fps),
        prompt=request.prompt,
        error=error,
        job_status=job.status,
        phase=job.phase.value,
        step=job.step,
        total_steps=job.total_steps,
        queue_position=job.queue_position,
        eta=job.eta,
        result=job.result,
        links={**job.links, "self": job.links["self"].replace("/v1/jobs/", "/v1/videos/", 1)},
    )


def _job_view(state: AppState, job: JobRow) -> JobOut:
    position, eta = (None, None) if JobStatus(job.status).is_terminal() else state.queue_view.lookup(job.id)
    return job_out(job, state.settings.public_base_url, position, eta)


def _poll_hint(response: Response, video: Video) -> None:
    """How soon the openai client's `poll()` should ask again (it reads this header)."""
    if video.status in {"queued", "in_progress"}:
        response.headers["openai-poll-after-ms"] = str(POLL_AFTER_MS)


# --- the routes ------------------------------------------------------------------------------------------

_FORM_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["prompt"],
    "properties": {
        "prompt": {"type": "string", "minLength": 1, "maxLength": 2000},
        "model": {"type": "string", "enum": list(CATALOG), "default": DEFAULT_MODEL},
        "size": {"type": "string", "pattern": _SIZE.pattern, "description": "WxH"},
        "seconds": {"type": "string", "pattern": _SECONDS.pattern},
        "input_reference": {"type": "string", "format": "binary", "description": "An image file."},
        "quality": {"type": "string", "enum": ["low", "medium", "high"]},
        "seed": {"type": "integer", "minimum": 0, "maximum": 4294967295},
    },
}
_JSON_SCHEMA: Final[dict[str, Any]] = {
    **_FORM_SCHEMA,
    "properties": {
        **{k: v for k, v in _FORM_SCHEMA["properties"].items() if k != "input_reference"},
        "seconds": {
            "anyOf": [
                {"type": "string", "pattern": _SECONDS.pattern},
                {"type": "number", "exclusiveMinimum": 0, "maximum": 60},
            ]
        },
        "input_reference": {
            "type": "object",
            "properties": {"image_url": {"type": "string", "format": "uri"}},
            "required": ["image_url"],
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
_CREATE_BODY: Final = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": _FORM_SCHEMA},
            "application/json": {"schema": _JSON_SCHEMA},
        },
    }
}


@router.post(
    "",
    response_model=Video,
    openapi_extra=_CREATE_BODY,
    responses={
        **problems(
            409,
            413,
            415,
            why={
                409: "The Idempotency-Key named a job that was deleted: submit with a new key",
                415: "The body is not multipart/form-data, JSON or a urlencoded form",
            },
        ),
    },
)
async def create(
    request: Request,
    response: Response,
    *,
    caller: SubmitterDep,
    state: StateDep,
    session: SessionDep,
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> Video:
    """`client.videos.create(prompt=..., model=..., size="WxH", seconds="N")`: a job, as POST /v1/jobs
    makes it (durable in Kafka before the answer)."""
    fields, as_text = await read_fields(request)
    body, upload = video_request(fields, as_text)
    check(body, upload)
    image = None
    if upload is not None:
        image = jobs.ImageUpload(upload.data, upload.content_type, "input_reference")
    job = await jobs.accept(
        body,
        caller=caller,
        state=state,
        session=session,
        response=response,
        idempotency_key=idempotency_key,
        upload=image,
    )
    response.headers["Location"] = f"/v1/videos/{job.id}"
    video = video_of(job, state.settings.retention_days)
    _poll_hint(response, video)
    return video


@router.get("/{video_id}", response_model=Video, responses=problems(404))
async def retrieve(
    video_id: uuid.UUID, response: Response, *, caller: CallerDep, state: StateDep, session: SessionDep
) -> Video:
    """`client.videos.retrieve(id)`; `client.videos.poll(id)` asks again after `openai-poll-after-ms`."""
    job = await jobs.load_job(state, session, video_id, caller.tenant)
    video = video_of(_job_view(state, job), state.settings.retention_days)
    _poll_hint(response, video)
    return video


@router.get("", response_model=VideoList, responses=problems(400))
async def index(
    *,
    caller: CallerDep,
    state: StateDep,
    session: SessionDep,
    after: Annotated[str | None, Query(max_length=64, description="The last id of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
) -> VideoList:
    """`client.videos.list(limit=, order=)`, a page at a time after the last id of the one before (the
    client's iterator follows `last_id` while `has_more`)."""
    await jobs._own_submits_projected(state, session)
    columns = JOBS.c
    stmt = select(JOBS).where(columns.tenant == caller.tenant)
    if after is not None:
        created, job_id = await _after(session, after, caller.tenant)
        stmt = stmt.where(past(created, job_id, newest_first=order == "desc"))
    if order == "desc":
        stmt = stmt.order_by(columns.created_at.desc(), columns.id.desc())
    else:
        stmt = stmt.order_by(columns.created_at, columns.id)
    rows = (await session.execute(stmt.limit(limit + 1))).all()
    data = [video_of(_job_view(state, job), state.settings.retention_days) for job in rows[:limit]]
    return VideoList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=len(rows) > limit,
    )


async def _after(session: SessionDep, after: str, tenant: str) -> tuple[datetime, uuid.UUID]:
    try:
        job_id = uuid.UUID(after)
    except ValueError:
        job_id = None
    job = await get_job(session, job_id, tenant) if job_id is not None else None
    if job is None:
        raise BadAfter(f"after={after!r} is not the id of one of your videos; pass a page's last_id back")
    return job.created_at, job.id


@router.delete("/{video_id}", response_model=VideoDeleted, responses=problems(404))
async def delete(
    video_id: uuid.UUID, *, caller: CallerDep, state: StateDep, session: SessionDep
) -> VideoDeleted:
    """`client.videos.delete(id)`: DELETE /v1/jobs/{id} (cancelled if running, S3 objects, row)."""
    job = await jobs.load_job(state, session, video_id, caller.tenant)
    await delete_job(state, session, job)
    return VideoDeleted(id=str(video_id))


class VideoVariant(StrEnum):
    VIDEO = "video"
    THUMBNAIL = "thumbnail"
    SPRITESHEET = "spritesheet"


@router.get(
    "/{video_id}/content",
    response_model=None,
    response_class=StreamingResponse,
    responses={
        200: {"description": "The MP4, or a JPEG", "content": {"video/mp4": {}, "image/jpeg": {}}},
        206: {"description": "The asked Range", "content": {"video/mp4": {}, "image/jpeg": {}}},
        **problems(404, 409, 416),
    },
)
async def content(
    video_id: uuid.UUID,
    request: Request,
    *,
    caller: CallerDep,
    state: StateDep,
    session: SessionDep,
    variant: VideoVariant = VideoVariant.VIDEO,
) -> StreamingResponse:
    """`client.videos.download_content(id, variant=)`: the MP4, its thumbnail or its spritesheet (JPEG),
    with HTTP Range support; a video made before thumbnails were rendered is a 404 naming the variant."""
    state.streams.check("the download")
    job = await jobs.load_job(state, session, video_id, caller.tenant)
    kind = ContentVariant(variant.value)
    key = variant_key(job, kind)
    return await stream_object(
        state.storage, key, request.headers.get("range"), state.streams, MEDIA_TYPES[kind]
    )
