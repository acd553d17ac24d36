"""Settings: YAML file + INSPECTD_* environment, one clear ConfigError naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from inspectd.errors import ConfigError
from inspectd.service.settings import CONFIG_DIR, DEFAULT_SETTINGS_FILE, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("INSPECTD_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("name", ["demo.yaml", "camera.yaml", "refiner.yaml"])
def test_example_files_load(name):
    settings = load_settings(CONFIG_DIR / name)
    assert settings.transport.frames_bind.startswith("tcp://127.0.0.1:")


def test_default_is_the_demo_line_on_loopback():
    settings = load_settings()
    assert DEFAULT_SETTINGS_FILE.name == "demo.yaml"
    assert settings.capture.source == "demo" and settings.metrics.host == "127.0.0.1"
    assert not settings.transport.curve.enabled


def test_environment_overrides_nested_fields(monkeypatch):
    monkeypatch.setenv("INSPECTD_SPOOL__MAX_FRAMES", "7")
    monkeypatch.setenv("INSPECTD_CAPTURE__DEMO__TEXTURE", "gravel")
    monkeypatch.setenv("INSPECTD_TRANSPORT__RESULTS_CONNECT", '["tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002"]')
    settings = load_settings(CONFIG_DIR / "demo.yaml")
    assert settings.spool.max_frames == 7 and settings.capture.demo.texture == "gravel"
    assert settings.transport.results_connect == ["tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002"]
    assert settings.spool.ack_timeout_s == 30  # the rest still comes from the file


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, field", [
    ("spool:\n  max_frames: -3\n", "spool.max_frames"),
    ("spool:\n  full_policy: sometimes\n", "spool.full_policy"),
    ("capture:\n  sauce: demo\n", "capture.sauce"),  # typo: an error, not silently ignored
    ("camera_id: 'a/b'\n", "camera_id"),
    ("transport:\n  frames_bind: 127.0.0.1:5555\n", "transport.frames_bind"),
    ("capture:\n  source: folder\n", "capture"),
    ("transport:\n  curve:\n    secret_key: k.key_secret\n", "transport.curve"),
    ("refiner:\n  f2pad:\n    lambda: 0.1\n", "refiner.f2pad"),  # unknown F2PAD key
    ("refiner:\n  f2pad:\n    close_px: -2\n", "refiner.f2pad"),
])
def test_bad_values_name_the_file_and_the_field(tmp_path, text, field):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert str(path) in message and f"setting {field}" in message and "\n" not in message


def test_bad_environment_value_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("INSPECTD_TRANSPORT__HWM", "lots")
    with pytest.raises(ConfigError, match="transport.hwm.*INSPECTD_TRANSPORT__HWM"):
        load_settings(write(tmp_path, "camera_id: c1\n"))


@pytest.mark.parametrize("text, expected", [("[1, 2]\n", "expected a mapping"), ("a: [\n", "not valid YAML")])
def test_unreadable_files(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected):
        load_settings(write(tmp_path, text))
    with pytest.raises(ConfigError, match="cannot read settings file"):
        load_settings(tmp_path / "missing.yaml")


def test_refiner_f2pad_settings_reach_the_settings(tmp_path):
    settings = load_settings(write(tmp_path, "refiner:\n  f2pad:\n    lam: 0.01\n    fill_holes: true\n"))
    assert settings.refiner.f2pad == {"lam": 0.01, "fill_holes": True}
