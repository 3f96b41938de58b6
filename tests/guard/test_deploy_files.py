"""The deployment files in docs/deploy stay in step with the guard: the Grafana dashboard
queries only metrics :class:`~degen.guard.metrics.GuardMetrics` exports, the example
config and the Kubernetes ConfigMap's config load with :mod:`degen.guard.settings`,
the systemd unit and the Kubernetes manifests give the guard longer to stop than its
``shutdown_timeout`` and probe the guard's real endpoints."""

from __future__ import annotations

import configparser
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml  # PyYAML, installed with optuna

from degen.guard import settings
from degen.guard.config import GuardConfig
from degen.guard.metrics import GuardMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "docs" / "deploy"
DASHBOARD = DEPLOY / "grafana-degen-guard.json"
UNIT = DEPLOY / "degen-guard.service"
TOML = DEPLOY / "guard.toml"
K8S = DEPLOY / "kubernetes-sidecar.yaml"
README = DEPLOY / "README.md"

METRIC = re.compile(r"degen:[a-zA-Z0-9_:]+")
GUARD_PORT = 8100


# ---------------------------------------------------------------------- helpers
def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that is not a row, rows' nested panels included."""
    out = []
    for p in dashboard.get("panels", []):
        if p.get("type") == "row":
            out += panels(p)
        else:
            out.append(p)
    return out


def exprs(dashboard: dict[str, Any]) -> list[str]:
    """The PromQL of every panel target and every query variable."""
    out = [t.get("expr", "") for p in panels(dashboard) for t in p.get("targets", [])]
    for v in dashboard.get("templating", {}).get("list", []):
        q = v.get("query")
        out.append(q.get("query", "") if isinstance(q, dict) else str(q or ""))
    return out


def unknown_metrics(dashboard: dict[str, Any]) -> set[str]:
    """The ``degen:`` names the dashboard queries that the guard does not export."""
    known = set(GuardMetrics().names())
    return {m for e in exprs(dashboard) for m in METRIC.findall(e)} - known


def read_unit(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read_string(path.read_text())
    return unit


def k8s_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(K8S.read_text()) if d]


def one(kind: str) -> dict[str, Any]:
    found = [d for d in k8s_docs() if d["kind"] == kind]
    assert len(found) == 1, f"{K8S.name}: expected one {kind}, found {len(found)}"
    return found[0]


def containers() -> list[dict[str, Any]]:
    return one("Deployment")["spec"]["template"]["spec"]["containers"]


def guard_container() -> dict[str, Any]:
    (c,) = [c for c in containers() if "guard" in c.get("command", [])]
    return c


def example_config() -> GuardConfig:
    return settings.build(settings.read(TOML), {}, resolve=False)


# ---------------------------------------------------------------------- dashboard
@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_is_a_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["title"] and dashboard["uid"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    model = variables["model"]
    assert model["type"] == "query"
    assert "label_values(degen:requests_total, model)" in json.dumps(model["query"])
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_every_dashboard_panel_queries_prometheus(dashboard: dict[str, Any]) -> None:
    ps = panels(dashboard)
    assert len(ps) >= 12
    assert {p["type"] for p in ps} <= {"timeseries", "stat"}
    for p in ps:
        assert p["title"]
        assert p["targets"], f"panel {p['title']!r} has no target"
        for t in p["targets"]:
            assert t["expr"].strip(), f"panel {p['title']!r} has an empty query"
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), f"panel {p['title']!r} repeats a refId"


def test_dashboard_uses_only_metrics_the_guard_exports(dashboard: dict[str, Any]) -> None:
    bad = unknown_metrics(dashboard)
    assert not bad, f"{DASHBOARD.name} queries metrics the guard does not export: {sorted(bad)}"
    used = {m for e in exprs(dashboard) for m in METRIC.findall(e)}
    assert len(used) >= 10
    assert {"degen:cuts_total", "degen:upstream_up", "degen:responses_total"} <= used
    assert any(m.endswith("_bucket") for m in used)
    # a histogram is queried through its buckets, never by its bare name
    assert "degen:e2e_request_latency_seconds" not in used


def test_dashboard_quantiles_read_histogram_buckets(dashboard: dict[str, Any]) -> None:
    quantiles = [e for e in exprs(dashboard) if "histogram_quantile" in e]
    assert quantiles
    for e in quantiles:
        assert re.search(r"degen:\w+_bucket", e) and "le" in e, e
    joined = "\n".join(quantiles)
    for name in ("e2e_request_latency_seconds", "time_to_first_token_seconds",
                 "cut_after_tokens"):
        assert f"degen:{name}_bucket" in joined


def test_the_metric_check_catches_a_misspelt_name(dashboard: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(dashboard).replace("degen:cuts_total",
                                                      "degen:cut_totals"))
    assert unknown_metrics(broken) == {"degen:cut_totals"}


# ---------------------------------------------------------------------- guard.toml
def test_example_config_loads() -> None:
    cfg = example_config()
    assert cfg.upstream == "http://127.0.0.1:8000/v1"
    assert (cfg.host, cfg.port, cfg.workers) == ("127.0.0.1", GUARD_PORT, 2)
    assert cfg.holdback == 16
    assert cfg.on_degenerate == "retry"
    assert cfg.retry_params == {"temperature": 0.3, "min_p": 0.1}
    assert cfg.defaults
    assert cfg.shutdown_timeout == 30
    assert cfg.log_format == "json"
    assert cfg.cut_kinds == GuardConfig(upstream="http://x").cut_kinds  # the default
    assert cfg.api_key is None  # keys come from the environment, not the file


def test_example_config_commented_examples_load(tmp_path: Path) -> None:
    """The commented-out tables ([overrides], [upstreams.NAME]) are valid once
    uncommented."""
    text = re.sub(r"(?m)^# (\[[a-z_.]+\]$|[a-z_]+ = )", r"\1", TOML.read_text())
    assert "\n[upstreams." in text
    path = tmp_path / "guard.toml"
    path.write_text(text)
    cfg = settings.build(settings.read(path), {}, resolve=False)
    assert cfg.upstreams and cfg.upstreams[0].name
    assert cfg.overrides


# ---------------------------------------------------------------------- systemd
def test_systemd_unit_runs_the_guard() -> None:
    unit = read_unit(UNIT)
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    argv = shlex.split(unit["Service"]["ExecStart"])
    assert Path(argv[0]).name == "degen"
    assert argv[1:3] == ["guard", "--config"]
    assert argv[3] == "/etc/degen/guard.toml"
    assert "vllm.service" in unit["Unit"]["After"].split()
    assert "vllm.service" in unit["Unit"]["Wants"].split()
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_unit_stops_gracefully_and_unprivileged() -> None:
    s = read_unit(UNIT)["Service"]
    assert s["KillSignal"] == "SIGTERM"
    assert s["Restart"] == "on-failure"
    assert int(s["TimeoutStopSec"]) > example_config().shutdown_timeout
    assert s.get("DynamicUser") == "yes" or s.get("User") not in (None, "", "root")
    assert s["EnvironmentFile"].lstrip("-") == "/etc/degen/guard.env"
    assert s["NoNewPrivileges"] == "yes"
    assert s["ProtectSystem"] == "strict"
    assert s["PrivateTmp"] == "yes"  # workers > 1 write their metrics under /tmp


# ---------------------------------------------------------------------- Kubernetes
def test_k8s_manifests_parse() -> None:
    kinds = sorted(d["kind"] for d in k8s_docs())
    assert kinds == ["ConfigMap", "Deployment", "Service"]
    for d in k8s_docs():
        assert d["apiVersion"] and d["metadata"]["name"]


def test_k8s_configmap_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "guard.toml"
    path.write_text(one("ConfigMap")["data"]["guard.toml"])
    cfg = settings.build(settings.read(path), {}, resolve=False)
    assert cfg.upstream == "http://127.0.0.1:8000/v1"
    assert (cfg.host, cfg.port) == ("0.0.0.0", GUARD_PORT)
    assert cfg.workers == 2
    assert cfg.holdback == 16
    assert cfg.on_degenerate == "retry" and cfg.retry_params
    pod = one("Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > cfg.shutdown_timeout


def test_k8s_pod_has_vllm_and_the_guard() -> None:
    cs = containers()
    assert len(cs) == 2
    assert len({c["name"] for c in cs}) == 2
    guard = guard_container()
    (vllm,) = [c for c in cs if c["name"] != guard["name"]]
    assert vllm["image"].startswith("vllm/vllm-openai")
    assert vllm["args"][0] == "serve"
    assert vllm["args"][vllm["args"].index("--port") + 1] == "8000"
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert guard["command"][:2] == ["degen", "guard"]
    assert guard["command"][guard["command"].index("--config") + 1] == "/etc/degen/guard.toml"
    assert [p["containerPort"] for p in guard["ports"]] == [GUARD_PORT]


def test_k8s_guard_probes_and_key() -> None:
    guard = guard_container()
    ready, live = guard["readinessProbe"]["httpGet"], guard["livenessProbe"]["httpGet"]
    assert (ready["path"], ready["port"]) == ("/ready", GUARD_PORT)
    assert (live["path"], live["port"]) == ("/health", GUARD_PORT)
    env = {e["name"]: e for e in guard["env"]}
    assert "secretKeyRef" in env["DEGEN_GUARD_API_KEY"]["valueFrom"]
    mounts = {m["name"]: m["mountPath"] for m in guard["volumeMounts"]}
    volumes = {v["name"]: v for v in one("Deployment")["spec"]["template"]["spec"]["volumes"]}
    (cm_volume,) = [n for n, v in volumes.items() if "configMap" in v]
    assert volumes[cm_volume]["configMap"]["name"] == one("ConfigMap")["metadata"]["name"]
    assert mounts[cm_volume] == "/etc/degen"
    assert "guard.toml" in one("ConfigMap")["data"]


def test_k8s_service_exposes_only_the_guard() -> None:
    svc = one("Service")["spec"]
    assert [p["targetPort"] for p in svc["ports"]] == [GUARD_PORT]
    assert [p["port"] for p in svc["ports"]] == [GUARD_PORT]
    deployment = one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert svc["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_k8s_prometheus_annotations() -> None:
    ann = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == str(GUARD_PORT)
    assert ann["prometheus.io/path"] == "/metrics"


# ---------------------------------------------------------------------- README
def test_readme_names_every_file() -> None:
    text = README.read_text()
    for f in (DASHBOARD, UNIT, TOML, K8S):
        assert f.name in text
