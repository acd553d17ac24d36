"""The subcommand hook for inspectd/cli.py, driven through argparse with the test doubles."""

from __future__ import annotations

import argparse
import re

import zmq.auth

from inspectd.service.capture_process import Screening
from inspectd.service.cli import add_service_commands, cmd_run
from inspectd.service.refiner_process import Refinement

from test_service_doubles import ColourAxisScreenerDouble, ThresholdRefinerDouble, service_settings


def build_screener_double(settings) -> Screening:
    screen = ColourAxisScreenerDouble()
    return Screening(screen, screen.threshold, screen.model_id)


def build_refiner_double(settings) -> Refinement:
    return Refinement(ThresholdRefinerDouble(), ThresholdRefinerDouble.model_id)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="inspectd")
    add_service_commands(p.add_subparsers(dest="command", required=True), build_screener_double,
                         build_refiner_double)
    return p


def test_commands_are_mounted():
    for command in ("capture", "refine", "run", "watch", "view", "bridge mqtt"):
        args = parser().parse_args([*command.split(), "--settings", "x.yaml"])
        assert args.settings == "x.yaml" and callable(args.func)


def test_keys_writes_loadable_certificates(tmp_path, capsys):
    args = parser().parse_args(["keys", "--dir", str(tmp_path), "capture", "refiner"])
    args.func(args)
    public, secret = zmq.auth.load_certificate(str(tmp_path / "refiner.key_secret"))
    assert len(public) == 40 and len(secret) == 40
    assert zmq.auth.load_certificate(str(tmp_path / "capture.key"))[1] is None
    assert (tmp_path / "capture.key_secret").stat().st_mode & 0o077 == 0
    assert "capture: public" in capsys.readouterr().out


def test_run_prints_each_published_defect_with_geometry(tmp_path):
    settings = service_settings(tmp_path)
    path = tmp_path / "s.yaml"
    path.write_text(settings.model_dump_json())  # JSON is YAML
    lines = []
    args = parser().parse_args(["run", "--settings", str(path), "--frames", "12"])
    summary = cmd_run(args, build_screener_double, build_refiner_double, out=lines.append)
    assert summary["frames"] == 12 and summary["unacked"] == 0
    assert summary["results"] == summary["flagged"] > 0
    defect_lines = [line for line in lines if " defect 1/" in line]
    assert len(defect_lines) == summary["flagged"]
    assert all("area" in line and "orientation" in line and "centroid" in line for line in defect_lines)
    assert any(re.fullmatch(r"view: http://127\.0\.0\.1:\d+/ \(live results in a browser\)", line) for line in lines)
