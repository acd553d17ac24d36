"""Scale-out across hosts, on one machine: 2 capture processes (2 cameras), 3 refiners and a
subscriber, each in its own network namespace with its own address on one bridge, TCP with
CURVE on, the real service loops with the test doubles (tests/netns_node.py) for the models.

Shown: every flagged frame of both cameras reaches the de-duplicating subscriber exactly once;
the refiners share the work; a refiner whose link goes down mid-stream (its process still
running, no clean exit) costs resends, not frames; a refiner started mid-stream takes work.

Needs root and iproute2 (`ip netns`); skips and says why otherwise. Everything it makes (the
namespaces, the bridge and the veth pairs, which live inside them) is removed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inspectd.service.settings import Settings
from inspectd.service.transport import Deduplicator, make_keypair

from test_service_doubles import service_settings, wait_until

pytestmark = pytest.mark.netns
HERE = Path(__file__).resolve().parent
SUBNET = "10.15.0"  # private to this test's namespaces: nothing in the host's namespace is touched
NODES = {"cap1": 11, "cap2": 12, "ref1": 21, "ref2": 22, "ref3": 23, "sub": 30}
FRAMES_PER_CAMERA = 60
FPS = 10
SLOW_S, FAST_S = 0.4, 0.1  # ref1 is slow, so it always holds frames when its link goes down


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def netns_unavailable() -> str | None:
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"i15probe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class Topology:
    """A hub namespace holding a bridge; each node a namespace with one veth into the hub."""

    def __init__(self):
        self.tag = f"i15{os.getpid() % 100000}"
        self.hub = f"{self.tag}hub"
        self.made: list[str] = []

    def ns(self, node: str) -> str:
        return f"{self.tag}{node}"

    def address(self, node: str) -> str:
        return f"{SUBNET}.{NODES[node]}"

    def build(self) -> None:
        self.add_ns(self.hub)
        ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        ip("-n", self.hub, "link", "set", "br0", "up")
        for node in NODES:
            ns = self.ns(node)
            self.add_ns(ns)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p-{node}", "netns", self.hub)
            ip("-n", ns, "addr", "add", f"{self.address(node)}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", self.hub, "link", "set", f"p-{node}", "master", "br0", "up")

    def add_ns(self, name: str) -> None:
        ip("netns", "add", name)
        self.made.append(name)

    def cut(self, node: str) -> None:
        """Link down: the process keeps running but nothing reaches it or leaves it."""
        ip("-n", self.hub, "link", "set", f"p-{node}", "down")
        ip("-n", self.ns(node), "link", "set", "eth0", "down")

    def remove(self) -> None:
        for name in reversed(self.made):  # deleting a namespace deletes its veth ends and bridge
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def curve_keys(folder: Path) -> dict[str, Path]:
    keys = {}
    for name in ("capture", "refiner", "operator"):
        keys[name], keys[name + "_secret"] = make_keypair(folder, name)
    for clients, members in {"capture-clients": ["refiner"], "refiner-clients": ["capture", "operator"],
                             "no-clients": []}.items():
        (folder / clients).mkdir()
        for member in members:
            shutil.copy(keys[member], folder / clients / keys[member].name)
    return keys


def node_settings(tmp_path: Path, topo: Topology, keys: dict, keydir: Path, node: str) -> Settings:
    refiners = [f"tcp://{topo.address(r)}:5556" for r in ("ref1", "ref2", "ref3")]
    captures = [f"tcp://{topo.address(c)}:5555" for c in ("cap1", "cap2")]
    role = {"cap": "capture", "ref": "refiner", "sub": "operator"}[node[:3]]
    server = {"capture": "refiner", "refiner": "capture", "operator": "refiner"}[role]
    clients = {"capture": "capture-clients", "refiner": "refiner-clients", "operator": "no-clients"}[role]
    camera = {"cap1": "cam1", "cap2": "cam2"}.get(node, "unused")
    return service_settings(
        tmp_path, camera_id=camera,
        capture={"max_frames": FRAMES_PER_CAMERA, "fps": FPS, "demo": {"defect_rate": 0.5, "seed": NODES[node]}},
        transport={"frames_bind": f"tcp://{topo.address(node)}:5555", "frames_connect": captures,
                   "results_bind": f"tcp://{topo.address(node)}:5556", "results_connect": refiners,
                   "pub_grace_s": 0.3,
                   "curve": {"secret_key": str(keys[role + "_secret"]), "server_public_key": str(keys[server]),
                             "authorized_clients": str(keydir / clients)}},
        spool={"dir": str(tmp_path / f"spool-{node}"), "ack_timeout_s": 1.0})


def test_two_cameras_three_refiners_in_namespaces_share_work_and_survive_a_cut_link(tmp_path):
    if reason := netns_unavailable():
        pytest.skip(reason)
    topo, procs = Topology(), {}
    keydir = tmp_path / "keys"
    keys = curve_keys(keydir)

    def start(node: str, *extra: str) -> None:
        settings_file = tmp_path / f"{node}.json"
        settings_file.write_text(node_settings(tmp_path, topo, keys, keydir, node).model_dump_json())
        role = {"cap": "capture", "ref": "refiner", "sub": "subscriber"}[node[:3]]
        log = open(tmp_path / f"{node}.log", "w")
        procs[node] = subprocess.Popen(["ip", "netns", "exec", topo.ns(node), sys.executable,
                                        str(HERE / "netns_node.py"), role, str(settings_file),
                                        str(tmp_path / f"{node}.out"), *extra],
                                       stdout=log, stderr=subprocess.STDOUT, cwd=HERE.parent)

    def received() -> list[dict]:
        path = tmp_path / "sub.out"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp_path.glob("*.log")))

    def go(*nodes: str) -> None:
        for node in nodes:
            (tmp_path / f"{node}.out.go").touch()

    def log_has(node: str, text: str) -> bool:
        return text in (tmp_path / f"{node}.log").read_text()

    try:
        topo.build()
        for node in ("sub", "ref1", "ref2", "ref3", "cap1", "cap2"):
            start(node, *{"ref1": [str(SLOW_S)], "ref2": [str(FAST_S)], "ref3": [str(FAST_S)]}.get(node, []))
        # interpreters start (torch imports) before the clock of the scenario starts
        assert wait_until(lambda: all((tmp_path / f"{n}.out.waiting").exists() for n in procs), 120), logs()
        go("sub")
        assert wait_until(lambda: (tmp_path / "sub.out.ready").exists(), 10), logs()
        go("ref1", "ref2")
        assert wait_until(lambda: log_has("ref1", "refiner: model") and log_has("ref2", "refiner: model"), 10)
        go("cap1", "cap2")
        assert wait_until(lambda: any(r["refiner"] == 0 for r in received()), 10), logs()
        go("ref3")  # a refiner added while the cameras run
        time.sleep(1.0)  # ref1 is slow: it holds frames at this point
        topo.cut("ref1")
        for cam in ("cap1", "cap2"):
            procs[cam].wait(45)  # a capture ends once every flagged frame of its camera is acked
        summaries = [json.loads((tmp_path / f"{cam}.out").read_text()) for cam in ("cap1", "cap2")]
        flagged = {fid for s in summaries for fid in s["flagged_ids"]}
        assert all(s["unacked"] == 0 for s in summaries) and len(flagged) >= 30, logs()
        assert wait_until(lambda: {r["frame_id"] for r in received()} >= flagged, 5), logs()

        dedup = Deduplicator()
        unique = [r for r in received() if dedup.first_time(r["frame_id"])]
        assert sorted(r["frame_id"] for r in unique) == sorted(flagged)  # each exactly once, none lost
        assert {r["camera"] for r in unique} == {"cam1", "cam2"}
        shares = [sum(r["refiner"] == i for r in unique) for i in range(3)]
        assert all(share >= 1 for share in shares), shares  # ref3, started late, took work too
        assert shares[1] + shares[2] > shares[0], shares  # the slow one did not hoard the stream
        # ref1's link went down while it held frames: the captures resent them to the others
        assert sum(s["resends"] for s in summaries) >= 1, summaries
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        topo.remove()
