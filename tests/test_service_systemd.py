"""systemd units: `systemd-analyze verify` is clean and `security --offline=true` rates <= 2.5.

verify checks that ExecStart's binary exists and is executable, so the test copies each unit to a
temporary folder with ExecStart pointing at this checkout's Python (a real executable) instead of
the installed /opt/inspectd/.venv/bin/inspectd; everything else in the unit is checked as shipped.
Needs systemd-analyze (Debian package `systemd`; scripts/ci-system-deps.sh installs it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[1] / "systemd"
INSTALLED_BINARY = "/opt/inspectd/.venv/bin/inspectd"
MAX_EXPOSURE = 2.5
DAEMONS = ["inspectd-capture@.service", "inspectd-refiner@.service"]  # hold a model: reload, state
SUBSCRIBERS = ["inspectd-view@.service", "inspectd-bridge-mqtt@.service"]  # follow the results

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze not found: run scripts/ci-system-deps.sh (Debian package systemd)")


@pytest.fixture(scope="module")
def unit_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("units")
    for unit in UNITS.glob("*.service"):
        text = unit.read_text()
        assert INSTALLED_BINARY in text, f"{unit.name}: ExecStart should run {INSTALLED_BINARY}"
        (out / unit.name).write_text(text.replace(INSTALLED_BINARY, sys.executable))
    return out


@pytest.mark.parametrize("template", DAEMONS + SUBSCRIBERS)
def test_unit_verifies_without_warnings(unit_dir, template):
    instance = template.replace("@.", "@line1.")
    run = subprocess.run(["systemd-analyze", "verify", instance], cwd=unit_dir, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0 and not (run.stdout + run.stderr).strip(), run.stdout + run.stderr


@pytest.mark.parametrize("template", DAEMONS + SUBSCRIBERS)
def test_unit_exposure_is_low(unit_dir, template):
    instance = template.replace("@.", "@line1.")
    run = subprocess.run(["systemd-analyze", "security", "--offline=true", instance], cwd=unit_dir,
                         capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", run.stdout)
    assert match, run.stdout + run.stderr
    print(f"{instance}: exposure {match.group(1)}")
    assert float(match.group(1)) <= MAX_EXPOSURE, run.stdout


def test_every_unit_is_tested():
    assert sorted(p.name for p in UNITS.glob("*.service")) == sorted(DAEMONS + SUBSCRIBERS)


def test_units_are_notify_with_watchdog_reload_and_state_directory():
    for unit in (UNITS / name for name in DAEMONS):
        text = unit.read_text()
        for line in ("Type=notify", "Restart=on-failure", "DynamicUser=yes", "ProtectSystem=strict",
                     "NoNewPrivileges=yes", "ExecReload=/bin/kill -HUP $MAINPID", "StateDirectory=inspectd/%i",
                     "--settings /etc/inspectd/%i.yaml"):
            assert line in text, f"{unit.name} lacks {line}"
        assert re.search(r"^WatchdogSec=\d+", text, re.M), unit.name
        for setting in ("StartLimitIntervalSec", "StartLimitBurst", "MemoryMax"):  # a crash loop ends; memory is capped
            assert re.search(rf"^{setting}=\d+[KMG]?$", text, re.M), f"{unit.name} lacks {setting}"


def test_subscriber_units_are_notify_with_watchdog_and_hardened():
    for unit in (UNITS / name for name in SUBSCRIBERS):
        text = unit.read_text()
        for line in ("Type=notify", "Restart=on-failure", "DynamicUser=yes", "ProtectSystem=strict", "PrivateDevices=yes",
                     "NoNewPrivileges=yes", "IPAddressDeny=any", "--settings /etc/inspectd/%i.yaml"):
            assert line in text, f"{unit.name} lacks {line}"
        assert re.search(r"^WatchdogSec=\d+", text, re.M), unit.name
