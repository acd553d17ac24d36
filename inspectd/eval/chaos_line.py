"""The line `inspectd bench chaos` attacks: real capture and refiner processes
(`python -m inspectd capture|refine`) on fresh 127.0.0.1 ports, plus the bench's own endpoints.

The bench joins the line as a second capture (a PUSH socket every refiner also pulls from) and
as a second refiner (a PUB socket the capture also subscribes to), so hostile messages arrive
exactly where a misbehaving peer's would. A recorder subscribes to the genuine refiner's results
and heartbeats: which frames got a result, how often, and which frame a refiner is working on
(so a kill -9 can be aimed at a refiner that holds a frame).

With curve=True every process gets its own CURVE key pair (the refiner trusts the capture and
the bench's recorder; the capture trusts the refiner), as a deployment with keys would.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import zmq
import zmq.auth

from inspectd.errors import InspectdError
from inspectd.eval.ports import free_port
from inspectd.service.heartbeat import HEARTBEAT_TOPIC, parse_heartbeat
from inspectd.service.messages import MessageError, parse_result
from inspectd.service.settings import load_settings
from inspectd.service.transport import make_keypair


@dataclass
class CaseResult:
    name: str
    inputs: int = 0
    crashes: int = 0
    frames_lost: int = 0
    duplicates: int = 0
    uncounted: int = 0
    counted_as: dict = field(default_factory=dict)  # kind -> how many the daemon counted
    notes: list = field(default_factory=list)
    memory: dict = field(default_factory=dict)  # MB, where the case samples a process
    skipped: str = ""  # why the case could not run here (empty: it ran)


def wait_for(condition: Callable[[], bool], timeout_s: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


class Line:
    """A refiner and a capture process on fresh loopback ports, plus the bench's own endpoints."""

    def __init__(self, settings_file: str, out: Path, capture_frames: int, curve: bool = False, log_prefix: str = ""):
        self.settings_file, self.out, self.capture_frames = settings_file, out, capture_frames
        self.log_prefix = log_prefix  # logs: out/<prefix><role>.log
        self.root = Path(tempfile.mkdtemp(prefix="inspectd-chaos-"))  # spool, its neighbours, image folders
        self.spool = self.root / "spool"
        ep = {name: f"tcp://127.0.0.1:{free_port()}" for name in ("frames", "results", "bench_frames",
                                                                   "bench_results")}
        self.endpoints = ep
        self.ports = {"capture": free_port(), "refine": free_port()}
        self.env = {**os.environ, "INSPECTD_SPOOL__DIR": str(self.spool),
                    "INSPECTD_TRANSPORT__FRAMES_BIND": ep["frames"],
                    "INSPECTD_TRANSPORT__FRAMES_CONNECT": json.dumps([ep["frames"], ep["bench_frames"]]),
                    "INSPECTD_TRANSPORT__RESULTS_BIND": ep["results"],
                    "INSPECTD_TRANSPORT__RESULTS_CONNECT": json.dumps([ep["results"], ep["bench_results"]])}
        self.role_env: dict[str, dict[str, str]] = {"capture": {}, "refine": {}}
        self.recorder_keys = self.make_curve_keys() if curve else None
        self.settings = load_settings(settings_file)  # limits, frame size, camera: as the processes see them
        self.procs: dict[str, subprocess.Popen] = {}
        self.context = zmq.Context()
        self.results = ResultRecorder(self.context, ep["results"], self.settings.transport.max_frame_pixels,
                                      self.recorder_keys)

    def make_curve_keys(self) -> dict[str, bytes]:
        """A key pair per process; returns the recorder's keys (it subscribes to the refiner)."""
        keys = self.root / "keys"
        for name in ("capture", "refine", "recorder"):
            make_keypair(keys, name)
        trusted = {"refine": ["capture", "recorder"], "capture": ["refine"]}  # each server's known clients
        for server, clients in trusted.items():
            (keys / f"{server}-clients").mkdir()
            for client in clients:
                shutil.copy(keys / f"{client}.key", keys / f"{server}-clients")
        peer = {"capture": "refine", "refine": "capture"}  # whose server key each one connects to
        for role in self.role_env:
            self.role_env[role] = {"INSPECTD_TRANSPORT__CURVE__SECRET_KEY": str(keys / f"{role}.key_secret"),
                                   "INSPECTD_TRANSPORT__CURVE__SERVER_PUBLIC_KEY": str(keys / f"{peer[role]}.key"),
                                   "INSPECTD_TRANSPORT__CURVE__AUTHORIZED_CLIENTS": str(keys / f"{role}-clients")}
        public, secret = zmq.auth.load_certificate(str(keys / "recorder.key_secret"))
        server, _ = zmq.auth.load_certificate(str(keys / "refine.key"))
        return {"public": public, "secret": secret, "server": server}

    # processes
    def start(self, role: str, *extra: str, env: dict[str, str] | None = None, wait: bool = True) -> None:
        """Start `inspectd <role>`; with wait, until it serves its metrics (a failed start raises)."""
        log = open(self.log_path(role), "a")
        env = {**self.env, **self.role_env[role], "INSPECTD_METRICS__PORT": str(self.ports[role]), **(env or {})}
        self.procs[role] = subprocess.Popen([sys.executable, "-m", "inspectd", role, "--settings",
                                             self.settings_file, *extra], env=env, stdout=log,
                                            stderr=subprocess.STDOUT)
        if not wait:
            return
        wait_for(lambda: self.scrape(role) is not None or self.procs[role].poll() is not None, 300)
        if self.procs[role].poll() is not None:
            raise InspectdError(f"chaos: {role} did not start; see {self.log_path(role)}")

    def stop(self, role: str) -> int | None:
        proc = self.procs.get(role)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(5)

    def kill(self, role: str) -> None:
        """kill -9: no clean-up, no last heartbeat, as a power cut or the OOM killer would."""
        self.procs[role].send_signal(signal.SIGKILL)
        self.procs[role].wait(30)

    def pause(self, role: str) -> None:
        """SIGSTOP: the process holds everything it has (a refiner stops acking) until resume()."""
        self.procs[role].send_signal(signal.SIGSTOP)

    def resume(self, role: str) -> None:
        self.procs[role].send_signal(signal.SIGCONT)

    def running(self, role: str) -> bool:
        return role in self.procs and self.procs[role].poll() is None

    def crashed(self, role: str) -> bool:
        """True (and restarted) when the process ended with a failure; False while it runs or ended cleanly."""
        proc = self.procs[role]
        if proc.poll() is None or proc.returncode == 0:
            return False
        self.start(role)
        return True

    def scrape(self, role: str) -> dict[str, float] | None:
        """Every sample on the process's /metrics page, 'name{labels}' -> value; None when not served."""
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.ports[role]}/metrics", timeout=5).read().decode()
        except OSError:
            return None
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line and not line.startswith("#")}

    def until_exit(self, role: str, timeout_s: float) -> dict[str, float]:
        """Wait for the process to end by itself; its last metrics seen before it did ({} if none)."""
        last: dict[str, float] = {}
        deadline = time.monotonic() + timeout_s
        while self.running(role) and time.monotonic() < deadline:
            last = self.scrape(role) or last
            time.sleep(0.3)
        return last

    def bad_inputs(self, role: str) -> collections.Counter:
        return labelled(self.scrape(role) or {}, "inspectd_bad_inputs_total", "kind")

    def peak_rss_mb(self, role: str) -> tuple[float, float]:
        """(current, peak) resident memory of a process, from /proc (VmRSS, VmHWM)."""
        fields = dict(line.split(":", 1) for line in
                      Path(f"/proc/{self.procs[role].pid}/status").read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

    def spooled(self, spool: Path | None = None) -> set[str]:
        return {p.name for p in (spool or self.spool).glob("*.frame")}

    def log_path(self, role: str) -> Path:
        return self.out / f"{self.log_prefix}{role}.log"

    def log_size(self, role: str) -> int:
        path = self.log_path(role)
        return path.stat().st_size if path.exists() else 0

    def log_since(self, role: str, offset: int) -> str:
        with open(self.log_path(role), errors="replace") as f:
            f.seek(offset)
            return f.read()

    def close(self) -> None:
        for role in list(self.procs):
            self.stop(role)
        self.results.close()
        self.context.destroy(linger=0)
        shutil.rmtree(self.root, ignore_errors=True)  # a benchmark's spool is throwaway


def labelled(samples: dict[str, float], metric: str, label: str) -> collections.Counter:
    """A labelled counter's samples as {label value: count}."""
    return collections.Counter({key.split(f'{label}="')[1].split('"')[0]: int(value) for key, value in samples.items()
                                if key.startswith(metric + "{") and f'{label}="' in key})


class ResultRecorder:
    """Every genuine result (from the real refiner's PUB), in a thread: (frame_id, token) -> times
    seen and the refinement times behind them; and each refiner's last heartbeat (its busy frame)."""

    def __init__(self, context: zmq.Context, endpoint: str, max_pixels: int, keys: dict[str, bytes] | None = None):
        self.seen: collections.Counter = collections.Counter()
        self.refined_at: dict[tuple[str, str], set] = collections.defaultdict(set)
        self.busy: dict[str, str | None] = {}  # refiner identity -> the frame it works on
        self.unreadable = 0
        self.sub = context.socket(zmq.SUB)
        self.sub.linger = 0
        if keys is not None:
            self.sub.curve_publickey, self.sub.curve_secretkey = keys["public"], keys["secret"]
            self.sub.curve_serverkey = keys["server"]
        self.sub.setsockopt_string(zmq.SUBSCRIBE, "defect.")
        self.sub.setsockopt(zmq.SUBSCRIBE, HEARTBEAT_TOPIC)
        self.sub.connect(endpoint)
        self.max_pixels, self.stop_event = max_pixels, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop_event.is_set():
            if self.sub.poll(50):
                self.take(self.sub.recv_multipart())

    def take(self, parts: list[bytes]) -> None:
        try:
            if parts[0] == HEARTBEAT_TOPIC:
                beat = parse_heartbeat(parts)
                self.busy[beat["refiner"]] = beat["busy"]
                return
            result, _ = parse_result(parts, self.max_pixels)
        except MessageError:  # the genuine refiner published something unreadable: a finding
            self.unreadable += 1
            return
        key = (result["frame_id"], result.get("ack_token", ""))
        self.seen[key] += 1
        self.refined_at[key].add(result["timestamps"].get("refined"))

    def busy_frame(self, pid: int) -> str | None:
        """The frame the refiner process `pid` last said it works on (identity host:pid:endpoint)."""
        for refiner, frame_id in list(self.busy.items()):
            if f":{pid}:" in refiner:
                return frame_id
        return None

    def ids(self) -> set[str]:
        return {frame_id for frame_id, _ in list(self.seen)}

    def duplicates(self, frame_ids: set[str]) -> int:
        """Results published more than once for one frame (every extra copy)."""
        per_frame = collections.Counter()
        for (frame_id, _), n in list(self.seen.items()):
            if frame_id in frame_ids:
                per_frame[frame_id] += n
        return sum(n - 1 for n in per_frame.values() if n > 1)

    def refined_twice(self, frame_ids: set[str]) -> int:
        """Of the duplicates, frames refined again (a different refinement time), not a cached answer resent."""
        per_frame = collections.Counter()
        for (frame_id, _), times in list(self.refined_at.items()):
            if frame_id in frame_ids:
                per_frame[frame_id] += len(times)
        return sum(n - 1 for n in per_frame.values() if n > 1)

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join(5)
        self.sub.close()
