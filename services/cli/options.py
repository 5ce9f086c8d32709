"""`reelstream submit`'s options: one per JobRequest field, built from the model, so that a field added
to the request gets its option (enums become choices, lists repeat, a dict takes KEY=VALUE pairs)."""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from enum import Enum
from typing import Any, Final

import click

from schemas.jobs import JobRequest

SHORT_FLAGS: Final = {"model": "-m", "quality": "-q", "seed": "-s"}
# Help for the fields whose schema has no description; the limits themselves are the model's.
FIELD_HELP: Final = {
    "negative_prompt": "What the video should not show.",
    "model": "A model of `reelstream models` (the local stack serves tiny-mochi).",
    "width": "Pixels; each model's sizes: `reelstream models`.",
    "height": "Pixels; each model's sizes: `reelstream models`.",
    "duration_seconds": "Length in seconds (or --num-frames).",
    "num_frames": "Frames (or --duration-seconds).",
    "fps": "Frames per second of the MP4.",
    "seed": "The same seed and request make the same video.",
    "guidance_scale": "How closely to follow the prompt.",
    "webhook_url": "Called, signed, for each of --webhook-events (https, public addresses).",
    "metadata": "Your own labels, kept with the job.",
}


def _base(annotation: Any) -> Any:
    """The annotation without `| None` and without `Annotated[...]` metadata."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _base(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        kept = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base(kept[0]) if len(kept) == 1 else str
    return annotation


def _click_type(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return click.Choice([str(member.value) for member in annotation])
    if annotation is bool:
        return click.BOOL
    if annotation is int:
        return click.INT
    if annotation is float:
        return click.FLOAT
    return click.STRING


def request_option(name: str, info: Any) -> click.Option:
    """The `--kebab-name` option of one JobRequest field: lists repeat, a dict takes KEY=VALUE pairs."""
    flag = "--" + name.replace("_", "-")
    decls = [flag, name] if name not in SHORT_FLAGS else [SHORT_FLAGS[name], flag, name]
    annotation = _base(info.annotation)
    help_text = info.description or FIELD_HELP.get(name, "")
    if typing.get_origin(annotation) is list:
        item = _base(typing.get_args(annotation)[0])
        choices = _choices_of(typing.get_args(annotation)[0])
        kind = click.Choice(choices) if choices else _click_type(item)
        return click.Option(decls, type=kind, multiple=True, help=f"{help_text} Repeat for more.".strip())
    if typing.get_origin(annotation) is dict:
        return click.Option(
            decls, multiple=True, metavar="KEY=VALUE", help=f"{help_text} Repeat for more.".strip()
        )
    if isinstance(annotation, type) and issubclass(annotation, Enum) and info.default is not None:
        help_text = f"{help_text} Default: {info.default.value}.".strip()
    return click.Option(decls, type=_click_type(annotation), default=None, help=help_text or None)


def _choices_of(annotation: Any) -> list[str] | None:
    """The values a JSON-Schema `enum` annotation lists (webhook_events), if any."""
    for meta in getattr(annotation, "__metadata__", ()):
        schema = getattr(meta, "json_schema", None)
        if isinstance(schema, dict) and isinstance(schema.get("enum"), list):
            return [str(v) for v in schema["enum"]]
    return None


def request_body(prompt: str, options: dict[str, Any]) -> dict[str, Any]:
    """The POST body: the prompt and each option given (a repeated KEY=VALUE option becomes an object)."""
    body: dict[str, Any] = {"prompt": prompt}
    for name, value in options.items():
        if value is None or value == ():
            continue
        annotation = _base(JobRequest.model_fields[name].annotation)
        if typing.get_origin(annotation) is dict:
            body[name] = _pairs(name, value)
        else:
            body[name] = list(value) if isinstance(value, tuple) else value
    return body


def _pairs(name: str, given: tuple[str, ...]) -> dict[str, str]:
    pairs = {}
    for pair in given:
        key, sep, item = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint=f"--{name.replace('_', '-')}")
        pairs[key] = item
    return pairs


def with_request_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for name, info in reversed(JobRequest.model_fields.items()):
        if name != "prompt":
            option = request_option(name, info)
            command.__click_params__ = [*getattr(command, "__click_params__", []), option]  # type: ignore[attr-defined]
    return command
