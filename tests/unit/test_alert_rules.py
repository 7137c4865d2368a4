"""The shipped alert rules (promtool's own unit tests) and the Grafana dashboard.

Both may only use metrics the daemon serves (`hafailover.runtime.metrics.METRICS`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from hafailover.runtime.metrics import METRICS

ROOT = Path(__file__).parents[2]
RULES = ROOT / "etc" / "prometheus" / "hafailover-alerts.yml"
RULE_TESTS = ROOT / "etc" / "prometheus" / "hafailover-alerts.test.yml"
DASHBOARD = ROOT / "etc" / "grafana" / "hafailover-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and os.environ.get("CI") != "true",
    reason="promtool is not installed (Debian package prometheus; ./dev installs it)",
)
_METRIC = re.compile(r"\bhafailover_[a-z_]+")
_HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def served_name(name: str) -> str:
    """A series name as queried -> the metric in the table it belongs to."""
    known = {m.name for m in METRICS}
    if name in known:
        return name
    for suffix in _HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and base in known:
            return base
    return name


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def rule_exprs() -> dict[str, str]:
    data = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r["expr"] for g in data["groups"] for r in g["rules"]}


def test_the_alerts_the_issue_asks_for_are_there() -> None:
    alerts = rule_exprs()
    for name in (
        "HafailoverGroupNoHolder",
        "HafailoverGroupTwoHolders",
        "HafailoverNodeIneligible",
        "HafailoverPeerUnheard",
        "HafailoverPacketsDropped",
        "HafailoverMaintenanceLong",
    ):
        assert name in alerts
    assert "sum by (group) (hafailover_group_vip_holder)" in alerts["HafailoverGroupTwoHolders"]


def test_rules_use_only_served_metrics() -> None:
    known = {m.name for m in METRICS}
    for alert, expr in rule_exprs().items():
        for name in _METRIC.findall(expr):
            assert served_name(name) in known, (alert, name)


@needs_promtool
def test_promtool_checks_and_unit_tests_pass() -> None:
    checked = promtool("check", "rules", RULES.name, cwd=RULES.parent)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", RULE_TESTS.name, cwd=RULES.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Every alert has at least one test where it fires and one where it must not.
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases = [c for t in tests for c in t["alert_rule_test"]]
    for alert in rule_exprs():
        assert any(c["alertname"] == alert and c["exp_alerts"] for c in cases), alert
        assert any(c["alertname"] == alert and not c["exp_alerts"] for c in cases), alert


@needs_promtool
@pytest.mark.parametrize(
    ("old", "new"),
    [
        (
            "sum by (group) (hafailover_group_vip_holder) > 1",
            "max by (group) (hafailover_group_vip_holder) > 0",
        ),
        ("for: 45s", "for: 0s"),
        ("unless on (instance) (hafailover_maintenance == 1)", ""),
    ],
)
def test_the_rule_tests_catch_a_broken_rule(tmp_path: Path, old: str, new: str) -> None:
    text = RULES.read_text()
    assert old in text
    (tmp_path / RULES.name).write_text(text.replace(old, new, 1))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    tested = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert tested.returncode != 0


# --- the dashboard ----------------------------------------------------------------------------


def dashboard_exprs() -> list[str]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in data["panels"] for t in p.get("targets", [])]


def test_dashboard_is_valid_json_with_the_required_panels() -> None:
    data = json.loads(DASHBOARD.read_text())
    assert data["uid"] == "hafailover" and data["panels"]
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    queried = {served_name(n) for e in dashboard_exprs() for n in _METRIC.findall(e)}
    for needed in (
        "hafailover_group_vip_holder",
        "hafailover_transitions_total",
        "hafailover_check_up",
        "hafailover_loop_lag_seconds",
    ):
        assert needed in queried
    for panel in data["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24


def test_dashboard_queries_only_served_metrics() -> None:
    known = {m.name for m in METRICS}
    for expr in dashboard_exprs():
        for name in _METRIC.findall(expr):
            assert served_name(name) in known, (expr, name)


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every query (Grafana's variables replaced) as a recording rule."""
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        plain = expr.replace("$__rate_interval", "1m").replace("$group", ".*")
        rules.append({"record": f"dashboard:query{i}", "expr": plain.replace("$instance", ".*")})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = promtool("check", "rules", path.name, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
