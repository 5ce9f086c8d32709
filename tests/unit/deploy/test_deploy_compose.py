"""Fast structural checks of docker-compose.yml and the Dockerfiles, and that the services accept the
environment the compose file gives them. No Docker needed; the compose file is also loaded by compose-go
(the loader of `docker compose config`) in infra/validate-deploy.sh.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
# libyaml's loader where PyYAML has it: the pure-Python one is several times slower.
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SETTINGS = {
    "api": ("services.api.settings", "ApiSettings"),
    "scheduler": ("services.scheduler.settings", "SchedulerSettings"),
    "projector": ("services.projector.settings", "ProjectorSettings"),
    "worker": ("services.worker.settings", "WorkerSettings"),
}

Doc = dict[str, Any]


COMPOSE_FILE = ROOT / "docker-compose.yml"
REQUIRED_VARS = {"POSTGRES_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY", "GPU_SLOTS"}


@pytest.fixture(scope="module")
def compose() -> Doc:
    return yaml.load(COMPOSE_FILE.read_text(), Loader=Loader)  # type: ignore[no-any-return]


def test_compose_dependencies_exist_and_wait(compose: Doc) -> None:
    services = compose["services"]
    for name, service in services.items():
        for target, rule in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            assert rule["condition"] in ("service_healthy", "service_completed_successfully"), name
    for one_shot in ("migrate", "topics", "bucket"):
        assert services["api"]["depends_on"][one_shot]["condition"] == "service_completed_successfully"


def test_compose_secrets_are_required_variables() -> None:
    text = COMPOSE_FILE.read_text()
    for var in REQUIRED_VARS:
        uses = re.findall(r"\$\{" + var + r"(:[?-])?", text)
        assert uses, var
        assert all(use == ":?" for use in uses), f"{var} must always be ${{{var}:?...}}"
    example = (ROOT / "docker" / "compose.env.example").read_text()
    assert all(re.search(rf"^{var}=", example, re.MULTILINE) for var in REQUIRED_VARS)


def test_compose_reelstream_containers_are_hardened(compose: Doc) -> None:
    ours = {n: s for n, s in compose["services"].items() if str(s.get("image", "")).startswith("reelstream-")}
    assert {"api", "scheduler", "projector", "migrate", "worker-cpu-0", "worker-gpu-7"} <= set(ours)
    for name, service in ours.items():
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert service["user"] == "10001:10001", name
        assert "no-new-privileges:true" in service["security_opt"], name


def test_compose_workers_one_slot_each(compose: Doc) -> None:
    for profile in ("cpu", "gpu"):
        workers = {n: s for n, s in compose["services"].items() if s.get("profiles") == [profile]}
        slots = sorted(int(s["environment"]["REELSTREAM_SLOT"]) for s in workers.values())
        assert slots == list(range(len(workers))), profile
        for name, service in workers.items():
            assert service["stop_grace_period"] == "120s", name
            if profile == "gpu":
                (device,) = service["deploy"]["resources"]["reservations"]["devices"]
                assert device["device_ids"] == [service["environment"]["REELSTREAM_SLOT"]], name
    assert len([s for s in compose["services"].values() if s.get("profiles") == ["gpu"]]) == 8


@pytest.mark.parametrize("dockerfile", ["Dockerfile.service", "Dockerfile.worker"])
def test_dockerfiles_run_unprivileged(dockerfile: str) -> None:
    text = (ROOT / "docker" / dockerfile).read_text()
    assert re.search(r"^USER 10001:10001$", text, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK ", text, re.MULTILINE)
    bases = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert bases and all(":" in b and not b.endswith(":latest") for b in bases)
    assert "uv sync --frozen" in text


def _load_settings(monkeypatch: pytest.MonkeyPatch, service: str, env: dict[str, str]) -> Any:
    for key in [k for k in os.environ if k.startswith(("REELSTREAM_", "HF_"))] + ["HOSTNAME"]:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    module, name = SETTINGS[service]
    return getattr(importlib.import_module(module), name)()


def _interpolate(text: str, env: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name, kind, default = match.group(1), match.group(2), match.group(3) or ""
        if name in env:
            return env[name]
        assert kind != "?", f"{name} is required"
        return default

    return re.sub(r"\$\{(\w+)(?::([?-])([^}]*))?\}", one, text)


@pytest.mark.parametrize("service", ["api", "scheduler", "projector", "worker-cpu-0", "worker-gpu-3"])
def test_services_accept_the_compose_configuration(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    example = (ROOT / "docker" / "compose.env.example").read_text()
    env = dict(line.split("=", 1) for line in example.splitlines() if line and not line.startswith("#"))
    if service.startswith("worker-gpu"):
        env["GPU_SLOTS"] = "8"  # as docs/operations.md says for --profile gpu
    compose = yaml.load(_interpolate(COMPOSE_FILE.read_text(), env), Loader=Loader)
    given = {key: str(value) for key, value in compose["services"][service]["environment"].items()}
    settings = _load_settings(monkeypatch, service.split("-", maxsplit=1)[0], given)
    assert settings.kafka_bootstrap == "kafka:9092"
