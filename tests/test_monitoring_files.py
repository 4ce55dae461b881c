"""deploy/prometheus and deploy/grafana name only metrics a node really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config.settings import Settings
from app.node import create_app
from tests.support.cluster import node_settings
from tests.support.http import scrape

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}


def dashboard() -> dict[str, Any]:
    return dict(json.loads((GRAFANA / "dashboards" / "signaling.json").read_text()))


def referenced(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in re.findall(r"\bsignaling_[a-z_]+", expr)}


@pytest.fixture
async def exported(start_server: Any) -> set[str]:
    """Every sample name a node can export (labelled series appear only once used)."""
    server = await start_server(create_app(node_settings(0)))
    text = (await scrape(str(server.make_url("")).rstrip("/"))).text
    types = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    return {name + suffix for name, kind in types for suffix in SUFFIXES[kind]}


async def test_dashboard_and_alerts_use_only_exported_metrics(exported: set[str]) -> None:
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]
    alerts = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    rules = [r for group in alerts["groups"] for r in group["rules"]]
    assert rules and all({"alert", "expr", "labels", "annotations"} <= set(r) for r in rules)
    used = referenced(exprs + [r["expr"] for r in rules])
    assert used - exported == set()
    # the list: every family is on the dashboard
    assert {"signaling_peers", "signaling_rooms", "signaling_frames_total",
            "signaling_errors_total", "signaling_relay_latency_seconds_bucket",
            "signaling_redis_errors_total", "signaling_redis_reconnects_total",
            "signaling_pubsub_subscriptions", "signaling_send_queue_overflows_total",
            "signaling_envelopes_bad_total", "signaling_draining",
            "signaling_build_info"} <= referenced(exprs)


def test_dashboard_is_a_grafana_dashboard_on_a_chosen_datasource() -> None:
    dash = dashboard()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"] and dash["schemaVersion"] >= 30
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus-kubernetes.yml"])
def test_prometheus_configs_scrape_the_node_port_and_load_the_rules(name: str) -> None:
    config = yaml.safe_load((PROMETHEUS / name).read_text())
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS / rule_file).is_file()
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    port = str(Settings.from_env({}).port)
    assert port in json.dumps(job)


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    assert sources["datasources"][0]["type"] == "prometheus"
    boards = yaml.safe_load((GRAFANA / "provisioning/dashboards/signaling.yml").read_text())
    assert boards["providers"][0]["type"] == "file"
