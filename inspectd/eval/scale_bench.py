"""`inspectd bench scale`: does adding a refiner add throughput?

The demo line's flagged frames go through the real service path (the capture's spool and PUSH
socket, run_refiner processes, their PUB sockets, acks) with 1, 2, ... refiner processes. Each
refiner is a separate process pinned to one core (os.sched_setaffinity, torch threads = 1) and
runs the deployed chain exactly as the daemon does (service.models.build_refiner). The frames
are chosen and screened before the clock starts, then handed to the capture as one burst, so
the run measures refinement and transport; latency (capture -> publication) includes the wait
in the spool. Every number is compared with the one-refiner run of the same invocation.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shlex
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq

from inspectd.errors import ConfigError, InspectdError
from inspectd.eval.bench import machine
from inspectd.eval.ports import free_port

log = logging.getLogger(__name__)
TARGET_SPEEDUP_2 = 1.7  # the target on a 2-core machine
READY_TIMEOUT_S = 300.0  # a refiner loads its bundle and refines one warm-up frame in this time
CONNECT_WAIT_S = 2.0  # refiners (re)connect every 0.1 s once the capture binds; generous for a busy machine


@dataclass
class FlaggedFrame:
    image: np.ndarray
    score_map: np.ndarray
    score: float


def parse_counts(text: str) -> list[int]:
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ConfigError(f"--refiners {text!r}: expected a comma-separated list of counts such as 1,2") from None
    if not counts or counts[0] < 1:
        raise ConfigError(f"--refiners {text!r}: counts must be >= 1")
    return sorted(set(counts) | {1})  # every ratio is to one refiner, measured in the same run


def flagged_demo_frames(settings, n: int, max_frames: int = 2000) -> tuple[list[FlaggedFrame], float]:
    """The first n demo frames that the deployed screener flags (its map and score kept), and
    the screener's threshold."""
    from inspectd.service.capture import open_source
    from inspectd.service.models import build_screener

    screening = build_screener(settings)
    flagged = []
    source = open_source(settings.capture.model_copy(update={"max_frames": max_frames}), settings.camera_id,
                         threading.Event())
    for frame in source:
        score_map, score = screening.screen(frame.image)
        if score > screening.threshold:
            flagged.append(FlaggedFrame(frame.image, np.asarray(score_map), float(score)))
            if len(flagged) == n:
                return flagged, screening.threshold
    raise InspectdError(f"bench scale: only {len(flagged)} of {max_frames} demo frames flagged; need {n}")


def refiner_worker(settings_json: str, core: int, ready, warmup: np.ndarray) -> None:
    """One refiner process: pinned to `core`, one torch thread, the daemon's own loop."""
    os.sched_setaffinity(0, {core})
    import torch

    torch.set_num_threads(1)
    from inspectd.service.models import build_refiner
    from inspectd.service.refiner_process import run_refiner
    from inspectd.service.settings import Settings

    logging.basicConfig(level=logging.WARNING, format=f"refiner@{core} %(levelname)s %(name)s: %(message)s")
    settings = Settings.model_validate_json(settings_json)
    refinement = build_refiner(settings)
    refinement.refine(warmup, {"score": None})  # first-call costs stay out of the timed run
    ready.set()
    run_refiner(settings, refinement.refine, threading.Event(), model_id=refinement.model_id,
                image_size=refinement.image_size, min_area_px=refinement.min_area_px)  # SIGTERM ends it


class ResultRecorder:
    """One SUB socket per refiner, so each result is credited to the refiner that published it."""

    def __init__(self, transport, endpoints: list[str]):
        self.socks = [transport.connect(zmq.SUB, [ep], wait_s=10, subscribe="defect.") for ep in endpoints]
        self.seen: dict[str, dict] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="results", daemon=True)
        self.thread.start()

    def run(self) -> None:
        from inspectd.service.messages import parse_result
        from inspectd.service.transport import recv_multipart_nowait

        poller = zmq.Poller()
        for sock in self.socks:
            poller.register(sock, zmq.POLLIN)
        while not self.stop.is_set():
            for sock, _ in poller.poll(100):
                while (parts := recv_multipart_nowait(sock)) is not None:
                    result, _mask = parse_result(parts)
                    result["refiner"] = self.socks.index(sock)
                    self.seen.setdefault(result["frame_id"], result)  # resends publish twice: keep the first

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def bench_settings(base, n_refiners: int, spool_dir: str):
    """The demo settings on fresh loopback ports: one capture, n refiners, no resends, no HTTP."""
    frames = f"tcp://127.0.0.1:{free_port()}"
    results = [f"tcp://127.0.0.1:{free_port()}" for _ in range(n_refiners)]
    settings = base.model_copy(deep=True)
    settings.transport.frames_bind, settings.transport.frames_connect = frames, [frames]
    settings.transport.results_connect = results
    settings.transport.pub_grace_s = 0.5
    settings.spool.dir = Path(spool_dir)
    settings.spool.ack_timeout_s = 3600.0  # a resend would refine a frame twice and flatter nobody
    settings.metrics.port = None
    settings.capture.fps = 0
    return settings, results


def start_refiners(settings, results: list[str], cores: list[int], warmup: np.ndarray) -> list:
    ctx = multiprocessing.get_context("spawn")  # a clean interpreter: no inherited torch threads
    procs, events = [], []
    for i, endpoint in enumerate(results):
        own = settings.model_copy(deep=True)
        own.transport.results_bind = endpoint
        ready = ctx.Event()
        proc = ctx.Process(target=refiner_worker, args=(own.model_dump_json(), cores[i], ready, warmup),
                           name=f"refiner-{i}", daemon=True)
        proc.start()
        procs.append(proc)
        events.append(ready)
    deadline = time.monotonic() + READY_TIMEOUT_S
    for proc, ready in zip(procs, events):
        while not ready.wait(0.5):
            if not proc.is_alive() or time.monotonic() > deadline:
                stop_refiners(procs)
                raise InspectdError(f"bench scale: {proc.name} did not start (exit code {proc.exitcode})")
    return procs


def stop_refiners(procs: list) -> None:
    for proc in procs:
        if proc.is_alive():
            proc.terminate()  # SIGTERM: run_refiner's own clean stop
    for proc in procs:
        proc.join(30)
        if proc.is_alive():
            proc.kill()


def one_run(base, frames: list[FlaggedFrame], threshold: float, n_refiners: int, cores: list[int]) -> dict:
    from inspectd.service.capture import Frame
    from inspectd.service.capture_process import run_capture
    from inspectd.service.metrics import ServiceMetrics
    from inspectd.service.transport import Transport

    with tempfile.TemporaryDirectory(prefix="inspectd-scale-") as spool_dir:
        settings, results = bench_settings(base, n_refiners, spool_dir)
        procs = start_refiners(settings, results, cores, frames[0].image)
        transport = Transport(settings.transport)
        recorder = ResultRecorder(transport, results)
        # screening happened when the frames were chosen; the capture gets those answers back
        screened = {id(f.image): (f.score_map, f.score) for f in frames}
        tag = f"{base.camera_id}-scale{n_refiners}-{time.time_ns() % 10**9}"
        burst = after_connect_wait((Frame(f"{tag}-{i:05d}", base.camera_id, time.time(), f.image)
                                    for i, f in enumerate(frames)), settings.transport.pub_grace_s + CONNECT_WAIT_S)
        try:
            summary = run_capture(settings, lambda image: screened[id(image)], threading.Event(),
                                  threshold=threshold, model_id="bench-scale",
                                  frames=burst, metrics=ServiceMetrics("capture"))
            deadline = time.monotonic() + 10  # the capture's ack and our SUB see the same publication
            while len(recorder.seen) < len(frames) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            recorder.close()
            transport.close()
            stop_refiners(procs)
    if summary["unacked"] or len(recorder.seen) < len(frames):
        raise InspectdError(f"bench scale: {n_refiners} refiner(s): {len(recorder.seen)} of {len(frames)} "
                            f"results seen, {summary['unacked']} unacked")
    return summarise(list(recorder.seen.values()), n_refiners, cores[:n_refiners])


def after_connect_wait(frames, seconds: float):
    """No frame for `seconds` after the capture binds (None = "no frame now"), so every refiner
    has connected before the burst: the first one to connect would otherwise get the first
    frames to itself. Each frame's capture time is taken when it is yielded."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
        yield None
    yield from frames


def summarise(results: list[dict], n_refiners: int, cores: list[int]) -> dict:
    captured = np.array([r["timestamps"]["captured"] for r in results])
    published = np.array([r["timestamps"]["published"] for r in results])
    latency = published - captured
    seconds = float(published.max() - captured.min())
    per_refiner = [sum(r["refiner"] == i for r in results) for i in range(n_refiners)]
    return {"refiners": n_refiners, "cores": cores, "frames": len(results), "seconds": round(seconds, 3),
            "refined_per_s": round(len(results) / seconds, 4),
            "latency_p50_s": round(float(np.percentile(latency, 50)), 3),
            "latency_p99_s": round(float(np.percentile(latency, 99)), 3),
            "refine_seconds_p50": round(float(np.median([r["refinement"]["seconds"] for r in results])), 3),
            "frames_per_refiner": per_refiner}


def run_scale_bench(args) -> dict:
    from inspectd.service.models import ensure_demo_bundle
    from inspectd.service.settings import load_settings

    counts = parse_counts(args.refiners)
    cores = sorted(os.sched_getaffinity(0))
    command = (f"inspectd bench scale --refiners {shlex.quote(args.refiners)} --frames {args.frames} "
               f"--settings {shlex.quote(str(args.settings))} --out {shlex.quote(str(args.out))}")
    print(f"command: {command}\nmachine: {machine()}; cores usable here: {cores}", flush=True)
    skipped = [k for k in counts if k > len(cores)]
    if skipped:
        print(f"skipping {skipped} refiner(s): only {len(cores)} core(s) to pin them to", flush=True)
    counts = [k for k in counts if k <= len(cores)]
    settings = load_settings(args.settings)
    if settings.capture.source != "demo":
        raise ConfigError(f"{args.settings}: bench scale runs the demo line (capture.source: demo)")
    ensure_demo_bundle(settings, Path(settings.refiner.model))
    frames, threshold = flagged_demo_frames(settings, args.frames)
    print(f"{len(frames)} flagged demo frames of {settings.capture.size} px; refiners: {counts}", flush=True)
    runs = []
    for n in counts:
        run = one_run(settings, frames, threshold, n, cores)
        runs.append(run)
        print(f"  {n} refiner(s): {run['refined_per_s']:.3f} refined frames/s, shares {run['frames_per_refiner']}",
              flush=True)
        if 0 in run["frames_per_refiner"]:
            print("  warning: a refiner got no frame (too few frames, or it connected late): the ratio says "
                  "little", flush=True)
    base = runs[0]["refined_per_s"]
    for run in runs:
        run["speedup"] = round(run["refined_per_s"] / base, 3)
    speedup_2 = next((r["speedup"] for r in runs if r["refiners"] == 2), None)
    print_table(runs, speedup_2)
    record = {"command": command, "machine": machine(), "speedup_2": speedup_2,
              "target_speedup_2": TARGET_SPEEDUP_2, "frames": len(frames), "frame_size": settings.capture.size,
              "runs": runs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(record, indent=2))
    print(f"written: {out / 'results.json'}")
    return record


def print_table(runs: list[dict], speedup_2: float | None) -> None:
    print(f"{'refiners':>8}{'frames/s':>10}{'x one':>7}{'p50 s':>8}{'p99 s':>8}{'refine s':>10}  frames per refiner")
    for r in runs:
        print(f"{r['refiners']:>8}{r['refined_per_s']:>10.3f}{r['speedup']:>7.2f}{r['latency_p50_s']:>8.2f}"
              f"{r['latency_p99_s']:>8.2f}{r['refine_seconds_p50']:>10.2f}  {r['frames_per_refiner']}")
    if speedup_2 is None:
        print("speedup_2: not measured (needs 2 cores)")
    else:
        print(f"speedup_2 = {speedup_2:.2f} (target >= {TARGET_SPEEDUP_2} on 2 cores)")
    print("latency: capture to publication; the frames arrive as one burst, so it includes the wait in the spool")
