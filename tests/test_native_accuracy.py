"""bench native-accuracy: generated camera frames with small stains, the modes compared."""

import json

import cv2
import numpy as np
import pytest

from inspectd.cli import main
from inspectd.data.camera import camera_frame, stain_mask, write_camera_set
from inspectd.errors import InspectdError


def test_the_camera_set_is_an_mvtec_layout_of_stains_inside_the_frame(tmp_path):
    summary = write_camera_set(tmp_path, (300, 400), n_train=3, n_defective=4, n_good=2, lengths_px=(20, 60), seed=1)
    assert len(list((tmp_path / "train" / "good").glob("*.png"))) == 3
    assert len(list((tmp_path / "test" / "good").glob("*.png"))) == 2
    images = sorted((tmp_path / "test" / "stain").glob("*.png"))
    assert len(images) == 4 and all(20 <= length <= 60 for length in summary["stain_lengths_px"])
    for image_path in images:
        image = cv2.imread(str(image_path))
        mask = cv2.imread(str(tmp_path / "ground_truth" / "stain" / f"{image_path.stem}_mask.png"), 0) > 0
        assert image.shape == (300, 400, 3) and mask.shape == (300, 400)
        assert 0 < mask.sum() < 0.05 * mask.size
        ys, xs = mask.nonzero()  # wholly inside, off the border
        assert ys.min() > 0 and xs.min() > 0 and ys.max() < 299 and xs.max() < 399
    train = [cv2.imread(str(p)) for p in sorted((tmp_path / "train" / "good").glob("*.png"))]
    assert not np.array_equal(train[0], train[1])  # every frame its own offset and noise


def test_a_stain_is_as_long_as_asked():
    rng = np.random.default_rng(0)
    for length in (30, 120):
        mask = stain_mask((1000, 1000), length, rng)
        ys, xs = mask.nonzero()
        extent = np.hypot(ys.max() - ys.min(), xs.max() - xs.min())
        assert 0.8 * length <= extent <= 2.3 * length  # the ellipse, plus a tail of up to one length


def test_the_camera_set_refuses_stains_that_do_not_fit(tmp_path):
    with pytest.raises(InspectdError, match="stain lengths"):
        write_camera_set(tmp_path, (200, 200), 2, 1, 0, (10, 120))
    assert camera_frame((64, 80), 3).shape == (64, 80, 3)


def test_bench_native_accuracy_compares_the_modes_on_the_same_frames(tmp_path, capsys):
    out = tmp_path / "na"
    assert main(["bench", "native-accuracy", "--out", str(out), "--frame", "480x360", "--size", "96", "--tile", "96",
                 "--tiles-per-image", "4", "--train", "8", "--defects", "2", "--good", "1", "--min-length", "50",
                 "--max-length", "80", "--modes", "ab", "--overlays", "0"]) == 0
    printed = capsys.readouterr().out
    assert "command: inspectd" in printed and "machine:" in printed and "resolution ceiling" in printed
    report = json.loads((out / "native-accuracy.json").read_text())
    assert set(report["modes"]) == {"a", "b"} and report["modes"]["a"]["iou_gain_over_a"] == 0
    b = report["modes"]["b"]
    assert b["iou_gain_over_a"] == pytest.approx(b["mean_iou"] - report["modes"]["a"]["mean_iou"])
    assert report["resolution_ceiling"]["size"] == 96 and 0 < report["resolution_ceiling"]["mean_iou"] < 100
    assert json.loads((out / "deployed-b.json").read_text())["tile"] == 96  # (b) refined native crops
    assert report["camera_set"]["size_hw"] == [360, 480]


def test_bench_native_accuracy_refuses_a_folder_made_with_other_options(tmp_path):
    write_camera_set(tmp_path / "data", (300, 400), 3, 2, 1, (20, 60), seed=0)
    assert main(["bench", "native-accuracy", "--out", str(tmp_path), "--frame", "640x480", "--train", "3",
                 "--defects", "2", "--good", "1"]) != 0
