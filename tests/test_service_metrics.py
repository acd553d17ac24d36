"""Metrics as served by real capture and refiner processes: promtool accepts them, and a real
Prometheus server scrapes both and answers PromQL on the frame counters.

The processes run the test doubles (tests/test_service_doubles.py) on the demo line. Needs the
Debian package `prometheus` (promtool + prometheus; scripts/ci-system-deps.sh installs it).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from test_service_doubles import free_port, service_settings, wait_until

HERE = Path(__file__).resolve().parent
FRAMES = 24


def need(binary: str) -> None:
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} not found: run scripts/ci-system-deps.sh (Debian package prometheus)")


def http_get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def metric_value(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture(scope="module")
def line(tmp_path_factory):
    """A capture process (FRAMES demo frames, then idle) and a refiner process, both serving /metrics."""
    tmp = tmp_path_factory.mktemp("line")
    ports = {"capture": free_port(), "refiner": free_port()}
    procs = {}
    for role in ("refiner", "capture"):
        settings = service_settings(tmp, metrics={"port": ports[role]}, spool={"dir": str(tmp / "spool")})
        if role == "capture":
            settings.transport = procs["refiner"][1].transport  # same endpoints as the refiner
        path = tmp / f"{role}.json"
        path.write_text(settings.model_dump_json())
        cmd = [sys.executable, str(HERE / "test_service_doubles.py"), role, str(path)]
        if role == "capture":
            cmd.append(str(FRAMES))
        log = open(tmp / f"{role}.log", "w")
        procs[role] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=HERE.parent), settings)
    urls = {role: f"http://127.0.0.1:{port}/metrics" for role, port in ports.items()}

    def counters_settled() -> bool:
        try:
            text = http_get(urls["capture"]).decode()
        except OSError:
            return False
        return metric_value(text, "inspectd_frames_screened_total") == FRAMES and \
            metric_value(text, "inspectd_spool_frames") == 0

    try:
        assert wait_until(counters_settled, 30, 0.2), (tmp / "capture.log").read_text()[-3000:]
        yield urls
    finally:
        for proc, _ in procs.values():
            proc.send_signal(signal.SIGTERM)
        for role, (proc, _) in procs.items():
            assert proc.wait(timeout=15) == 0, f"{role} did not stop cleanly on SIGTERM"


@pytest.mark.parametrize("role", ["capture", "refiner"])
def test_promtool_accepts_served_metrics(line, role):
    need("promtool")
    text = http_get(line[role])
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), \
        (check.stdout + check.stderr).decode()
    served = text.decode()
    for name in ("inspectd_up", "inspectd_model_info", "inspectd_frames_captured_total",
                 "inspectd_screening_duration_seconds_bucket", "inspectd_refinement_duration_seconds_bucket",
                 "inspectd_spool_frames", "inspectd_resends_total", "inspectd_drops_total",
                 "inspectd_bad_inputs_total", "inspectd_defects_published_total"):
        assert name in served, f"{role} does not serve {name}"


def test_prometheus_scrapes_both_processes_and_answers_promql(line, tmp_path):
    need("prometheus")
    targets = [urllib.parse.urlsplit(url).netloc for url in line.values()]
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "inspectd", "static_configs": [{"targets": targets}]}],
    }))
    port = free_port()
    log = open(tmp_path / "prometheus.log", "w")
    server = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    queries = {  # PromQL -> expected value once both targets are scraped
        'sum(inspectd_frames_captured_total{job="inspectd"})': FRAMES,
        "sum(inspectd_frames_screened_total)": FRAMES,
        "count(up == 1)": 2,
    }

    def query(expr: str) -> float | None:
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            body = json.loads(http_get(url))
        except (OSError, ValueError):
            return None
        result = body.get("data", {}).get("result", [])
        return float(result[0]["value"][1]) if result else None

    try:
        assert wait_until(lambda: all(query(q) == v for q, v in queries.items()), 40, 0.5), \
            {q: query(q) for q in queries} | {"log": (tmp_path / "prometheus.log").read_text()[-2000:]}
        flagged = query("sum(inspectd_frames_flagged_total)")
        refined = query("sum(inspectd_frames_refined_total)")
        assert flagged and flagged == refined, (flagged, refined)  # every flagged frame refined once
    finally:
        server.terminate()
        server.wait(timeout=20)
