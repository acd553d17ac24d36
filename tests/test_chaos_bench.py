"""`inspectd bench chaos`: its command line, its accounting and its report's names (the run
itself needs the demo bundle and minutes; see docs/BENCHMARKS.md)."""

from __future__ import annotations

import argparse

from inspectd.eval.bench import add_bench_parser
from inspectd.eval.chaos_bench import CASES, CaseResult, capture_summary, print_table, summarise


def test_chaos_command_line_defaults_to_the_issue_scale():
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="cmd"), handler=None)
    args = parser.parse_args(["bench", "chaos", "--out", "x"])
    assert args.frame_messages >= 10000 and args.result_messages >= 10000
    assert args.cases == list(CASES) == ["malformed_frames", "malformed_results"]
    assert parser.parse_args(["bench", "chaos", "--out", "x", "--cases", "malformed_frames"]).cases == \
        ["malformed_frames"]


def test_report_totals_cases_under_the_names_other_tools_read(capsys):
    results = [CaseResult("a", inputs=10, counted_as={"malformed": 9}, uncounted=1),
               CaseResult("b", inputs=5, crashes=1, frames_lost=2, duplicates=3)]
    report = summarise(results)
    assert {k: report[k] for k in ("inputs", "crashes", "frames_lost", "duplicates", "uncounted")} == \
        {"inputs": 15, "crashes": 1, "frames_lost": 2, "duplicates": 3, "uncounted": 1}
    assert [c["name"] for c in report["cases"]] == ["a", "b"] and report["cases"][0]["counted_as"] == {"malformed": 9}
    print_table(results)
    table = capsys.readouterr().out
    assert "counted as" in table and "malformed 9" in table and table.splitlines()[-1].split()[1:] == \
        ["15", "1", "2", "3", "1"]


def test_capture_summary_is_read_from_the_log(tmp_path):
    log = tmp_path / "capture.log"
    log.write_text("INFO x\ncapture: {'frames': 20, 'flagged': 8, 'spooled': 8, 'unacked': 0}\n")
    assert capture_summary(log) == {"frames": 20, "flagged": 8, "spooled": 8, "unacked": 0}
    (tmp_path / "killed.log").write_text("INFO x\n")  # a capture that never printed its summary
    assert capture_summary(tmp_path / "killed.log") == {}
