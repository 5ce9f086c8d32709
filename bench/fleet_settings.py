"""The settings the fleet benchmark runs with: production's, and every deviation named in its table.

Production = the defaults of the services' settings classes with the deployment's values on top
(`k8s/base/kustomization.yaml`). The benchmark runs the GPU's time `scale` times faster, so a setting
that is an amount of GPU time (the least slot time a preemption must save, no checkpoint within so
much denoising) is divided by the scale: on the scaled clock it is production's value. Settings about
the host and the network (heartbeats, the silence that marks a slot dead, planning ticks, the
look-ahead that hides a dispatch round trip, progress throttling) are not scaled. `--set NAME=VALUE`
changes one; the table then says DEVIATION.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from services.scheduler.settings import SchedulerSettings
from services.worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENT = ROOT / "k8s" / "base" / "kustomization.yaml"


@dataclass(frozen=True, slots=True)
class Knob:
    name: str  # the settings field, and `--set` name
    service: str  # "scheduler", "worker" or "bench"
    gpu_time: bool = False  # production's value is GPU time: divided by the scale here

    @property
    def env(self) -> str:
        return f"REELSTREAM_{self.name.upper()}"


KNOBS: Final = (
    Knob("dead_after_seconds", "scheduler"),
    Knob("lost_grace_seconds", "scheduler"),
    Knob("max_attempts", "scheduler"),
    Knob("tick_seconds", "scheduler"),
    Knob("lookahead_seconds", "scheduler"),
    Knob("reserved_interactive_slots", "scheduler"),
    Knob("balance_batch", "scheduler"),
    Knob("balance_min_gain_seconds", "scheduler", gpu_time=True),
    Knob("max_preemptions", "scheduler"),
    Knob("checkpoint_every", "worker"),
    Knob("checkpoint_min_seconds", "worker", gpu_time=True),
    Knob("preview_min_seconds", "worker", gpu_time=True),
    Knob("heartbeat_seconds", "worker"),
    Knob("progress_interval_seconds", "worker"),
    Knob("max_finishing", "worker"),
    Knob("preview_every_steps", "worker"),
    Knob("step_pacing", "bench"),  # a simulated step: a plain sleep, as production's GPU waits
    Knob("costs", "bench"),  # prompt encode, VAE decode and MP4 encode spent, not only the steps
)
BY_NAME: Final = {k.name: k for k in KNOBS}
BENCH_PRODUCTION: Final[dict[str, Any]] = {"step_pacing": "sleep", "costs": True}


def deployment_values(path: Path = DEPLOYMENT) -> dict[str, str]:
    """`REELSTREAM_X=value` literals of the deployment's config map, by lower-case field name."""
    found = re.findall(r"-\s*REELSTREAM_([A-Z0-9_]+)=(\S+)", path.read_text())
    return {name.lower(): value for name, value in found}


def production() -> dict[str, Any]:
    """Every knob's production value (GPU-time ones unscaled)."""
    deployed = deployment_values()
    out: dict[str, Any] = {}
    for knob in KNOBS:
        if knob.service == "bench":
            out[knob.name] = BENCH_PRODUCTION[knob.name]
            continue
        cls = SchedulerSettings if knob.service == "scheduler" else WorkerSettings
        default = cls.model_fields[knob.name].default
        out[knob.name] = _parse(deployed[knob.name], default) if knob.name in deployed else default
    return out


def _parse(text: str, like: Any) -> Any:
    if isinstance(like, bool):
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"not a boolean: {text!r}")
        return text.lower() in ("true", "1", "yes")
    if isinstance(like, int) and not isinstance(like, bool):
        return int(text)
    if isinstance(like, float):
        return float(text)
    return text


@dataclass(frozen=True, slots=True)
class Used:
    knob: Knob
    production: Any
    value: Any
    note: str  # "", "GPU time / scale" or "DEVIATION"

    @property
    def deviation(self) -> bool:
        return self.note == "DEVIATION"


def resolve(overrides: Iterable[str], scale: float) -> dict[str, Used]:
    """The values to run with: production's (GPU time divided by `scale`), then each `NAME=VALUE`."""
    prod = production()
    asked: dict[str, str] = {}
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or name not in BY_NAME:
            raise ValueError(f"--set {item!r}: expected NAME=VALUE, NAME one of {', '.join(BY_NAME)}")
        asked[name] = value
    used: dict[str, Used] = {}
    for knob in KNOBS:
        base = prod[knob.name] / scale if knob.gpu_time else prod[knob.name]
        note = "GPU time / scale" if knob.gpu_time else ""
        if knob.name in asked:
            value = _parse(asked[knob.name], prod[knob.name])
            if value != base:
                base, note = value, "DEVIATION"
        used[knob.name] = Used(knob, prod[knob.name], base, note)
    return used


def environment(used: dict[str, Used], service: str) -> dict[str, str]:
    """REELSTREAM_* variables that give a service every one of its knobs (the caller's environment
    cannot change what the benchmark runs with)."""
    return {u.knob.env: _text(u.value) for u in used.values() if u.knob.service == service}


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def deviations(used: dict[str, Used] | Sequence[dict[str, Any]]) -> list[str]:
    """`name=value (production: x)` for each deviation: of `resolve`'s answer, or of the rows stored in
    a run's JSON."""
    rows = [as_row(u) for u in used.values()] if isinstance(used, dict) else list(used)
    return [f"{r['name']}={r['value']} (production: {r['production']})" for r in rows if r["deviation"]]


def as_row(u: Used) -> dict[str, Any]:
    return {
        "name": u.knob.name,
        "service": u.knob.service,
        "production": u.production,
        "value": u.value,
        "note": u.note,
        "deviation": u.deviation,
    }


def table(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    return [
        [r["service"], r["name"], _text(r["production"]), _fmt(r["value"]), r["note"] or "production"]
        for r in rows
    ]


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else _text(value)
