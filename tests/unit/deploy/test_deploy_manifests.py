"""Fast structural checks of k8s/: every overlay, rendered, and the services accept its configuration.

No tools needed: the overlays are rendered by a small renderer of the kustomize features k8s/ uses
(resources, components, namespace, replicas, images, generators, JSON6902 patches). The full check with
the real kustomize, the Kubernetes schemas, checkov and hadolint is infra/validate-deploy.sh; one
test here compares this renderer with the real kustomize when infra/install-deploy-tools.sh has run
(and is skipped, saying so, when it has not).
"""

from __future__ import annotations

import base64
import copy
import functools
import importlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas.topics import JOBS_DISPATCH, internal_topic_specs, topic_specs

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
KUSTOMIZE = ROOT / ".cache" / "tools" / "bin" / "kustomize"
WORKLOADS = ("Deployment", "StatefulSet", "Job")
# Secrets the overlays use without generating them: CloudNativePG writes the first; the second is
# created by hand on a real cluster (docs/operations.md) and generated only by the local overlay.
EXTERNAL_SECRETS = {"reelstream-db-app", "reelstream-secrets"}

Doc = dict[str, Any]


# --- a renderer for the subset of kustomize that k8s/ uses -------------------------------------------


# libyaml's loader where PyYAML has it: the pure-Python one makes this file several times slower.
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_docs(path: Path) -> list[Doc]:
    return [doc for doc in yaml.load_all(path.read_text(), Loader=Loader) if doc]


def _pointer(path: str) -> list[str]:
    return [part.replace("~1", "/").replace("~0", "~") for part in path.lstrip("/").split("/")]


def _apply_op(doc: Doc, op: Doc) -> None:
    *parents, last = _pointer(op["path"])
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if op["op"] == "remove":
        del node[int(last) if isinstance(node, list) else last]
    elif op["op"] in ("add", "replace"):
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            node.insert(index, op["value"]) if op["op"] == "add" else node.__setitem__(index, op["value"])
        else:
            if op["op"] == "replace" and last not in node:
                raise KeyError(f"replace of missing {op['path']}")
            node[last] = copy.deepcopy(op["value"])
    else:
        raise ValueError(f"unsupported patch op {op['op']}")


def _matches(doc: Doc, target: Doc) -> bool:
    return all(
        (doc["kind"] if key == "kind" else doc["metadata"]["name"]) == value
        for key, value in target.items()
        if key in ("kind", "name")
    )


def _generate(gen: Doc, kind: str) -> Doc:
    data = dict(literal.split("=", 1) for literal in gen.get("literals", []))
    if kind == "Secret":
        data = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
    return {"apiVersion": "v1", "kind": kind, "metadata": {"name": gen["name"]}, "data": data}


def render(directory: Path) -> list[Doc]:
    """The resources of a kustomization directory, as `kustomize build` would emit them."""
    return copy.deepcopy(_render(directory))


@functools.cache
def _render(directory: Path) -> list[Doc]:
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[Doc] = []
    for entry in spec.get("resources", []) + spec.get("components", []):
        path = (directory / entry).resolve()
        docs.extend(copy.deepcopy(_render(path)) if path.is_dir() else _load_docs(path))
    for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for gen in spec.get(key, []):
            if gen.get("behavior") == "merge":
                existing = next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == gen["name"])
                existing["data"].update(_generate(gen, kind)["data"])
            else:
                docs.append(_generate(gen, kind))
    for patch in spec.get("patches", []):
        ops = yaml.safe_load(patch["patch"])
        for doc in (d for d in docs if _matches(d, patch["target"])):
            for op in ops:
                _apply_op(doc, op)
    counts = {r["name"]: r["count"] for r in spec.get("replicas", [])}
    images = {i["name"]: i for i in spec.get("images", [])}
    for doc in docs:
        if "namespace" in spec and doc["kind"] != "Namespace":
            doc["metadata"]["namespace"] = spec["namespace"]
        if doc["metadata"]["name"] in counts and doc["kind"] in ("Deployment", "StatefulSet"):
            doc["spec"]["replicas"] = counts[doc["metadata"]["name"]]
        for container in _containers(doc):
            name, _, tag = container["image"].partition(":")
            if name in images:
                container["image"] = f"{images[name].get('newName', name)}:{images[name].get('newTag', tag)}"
    return docs


# --- helpers -----------------------------------------------------------------------------------------


def _containers(doc: Doc) -> Iterator[Doc]:
    if doc["kind"] in WORKLOADS:
        pod = doc["spec"]["template"]["spec"]
        yield from pod.get("initContainers", []) + pod["containers"]


def _one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _topics(docs: list[Doc]) -> dict[str, Doc]:
    return {d["spec"]["topicName"]: d for d in docs if d["kind"] == "KafkaTopic"}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Doc]]:
    return request.param, render(K8S / "overlays" / request.param)


# --- k8s/ --------------------------------------------------------------------------------------------


def test_overlays_exist() -> None:
    assert {"local", "h100x8"} <= set(OVERLAYS)


def test_every_yaml_file_under_k8s_parses() -> None:
    files = sorted(K8S.rglob("*.yaml"))
    assert files
    for path in files:
        assert _load_docs(path), f"{path} holds no document"


def test_every_resource_is_in_the_video_namespace(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    assert next(d for d in docs if d["kind"] == "Namespace")["metadata"]["name"] == "video"
    namespaced = [d for d in docs if d["kind"] != "Namespace"]
    assert not [d["metadata"]["name"] for d in namespaced if d["metadata"]["namespace"] != "video"]


def test_every_container_is_hardened(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    workloads = [d for d in docs if d["kind"] in WORKLOADS]
    assert len(workloads) >= 7
    for doc in workloads:
        pod = doc["spec"]["template"]["spec"]
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod["automountServiceAccountToken"] is False, where
        for container in _containers(doc):
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), where


def test_long_running_containers_have_probes(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    for doc in (d for d in docs if d["kind"] in ("Deployment", "StatefulSet")):
        for container in doc["spec"]["template"]["spec"]["containers"]:
            assert "livenessProbe" in container and "readinessProbe" in container, doc["metadata"]["name"]


def test_topics_match_the_contract(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    topics = _topics(docs)
    specs = {spec.name: spec for spec in (*topic_specs(), *internal_topic_specs())}
    assert set(topics) == set(specs)
    for name, spec in specs.items():
        config = topics[name]["spec"]["config"]
        assert (config["cleanup.policy"] == "compact") == spec.compacted, name
        for key, value in spec.configs.items():
            assert str(config.get(key)) == value, f"{name}: {key}"
        if spec.partitions is not None:
            assert topics[name]["spec"]["partitions"] == spec.partitions, name


def test_dispatch_partitions_equal_gpu_slots_and_workers(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    slots = int(_one(docs, "ConfigMap", "reelstream-config")["data"]["REELSTREAM_GPU_SLOTS"])
    assert _topics(docs)[JOBS_DISPATCH]["spec"]["partitions"] == slots
    assert _one(docs, "StatefulSet", "reelstream-worker")["spec"]["replicas"] == slots


def test_h100x8_runs_eight_gpu_workers() -> None:
    docs = render(K8S / "overlays" / "h100x8")
    worker = _one(docs, "StatefulSet", "reelstream-worker")
    assert worker["spec"]["replicas"] == 8
    pod = worker["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == 1
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert pod["nodeSelector"]
    # Longer than one checkpoint interval (8 steps x ~7.8 s on an H100).
    assert pod["terminationGracePeriodSeconds"] >= 120
    assert {v["name"] for v in pod["volumes"]} >= {"scratch", "models", "tmp"}


def test_h100x8_kafka_survives_one_broker() -> None:
    docs = render(K8S / "overlays" / "h100x8")
    assert _one(docs, "KafkaNodePool", "dual-role")["spec"]["replicas"] >= 3
    assert _one(docs, "Kafka", "reelstream")["spec"]["kafka"]["config"]["min.insync.replicas"] == 2
    for name, topic in _topics(docs).items():
        assert topic["spec"]["replicas"] == 3, name
        assert topic["spec"]["config"]["min.insync.replicas"] == 2, name


def test_local_runs_on_one_broker_without_gpus() -> None:
    docs = render(K8S / "overlays" / "local")
    for name, topic in _topics(docs).items():
        assert (topic["spec"]["replicas"], topic["spec"]["config"]["min.insync.replicas"]) == (1, 1), name
    pod = _one(docs, "StatefulSet", "reelstream-worker")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert _one(docs, "ConfigMap", "reelstream-worker-config")["data"]["REELSTREAM_MODEL"] == "tiny-mochi"


def test_base_worker_requests_one_gpu() -> None:
    (worker,) = _load_docs(K8S / "base" / "worker" / "statefulset.yaml")
    resources = worker["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1


def test_single_instance_services_use_recreate(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    for name in ("reelstream-scheduler", "reelstream-projector"):
        deployment = _one(docs, "Deployment", name)
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"]["type"] == "Recreate"


def test_references_resolve(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    have = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for doc in (d for d in docs if d["kind"] in WORKLOADS):
        pod = doc["spec"]["template"]["spec"]
        assert ("ServiceAccount", pod["serviceAccountName"]) in have
        for container in _containers(doc):
            for source in container.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in have
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ("Secret", ref["name"]) in have or ref["name"] in EXTERNAL_SECRETS
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in have


def test_network_policies_default_deny(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    deny = _one(docs, "NetworkPolicy", "default-deny-all")["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny


def test_api_ingress_streams_sse() -> None:
    docs = render(K8S / "overlays" / "h100x8")
    notes = _one(docs, "Ingress", "reelstream-api")["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600


def _normalize(docs: list[Doc]) -> dict[str, Any]:
    """Spec (or data) of each resource, without what the renderer leaves out: labels and annotations
    of pod templates, and the hash suffixes kustomize gives generated ConfigMaps."""
    specs = {}
    for doc in docs:
        body: Any = copy.deepcopy(doc.get("spec", doc.get("data")))
        if doc["kind"] in WORKLOADS:
            body["template"].pop("metadata", None)
        specs[f"{doc['kind']}/{doc['metadata']['name']}"] = body
    text = yaml.safe_dump(specs, sort_keys=True)
    return yaml.safe_load(re.sub(r"(reelstream-(?:worker-)?config)-[a-z0-9]{10}\b", r"\1", text))  # type: ignore[no-any-return]


@pytest.mark.skipif(
    not KUSTOMIZE.is_file(), reason="kustomize is not installed (run infra/install-deploy-tools.sh)"
)
@pytest.mark.parametrize("name", OVERLAYS)
def test_renderer_agrees_with_kustomize(name: str) -> None:
    built = subprocess.run(
        [str(KUSTOMIZE), "build", str(K8S / "overlays" / name)], check=True, capture_output=True, text=True
    ).stdout
    real = [doc for doc in yaml.load_all(built, Loader=Loader) if doc]
    assert _normalize(render(K8S / "overlays" / name)) == _normalize(real)


# --- the services accept the configuration the deployments give them ----------------------------------

SETTINGS = {
    "api": ("services.api.settings", "ApiSettings"),
    "scheduler": ("services.scheduler.settings", "SchedulerSettings"),
    "projector": ("services.projector.settings", "ProjectorSettings"),
    "worker": ("services.worker.settings", "WorkerSettings"),
}


def _settings_class(service: str) -> Any:
    module, name = SETTINGS[service]
    return getattr(importlib.import_module(module), name)


def _load_settings(monkeypatch: pytest.MonkeyPatch, service: str, env: dict[str, str]) -> Any:
    for key in [k for k in os.environ if k.startswith(("REELSTREAM_", "HF_"))] + ["HOSTNAME"]:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return _settings_class(service)()


def _pod_env(docs: list[Doc], doc: Doc, container: Doc) -> dict[str, str]:
    """The environment Kubernetes gives the container; Secret values are stand-ins."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env |= _one(docs, "ConfigMap", source["configMapRef"]["name"])["data"]
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], var["value"])
        elif "secretKeyRef" in var.get("valueFrom", {}):
            env[var["name"]] = f"stand-in-{var['valueFrom']['secretKeyRef']['key']}"
    if doc["kind"] == "StatefulSet":
        env["HOSTNAME"] = f"{doc['metadata']['name']}-{doc['spec']['replicas'] - 1}"
    return env


def test_services_accept_the_kubernetes_configuration(
    overlay: tuple[str, list[Doc]], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, docs = overlay
    seen = set()
    for doc in (d for d in docs if d["kind"] in ("Deployment", "StatefulSet")):
        service = doc["metadata"]["name"].removeprefix("reelstream-")
        if service not in SETTINGS:
            continue
        settings = _load_settings(
            monkeypatch, service, _pod_env(docs, doc, doc["spec"]["template"]["spec"]["containers"][0])
        )
        seen.add(service)
        assert settings.environment == ("production" if name == "h100x8" else "development")
        if service == "worker":
            assert settings.slot_id == doc["spec"]["replicas"] - 1
    assert seen == set(SETTINGS)
