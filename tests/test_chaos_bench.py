"""`inspectd bench chaos`: its command line, its accounting, its report's names, and a small run
of every case against real capture and refiner processes (the issue's scale takes many minutes:
docs/BENCHMARKS.md)."""

from __future__ import annotations

import argparse
import json

from inspectd.eval.bench import add_bench_parser
from inspectd.eval.chaos_bench import CASES, CaseResult, capture_summary, print_table, run_chaos_bench, summarise
from inspectd.eval.chaos_faults import spool_recovered


def chaos_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="cmd"), handler=None)
    return parser


def test_chaos_command_line_defaults_to_the_issue_scale():
    parser = chaos_parser()
    args = parser.parse_args(["bench", "chaos", "--out", "x"])
    assert args.frame_messages >= 10000 and args.result_messages >= 10000
    assert args.refiner_kills >= 5 and args.capture_kills >= 3
    assert args.cases == list(CASES) == ["malformed_frames", "refiner_kills", "capture_kills", "malformed_results",
                                         "spool_full", "spool_read_only", "forged_acks_curve"]
    small = parser.parse_args(["bench", "chaos", "--out", "x", "--cases", "malformed_frames,spool_full",
                               "--frame-messages", "50", "--refiner-kills", "1", "--capture-kills", "2"])
    assert (small.cases, small.frame_messages, small.refiner_kills, small.capture_kills) == \
        (["malformed_frames", "spool_full"], 50, 1, 2)


def test_report_totals_cases_under_the_names_other_tools_read(capsys):
    results = [CaseResult("a", inputs=10, counted_as={"malformed": 9}, uncounted=1,
                          memory={"refiner_idle_mb": 400.0, "refiner_peak_mb": 500.0}),
               CaseResult("b", inputs=5, crashes=1, frames_lost=2, duplicates=3),
               CaseResult("c", skipped="cannot mount a tmpfs here")]
    report = summarise(results)
    assert report["refiner_peak_over_idle"] == 1.25
    assert {k: report[k] for k in ("inputs", "crashes", "frames_lost", "duplicates", "uncounted")} == \
        {"inputs": 15, "crashes": 1, "frames_lost": 2, "duplicates": 3, "uncounted": 1}
    assert [c["name"] for c in report["cases"]] == ["a", "b", "c"] and report["cases"][0]["counted_as"] == {"malformed": 9}
    print_table(results)
    table = capsys.readouterr().out
    assert "counted as" in table and "malformed 9" in table and "skipped: cannot mount a tmpfs here" in table and table.splitlines()[-1].split()[1:] == \
        ["15", "1", "2", "3", "1"]


def test_capture_summary_is_read_from_the_log(tmp_path):
    log = tmp_path / "capture.log"
    log.write_text("INFO x\ncapture: {'frames': 20, 'flagged': 8, 'spooled': 8, 'unacked': 0}\n")
    assert capture_summary(log) == {"frames": 20, "flagged": 8, "spooled": 8, "unacked": 0}
    (tmp_path / "killed.log").write_text("INFO x\n")  # a capture that never printed its summary
    assert capture_summary(tmp_path / "killed.log") == {}


def test_spool_recovery_is_read_from_the_restarted_capture_log():
    log = "INFO x\nINFO inspectd.service.spool: spool /s: 7 frame(s) from a previous run will be resent\n"
    assert spool_recovered(log) == 7 and spool_recovered("INFO nothing left\n") == 0


def test_a_small_run_loses_nothing_counts_every_input_and_survives_kills(demo_bundle, tmp_path):
    """The bench's own code on real processes, small: malformed frames, one kill -9 of the refiner
    while it refines and one of the capture with frames in its spool. (The other cases start
    several more processes each: they run in the issue-scale bench, and their daemon behaviour has
    its own tests in test_service_hostile.py, test_service_faults.py and test_service_acks.py.)"""
    settings = tmp_path / "line.yaml"
    settings.write_text(f"""camera_id: chaos
capture: {{source: demo, size: 96, fps: 20, demo: {{texture: brick, defect_rate: 0.5}}}}
screening: {{model: {demo_bundle}}}
refiner: {{model: {demo_bundle}}}
transport: {{pub_grace_s: 0.3, heartbeat_s: 0.3}}
""")
    cases = ["malformed_frames", "refiner_kills", "capture_kills"]
    args = chaos_parser().parse_args([
        "bench", "chaos", "--out", str(tmp_path / "out"), "--settings", str(settings), "--frame-messages", "56",
        "--good-every", "56", "--refiner-kills", "1", "--capture-kills", "1", "--seconds-per-frame", "30",
        "--cases", ",".join(cases)])
    report = run_chaos_bench(args)
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == report
    assert {k: report[k] for k in ("crashes", "frames_lost", "uncounted")} == \
        {"crashes": 0, "frames_lost": 0, "uncounted": 0}, report
    by_name = {c["name"]: c for c in report["cases"]}
    frames = by_name["malformed frames -> refiner"]
    assert sum(frames["counted_as"].values()) == 56 <= frames["inputs"]  # plus the mutations still valid
    assert by_name["refiner kill -9 while refining"]["counted_as"]["refiner_lost"] >= 1  # seen through heartbeats
    assert by_name["capture kill -9, restart"]["inputs"] == 1
    assert report["refiner_peak_over_idle"] <= 1.5
