"""The job request: what pydantic refuses, what `resolve` refuses for a model, and what it fills in."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.catalog import CATALOG, DEFAULT_MODEL, ModelSpec, Quality
from schemas.jobs import MAX_SEED, JobRequest, Priority, RequestRejected, ResolvedRequest, resolve

MOCHI = CATALOG["mochi-1-preview"]
SIDES = "multiples of 16 from 256 to 848"
FRAMES = "6k+1 between 7 and 163"
TOO_MUCH_METADATA = {f"key{i}": "value" for i in range(17)}
FAST = settings(max_examples=150, database=None, suppress_health_check=[HealthCheck.too_slow])


def _rejected(**fields: Any) -> RequestRejected:
    with pytest.raises(RequestRejected) as info:
        resolve(JobRequest(prompt="a red fox in the snow", **fields))
    return info.value


# --- defaults -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", CATALOG.values(), ids=lambda s: s.name)
def test_defaults_are_filled_from_the_model(spec: ModelSpec) -> None:
    image = None if spec.text_to_video else "https://images.example.com/fox.png"
    resolved = resolve(JobRequest(prompt="  a red fox  ", model=spec.name, image_url=image), random.Random(7))
    assert resolved.prompt == "a red fox"
    assert (resolved.width, resolved.height) == (spec.default_width, spec.default_height)
    assert (resolved.num_frames, resolved.fps) == (spec.default_frames, spec.default_fps)
    assert resolved.quality is Quality.MEDIUM
    assert resolved.num_inference_steps == spec.steps[Quality.MEDIUM]
    assert resolved.guidance_scale == spec.default_guidance
    assert resolved.priority is Priority.INTERACTIVE
    assert 0 <= resolved.seed <= MAX_SEED
    assert resolved.negative_prompt is None
    assert resolved.metadata == {}


def test_default_model_and_seeded_defaults_are_reproducible() -> None:
    first = resolve(JobRequest(prompt="a red fox"), random.Random(7))
    again = resolve(JobRequest(prompt="a red fox"), random.Random(7))
    assert first.model == DEFAULT_MODEL
    assert first == again


@pytest.mark.parametrize(
    ("fields", "frames"),
    [
        ({"duration_seconds": 5.4}, 163),
        ({"duration_seconds": 1.0}, 31),
        ({"duration_seconds": 0.01}, 7),
        ({"duration_seconds": 2.0, "fps": 24}, 49),
        ({"num_frames": 7}, 7),
        ({"num_frames": 163}, 163),
    ],
)
def test_length_is_turned_into_allowed_frames(fields: dict[str, Any], frames: int) -> None:
    assert resolve(JobRequest(prompt="a red fox", seed=1, **fields)).num_frames == frames


@pytest.mark.parametrize(("quality", "steps"), [(Quality.LOW, 16), (Quality.MEDIUM, 32), (Quality.HIGH, 64)])
def test_quality_maps_to_steps(quality: Quality, steps: int) -> None:
    assert resolve(JobRequest(prompt="a red fox", quality=quality, seed=1)).num_inference_steps == steps


# --- what a model cannot do: RequestRejected names the field and the allowed range ----------------------


@pytest.mark.parametrize(
    ("fields", "field", "allowed"),
    [
        pytest.param({"width": 850}, "width", SIDES, id="width-not-multiple-of-16"),
        pytest.param({"height": 470}, "height", SIDES, id="height-not-multiple-of-16"),
        pytest.param({"width": 1024}, "width", SIDES, id="width-too-large"),
        pytest.param({"height": 240}, "height", SIDES, id="height-too-small"),
        pytest.param({"num_frames": 169}, "num_frames", FRAMES, id="too-many-frames"),
        pytest.param({"num_frames": 1}, "num_frames", FRAMES, id="too-few-frames"),
        pytest.param({"num_frames": 50}, "num_frames", FRAMES, id="frames-not-6k+1"),
        pytest.param({"duration_seconds": 6.0}, "duration_seconds", "up to 5.43 s at 30 fps", id="too-long"),
        pytest.param({"fps": 0}, "fps", "1 to 60", id="fps-zero"),
        pytest.param({"fps": 61}, "fps", "1 to 60", id="fps-too-high"),
        pytest.param({"fps": 0, "duration_seconds": 2.0}, "fps", "1 to 60", id="fps-zero-with-duration"),
        pytest.param({"guidance_scale": 20.5}, "guidance_scale", "0.0 to 20.0", id="guidance-too-high"),
        pytest.param({"guidance_scale": -0.5}, "guidance_scale", "0.0 to 20.0", id="guidance-negative"),
        pytest.param({"model": "tiny-mochi", "width": 848}, "width", "from 32 to 256", id="per-model-limits"),
    ],
)  # fmt: skip
def test_request_rejected_names_field_and_allowed_range(
    fields: dict[str, Any], field: str, allowed: str
) -> None:
    error = _rejected(**fields)
    assert [p.field for p in error.problems] == [field]
    assert allowed in error.problems[0].allowed
    assert f"{field}: " in str(error)
    assert allowed in str(error)


def test_unknown_model_lists_the_models() -> None:
    error = _rejected(model="sora-9")
    assert [p.field for p in error.problems] == ["model"]
    assert "'sora-9'" in error.problems[0].message
    for name in CATALOG:
        assert name in error.problems[0].allowed


def test_every_problem_is_reported_at_once() -> None:
    error = _rejected(width=850, height=100, fps=99, guidance_scale=50.0)
    assert [p.field for p in error.problems] == ["width", "height", "fps", "guidance_scale"]


# --- what is not a valid request at all: pydantic ValidationError --------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "error_type"),
    [
        pytest.param({"prompt": ""}, "prompt", "string_too_short", id="empty-prompt"),
        pytest.param({"prompt": "   \n "}, "prompt", "string_too_short", id="blank-prompt"),
        pytest.param({"prompt": "x" * 10_000}, "prompt", "string_too_long", id="10k-char-prompt"),
        pytest.param({"negative_prompt": "x" * 2001}, "negative_prompt", "string_too_long", id="long-neg"),
        pytest.param({"colour": "red"}, "colour", "extra_forbidden", id="unknown-field"),
        pytest.param({"width": "848"}, "width", "int_type", id="string-width"),
        pytest.param({"height": 480.0}, "height", "int_type", id="float-height"),
        pytest.param({"num_frames": "163"}, "num_frames", "int_type", id="string-frames"),
        pytest.param({"fps": True}, "fps", "int_type", id="bool-fps"),
        pytest.param({"guidance_scale": False}, "guidance_scale", "float_type", id="bool-guidance"),
        pytest.param({"guidance_scale": "4.5"}, "guidance_scale", "float_type", id="string-guidance"),
        pytest.param({"duration_seconds": True}, "duration_seconds", "float_type", id="bool-duration"),
        pytest.param({"seed": -1}, "seed", "greater_than_equal", id="negative-seed"),
        pytest.param({"seed": 2**32}, "seed", "less_than_equal", id="seed-too-large"),
        pytest.param({"duration_seconds": 0}, "duration_seconds", "greater_than", id="zero-duration"),
        pytest.param({"duration_seconds": 61}, "duration_seconds", "less_than_equal", id="duration-over-60"),
        pytest.param({"quality": "ultra"}, "quality", "enum", id="unknown-quality"),
        pytest.param({"priority": "urgent"}, "priority", "enum", id="unknown-priority"),
        pytest.param({"webhook_url": "ftp://example.com/x"}, "webhook_url", "url_scheme", id="ftp-webhook"),
        pytest.param({"metadata": TOO_MUCH_METADATA}, "metadata", "too_long", id="big-metadata"),
    ],
)  # fmt: skip
def test_invalid_body_is_a_validation_error(body: dict[str, Any], field: str, error_type: str) -> None:
    with pytest.raises(ValidationError) as info:
        JobRequest.model_validate({"prompt": "a red fox", **body})
    errors = info.value.errors()
    assert [(e["loc"][0], e["type"]) for e in errors] == [(field, error_type)]


def test_missing_prompt_is_a_validation_error() -> None:
    with pytest.raises(ValidationError) as info:
        JobRequest.model_validate({"model": "tiny-mochi"})
    assert [(e["loc"], e["type"]) for e in info.value.errors()] == [(("prompt",), "missing")]


def test_duration_and_frames_together_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="either duration_seconds or num_frames, not both"):
        JobRequest.model_validate({"prompt": "a red fox", "duration_seconds": 2.0, "num_frames": 61})


def test_request_is_frozen() -> None:
    req = JobRequest(prompt="a red fox")
    with pytest.raises(ValidationError):
        req.prompt = "a grey wolf"  # type: ignore[misc]


# --- the catalog and properties over it ---------------------------------------------------------------


@pytest.mark.parametrize("spec", CATALOG.values(), ids=lambda s: s.name)
def test_catalog_entry_is_consistent(spec: ModelSpec) -> None:
    for side in (spec.default_width, spec.default_height, spec.min_side, spec.max_side):
        assert side % spec.size_multiple == 0
    assert spec.min_side <= min(spec.default_width, spec.default_height)
    assert max(spec.default_width, spec.default_height) <= spec.max_side
    for frames in (spec.min_frames, spec.max_frames, spec.default_frames):
        assert spec.frames_allowed(frames), frames
    assert spec.min_fps <= spec.default_fps <= spec.max_fps
    assert spec.min_guidance <= spec.default_guidance <= spec.max_guidance
    assert set(spec.steps) == set(Quality)


def _sides(spec: ModelSpec) -> st.SearchStrategy[int]:
    m = spec.size_multiple
    return st.integers(-(-spec.min_side // m), spec.max_side // m).map(lambda k: k * m)


# Text a prompt may hold: anything but control characters and lone surrogates.
PRINTABLE = st.characters(exclude_categories=("Cc", "Cs"))


@given(st.text(PRINTABLE, max_size=20), st.characters(categories=("Cc",)), st.text(PRINTABLE, max_size=20))
def test_a_control_character_anywhere_in_a_prompt_is_refused(before: str, ch: str, after: str) -> None:
    prompt = f"x{before}{ch}{after}x"
    if ch in "\t\n\r":
        assert JobRequest(prompt=prompt).prompt == prompt
        return
    with pytest.raises(ValidationError, match=f"control character U\\+{ord(ch):04X}"):
        JobRequest(prompt=prompt)


@st.composite
def valid_requests(draw: st.DrawFn) -> tuple[ModelSpec, JobRequest]:
    spec = draw(st.sampled_from(list(CATALOG.values())))
    fps = draw(st.integers(spec.min_fps, spec.max_fps))
    length = draw(st.sampled_from(["default", "frames", "duration"]))
    fields: dict[str, Any] = {}
    if length == "frames":
        k = draw(
            st.integers((spec.min_frames - 1) // spec.frame_step, (spec.max_frames - 1) // spec.frame_step)
        )
        fields["num_frames"] = k * spec.frame_step + 1
    elif length == "duration":
        longest = min(60.0, spec.max_frames / fps)
        fields["duration_seconds"] = draw(st.floats(0.01, longest, allow_nan=False, allow_infinity=False))
    req = JobRequest(
        prompt=draw(st.text(PRINTABLE, min_size=1, max_size=40).filter(str.strip)),
        model=spec.name,
        width=draw(st.none() | _sides(spec)),
        height=draw(st.none() | _sides(spec)),
        fps=fps,
        quality=draw(st.sampled_from(Quality)),
        guidance_scale=draw(st.none() | st.floats(spec.min_guidance, spec.max_guidance)),
        image_url=None if spec.text_to_video else "https://images.example.com/first-frame.png",
        **fields,
    )
    return spec, req


@FAST
@given(valid_requests(), st.randoms(use_true_random=False))
def test_valid_requests_resolve_to_sizes_and_frames_the_model_can_make(
    case: tuple[ModelSpec, JobRequest], rng: random.Random
) -> None:
    spec, req = case
    resolved = resolve(req, rng)
    assert resolved.width % 16 == 0
    assert resolved.height % 16 == 0
    assert spec.min_side <= min(resolved.width, resolved.height)
    assert max(resolved.width, resolved.height) <= spec.max_side
    assert spec.frames_allowed(resolved.num_frames)
    assert (resolved.num_frames - 1) % spec.frame_step == 0
    assert resolved.num_inference_steps == spec.steps[req.quality]
    assert 0 <= resolved.seed <= MAX_SEED


@FAST
@given(
    model=st.sampled_from([*CATALOG, "no-such-model"]),
    width=st.none() | st.integers(-64, 4096),
    height=st.none() | st.integers(-64, 4096),
    fps=st.none() | st.integers(-5, 200),
    length=st.none() | st.integers(-10, 400) | st.floats(0.001, 60.0),
    guidance=st.none() | st.floats(-100, 100),
)
def test_resolve_either_succeeds_validly_or_rejects(
    model: str,
    width: int | None,
    height: int | None,
    fps: int | None,
    length: float | None,
    guidance: float | None,
) -> None:
    length_field: dict[str, Any] = (
        {"num_frames": length} if isinstance(length, int) else {"duration_seconds": length}
    )
    req = JobRequest(
        prompt="a red fox",
        model=model,
        width=width,
        height=height,
        fps=fps,
        guidance_scale=guidance,
        **length_field,
    )
    outcome: ResolvedRequest | RequestRejected
    try:
        outcome = resolve(req, random.Random(0))
    except RequestRejected as e:
        outcome = e
    if isinstance(outcome, RequestRejected):
        assert outcome.problems
        assert all(p.field in JobRequest.model_fields and p.allowed for p in outcome.problems)
        return
    resolved = outcome
    spec = CATALOG[resolved.model]
    assert resolved.width % spec.size_multiple == 0
    assert resolved.height % spec.size_multiple == 0
    assert spec.frames_allowed(resolved.num_frames)
    assert spec.min_fps <= resolved.fps <= spec.max_fps
