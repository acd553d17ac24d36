"""`inspectd bench chaos --out DIR`: hostile inputs and faults at scale against real capture and
refiner processes (`python -m inspectd capture|refine`), then the table of inputs tried,
crashes, frames lost, duplicates and what each input was counted as, and DIR/results.json.

The cases, in CASES (each `case(line, args, rng) -> CaseResult`):
- malformed_frames: --frame-messages malformed frame messages (every case of
  inspectd/eval/chaos.py, cycled) to the refiner, with good frames among them; the refiner's
  idle and peak memory (VmRSS, VmHWM) around them;
- refiner_kills, capture_kills, spool_full, spool_read_only, forged_acks_curve: process and
  disk faults (inspectd/eval/chaos_faults.py);
- malformed_results: --result-messages malformed and forged results (CURVE off: anyone may
  publish) to the capture while its frames wait in the spool.
The line itself (processes, ports, the result recorder) is inspectd/eval/chaos_line.py.

Accounting: the bench parses every message it sends with the daemon's own parser and limits
(the oracle), so `uncounted` = inputs the daemon should have counted as bad but did not (or
counted twice); `frames_lost` = good frames whose genuine result never came (or spooled frames
deleted without one); `duplicates` = results published more than once for one frame.
"""

from __future__ import annotations

import ast
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import zmq

from inspectd.errors import InspectdError
from inspectd.eval.chaos import frame_cases, result_cases
from inspectd.eval.chaos_faults import capture_kills, forged_acks_curve, refiner_kills, spool_full, spool_read_only
from inspectd.eval.chaos_line import CaseResult, Line, wait_for
from inspectd.service.messages import MessageError, encode_frame, encode_result, parse_frame, parse_result
from inspectd.service.settings import Settings, load_settings


# --- cases -------------------------------------------------------------------------------------
def good_frame(settings: Settings, frame_id: str, rng: np.random.Generator) -> list[bytes]:
    """A well-formed frame of the line's size (a demo part), with its own ack token."""
    from inspectd.data.textures import texture_parts

    size = settings.capture.size or 256
    part = texture_parts(settings.capture.demo.texture, 1, size, seed=int(rng.integers(1 << 30)))[0]
    header = {"frame_id": frame_id, "camera": "chaos", "captured_at": time.time(), "screened_at": time.time(),
              "score": 1.0, "threshold": 0.5, "map_summary": {}, "model_id": "chaos-bench",
              "px_per_mm": settings.px_per_mm, "ack_token": rng.bytes(16).hex()}
    return encode_frame(header, part)


MAX_VALID_MUTATIONS = 10  # mutations that are still valid frames sent to the refiner; the rest are skipped


def malformed_frames(line: Line, args, rng: np.random.Generator) -> CaseResult:
    """Hostile frame messages (every case of inspectd/eval/chaos.py, cycled) to the refiner, a
    good frame every --good-every inputs; the refiner's memory is sampled around them."""
    res = CaseResult("malformed frames -> refiner")
    push = line.context.socket(zmq.PUSH)
    push.linger, push.sndtimeo = 0, 30_000
    push.bind(line.endpoints["bench_frames"])
    wait_for(lambda: push.poll(0, zmq.POLLOUT), 10)
    limits = dict(max_bytes=line.settings.transport.max_message_bytes, max_pixels=line.settings.transport.max_frame_pixels)
    cases, base = frame_cases(), good_frame(line.settings, "chaos-base", rng)
    expected_size = (json.loads(base[0])["height"], json.loads(base[0])["width"])
    before, (idle_mb, _) = line.bad_inputs("refine"), line.peak_rss_mb("refine")
    expected_bad, good_ids, valid_ids, skipped_valid, n = 0, set(), set(), 0, -1
    while expected_bad < args.frame_messages:  # --frame-messages malformed ones, whatever the mutations give
        n += 1
        name = list(cases)[n % len(cases)]
        parts = cases[name]([with_id(base[0], f"chaos-{n}"), base[1]], rng)
        try:
            header, _ = parse_frame(parts, expected_size=expected_size, **limits)
        except MessageError:
            expected_bad += 1
        else:  # a mutation that is still a valid frame (e.g. an optional field removed): refined
            if len(valid_ids) >= MAX_VALID_MUTATIONS:
                skipped_valid += 1  # seconds of refinement each, and not hostile: a few are enough
                continue
            valid_ids.add(header["frame_id"])
        push.send_multipart(parts)
        res.inputs += 1
        if n % args.good_every == 0:
            push.send_multipart(good_frame(line.settings, f"chaos-good-{n}", rng))
            good_ids.add(f"chaos-good-{n}")
        res.crashes += line.crashed("refine")
    counted = lambda: sum((line.bad_inputs("refine") - before).values())  # noqa: E731
    wait_for(lambda: counted() >= expected_bad and good_ids | valid_ids <= line.results.ids(),
             60 + args.seconds_per_frame * len(good_ids | valid_ids))
    res.crashes += line.crashed("refine")
    res.counted_as = dict(line.bad_inputs("refine") - before)
    res.uncounted = abs(expected_bad - sum(res.counted_as.values()))
    res.frames_lost = len(good_ids - line.results.ids())
    res.duplicates = line.results.duplicates(good_ids)
    _, peak_mb = line.peak_rss_mb("refine")
    res.notes.append(f"{len(good_ids)} good frames sent besides; {len(valid_ids)} mutations still valid frames "
                     f"(sent, refined), {skipped_valid} more not sent")
    res.notes.append(f"refiner memory: idle {idle_mb:.0f} MB, peak {peak_mb:.0f} MB ({peak_mb / idle_mb:.2f}x)")
    res.memory = {"refiner_idle_mb": idle_mb, "refiner_peak_mb": peak_mb}
    push.close()
    return res


def malformed_results(line: Line, args, rng: np.random.Generator) -> CaseResult:
    """Hostile and forged results (CURVE off: anyone may publish) to the capture's ack listener
    while its frames wait in the spool with the refiner down; then the real refiner comes back
    and every spooled frame must still be refined and acked."""
    res = CaseResult("malformed + forged results -> capture")
    line.stop("refine")
    line.start("capture", "--frames", str(line.capture_frames))
    camera = line.settings.camera_id
    captured = lambda: (line.scrape("capture") or {}).get(f'inspectd_frames_captured_total{{camera="{camera}"}}', 0)  # noqa: E731
    wait_for(lambda: captured() >= line.capture_frames, 120)
    spooled = line.spooled()
    victims = [name.split("_", 1)[1][: -len(".frame")] for name in sorted(spooled)]
    if not victims:
        raise InspectdError("chaos: no frame was flagged; raise --capture-frames")
    pub = line.context.socket(zmq.XPUB)
    pub.linger, pub.sndtimeo = 0, 30_000
    pub.bind(line.endpoints["bench_results"])
    if not wait_for(lambda: pub.poll(0), 10):
        raise InspectdError("chaos: the capture never subscribed to the bench's results endpoint")
    pub.recv()  # the capture's subscription
    cases, size = result_cases(), line.settings.capture.size or 256
    before, expected = line.bad_inputs("capture"), 0
    for n in range(args.result_messages):
        forged = forged_result(victims[n % len(victims)], camera, size)
        parts = list(cases.values())[n % len(cases)](forged, rng)
        try:
            result, _ = parse_result(parts, line.settings.transport.max_frame_pixels)
            expected += result["frame_id"] in victims  # well-formed: not an ack, counted as bad_ack_token
        except MessageError:
            expected += 1
        pub.send_multipart(parts)
        res.inputs += 1
        res.crashes += line.crashed("capture")
    counted = lambda: sum((line.bad_inputs("capture") - before).values())  # noqa: E731
    wait_for(lambda: counted() >= expected, 60)
    res.counted_as = dict(line.bad_inputs("capture") - before)
    res.uncounted = abs(expected - sum(res.counted_as.values()))
    deleted = {name.split("_", 1)[1][: -len(".frame")] for name in spooled - line.spooled()}
    res.notes.append(f"{len(victims)} spooled frames targeted; {len(deleted)} deleted by forged results")
    pub.close()
    # the genuine refiner returns: every frame must be refined and acked, the capture then ends
    line.start("refine")
    wait_for(lambda: line.procs["capture"].poll() is not None, max(120.0, args.seconds_per_frame * len(victims)))
    res.crashes += line.stop("capture") not in (0, None)  # SIGTERM when still waiting: it keeps its spool
    summary = capture_summary(line.out / "capture.log")
    waiting = {name.split("_", 1)[1][: -len(".frame")] for name in line.spooled()}
    if waiting:
        res.notes.append(f"{len(waiting)} frame(s) not refined in time, kept in the spool for the next start "
                         "(not lost; raise --seconds-per-frame on a slow machine)")
    flagged = summary.get("flagged", len(victims))
    if flagged != len(victims):
        res.notes.append(f"capture flagged {flagged} frames, {len(victims)} were in the spool when the burst began")
    # lost: deleted by a forged result, or gone from the spool without a genuine result
    res.frames_lost = len(deleted | {v for v in victims if v not in line.results.ids() and v not in waiting})
    res.duplicates = line.results.duplicates(set(victims))
    res.notes.append(f"capture summary {summary}")
    return res


# in this order the refiner started first serves the message and kill cases before any restart
CASES: dict[str, Callable[[Line, object, np.random.Generator], CaseResult]] = {
    "malformed_frames": malformed_frames,
    "refiner_kills": refiner_kills,
    "capture_kills": capture_kills,
    "malformed_results": malformed_results,
    "spool_full": spool_full,
    "spool_read_only": spool_read_only,
    "forged_acks_curve": forged_acks_curve,
}


def with_id(header: bytes, frame_id: str) -> bytes:
    return json.dumps({**json.loads(header), "frame_id": frame_id}).encode()


def forged_result(frame_id: str, camera: str, size: int) -> list[bytes]:
    result = {"frame_id": frame_id, "camera": camera,
              "timestamps": {"captured": 1.0, "screened": 1.0, "refined": 1.0, "published": 1.0},
              "image_score": 0.0, "decision": "defect",
              "defects": [{"area_px": 4, "bbox": [0, 0, 2, 2], "centroid": [0.5, 0.5]}],
              "refinement": {"seconds": 0.0, "iterations": 0, "device": ""}, "model_id": "forged",
              "screening_model_id": "forged"}
    mask = np.zeros((size, size), bool)
    mask[:2, :2] = True
    return encode_result(result, mask)  # topic, JSON, one mask crop: the shape the hostile cases vary


def capture_summary(log: Path) -> dict:
    """The dict `inspectd capture` prints last ("capture: {...}")."""
    lines = [line for line in log.read_text().splitlines() if line.startswith("capture: {")]
    return ast.literal_eval(lines[-1].split(": ", 1)[1]) if lines else {}


# --- the bench ---------------------------------------------------------------------------------
OPTIONS = ("settings", "frame_messages", "result_messages", "refiner_kills", "capture_kills", "disk_frames",
           "curve_forgeries", "capture_frames", "good_every", "seconds_per_frame", "seed")


def command_line(args) -> str:
    """The command that reproduces this run, every option spelled out."""
    options = " ".join(f"--{name.replace('_', '-')} {getattr(args, name)}" for name in OPTIONS)
    return f"inspectd bench chaos --out {args.out} {options} --cases {','.join(args.cases)}"


def run_chaos_bench(args) -> dict:
    from inspectd.eval.bench import machine
    from inspectd.service.models import ensure_demo_bundle

    print(f"command: {command_line(args)}\nmachine: {machine()}", flush=True)
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        raise InspectdError(f"chaos: unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    settings = load_settings(args.settings)
    if settings.capture.source == "demo":  # fit once here, so the processes do not race to fit it
        ensure_demo_bundle(settings, Path(settings.refiner.model))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    line, rng, results = Line(args.settings, out, args.capture_frames), np.random.default_rng(args.seed), []
    try:
        line.start("refine")
        time.sleep(settings.transport.pub_grace_s + 0.5)  # the recorder's subscription is in place
        for name in args.cases:
            started = time.monotonic()
            print(f"case {name} ...", flush=True)
            results.append(CASES[name](line, args, rng))
            results[-1].notes.append(f"{time.monotonic() - started:.1f} s")
    finally:
        line.close()
    report = summarise(results) | {"command": command_line(args), "machine": machine(),
                                   "unreadable_genuine_results": line.results.unreadable}
    print_table(results)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    print(f"written: {out / 'results.json'}")
    return report


def summarise(results: list[CaseResult]) -> dict:
    """results.json's top level (other tools read these names): the totals, then every case."""
    totals = {key: sum(getattr(r, key) for r in results)
              for key in ("inputs", "crashes", "frames_lost", "duplicates", "uncounted")}
    memory = [r.memory for r in results if r.memory.get("refiner_idle_mb")]
    ratio = {"refiner_peak_over_idle": round(max(m["refiner_peak_mb"] / m["refiner_idle_mb"] for m in memory), 3)} \
        if memory else {}
    return totals | ratio | {"cases": [asdict(r) for r in results]}


def print_table(results: list[CaseResult]) -> None:
    print(f"{'case':<40}{'inputs':>8}{'crashes':>9}{'lost':>6}{'dups':>6}{'uncounted':>11}  counted as")
    for r in results:
        kinds = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r.counted_as.items()) if v)
        print(f"{r.name:<40}{r.inputs:>8}{r.crashes:>9}{r.frames_lost:>6}{r.duplicates:>6}{r.uncounted:>11}  {kinds}")
        if r.skipped:
            print(f"{'':<4}skipped: {r.skipped}")
        for note in r.notes:
            print(f"{'':<4}{note}")
    total = {k: sum(getattr(r, k) for r in results) for k in ("inputs", "crashes", "frames_lost", "duplicates",
                                                              "uncounted")}
    print(f"{'total':<40}{total['inputs']:>8}{total['crashes']:>9}{total['frames_lost']:>6}"
          f"{total['duplicates']:>6}{total['uncounted']:>11}")


def add_chaos_parser(bsub, handler) -> None:
    ch = bsub.add_parser("chaos", help="hostile messages, kill -9, full and read-only disks against real "
                                       "capture and refiner processes")
    ch.add_argument("--out", required=True, help="folder for results.json and the processes' logs")
    ch.add_argument("--settings", default="configs/demo.yaml")
    ch.add_argument("--frame-messages", type=int, default=10000,
                    help="malformed frame messages to the refiner (mutations still valid do not count)")
    ch.add_argument("--result-messages", type=int, default=10000, help="hostile results to the capture")
    ch.add_argument("--refiner-kills", type=int, default=5, help="kill -9 of the refiner while it refines a frame")
    ch.add_argument("--capture-kills", type=int, default=3,
                    help="kill -9 of the capture while frames wait in its spool")
    ch.add_argument("--disk-frames", type=int, default=12,
                    help="frames read onto the full (about 4 frames) and the read-only spool disk")
    ch.add_argument("--curve-forgeries", type=int, default=1000,
                    help="forged results on the CURVE line (half with no key, half with a key of their own)")
    ch.add_argument("--good-every", type=int, default=200, help="a good frame after every N hostile ones")
    ch.add_argument("--capture-frames", type=int, default=40, help="frames the capture reads (its flagged "
                                                                   "ones wait in the spool, forged results aim at them)")
    ch.add_argument("--cases", type=lambda s: s.split(","), default=list(CASES),
                    help=f"comma-separated, of {', '.join(CASES)}")
    ch.add_argument("--seconds-per-frame", type=float, default=20.0,
                    help="how long the capture may wait per spooled frame for the returning refiner")
    ch.add_argument("--seed", type=int, default=0)
    ch.set_defaults(func=handler)

