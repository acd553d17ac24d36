"""The real screener (ONNX Runtime) and refiner (F2PAD) behind the daemon's loops."""

import numpy as np
import pytest

from conftest import DEMO_SIZE, paste_square, texture_crops
from inspectd.errors import BundleError
from inspectd.service.models import build_refiner, build_screener
from inspectd.service.settings import load_settings


@pytest.fixture(scope="module")
def demo_settings(demo_bundle, monkeypatch_module):
    bundle = demo_bundle  # shared with tests/test_drift.py (conftest.py)
    monkeypatch_module.setenv("INSPECTD_CAPTURE__SIZE", str(DEMO_SIZE))
    monkeypatch_module.setenv("INSPECTD_SCREENING__MODEL", str(bundle))
    monkeypatch_module.setenv("INSPECTD_REFINER__MODEL", str(bundle))
    monkeypatch_module.setenv("INSPECTD_REFINER__DEVICE", "cpu")
    return load_settings()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_demo_bundle_is_fitted_and_screens_with_onnx(demo_settings):
    screening = build_screener(demo_settings)  # fits + exports the demo model on first use
    assert screening.threshold > 0
    part = texture_crops(n=1, size=96, seed=42)[0]
    defective, _ = paste_square(part, 20, 20, 14)
    normal_map, normal_score = screening.screen(part)
    defect_map, defect_score = screening.screen(defective)
    assert normal_map.shape == (96, 96) and defect_score > normal_score


def test_refiner_returns_a_mask_on_the_defect(demo_settings):
    build_screener(demo_settings)
    refinement = build_refiner(demo_settings)
    assert refinement.image_size is None  # any frame size: the chain downscales (or tiles) it itself
    part = texture_crops(n=1, size=96, seed=43)[0]
    defective, truth = paste_square(part, 18, 22, 14)
    refined = refinement.refine(defective, {"frame_id": "t"})
    mask = refined.mask.full()
    assert (refined.mask.height, refined.mask.width) == (96, 96) and refined.stats["device"] == "cpu"
    assert refined.decision == "defect" and (mask & truth).sum() / max((mask | truth).sum(), 1) > 0.5


def test_refiner_uses_the_line_s_f2pad_settings(demo_settings):
    build_screener(demo_settings)
    f2pad = {"max_iters": 2, "min_iters": 1, "inpaint": "nearest"}  # nearest: the bundle's reference images
    settings = demo_settings.model_copy(update={"refiner": demo_settings.refiner.model_copy(update={"f2pad": f2pad})})
    part = texture_crops(n=1, size=96, seed=43)[0]
    defective, _ = paste_square(part, 18, 22, 14)
    stats = build_refiner(settings).refine(defective, {"frame_id": "t", "score": None}).stats  # score unknown
    assert 1 <= stats["iterations"] <= 2


def test_missing_bundle_outside_the_demo_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("INSPECTD_CAPTURE__SOURCE", "folder")
    monkeypatch.setenv("INSPECTD_CAPTURE__URI", str(tmp_path))
    monkeypatch.setenv("INSPECTD_SCREENING__MODEL", str(tmp_path / "nope"))
    settings = load_settings()
    with pytest.raises(BundleError, match="nope: screening model bundle not found"):
        build_screener(settings)


@pytest.mark.parametrize("damaged, readers", [("screen.onnx", {"screening"}), ("state.pt", {"refiner"}),
                                               ("calibration.json", {"screening", "refiner"}),
                                               ("config.json", {"screening", "refiner"})])
def test_a_bundle_with_a_damaged_file_is_refused_in_one_line(demo_settings, tmp_path, damaged, readers):
    """The manifest is rewritten to match, so only loading the file itself can find the damage;
    each builder that reads the file refuses the bundle with one line naming it."""
    import shutil

    from inspectd.methods.bundle import add_files

    build_screener(demo_settings)
    bundle = tmp_path / "damaged"
    shutil.copytree(demo_settings.screening.model, bundle)
    if not (bundle / damaged).is_file():
        pytest.skip(f"this bundle has no {damaged}")
    add_files(bundle, {damaged: b"\x08\x01garbage, not the file it claims to be"})
    settings = demo_settings.model_copy(update={
        "screening": demo_settings.screening.model_copy(update={"model": bundle}),
        "refiner": demo_settings.refiner.model_copy(update={"model": bundle})})
    for role, build in (("screening", build_screener), ("refiner", build_refiner)):
        if role not in readers:
            build(settings)  # e.g. screening never reads the torch state: the file's damage is not its concern
            continue
        with pytest.raises(BundleError) as refused:
            build(settings)
        assert str(bundle) in str(refused.value) and "\n" not in str(refused.value), refused.value
