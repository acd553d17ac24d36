"""The `inspectd` command end to end on a generated MVTec-layout folder."""

import json

import numpy as np
import pytest

from inspectd.cli import main
from test_mvtec import make_mvtec


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_mvtec(tmp_path_factory.mktemp("data") / "set", n_train=12, size=64)


def test_fit_then_eval(dataset, tmp_path, capsys):
    bundle = tmp_path / "models" / "tiny"
    assert main(["fit", "--method", "padim", "--data", str(dataset), "--out", str(bundle),
                 "--set", "image_size=64", "--set", "n_features=40", "--holdout", "0.25"]) == 0
    fit_out = json.loads(capsys.readouterr().out)
    assert fit_out["n_fit"] == 9 and fit_out["n_holdout"] == 3
    config = json.loads((bundle / "config.json").read_text())
    assert config["thresholds"]["pixel"] > 0 and config["thresholds"]["image"] > 0
    assert {"manifest.json", "state.pt", "prior.npz", "fit.json"} <= {p.name for p in bundle.iterdir()}

    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(bundle), "--data", str(dataset), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "scratch" in table and "overall" in table
    result = json.loads(out.read_text())
    assert 0.0 <= result["overall"]["pixel_auroc"] <= 1.0 and result["overall"]["pixel_auroc"] > 0.8


def test_settings_file_and_overrides(tmp_path):
    from inspectd.cli import load_settings

    path = tmp_path / "s.yaml"
    path.write_text("image_size: 128\nbackbone:\n  layers: [1, 2]\n  name: tf_efficientnet_lite0\n")
    merged = load_settings(str(path), ["backbone.layers=[2]", "coreset_ratio=0.05"])
    assert merged == {"image_size": 128, "coreset_ratio": 0.05,
                      "backbone": {"layers": [2], "name": "tf_efficientnet_lite0"}}


def test_synth_command(dataset, tmp_path, capsys):
    out = tmp_path / "cp"
    assert main(["synth", "--normal", str(dataset), "--masks", str(dataset / "ground_truth"),
                 "--out", str(out), "-n", "4", "--size", "64"]) == 0
    assert len(list((out / "test" / "cutpaste").iterdir())) == 4
    assert len(list((out / "ground_truth" / "cutpaste").iterdir())) == 4


@pytest.mark.parametrize("argv, words", [
    (["fit", "--method", "padim", "--data", "{missing}", "--out", "{out}"], "train/good"),
    (["fit", "--method", "nope", "--data", "{data}", "--out", "{out}"], "unknown method 'nope'"),
    (["fit", "--method", "padim", "--data", "{data}", "--out", "{out}", "--set", "backbone.name=bogus_net"], "unknown backbone"),
    (["fit", "--method", "padim", "--data", "{data}", "--out", "{out}", "--set", "backbone.layers=[7]"], "unknown layer"),
    (["eval", "--model", "{missing}", "--data", "{data}"], "no model bundle"),
    (["fit", "--method", "padim", "--data", "{data}", "--out", "{out}", "--set", "oops"], "expected key=value"),
])
def test_bad_input_is_one_clear_line_and_nothing_written(dataset, tmp_path, capsys, argv, words):
    fill = {"missing": str(tmp_path / "missing"), "out": str(tmp_path / "bundle"), "data": str(dataset)}
    code = main([a.format(**fill) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0] and err[0].startswith("inspectd ")
    assert not (tmp_path / "bundle").exists()


def test_corrupt_training_image_is_named(dataset, tmp_path, capsys):
    import shutil

    data = tmp_path / "broken"
    shutil.copytree(dataset, data)
    (data / "train" / "good" / "zzz.png").write_bytes(b"\x89PNG\r\n garbage")
    assert main(["fit", "--method", "padim", "--data", str(data), "--out", str(tmp_path / "b"), "--set", "image_size=64"]) == 2
    assert "zzz.png" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_malloc_tuning_applies_on_glibc():
    import platform

    from inspectd.runtime import keep_freed_memory

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt tuning is glibc-only")
    assert keep_freed_memory() is True
