"""The job request, its resolution against the catalog, and the job status."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Final, Self

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from schemas.catalog import CATALOG, DEFAULT_MODEL, ModelSpec, Quality, Speed, UnknownModel, model_spec

MAX_PROMPT_CHARS: Final = 2000
MAX_METADATA_ENTRIES: Final = 16
MAX_SEED: Final = 2**32 - 1


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL: Final = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class Phase(StrEnum):
    QUEUED = "queued"
    LOADING = "loading"
    ENCODING_PROMPT = "encoding_prompt"
    DENOISING = "denoising"
    DECODING = "decoding"
    ENCODING_VIDEO = "encoding_video"
    UPLOADING = "uploading"
    # Where a finished job is: past every phase of its work.
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Priority(StrEnum):
    INTERACTIVE = "interactive"
    BATCH = "batch"


class WebhookEvent(StrEnum):
    """What a job's webhook may be called for: `job.<value>` events of `reelstream.jobs.events`."""

    STARTED = "started"
    PROGRESS = "progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# A client that names none hears how its job ended, not each step of the way.
DEFAULT_WEBHOOK_EVENTS: Final = (WebhookEvent.SUCCEEDED, WebhookEvent.FAILED, WebhookEvent.CANCELLED)
_WEBHOOK_EVENT_NAMES: Final = ", ".join(e.value for e in WebhookEvent)


# Tab, line feed and carriage return are text; every other control character is refused, NUL above
# all: PostgreSQL cannot store it, so one such prompt would stop the read model for every job after it.
# So is a lone surrogate (JSON lets "\ud800" through), which no UTF-8 encoder takes.
_IN_TEXT: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_IN_NAME: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _no_controls(pattern: re.Pattern[str], allowed: str) -> AfterValidator:
    def check(value: str) -> str:
        if (found := pattern.search(value)) is not None:
            raise ValueError(
                f"control character U+{ord(found.group()):04X} at position {found.start()} is not"
                f" allowed (allowed: {allowed})"
            )
        return value

    return AfterValidator(check)


Text = _no_controls(_IN_TEXT, "printable text, tab and line breaks")
Name = _no_controls(_IN_NAME, "printable text")
Prompt = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_PROMPT_CHARS), Text
]
MetaKey = Annotated[str, StringConstraints(min_length=1, max_length=64), Name]
MetaValue = Annotated[str, StringConstraints(max_length=512), Text]
_WEBHOOK_EVENT_SCHEMA: Final = WithJsonSchema({"type": "string", "enum": [e.value for e in WebhookEvent]})


def _https_only(url: AnyHttpUrl) -> AnyHttpUrl:
    if url.scheme != "https":
        raise ValueError(f"scheme {url.scheme!r} is not allowed (allowed: https)")
    return url


HttpsUrl = Annotated[AnyHttpUrl, AfterValidator(_https_only)]


class JobRequest(BaseModel):
    """What a client posts to `POST /v1/jobs`. Model-specific limits are checked by `resolve()`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: Prompt
    negative_prompt: Annotated[str, StringConstraints(max_length=MAX_PROMPT_CHARS), Text] | None = None
    model: Annotated[str, Name] = DEFAULT_MODEL
    width: int | None = Field(default=None, strict=True)
    height: int | None = Field(default=None, strict=True)
    duration_seconds: float | None = Field(default=None, gt=0, le=60, strict=True)
    num_frames: int | None = Field(default=None, strict=True)
    fps: int | None = Field(default=None, strict=True)
    quality: Quality = Quality.MEDIUM
    speed: Speed = Field(
        default=Speed.EXACT,
        description="exact (the model's sampler, every step in full), fast or fastest: the model's recipes"
        " in /v1/models, each with its expected speedup and quality cost.",
    )
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, strict=True)
    guidance_scale: float | None = Field(default=None, strict=True)
    priority: Priority = Priority.INTERACTIVE
    webhook_url: AnyHttpUrl | None = None
    # Plain strings checked by `resolve()`, so that an unknown one is a 422 naming the allowed values.
    webhook_events: (
        list[Annotated[str, StringConstraints(max_length=32), Name, _WEBHOOK_EVENT_SCHEMA]] | None
    ) = Field(
        default=None,
        max_length=len(WebhookEvent),
        description=f"Events the webhook is called for ({_WEBHOOK_EVENT_NAMES}); default: the terminal ones.",
    )
    metadata: dict[MetaKey, MetaValue] = Field(default_factory=dict, max_length=MAX_METADATA_ENTRIES)
    image_url: HttpsUrl | None = Field(
        default=None,
        description=(
            "An https URL of a PNG, JPEG or WebP image to start the video from (its first frame), for a"
            " model that does image-to-video. The api fetches it once, before accepting the job."
        ),
    )

    @model_validator(mode="after")
    def _one_length(self) -> Self:
        if self.duration_seconds is not None and self.num_frames is not None:
            raise ValueError("give either duration_seconds or num_frames, not both")
        return self


class ResolvedRequest(BaseModel):
    """A request with every value decided: what the worker runs and what the API shows back."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The same character rules as the request: a record on the topic that breaks them (written by anything
    # but the api) is malformed for every consumer alike, never a job to one and a refusal to another.
    prompt: Annotated[str, Text]
    negative_prompt: Annotated[str, Text] | None
    model: Annotated[str, Name]
    width: int
    height: int
    num_frames: int
    fps: int
    quality: Quality
    speed: Speed = Field(
        default=Speed.EXACT, description="The speed tier (absent in records older than the field: exact)."
    )
    num_inference_steps: int
    seed: int
    guidance_scale: float
    priority: Priority
    webhook_url: Annotated[str, Name] | None = None
    webhook_events: list[WebhookEvent] = Field(
        default_factory=lambda: list(DEFAULT_WEBHOOK_EVENTS),
        description="Events the webhook is called for (absent in records older than the field: the default).",
    )
    metadata: dict[Annotated[str, Name], Annotated[str, Text]] = Field(default_factory=dict)
    image_key: str | None = Field(
        default=None, description="S3 key of the input image (image-to-video); None: text-to-video."
    )

    @property
    def duration_seconds(self) -> float:
        return self.num_frames / self.fps


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One field a model cannot do, with the allowed values spelled out."""

    field: str
    message: str
    allowed: str


class RequestRejected(ValueError):
    """The request is well-formed but the chosen model cannot do it."""

    def __init__(self, problems: list[FieldProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p.field}: {p.message} (allowed: {p.allowed})" for p in problems))


def _check_side(spec: ModelSpec, name: str, value: int) -> FieldProblem | None:
    allowed = f"multiples of {spec.size_multiple} from {spec.min_side} to {spec.max_side}"
    if spec.min_side <= value <= spec.max_side and value % spec.size_multiple == 0:
        return None
    return FieldProblem(name, f"{value} is not allowed for model {spec.name}", allowed)


def _resolve_frames(spec: ModelSpec, req: JobRequest, fps: int) -> tuple[int | None, FieldProblem | None]:
    if req.num_frames is not None:
        if spec.frames_allowed(req.num_frames):
            return req.num_frames, None
        msg = f"{req.num_frames} frames is not allowed for model {spec.name}"
        return None, FieldProblem("num_frames", msg, spec.frames_rule())
    if req.duration_seconds is not None:
        wanted = round(req.duration_seconds * fps)
        if wanted > spec.max_frames:
            # Only here is fps known to be positive (an fps of 0 is reported by the caller).
            longest = spec.max_frames / fps
            msg = f"{req.duration_seconds} s at {fps} fps is longer than model {spec.name} can make"
            return None, FieldProblem("duration_seconds", msg, f"up to {longest:.2f} s at {fps} fps")
        return spec.nearest_frames(wanted), None
    return spec.default_frames, None


def _resolve_webhook_events(names: list[str] | None) -> tuple[list[WebhookEvent], FieldProblem | None]:
    """The events a job's webhook is called for, each once in a fixed order; the default when unnamed."""
    if names is None:
        return list(DEFAULT_WEBHOOK_EVENTS), None
    unknown = [name for name in names if name not in WebhookEvent.__members__.values()]
    if unknown:
        listed = ", ".join(repr(name) for name in unknown)
        return [], FieldProblem("webhook_events", f"unknown webhook event {listed}", _WEBHOOK_EVENT_NAMES)
    return [event for event in WebhookEvent if event.value in names], None


def _check_mode(spec: ModelSpec, image_field: str | None) -> FieldProblem | None:
    """An image for a model without image-to-video, or none for a model that needs one."""
    if image_field is not None and not spec.image_to_video:
        able = ", ".join(name for name, s in CATALOG.items() if s.image_to_video)
        msg = f"model {spec.name} does not take an input image"
        return FieldProblem(image_field, msg, f"an input image with a model that takes one: {able}")
    if image_field is None and not spec.text_to_video:
        msg = f"model {spec.name} makes video from an input image only"
        return FieldProblem("image_url", msg, "an https URL of a PNG, JPEG or WebP image")
    return None


def resolve(
    req: JobRequest,
    seed_source: random.Random | None = None,
    *,
    image_field: str | None = None,
    image_key: str | None = None,
) -> ResolvedRequest:
    """Check `req` against its model's limits and fill every default. Raises `RequestRejected`.

    `image_field` names where an input image came from when it did not come as `image_url` (an upload
    field); `image_key` is where the api stored it (set once it is stored)."""
    try:
        spec = model_spec(req.model)
    except UnknownModel as e:
        raise RequestRejected([FieldProblem("model", f"unknown model {req.model!r}", e.known)]) from None
    problems: list[FieldProblem] = []
    if image_field is None and req.image_url is not None:
        image_field = "image_url"
    if (mode_problem := _check_mode(spec, image_field)) is not None:
        problems.append(mode_problem)
    width = req.width if req.width is not None else spec.default_width
    height = req.height if req.height is not None else spec.default_height
    for name, value in (("width", width), ("height", height)):
        if (problem := _check_side(spec, name, value)) is not None:
            problems.append(problem)
    fps = req.fps if req.fps is not None else spec.default_fps
    if not spec.min_fps <= fps <= spec.max_fps:
        problems.append(FieldProblem("fps", f"{fps} is out of range", f"{spec.min_fps} to {spec.max_fps}"))
    frames, frame_problem = _resolve_frames(spec, req, fps)
    if frame_problem is not None:
        problems.append(frame_problem)
    guidance = req.guidance_scale if req.guidance_scale is not None else spec.default_guidance
    if not spec.min_guidance <= guidance <= spec.max_guidance:
        allowed = f"{spec.min_guidance} to {spec.max_guidance}"
        problems.append(FieldProblem("guidance_scale", f"{guidance} is out of range", allowed))
    if spec.speed_tier(req.speed) is None:
        msg = f"model {spec.name} has no {req.speed.value!r} speed tier"
        problems.append(FieldProblem("speed", msg, ", ".join(spec.speeds)))
    webhook_events, events_problem = _resolve_webhook_events(req.webhook_events)
    if events_problem is not None:
        problems.append(events_problem)
    if problems or frames is None:
        raise RequestRejected(problems)
    seed = req.seed if req.seed is not None else (seed_source or random.SystemRandom()).randint(0, MAX_SEED)
    return ResolvedRequest(
        prompt=req.prompt,
        negative_prompt=req.negative_prompt,
        model=spec.name,
        width=width,
        height=height,
        num_frames=frames,
        fps=fps,
        quality=req.quality,
        speed=req.speed,
        num_inference_steps=spec.steps[req.quality],
        seed=seed,
        guidance_scale=guidance,
        priority=req.priority,
        webhook_url=str(req.webhook_url) if req.webhook_url is not None else None,
        webhook_events=webhook_events,
        metadata=dict(req.metadata),
        image_key=image_key,
    )
