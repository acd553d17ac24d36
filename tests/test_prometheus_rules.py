"""configs/prometheus/inspectd-rules.yml: promtool accepts the rules, its unit tests pass, every
alert is tested firing and not firing, and every metric an alert reads is one inspectd serves.
configs/grafana/inspectd-dashboard.json: every panel query is valid PromQL (promtool) on metrics
inspectd serves.

Needs promtool (Debian package `prometheus`; scripts/ci-system-deps.sh installs it) for the first two.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from inspectd.service.metrics import ServiceMetrics

RULES_DIR = Path(__file__).resolve().parents[1] / "configs" / "prometheus"
RULES = RULES_DIR / "inspectd-rules.yml"
RULE_TESTS = RULES_DIR / "inspectd-rules.test.yml"
DASHBOARD = RULES_DIR.parent / "grafana" / "inspectd-dashboard.json"
# what a metric family is called in PromQL, by type (prometheus_client's family names)
SAMPLE_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
                   "info": ("_info",), "summary": ("_sum", "_count", "")}
promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                              reason="promtool not found: run scripts/ci-system-deps.sh (Debian package prometheus)")


def alerts() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def served_metric_names() -> set[str]:
    names = set()
    for family in ServiceMetrics("test").registry.collect():
        names.update(family.name + suffix for suffix in SAMPLE_SUFFIXES[family.type])
    return names


@promtool
def test_promtool_check_rules_is_clean():
    run = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in run.stdout


@promtool
def test_promtool_unit_tests_pass():
    run = subprocess.run(["promtool", "test", "rules", RULE_TESTS.name], cwd=RULES_DIR, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and "SUCCESS" in run.stdout, run.stdout + run.stderr


def test_every_alert_is_tested_firing_and_not_firing():
    cases: dict[str, set[str]] = {}
    for group in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in group["alert_rule_test"]:
            cases.setdefault(case["alertname"], set()).add("firing" if case.get("exp_alerts") else "silent")
    for rule in alerts():
        assert cases.get(rule["alert"]) == {"firing", "silent"}, f"{rule['alert']}: tested {cases.get(rule['alert'])}"


def test_every_metric_in_an_alert_exists_in_metrics_py():
    served = served_metric_names()
    assert "inspectd_spool_oldest_age_seconds" in served and "inspectd_score_drift" in served
    for rule in alerts():
        used = set(re.findall(r"\binspectd_[a-z0-9_]+", rule["expr"]))
        if rule["alert"] != "InspectdProcessDown":  # that one reads Prometheus' own `up`
            assert used, f"{rule['alert']} reads no inspectd metric"
        unknown = used - served
        assert not unknown, f"{rule['alert']} uses {sorted(unknown)}, not defined in inspectd/service/metrics.py"


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def test_dashboard_reads_only_metrics_inspectd_serves():
    served, queries = served_metric_names(), dashboard_queries()
    assert len(queries) >= 15
    for expr in queries:
        unknown = set(re.findall(r"\binspectd_[a-z0-9_]+", expr)) - served
        assert not unknown, f"dashboard query {expr!r} uses {sorted(unknown)}, not in inspectd/service/metrics.py"


@promtool
def test_dashboard_queries_are_valid_promql(tmp_path):
    # promtool parses PromQL when it checks recording rules: one rule per panel query
    rules = [{"record": f"dashboard:query_{i}", "expr": expr.replace("$camera", ".*")}
             for i, expr in enumerate(dashboard_queries())]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
