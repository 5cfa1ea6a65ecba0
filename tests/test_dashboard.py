"""contrib/grafana-dashboard.json: valid, and it only shows metrics the daemon exports.

Every query is also checked as PromQL by ``promtool`` here, and run against a
real Prometheus scraping a real daemon in test_metrics_daemon.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from mtasts_fast.metrics import catalogue as cat
from tests.servers.prometheus import promtool

DASHBOARD = Path(__file__).resolve().parent.parent / "contrib" / "grafana-dashboard.json"
# What Grafana puts in place of its variables before it sends a query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*"}


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def queries() -> list[str]:
    """Every panel query, with Grafana's variables replaced as Grafana would."""
    out = []
    for panel in _dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            out.append(expr)
    return out


def _exported(name: str) -> str:
    """The family a sample name belongs to (a histogram's _bucket, _sum, _count)."""
    histograms = {m.name for m in cat.ALL if m.kind == cat.HISTOGRAM}
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    return base if base in histograms else name


def test_the_dashboard_is_well_formed() -> None:
    data = _dashboard()
    assert data["uid"] == "mtasts-fast"
    ids = [panel["id"] for panel in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in data["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}"
            refs = [target["refId"] for target in panel["targets"]]
            assert len(refs) == len(set(refs)), panel["title"]
    variables = {v["name"] for v in data["templating"]["list"]}
    assert variables == {"datasource", "instance"}


def test_every_metric_the_dashboard_uses_is_exported_and_every_one_is_shown() -> None:
    used = {_exported(n) for expr in queries() for n in re.findall(r"\bmtasts_[a-z_]+", expr)}
    exported = {metric.name for metric in cat.ALL}
    assert used - exported == set()
    assert exported - used == set()


def test_every_label_the_dashboard_uses_exists() -> None:
    labels = {label for metric in cat.ALL for label in metric.labels} | {"le", "instance"}
    for expr in queries():
        for by in re.findall(r"\bby \(([^)]*)\)", expr):
            assert {name.strip() for name in by.split(",")} <= labels, expr
        for matcher in re.findall(r"[{,]\s*([a-z_]+)\s*[!=]~?\"", expr):
            assert matcher in labels, expr


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{number}", "expr": expr}
                    for number, expr in enumerate(queries())
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
