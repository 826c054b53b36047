"""The Grafana dashboard, the Prometheus config and the suggested alerts: each loads, and
every PromQL expression in them parses (the promql-parser package) and names only metrics
that whisperd or its gateway export. A renamed metric fails here, not on a wall screen."""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY

from gateway_process import GatewayProcess

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "whisperd.json"
ALERTS = ROOT / "deploy" / "whisperd-alerts.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"
# Grafana's variables, as a query would see them once Grafana has filled them in.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "6h", "$__interval": "1m", "$instance": ".*"}
# Prometheus' own series: whether a target answered the scrape.
PROMETHEUS_OWN = {"up"}


def exposition_names(families: Any) -> set[str]:
    """The sample names a registry's families expose: counters with _total, histograms with
    _bucket/_sum/_count."""
    names: set[str] = set()
    for f in families:
        if f.type == "counter":
            names.add(f.name + "_total")
        elif f.type == "histogram":
            names.update(f.name + s for s in ("_bucket", "_sum", "_count"))
        else:
            names.add(f.name)
    return names


@pytest.fixture(scope="module")
def server_metrics() -> set[str]:
    from whisperd.server import metrics
    from whisperd.server.engine.lifecycle import ModelState

    # The state gauges appear once a server has bound its store and workers.
    metrics.bind(metrics.Sources(lambda: 0, lambda: 0, lambda: ModelState.UNLOADED, "m.bin", "cpu"))
    return {n for n in exposition_names(REGISTRY.collect()) if n.startswith("whisperd_")}


@pytest.fixture(scope="module")
def gateway_metrics() -> set[str]:
    """Scraped from the real gateway binary after one request (a label set must have been
    seen before client_golang shows a vector)."""
    from prometheus_client.parser import text_string_to_metric_families

    gw = GatewayProcess("127.0.0.1:9").start()  # nothing listens there: /health says 503
    try:
        httpx.get(gw.url + "/health", timeout=10)
        text = httpx.get(gw.url + "/metrics", timeout=10).text
    finally:
        gw.stop()
    return {n for n in exposition_names(text_string_to_metric_families(text)) if n.startswith("whisperd_")}


def metric_names(expr: str) -> set[str]:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"an unknown Grafana variable in {expr!r}"
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name or next((m.value for m in node.matchers.matchers if m.name == "__name__"), None)
            assert name, f"a selector without a metric name in {expr!r}"
            found.add(name)
        for attr in ("lhs", "rhs", "expr", "param", "vector_selector"):
            child = getattr(node, attr, None)
            if child is not None and not isinstance(child, (str, int, float)):
                walk(child)
        for arg in getattr(node, "args", None) or ():
            walk(arg)

    walk(promql_parser.parse(expr))
    return found


def dashboard_exprs(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    for panel in panels:
        yield from dashboard_exprs(panel.get("panels", []))
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def test_the_dashboard_loads_and_queries_only_exported_metrics(
    server_metrics: set[str], gateway_metrics: set[str]
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "whisperd" and dashboard["title"]
    exprs = list(dashboard_exprs(dashboard["panels"]))
    titles = {title for title, _ in exprs}
    for wanted in ("Queue depth", "Throughput", "Real-time factor", "Job latency", "Model state", "GPU memory"):
        assert any(t.startswith(wanted) for t in titles), f"no panel {wanted!r}: {sorted(titles)}"
    exported = server_metrics | gateway_metrics
    used: set[str] = set()
    for title, expr in exprs:
        names = metric_names(expr)
        assert names, f"{title}: {expr} reads no metric"
        unknown = names - exported
        assert not unknown, f"panel {title!r} queries {sorted(unknown)}, which nothing exports"
        used |= names
    # The variable's label_values() query too.
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            name = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query)
            assert name and name.group(1) in exported, query
    # Every whisperd metric is on the board (whisperd_model_info through the variable).
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    missing = {re.sub(r"_(bucket|sum|count)$", "", n) for n in server_metrics} - families
    assert missing <= {"whisperd_model_info"}, missing


def test_the_alerts_query_only_exported_metrics(server_metrics: set[str], gateway_metrics: set[str]) -> None:
    rules = [r for group in yaml.safe_load(ALERTS.read_text())["groups"] for r in group["rules"]]
    assert len(rules) >= 5
    for rule in rules:
        assert rule["alert"] and rule["annotations"]["summary"], rule
        unknown = metric_names(rule["expr"]) - server_metrics - gateway_metrics - PROMETHEUS_OWN
        assert not unknown, f"alert {rule['alert']} queries {sorted(unknown)}, which nothing exports"


def test_prometheus_scrapes_both_programs_and_loads_the_alerts() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets["whisperd"] == ["whisperd:9464"]
    assert targets["whisperd-gateway"] == ["gateway:8080"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("prometheus", "grafana"):
        assert compose[name]["profiles"] == ["monitoring"], f"{name} must be optional"
        for volume in compose[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"compose mounts {source}, which is not there"
    mounted = {v.split(":")[1] for v in compose["prometheus"]["volumes"]}
    assert {f"/etc/prometheus/{Path(f).name}" for f in config["rule_files"]} <= mounted
    assert compose["whisperd"]["environment"]["METRICS_PORT"] == "9464"
