"""Process and disk faults as cases of `inspectd bench chaos`: kill -9 of refiners and captures,
a full and a read-only spool disk, and forged acks with CURVE on.

These cases feed the capture from an image folder whose every frame is flagged (screening
threshold -1), so the bench knows every frame id in advance (a folder source's ids come from
the file) and can say exactly which frames got their result. A frame the daemon dropped or set
aside is not lost if it counted it (a drop or a dead letter); `uncounted` is the difference
between the frames that got no result and the ones the daemon said it dropped.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import zmq

from inspectd.data.images import list_images, write_image
from inspectd.data.textures import texture_parts
from inspectd.errors import InspectdError
from inspectd.eval.chaos import with_fields
from inspectd.eval.chaos_line import CaseResult, Line, labelled, wait_for
from inspectd.service.capture import file_key, folder_frame_id

START_S = 300  # a process start on a loaded machine (imports, model load) may take minutes


# --- helpers -----------------------------------------------------------------------------------
def part_folder(line: Line, name: str, n: int, rng: np.random.Generator) -> tuple[Path, set[str]]:
    """n demo parts as PNG files in a fresh folder, and the frame ids a folder source gives them."""
    folder = line.root / name
    folder.mkdir()
    size = line.settings.capture.size or 256
    for i, part in enumerate(texture_parts(line.settings.capture.demo.texture, n, size,
                                           seed=int(rng.integers(1 << 30)))):
        write_image(folder / f"{name}-{i:04d}.png", part)
    return folder, {folder_frame_id(line.settings.camera_id, p, file_key(p)) for p in list_images(folder)}


def folder_env(folder: Path, spool: Path | None = None, fps: float | None = None) -> dict[str, str]:
    """A capture that reads `folder` once and flags every frame (every score is above -1)."""
    env = {"INSPECTD_CAPTURE__SOURCE": "folder", "INSPECTD_CAPTURE__URI": str(folder),
           "INSPECTD_CAPTURE__WATCH": "false", "INSPECTD_SCREENING__THRESHOLD": "-1"}
    if spool is not None:
        env["INSPECTD_SPOOL__DIR"] = str(spool)
    if fps is not None:
        env["INSPECTD_CAPTURE__FPS"] = str(fps)
    return env


def total(samples: dict[str, float], metric: str) -> int:
    """A metric's value summed over its labels."""
    return int(sum(v for k, v in samples.items() if k == metric or k.startswith(metric + "{")))


def captured(line: Line) -> int:
    return total(line.scrape("capture") or {}, "inspectd_frames_captured_total")


def finish_capture(line: Line, res: CaseResult, frames: int, seconds_per_frame: float) -> dict[str, float]:
    """Let the capture run until every frame is acked and it ends; a failing exit is a crash.
    Returns its last metrics."""
    samples = line.until_exit("capture", 120 + seconds_per_frame * frames)
    if line.running("capture"):
        res.notes.append("the capture was still waiting for results at the time limit; stopped (SIGTERM), "
                         "its spool kept")
        line.stop("capture")
    elif line.procs["capture"].returncode != 0:
        res.crashes += 1
        res.notes.append(f"the capture exited with {line.procs['capture'].returncode}")
    return samples


def account(res: CaseResult, line: Line, expected: set[str], set_aside: int = 0, spool: Path | None = None) -> None:
    """Frames lost, duplicates and uncounted frames among `expected`; `set_aside` = frames the
    daemon counted as dropped or dead-lettered (a counted decision, not a silent loss). A frame
    still in the spool (a capture stopped at the time limit) is sent at its next start: kept, not lost."""
    missing = expected - line.results.ids()
    kept = missing & {name.split("_", 1)[1][: -len(".frame")] for name in line.spooled(spool)}
    missing -= kept
    res.frames_lost += max(0, len(missing) - set_aside)
    res.uncounted += abs(len(missing) - set_aside)
    res.duplicates += line.results.duplicates(expected)
    again = line.results.refined_twice(expected)
    res.notes.append(f"{len(expected)} frames: {len(expected - missing - kept)} with a genuine result, "
                     f"{set_aside} counted as dropped or dead-lettered, {len(kept)} still in the spool (kept for "
                     f"the next start); {res.duplicates} results published twice ({again} frames refined again, "
                     "the rest a cached result sent again to a capture that had not acked it; subscribers "
                     "de-duplicate by frame_id)")


def ensure_refiner(line: Line) -> None:
    if not line.running("refine"):
        line.start("refine")


# --- kill -9 -----------------------------------------------------------------------------------
def refiner_kills(line: Line, args, rng: np.random.Generator) -> CaseResult:
    """kill -9 of the refiner while its heartbeat says it refines a frame (never the same frame
    twice, so no frame reaches refiner.max_attempts deaths), then a new refiner is started. The
    capture must see each death through the heartbeats and resend what the dead one held."""
    res = CaseResult("refiner kill -9 while refining")
    folder, expected = part_folder(line, "refiner-kills", 2 * args.refiner_kills + 3, rng)
    ensure_refiner(line)
    line.start("capture", env=folder_env(folder))
    killed_on: set[str] = set()
    for kill in range(args.refiner_kills):
        pid = line.procs["refine"].pid
        fresh = lambda: line.results.busy_frame(pid) not in (None, *killed_on)  # noqa: E731
        wait_for(lambda: fresh() or not line.running("capture"), 60 + 3 * args.seconds_per_frame, 0.02)
        if not line.running("capture"):
            res.notes.append(f"the capture finished before kill {kill + 1}; raise the frames per kill")
            break
        frame_id = line.results.busy_frame(pid)
        line.kill("refine")
        killed_on.add(frame_id)
        res.inputs += 1
        res.notes.append(f"kill {kill + 1}: refiner pid {pid} killed while refining {frame_id}")
        line.start("refine")
    samples = finish_capture(line, res, len(expected), args.seconds_per_frame)
    lost_seen = total(samples, "inspectd_refiners_lost_total")
    dead = labelled(samples, "inspectd_dead_letters_total", "reason")
    res.counted_as = {"refiner_lost": lost_seen, "resends": total(samples, "inspectd_resends_total"),
                      **{f"dead_letter_{k}": v for k, v in dead.items() if v}}
    res.uncounted += max(0, res.inputs - lost_seen)  # each kill must be seen through the heartbeats
    if lost_seen > res.inputs:  # a live refiner's heartbeats late by 3 intervals (a loaded machine)
        res.notes.append(f"{lost_seen - res.inputs} refiner(s) taken for dead that were not killed; their "
                         "frames were resent")
    account(res, line, expected, sum(dead.values()))
    return res


def capture_kills(line: Line, args, rng: np.random.Generator) -> CaseResult:
    """kill -9 of the capture while frames wait in its spool (after some were refined), then a
    restart: the spool must give back every frame on disk, the folder journal must not read a
    handled image again under a new id, and every frame must end with one genuine result."""
    res = CaseResult("capture kill -9, restart")
    folder, expected = part_folder(line, "capture-kills", 5 * args.capture_kills + 3, rng)
    # a slow read (4 frames/s) so that the capture cannot get through its folder before the bench
    # sees a result and acts
    env = folder_env(folder, fps=4)
    ensure_refiner(line)
    line.start("capture", env=env)
    recovered_total = 0
    for kill in range(args.capture_kills):
        done = len(line.results.ids() & expected)
        progressed = lambda: len(line.results.ids() & expected) > done  # noqa: E731
        wait_for(lambda: progressed() or not line.running("capture"), 60 + 3 * args.seconds_per_frame, 0.02)
        if not line.running("capture"):
            res.notes.append(f"the capture finished before kill {kill + 1}; raise the frames per kill")
            break
        # the refiner is held (SIGSTOP) so that the frames read from now on wait, unacked, in the
        # spool: the kill then always finds some there, whatever the machine's speed
        line.pause("refine")
        try:
            wait_for(lambda: bool(line.spooled()) or not line.running("capture"), 30, 0.02)
            line.kill("capture")
        finally:
            line.resume("refine")
        res.inputs += 1
        on_disk, half_written = line.spooled(), len(list(line.spool.glob("*.tmp")))
        offset = line.log_size("capture")
        line.start("capture", env=env)
        recovered = spool_recovered(line.log_since("capture", offset))
        recovered_total += recovered
        res.uncounted += abs(len(on_disk) - recovered)  # every whole entry on disk taken back
        res.notes.append(f"kill {kill + 1}: {len(on_disk)} frame(s) in the spool ({half_written} half-written "
                         f".tmp), {recovered} taken back by the restarted capture")
    samples = finish_capture(line, res, len(expected), args.seconds_per_frame)
    res.counted_as = {"spool_recovered": recovered_total, "resends": total(samples, "inspectd_resends_total")}
    account(res, line, expected)
    return res


def spool_recovered(log: str) -> int:
    """The count in the spool's "N frame(s) from a previous run will be resent" line (0: none)."""
    found = re.findall(r"(\d+) frame\(s\) from a previous run will be resent", log)
    return int(found[-1]) if found else 0


# --- disks -------------------------------------------------------------------------------------
@contextlib.contextmanager
def small_disk(path: Path, size_bytes: int):
    """A tmpfs of size_bytes at path: yields (path, ""), or (None, why) where it cannot be mounted."""
    path.mkdir()
    try:
        mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                               capture_output=True, text=True)
    except OSError as exc:
        yield None, f"cannot run mount ({exc})"
        return
    if mount.returncode != 0:
        yield None, f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {mount.stderr.strip()}"
        return
    try:
        yield path, ""
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, mode: str) -> None:
    """Remount ro or rw; a file open for writing at that instant makes mount say busy: try again."""
    for _ in range(100):
        done = subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], capture_output=True, text=True)
        if done.returncode == 0:
            return
        time.sleep(0.02)
    raise InspectdError(f"chaos: cannot remount {path} {mode}: {done.stderr.strip()}")


def spool_full(line: Line, args, rng: np.random.Generator) -> CaseResult:
    """The spool on a tmpfs that holds about four frames, the refiner down: the disk fills, each
    frame that cannot be stored is a counted drop (by spool.full_policy), no .tmp file is left,
    the capture keeps screening; then the refiner comes back and refines what was kept."""
    res = CaseResult("spool on a full disk")
    folder, expected = part_folder(line, "spool-full", args.disk_frames, rng)
    frame_bytes = max(p.stat().st_size for p in folder.iterdir()) + 4096  # header and spool framing
    with small_disk(line.root / "full-disk", 4 * frame_bytes + 16384) as (disk, why):
        if disk is None:
            res.skipped = why
            return res
        line.stop("refine")
        spool = disk / "spool"
        line.start("capture", env=folder_env(folder, spool))
        wait_for(lambda: captured(line) >= len(expected) or not line.running("capture"),
                 60 + args.seconds_per_frame * len(expected))
        res.inputs = len(expected)
        res.notes.append(f"disk {4 * frame_bytes + 16384} bytes; with every frame screened: "
                         f"{len(line.spooled(spool))} in the spool, {len(list(spool.glob('*.tmp')))} .tmp file(s)")
        line.start("refine")
        samples = finish_capture(line, res, len(expected), args.seconds_per_frame)
        drops = labelled(samples, "inspectd_drops_total", "reason")
        res.counted_as = {k: v for k, v in drops.items() if v}
        account(res, line, expected, sum(drops.values()), spool)
    return res


def spool_read_only(line: Line, args, rng: np.random.Generator) -> CaseResult:
    """A read-only spool disk: at start the capture refuses in one line before READY (exit 2);
    when the disk turns read-only while it runs, new frames are counted drops
    (spool_write_failed), the frames already spooled are still refined and acked."""
    res = CaseResult("spool on a read-only disk")
    folder, expected = part_folder(line, "spool-read-only", args.disk_frames, rng)
    with small_disk(line.root / "ro-disk", 64 << 20) as (disk, why):
        if disk is None:
            res.skipped = why
            return res
        spool = disk / "spool"
        spool.mkdir()
        remount(disk, "ro")
        refused_at_start(line, res, folder_env(folder, spool))
        remount(disk, "rw")
        line.stop("refine")
        line.start("capture", env=folder_env(folder, spool, fps=2))  # slow, so the disk turns mid-folder
        wait_for(lambda: len(line.spooled(spool)) >= 2 or not line.running("capture"), 60)
        remount(disk, "ro")
        spooled_before = len(line.spooled(spool))
        wait_for(lambda: captured(line) >= len(expected) or not line.running("capture"),
                 60 + args.seconds_per_frame * len(expected))
        res.inputs += len(expected)
        res.notes.append(f"disk turned read-only with {spooled_before} frame(s) spooled")
        line.start("refine")
        samples = finish_capture(line, res, len(expected), args.seconds_per_frame)
        drops = labelled(samples, "inspectd_drops_total", "reason")
        res.counted_as.update({k: v for k, v in drops.items() if v})
        account(res, line, expected, sum(drops.values()), spool)
    return res


def refused_at_start(line: Line, res: CaseResult, env: dict[str, str]) -> None:
    """Start a capture on a read-only spool: it must exit non-zero, naming the folder, before serving."""
    offset = line.log_size("capture")
    line.start("capture", env=env, wait=False)
    code = line.procs["capture"].wait(START_S)
    said = [s for s in line.log_since("capture", offset).splitlines() if "not writable" in s]
    refused = code != 0 and bool(said)
    res.inputs += 1
    res.counted_as["refused_at_start"] = int(refused)
    res.uncounted += not refused
    res.notes.append(f"start on a read-only spool: exit {code}: {said[-1] if said else '(no message)'}")


# --- forged acks with CURVE on ------------------------------------------------------------------
def forged_acks_curve(line: Line, args, rng: np.random.Generator) -> CaseResult:
    """A line of its own with CURVE keys: forgers bound where the capture looks for results, one
    with no key (plain ZeroMQ) and one with a key pair of its own, publish results aimed at the
    capture's spooled frames while the refiner is down; then the genuine refiner comes back."""
    res = CaseResult("forged acks, CURVE on")
    secure = Line(line.settings_file, line.out, line.capture_frames, curve=True, log_prefix="curve-")
    try:
        secure.start("capture", "--frames", str(secure.capture_frames))
        wait_for(lambda: captured(secure) >= secure.capture_frames, 120)
        victims = {name.split("_", 1)[1][: -len(".frame")] for name in secure.spooled()}
        if not victims:
            raise InspectdError("chaos: no frame was flagged on the CURVE line; raise --capture-frames")
        before = secure.scrape("capture") or {}
        for forger in ("no key", "a key of its own"):
            forge(secure, res, forger, sorted(victims), args.curve_forgeries // 2, rng)
        after = secure.scrape("capture") or {}
        failures = (total(after, "inspectd_handshake_failures_total")
                    - total(before, "inspectd_handshake_failures_total"))
        bad = total(after, "inspectd_bad_inputs_total") - total(before, "inspectd_bad_inputs_total")
        deleted = victims - {name.split("_", 1)[1][: -len(".frame")] for name in secure.spooled()}
        res.counted_as["handshake_failures"] = failures
        res.uncounted += abs(res.counted_as.get("delivered", 0) - bad)  # delivered ones must be counted bad
        res.notes.append(f"{len(victims)} spooled frames targeted; {len(deleted)} deleted by forged results; "
                         f"{failures} failed handshakes counted (inspectd_handshake_failures_total), "
                         f"{total(after, 'inspectd_reconnects_total')} reconnects")
        secure.start("refine")
        finish_capture(secure, res, len(victims), args.seconds_per_frame)
        res.frames_lost += len(deleted)
        account(res, secure, victims - deleted)
    finally:
        secure.close()
    return res


def forge(line: Line, res: CaseResult, forger: str, victims: list[str], n: int, rng: np.random.Generator) -> None:
    """Bind a forger's XPUB on the endpoint the capture subscribes to and publish n forged results.

    An XPUB sees each subscription: no subscription means no handshake completed, and ZeroMQ
    discards every message at the forger's side (counted as never_delivered)."""
    from inspectd.eval.chaos_bench import forged_result  # the same forged result as the CURVE-off case

    pub = line.context.socket(zmq.XPUB)
    pub.linger = 0
    if forger != "no key":
        pub.curve_server = True
        pub.curve_publickey, pub.curve_secretkey = zmq.curve_keypair()
    pub.bind(line.endpoints["bench_results"])
    try:
        subscribed = pub.poll(3000)  # the capture retries with back-off: several tries in 3 s
        size = line.settings.capture.size or 256
        for i in range(n):
            forged = forged_result(victims[i % len(victims)], line.settings.camera_id, size)
            forged[1] = with_fields(forged[1], ack_token=rng.bytes(16).hex())  # a guessed token
            pub.send_multipart(forged)
        subscribed = subscribed or pub.poll(0)
        res.inputs += n
        kind = "delivered" if subscribed else "never_delivered"
        res.counted_as[kind] = res.counted_as.get(kind, 0) + n
        res.notes.append(f"forger with {forger}: {n} forged results, "
                         f"{'a subscription came' if subscribed else 'no handshake completed, none delivered'}")
    finally:
        pub.close()
