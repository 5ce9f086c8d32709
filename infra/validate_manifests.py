"""Validate rendered Kubernetes manifests (the output of `kustomize build`), offline.

Run by infra/validate-deploy.sh with the tools venv (kubernetes-validate, PyYAML):

    .cache/tools/validate/bin/python infra/validate_manifests.py -k 1.31.0 -k 1.35.0 out/h100x8.yaml ...

Built-in kinds are validated strictly (unknown fields are errors) against the Kubernetes JSON schemas of
every version given. Custom resources (Strimzi, CloudNativePG, KEDA) have no schema in any package on the
registries we install from, so they get a structural check of the fields reelstream relies on instead;
their operators' CRDs validate them fully at `kubectl apply` (or `--dry-run=server`). Every pod template
must also meet reelstream's hardening rules. Exit status 1 on any finding.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-not-found]
import yaml

Doc = dict[str, Any]
NAMESPACE = "video"
CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding", "StorageClass"})
POD_TEMPLATE_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job"})
CUSTOM_GROUPS = {
    "kafka.strimzi.io": "Strimzi CRD, validated by the Strimzi operator's CRD schema at apply time",
    "postgresql.cnpg.io": "CloudNativePG CRD, validated by its CRD schema and webhook at apply time",
    "keda.sh": "KEDA CRD, validated by its CRD schema and admission webhook at apply time",
    "monitoring.coreos.com": "Prometheus Operator CRD; the rules themselves are checked by promtool",
}


def _has(doc: Doc, *path: str) -> bool:
    node: Any = doc
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return node not in (None, "", [], {})


REQUIRED_CUSTOM_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "Kafka": (("spec", "kafka", "version"), ("spec", "kafka", "listeners"), ("spec", "entityOperator")),
    "KafkaNodePool": (("spec", "replicas"), ("spec", "roles"), ("spec", "storage")),
    "KafkaTopic": (("spec", "topicName"), ("spec", "partitions"), ("spec", "replicas")),
    "Cluster": (("spec", "instances"), ("spec", "storage", "size"), ("spec", "bootstrap", "initdb")),
    "ScaledObject": (("spec", "scaleTargetRef", "name"), ("spec", "triggers")),
    "PrometheusRule": (("spec", "groups"),),
    "PodMonitor": (("spec", "selector"), ("spec", "podMetricsEndpoints")),
}


def check_custom(doc: Doc) -> list[str]:
    """The fields of a custom resource that reelstream depends on are present."""
    kind = doc["kind"]
    required = REQUIRED_CUSTOM_FIELDS.get(kind, ())
    errors = [f"missing {'.'.join(path)}" for path in required if not _has(doc, *path)]
    # The topic operator and the node pools find their cluster by this label only.
    if kind in ("KafkaNodePool", "KafkaTopic") and not _has(doc, "metadata", "labels", "strimzi.io/cluster"):
        errors.append("missing label strimzi.io/cluster")
    return errors


def _containers(pod_spec: Doc) -> Iterator[Doc]:
    yield from pod_spec.get("initContainers") or []
    yield from pod_spec.get("containers") or []


def check_container(container: Doc) -> list[str]:
    """The hardening every reelstream container carries."""
    sc = container.get("securityContext") or {}
    name = container.get("name", "?")
    errors = []
    if sc.get("runAsNonRoot") is not True:
        errors.append(f"container {name}: runAsNonRoot is not true")
    if sc.get("readOnlyRootFilesystem") is not True:
        errors.append(f"container {name}: readOnlyRootFilesystem is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        errors.append(f"container {name}: allowPrivilegeEscalation is not false")
    if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
        errors.append(f"container {name}: capabilities.drop is not [ALL]")
    resources = container.get("resources") or {}
    for part in ("requests", "limits"):
        missing = {"cpu", "memory"} - set(resources.get(part) or {})
        if missing:
            errors.append(f"container {name}: resources.{part} lacks {', '.join(sorted(missing))}")
    return errors


def check_pod_template(doc: Doc) -> list[str]:
    spec = doc["spec"]["template"]["spec"]
    errors = []
    seccomp = (spec.get("securityContext") or {}).get("seccompProfile") or {}
    if seccomp.get("type") != "RuntimeDefault":
        errors.append("pod securityContext.seccompProfile.type is not RuntimeDefault")
    if spec.get("automountServiceAccountToken") is not False:
        errors.append("pod automountServiceAccountToken is not false")
    for container in _containers(spec):
        errors.extend(check_container(container))
    if doc["kind"] != "Job":
        for container in spec.get("containers") or []:
            if "livenessProbe" not in container or "readinessProbe" not in container:
                errors.append(f"container {container.get('name')}: liveness and readiness probes required")
    return errors


def check_schema(doc: Doc, versions: list[str]) -> list[str]:
    errors = []
    for version in versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"no schema for {doc['apiVersion']} {doc['kind']} in Kubernetes {version}")
        except kubernetes_validate.ValidationError as e:
            where = "/".join(str(p) for p in e.path) or "(root)"
            errors.append(f"Kubernetes {version}: {where}: {e.message}")
    return errors


def check_doc(doc: Doc, versions: list[str], report: Callable[[str], None]) -> list[str]:
    kind, name = doc.get("kind", "?"), (doc.get("metadata") or {}).get("name", "?")
    group = str(doc.get("apiVersion", "")).rpartition("/")[0]
    errors: list[str] = []
    if group in CUSTOM_GROUPS:
        report(f"  {kind}/{name}: schema skipped ({CUSTOM_GROUPS[group]}); structural check")
        errors.extend(check_custom(doc))
    else:
        errors.extend(check_schema(doc, versions))
    if kind not in CLUSTER_SCOPED and (doc.get("metadata") or {}).get("namespace") != NAMESPACE:
        errors.append(f"namespace is not {NAMESPACE}")
    if kind in POD_TEMPLATE_KINDS:
        errors.extend(check_pod_template(doc))
    return [f"{kind}/{name}: {error}" for error in errors]


def check_file(path: Path, versions: list[str]) -> list[str]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    print(f"{path}: {len(docs)} resources, Kubernetes {', '.join(versions)} (strict)")
    errors: list[str] = []
    for doc in docs:
        errors.extend(check_doc(doc, versions, print))
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument(
        "-k", "--kubernetes-version", action="append", dest="versions", help="repeatable; default 1.33.0"
    )
    args = parser.parse_args(argv)
    versions = args.versions or ["1.33.0"]
    errors = [error for path in args.files for error in check_file(path, versions)]
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    print(f"manifests: {len(errors)} error(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
