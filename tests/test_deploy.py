"""The deployed chain (deploy.Inspector), its calibration at fit time and `inspectd eval --deployed`."""

import json
import logging

import numpy as np
import pytest

from conftest import texture_crops
from inspectd.bundle import fit_bundle, load_calibration
from inspectd.bundle.calibration import CalibrationConfig
from inspectd.cli import main
from inspectd.deploy import ChainSettings, Inspector, coarse_threshold, judge
from inspectd.errors import ConfigError
from inspectd.geometry import iou
from inspectd.refine import F2PADSettings
from inspectd.methods import bundle as B
from inspectd.methods import load_method
from test_mvtec import make_mvtec

SIZE = 96
SMALL_CALIBRATION = dict(synthetic_images=4, lam=(0.03,), tau=(0.05, 0.08), normal_probes=2)


def subtle_stain(image: np.ndarray, cy: int, cx: int, radius: int, shift: float = 0.35):
    """A low-contrast darkening with the texture showing through: a stain, not a paint blob."""
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    mask = (yy - cy) ** 2 + ((xx - cx) / 1.6) ** 2 <= radius**2
    out = image.copy()
    out[mask] = np.clip(out[mask] - shift, 0, 1)
    return out, mask


def subtle_bend(image: np.ndarray, shift: float = 0.35):
    """An L-shaped low-contrast darkening (a bent crack's shadow): thin arms that a coarse map blurs."""
    mask = np.zeros(image.shape[:2], bool)
    mask[30:70, 30:40] = True
    mask[60:70, 30:70] = True
    out = image.copy()
    out[mask] = np.clip(out[mask] - shift, 0, 1)
    return out, mask


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "brick-patchcore"
    train = texture_crops(n=20, size=SIZE, seed=5)
    fit_bundle("patchcore", "<brick>", out, {"image_size": SIZE}, holdout=0.25, seed=0, progress=False,
               train=train, calibration=CalibrationConfig(**SMALL_CALIBRATION))
    return out


def test_fit_writes_the_chain_calibration(bundle):
    calibration = load_calibration(bundle)
    chain = calibration["chain"]
    assert 0 < chain["screen_threshold"] <= chain["pixel_threshold"]  # screening for recall, below the coarse mask
    assert chain["min_defect_area_px"] >= 4
    assert chain["f2pad"]["lam"] == 0.03 and chain["f2pad"]["tau"] in (0.05, 0.08)
    method = load_method(bundle)
    assert chain["f2pad"]["close_px"] == max(method.backbone.strides) // 4  # by rule
    assert chain["f2pad"]["fill_holes"] is True and chain["f2pad"]["dilate_px"] == method.feature_stride
    assert chain["f2pad"]["inpaint"] in ("telea", "nearest")
    # the synthetic set is made visible to this detector: at least half flagged, or the most contrast
    synthetic = calibration["evidence"]["synthetic_set"]
    assert synthetic["flagged_share"] >= 0.5 or synthetic["contrast_range"][1] >= 0.8
    # the coarse mask's peak ratio: every ratio of the grid scored; the deployed one is the smallest
    # within the tolerance of the best
    ratios = {float(k): v for k, v in calibration["evidence"]["peak_ratio_coarse_mean_iou"].items()}
    c = CalibrationConfig()
    assert set(ratios) == set(c.peak_ratio) and chain["f2pad"]["peak_ratio"] in ratios
    within = [r for r, v in ratios.items() if v >= max(ratios.values()) - 100 * c.peak_ratio_tolerance - 0.01]
    assert chain["f2pad"]["peak_ratio"] == min(within)
    # the grid that chose the settings is kept as evidence, one entry per combination tried
    grid = calibration["evidence"]["f2pad_grid_mean_iou"]
    assert len(grid) == 2
    # every candidate was scored with the minimum defect area its own normal probes gave; the chosen
    # one is deployed with its own
    chosen = [k for k in grid if f"tau={chain['f2pad']['tau']} " in k]
    assert len(chosen) == 1 and grid[chosen[0]] == max(grid.values())
    # with how far it leads the other candidate
    pick = calibration["evidence"]["f2pad_pick"]
    (other,) = set(grid) - {chosen[0]}
    assert pick["chosen"] == chosen[0] and pick["runner_up"] == other
    assert abs(pick["margin"] - (grid[chosen[0]] - grid[other])) <= 0.02 and pick["standard_error"] >= 0
    assert pick["near_tie"] == (pick["margin"] < 2 * pick["standard_error"])
    assert json.loads((bundle / "fit.json").read_text())["f2pad_pick"] == pick  # in the fit's summary too
    # then the fewest iterations within a point of the uncapped solve on all calibration defects and
    # on their larger half (re-solved, so the deployed minimum area is the capped solve's own);
    # every smaller cap tried lost more than that on one of the two
    iters = {int(k): v for k, v in calibration["evidence"]["max_iters_mean_iou"].items()}
    large_loss = {int(k): v for k, v in calibration["evidence"]["max_iters_large_half_loss"].items()}
    uncapped, deployed = F2PADSettings().max_iters, chain["f2pad"]["max_iters"]
    assert iters[uncapped] == grid[chosen[0]]
    assert set(iters) == {uncapped} | {cap for cap in CalibrationConfig().max_iters if cap <= deployed}  # tried in order, up to the pick
    assert set(large_loss) == set(iters) - {uncapped}
    rounding = 0.01  # the evidence keeps two decimals
    if deployed != uncapped:
        assert iters[deployed] >= iters[uncapped] - 1 - rounding and large_loss[deployed] <= 1 + rounding
    assert all(iters[cap] < iters[uncapped] - 1 + rounding or large_loss[cap] > 1 - rounding
               for cap in iters if cap < deployed)
    if deployed == uncapped:
        assert chosen[0].endswith(f"min_area={chain['min_defect_area_px']}")
    config = json.loads((bundle / "config.json").read_text())
    assert config["thresholds"] == {"pixel": chain["pixel_threshold"], "image": chain["screen_threshold"]}


def test_calibrated_chain_outlines_a_subtle_defect_better_than_the_coarse_mask(bundle):
    inspector = Inspector.from_bundle(bundle, device="cpu")
    part = texture_crops(n=1, size=SIZE, seed=77)[0]
    defective, truth = subtle_bend(part)
    inspection = inspector.inspect(defective)
    assert inspection.flagged and inspection.decision == "defect"
    assert iou(inspection.mask, truth) > iou(inspection.coarse_mask, truth) + 0.05
    assert iou(inspection.mask, truth) > 0.5


def test_unflagged_frame_is_ok_without_refinement(bundle):
    inspector = Inspector.from_bundle(bundle, device="cpu", screen_threshold=1e9)
    inspection = inspector.inspect(texture_crops(n=1, size=SIZE, seed=78)[0])
    assert not inspection.flagged and inspection.decision == "ok" and inspection.refine_seconds is None
    assert not inspection.mask.any() and not inspection.coarse_mask.any()


def test_the_daemon_s_refiner_gives_the_chain_s_result(bundle, monkeypatch):
    from inspectd.service.models import build_refiner
    from inspectd.service.settings import load_settings

    monkeypatch.setenv("INSPECTD_CAPTURE__SIZE", str(SIZE))
    monkeypatch.setenv("INSPECTD_REFINER__MODEL", str(bundle))
    monkeypatch.setenv("INSPECTD_REFINER__DEVICE", "cpu")
    settings = load_settings()
    refinement = build_refiner(settings)
    part = texture_crops(n=1, size=SIZE, seed=79)[0]
    defective, _ = subtle_stain(part, 30, 60, 8)
    refined = refinement.refine(defective, {"frame_id": "x", "score": 1.0})
    inspection = Inspector.from_bundle(bundle, device="cpu").inspect(defective, settings.px_per_mm)
    assert refined.decision == inspection.decision and refined.defects == inspection.defects
    assert np.array_equal(refined.mask.full(), inspection.mask)
    assert refinement.min_area_px == load_calibration(bundle)["chain"]["min_defect_area_px"]


def test_line_settings_override_the_bundle_s(bundle):
    inspector = Inspector.from_bundle(bundle, device="cpu", screen_threshold=3.5, min_defect_area_px=40,
                                      f2pad={"tau": 0.2})
    assert inspector.settings.screen_threshold == 3.5 and inspector.settings.min_defect_area_px == 40
    assert inspector.settings.f2pad.tau == 0.2
    assert inspector.settings.f2pad.lam == load_calibration(bundle)["chain"]["f2pad"]["lam"]


def test_bundle_without_calibration_loads_with_its_old_thresholds(bundle, tmp_path, caplog):
    old = tmp_path / "old"
    manifest = B.verify_bundle(bundle)
    files = {n: (bundle / n).read_bytes() for n in manifest["files"] if n != "calibration.json"}
    B.write_bundle(old, files, {"method": "patchcore", "model_id": "old"})
    with caplog.at_level(logging.WARNING):
        inspector = Inspector.from_bundle(old, device="cpu")
    assert "no calibration.json" in caplog.text
    thresholds = json.loads((old / "config.json").read_text())["thresholds"]
    assert inspector.settings.pixel_threshold == thresholds["pixel"]
    assert inspector.settings.screen_threshold == thresholds["image"]
    assert inspector.settings.f2pad.lam == 0.3  # the library default, as before calibration existed


def test_malformed_calibration_is_a_bundle_error():
    from inspectd.errors import BundleError

    with pytest.raises(BundleError, match="malformed chain settings"):
        ChainSettings.from_calibration({"version": 2, "chain": {"screen_threshold": 1.0}}, {})
    with pytest.raises(BundleError, match="malformed"):
        ChainSettings.from_calibration({"version": 2, "chain": {"screen_threshold": "x", "pixel_threshold": 1,
                                                                "min_defect_area_px": 4}}, {})


def test_coarse_rule_and_judge():
    chain = ChainSettings(screen_threshold=2.0, pixel_threshold=5.0)
    assert coarse_threshold(chain, peak=7.0) == 5.0
    assert coarse_threshold(chain, peak=4.0) == 2.0  # flagged below the pixel threshold: start lower
    mask = np.zeros((20, 20), bool)
    mask[2:4, 2:4] = True  # 4 px
    mask[10:16, 10:16] = True  # 36 px
    decision, defects, kept = judge(mask, None, min_area_px=10)
    assert decision == "defect" and [d["area_px"] for d in defects] == [36] and kept.sum() == 36
    assert judge(mask, None, min_area_px=50)[0] == "ok"
    with pytest.raises(ConfigError, match="pixel_threshold"):
        ChainSettings(screen_threshold=1.0, pixel_threshold=float("nan"))


def test_fit_never_reads_test_images(tmp_path, capsys):
    data = make_mvtec(tmp_path / "set", n_train=10, size=64)
    for path in (data / "test").rglob("*.png"):
        path.write_bytes(b"not an image")  # any read of test/ would fail the fit
    out = tmp_path / "bundle"
    assert main(["fit", "--method", "padim", "--data", str(data), "--out", str(out), "--set", "image_size=64",
                 "--set", "n_features=40", "--holdout", "0.3"]) == 0
    assert load_calibration(out)["defects_used"] == []


def test_fit_with_defects_then_deployed_eval_leaves_them_out(tmp_path, capsys):
    data = make_mvtec(tmp_path / "set", n_train=10, size=64)
    out = tmp_path / "bundle"
    assert main(["fit", "--method", "padim", "--data", str(data), "--out", str(out), "--set", "image_size=64",
                 "--set", "n_features=40", "--holdout", "0.3", "--defects", str(data), "--defects-n", "1"]) == 0
    calibration = load_calibration(out)
    assert len(calibration["defects_used"]) == 1 and calibration["evidence"]["real_defects"] == 1
    capsys.readouterr()
    result_file = tmp_path / "deployed.json"
    spelled_otherwise = f"{data}/../{data.name}"  # the same folder, another path: still left out
    assert main(["eval", "--deployed", "--model", str(out), "--data", spelled_otherwise, "--out", str(result_file),
                 "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "Deployed chain" in table and "scratch" in table
    result = json.loads(result_file.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    for key in ("frame_recall", "good_flagged_rate", "good_defect_rate", "pixel_f1", "mean_iou", "coarse_pixel_f1",
                "coarse_mean_iou", "refine_seconds_median", "refine_seconds_p90", "per_type"):
        assert key in result
    assert result["n"] == 2 and result["defects_left_out"] == 1  # 1 good + 1 of the 2 defects
    assert result["per_type"]["scratch"]["n_defective"] == 1
    # one record per scored image: which frames were missed and how each mask compares
    records = {r["path"]: r for r in result["images"]}
    assert len(records) == 2 and {r["type"] for r in records.values()} == {"good", "scratch"}
    good = next(r for r in records.values() if r["type"] == "good")
    assert good["iou"] is None and good["true_area_px"] == 0
    scratch = next(r for r in records.values() if r["type"] == "scratch")
    assert scratch["true_area_px"] > 0 and 0 <= scratch["coarse_iou"] <= 100
    assert (scratch["refine_seconds"] is None) == (not scratch["flagged"])
    assert 0.0 <= result["pixel_f1"] <= 1.0 and "not deployable" in result["oracle_coarse"]["note"]
    probe = result["speed_probe_ms"]  # the machine's speed beside the seconds, before and after the run
    assert 0 < probe["before"] < 10_000 and 0 < probe["after"] < 10_000 and "machine speed probe" in table
    overlays = list((tmp_path / "deployed").glob("*.png"))
    assert overlays, "overlay PNGs are written for a person to look at"


def test_openmp_threads_wait_passively_unless_the_environment_says_otherwise():
    """inspectd sets OMP_WAIT_POLICY before torch starts OpenMP (see inspectd/__init__.py)."""
    import os
    import subprocess
    import sys

    probe = "import inspectd, torch, os; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    run = lambda env: subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,  # noqa: E731
                                     check=True).stdout.strip()
    assert run(env) == "PASSIVE"
    assert run({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"


def test_the_resolution_ceiling_is_what_a_perfect_low_resolution_mask_scores():
    """eval --deployed reports how much resolution alone can cost an upsampled mask: a blob large
    next to the bundle's pixel loses little, a 3-pixel line drawn at 1/8 of the size most of it."""
    import cv2

    from inspectd.eval.deployed import resolution_ceiling

    blob, line = np.zeros((512, 512), np.uint8), np.zeros((512, 512), np.uint8)
    cv2.circle(blob, (200, 260), 120, 1, -1)
    cv2.line(line, (40, 60), (470, 300), 1, 3)
    large = resolution_ceiling(np.stack([blob, np.zeros_like(blob)]), 64)  # a good image does not count
    thin = resolution_ceiling(line[None], 64)
    assert 95 < large["mean_iou"] < 100 and large["area_within_10pct"] == 1.0
    assert thin["mean_iou"] < 50
    assert resolution_ceiling(blob[None], 512)["mean_iou"] == 100.0  # at its own size nothing is lost
    assert resolution_ceiling(np.zeros((1, 64, 64), bool), 32) == {}  # no defect: nothing to bound


def test_the_line_s_screen_threshold_also_flags_tiled_frames():
    chain = ChainSettings(screen_threshold=1.0, pixel_threshold=2.0, tiled_screen_threshold=3.0)
    assert chain.frame_threshold() == 1.0 and chain.frame_threshold(tiled=True) == 3.0
    line = chain.override(screen_threshold=5.0)
    assert line.frame_threshold() == line.frame_threshold(tiled=True) == 5.0
    assert chain.override().frame_threshold(tiled=True) == 3.0
    old = ChainSettings.from_calibration({"chain": {"screen_threshold": 1, "pixel_threshold": 2,
                                                    "min_defect_area_px": 4}}, {})
    assert old.frame_threshold(tiled=True) == 1.0  # a bundle from before tiled screening
