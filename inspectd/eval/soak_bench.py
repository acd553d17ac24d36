"""`inspectd bench soak`: the capture and refiner processes on the demo line for a while, their
resident memory sampled from /proc, to show that a long run does not grow.

Both run as separate processes, as under systemd; the parent only fits the demo bundle first
(so the two do not race to fit it), samples, scrapes the frame counters and stops them with
SIGTERM. Flatness = growth between the end of the warm-up and the end of the run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from inspectd.errors import InspectdError
from inspectd.eval.bench import machine


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise InspectdError(f"process {pid}: no VmRSS in /proc")


def scrape_counter(port: int, name: str) -> float:
    """Sum of a counter's samples on a process's /metrics page (0 when not served yet)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def start(role: str, settings_file: str, env: dict, log_dir: Path) -> subprocess.Popen:
    log = open(log_dir / f"{role}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "inspectd", role, "--settings", settings_file],
                            env=env, stdout=log, stderr=subprocess.STDOUT)


def growth(samples: list[tuple[float, float]], warmup_s: float) -> dict:
    t = np.array([s[0] for s in samples])
    mb = np.array([s[1] for s in samples])
    after = t >= warmup_s
    if after.sum() < 2:
        raise InspectdError("soak: too short to measure growth after the warm-up; raise --minutes")
    slope = np.polyfit(t[after] / 60, mb[after], 1)[0]
    return {"after_warmup_mb": float(mb[after][0]), "end_mb": float(mb[-1]), "max_mb": float(mb.max()),
            "growth_mb": float(mb[-1] - mb[after][0]), "slope_mb_per_min": float(slope)}


def run_soak_bench(args) -> dict:
    from inspectd.service.models import ensure_demo_bundle, resolve_bundle
    from inspectd.service.settings import load_settings

    print(f"command: inspectd bench soak --minutes {args.minutes} --settings {args.settings} "
          f"--interval {args.interval}\nmachine: {machine()}", flush=True)
    settings = load_settings(args.settings)
    if settings.capture.source == "demo":
        ensure_demo_bundle(settings, Path(settings.refiner.model))
    resolve_bundle(settings, settings.refiner.model, "refiner")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spool = tempfile.mkdtemp(prefix="inspectd-soak-")
    capture_port, refiner_port = settings.metrics.port, settings.metrics.port + 1
    env = {**os.environ, "INSPECTD_SPOOL__DIR": spool}
    refiner = start("refine", args.settings, {**env, "INSPECTD_METRICS__PORT": str(refiner_port)}, out)
    capture = start("capture", args.settings, env, out)
    procs = {"capture": capture, "refiner": refiner}
    samples: dict[str, list] = {name: [] for name in procs}
    started = time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < args.minutes * 60:
            for name, p in procs.items():
                if p.poll() is not None:
                    raise InspectdError(f"soak: the {name} process exited with {p.returncode}; see {out}/{name}.log")
                samples[name].append((elapsed, rss_mb(p.pid)))
            print(f"{elapsed / 60:5.1f} min  " + "  ".join(f"{n} {s[-1][1]:7.1f} MB" for n, s in samples.items())
                  + f"  captured {scrape_counter(capture_port, 'inspectd_frames_captured_total'):.0f}"
                  + f"  refined {scrape_counter(refiner_port, 'inspectd_frames_refined_total'):.0f}", flush=True)
            time.sleep(args.interval)
        counters = {"captured": scrape_counter(capture_port, "inspectd_frames_captured_total"),
                    "flagged": scrape_counter(capture_port, "inspectd_frames_flagged_total"),
                    "refined": scrape_counter(refiner_port, "inspectd_frames_refined_total")}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(spool, ignore_errors=True)  # the spool of a benchmark is throwaway
    warmup_s = min(args.warmup_minutes * 60, args.minutes * 30)
    result = {"minutes": args.minutes, "warmup_minutes": warmup_s / 60, "counters": counters,
              "rss": {name: growth(s, warmup_s) for name, s in samples.items()}, "samples": samples}
    print(f"{'process':<10}{'after warm-up MB':>18}{'end MB':>10}{'max MB':>10}{'growth MB':>11}{'MB/min':>9}")
    for name, g in result["rss"].items():
        print(f"{name:<10}{g['after_warmup_mb']:>18.1f}{g['end_mb']:>10.1f}{g['max_mb']:>10.1f}"
              f"{g['growth_mb']:>+11.1f}{g['slope_mb_per_min']:>+9.2f}")
    print(f"frames: {counters['captured']:.0f} captured, {counters['flagged']:.0f} flagged, "
          f"{counters['refined']:.0f} refined in {args.minutes} min; warm-up {warmup_s / 60:.1f} min")
    (out / "soak.json").write_text(json.dumps(result, indent=2))
    print(f"written: {out / 'soak.json'}")
    return result
