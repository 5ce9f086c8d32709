"""The alerts and the dashboard of k8s/components/monitoring query only metrics the services expose, so
a renamed metric cannot silently leave an alert that never fires or a panel that stays empty."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

# Every module that defines reelstream metrics, imported so that REGISTRY holds them all.
import services.api.metrics
import services.api.submit
import services.common.metrics
import services.notifier.consumer
import services.notifier.sender
import services.projector.consumer
import services.scheduler.main
import services.scheduler.metrics
import services.worker.telemetry

MONITORING = Path(__file__).resolve().parents[3] / "k8s" / "components" / "monitoring"
METRIC = re.compile(r"\breelstream_[a-z0-9_]+")
# Exposed at scrape time by the GPU collector, only where NVML answers (services/worker/telemetry.py).
GPU = {
    "reelstream_worker_gpu_utilization_ratio",
    "reelstream_worker_gpu_memory_used_bytes",
    "reelstream_worker_gpu_memory_total_bytes",
}
MODULES = (services.api.metrics, services.api.submit, services.common.metrics, services.notifier.consumer)
MORE = (services.notifier.sender, services.projector.consumer, services.scheduler.main)
LAST = (services.scheduler.metrics, services.worker.telemetry)


def exposed() -> set[str]:
    """Every sample name the registry would show (histograms' _bucket/_sum/_count, counters' _total)."""
    names: set[str] = set(GPU)
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    return names


def queried() -> dict[str, set[str]]:
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    alerts = {r["alert"]: set(METRIC.findall(r["expr"])) for g in rule["spec"]["groups"] for r in g["rules"]}
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    panels = {
        f"panel {p['title']}": {m for t in p.get("targets", []) for m in METRIC.findall(t["expr"])}
        for p in dashboard["panels"]
    }
    return alerts | panels


def test_every_alert_and_panel_queries_exposed_metrics() -> None:
    assert MODULES and MORE and LAST
    known = exposed()
    unknown = {where: sorted(names - known) for where, names in queried().items() if names - known}
    assert not unknown, unknown


def test_every_alert_has_a_severity_a_summary_and_a_runbook_section() -> None:
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    docs = (MONITORING.parents[2] / "docs" / "operations.md").read_text()
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
            assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
            assert f"`{r['alert']}`" in docs, f"{r['alert']} has no entry in docs/operations.md"


def test_the_dashboard_is_a_grafana_dashboard_with_unique_panel_ids() -> None:
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert dashboard["uid"] == "reelstream" and len(ids) == len(set(ids))
    assert all(p["type"] in ("row", "timeseries") for p in dashboard["panels"])
