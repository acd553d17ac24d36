"""Realistic synthetic defects (inspectd.data.realistic) on small texture crops; CPU, a few seconds."""

import cv2
import numpy as np
import pytest

from inspectd.data.realistic import FLOOR_CAP, KINDS, RealisticConfig, RealisticDefects
from inspectd.data.synth import DefectSynthesizer, SynthConfig
from inspectd.data.textures import texture_parts
from inspectd.errors import ConfigError, InspectdError

SIZE = 96
CONFIG = RealisticConfig(size=SIZE)


@pytest.fixture(scope="module")
def parts():
    return {name: texture_parts(name, 4, SIZE, seed=5) for name in ("brick", "gravel", "grass")}


def change(out, normal):
    return np.linalg.norm(out - normal, axis=2)


def samples(parts, kind, per_texture=3, seed=0):
    """(normal, defective, mask, info) for each texture, with and without other normal images."""
    synth = RealisticDefects(CONFIG, seed=seed)
    for images in parts.values():
        for i in range(per_texture):
            others = [images[j] for j in range(len(images)) if j != i] if i % 2 else None
            out, mask = synth(images[i], others, kind)
            yield images[i], out, mask, dict(synth.last_info)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_makes_a_subtle_defect_in_range(parts, kind):
    lo, hi = CONFIG.area_range
    for normal, out, mask, info in samples(parts, kind):
        assert out.dtype == np.float32 and out.shape == (SIZE, SIZE, 3)
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert mask.dtype == bool and mask.shape == (SIZE, SIZE) and mask.any()
        assert lo <= mask.mean() <= hi
        assert info["kind"] == kind and not info["fallback"]
        diff = change(out, normal)
        # the documented bound: outside the mask, less than the floor (itself at most FLOOR_CAP)
        assert diff[~mask].max() < info["floor"] <= FLOOR_CAP
        # inside, every pixel really changed, and on average only subtly
        assert diff[mask].min() >= info["floor"]
        assert 0.03 < diff[mask].mean() < 0.45
        assert 0.8 * CONFIG.contrast_range[0] <= diff[mask].mean() <= 1.2 * CONFIG.contrast_range[1]


@pytest.mark.parametrize("kind", ["stain", "scratch"])
def test_drawn_contrast_is_the_mean_change_over_the_mask(parts, kind):
    for normal, out, mask, info in samples(parts, kind, per_texture=2):
        assert change(out, normal)[mask].mean() == pytest.approx(info["contrast"], rel=0.1)


def test_scratches_are_thin(parts):
    for _, _, mask, _ in samples(parts, "scratch", per_texture=4, seed=1):
        depth = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)[mask]
        # a 4 px line is at most 3 px deep; only forks and tight bends go deeper, and not by much
        assert depth.max() <= 4.0 and np.quantile(depth, 0.95) <= 3.0


def test_same_seed_same_defects_other_seed_different(parts):
    images = parts["brick"]

    def run(seed):
        synth = RealisticDefects(CONFIG, seed=seed)
        return [synth(images[i % 4], [images[(i + 1) % 4]]) for i in range(6)]

    first, again, other = run(3), run(3), run(4)
    for (a_img, a_mask), (b_img, b_mask) in zip(first, again):
        assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert any(not np.array_equal(a, b) for (a, _), (b, _) in zip(first, other))


def test_random_kinds_come_from_the_config(parts):
    synth = RealisticDefects(RealisticConfig(size=SIZE, kinds=("scratch", "perlin")), seed=0)
    made = set()
    for i in range(8):
        synth(parts["gravel"][i % 4])
        made.add(synth.last_info["kind"])
    assert made == {"scratch", "perlin"}


def test_inputs_are_left_alone_and_float64_is_accepted(parts):
    normal = parts["grass"][0].astype(np.float64)
    before = normal.copy()
    out, mask = RealisticDefects(CONFIG, seed=0)(normal, kind="patch")
    assert np.array_equal(normal, before) and out.dtype == np.float32 and mask.any()


def test_flat_images_fall_back_to_a_stain():
    flat = np.full((SIZE, SIZE, 3), 0.5, np.float32)  # no texture to copy or displace
    synth = RealisticDefects(CONFIG, seed=0)
    out, mask = synth(flat, kind="displaced")
    assert mask.any() and synth.last_info["fallback"] and synth.last_info["kind"] == "stain"
    assert change(out, flat)[~mask].max() < FLOOR_CAP


def test_subtler_than_the_cutpaste_synthesiser(parts):
    images = parts["brick"]
    cutpaste = DefectSynthesizer(None, SynthConfig(size=SIZE), seed=0)
    realistic = RealisticDefects(CONFIG, seed=0)
    old, new = [], []
    for i in range(10):
        others = [images[j] for j in range(4) if j != i % 4]
        for synth, means in ((cutpaste, old), (realistic, new)):
            out, mask = synth(images[i % 4], others)
            means.append(change(out, images[i % 4])[mask].mean())
    assert np.mean(new) < 0.6 * np.mean(old)


@pytest.mark.parametrize("image, others, kind, message", [
    (np.zeros((SIZE, SIZE, 3), np.uint8), None, None, "dtype"),
    (np.zeros((SIZE, SIZE), np.float32), None, None, "shape"),
    (np.zeros((SIZE + 1, SIZE, 3), np.float32), None, None, "shape"),
    (np.full((SIZE, SIZE, 3), 2.0, np.float32), None, None, r"\[0, 1\]"),
    (np.full((SIZE, SIZE, 3), np.nan, np.float32), None, None, "finite"),
    ([[0.5]], None, None, "numpy array"),
    (np.zeros((SIZE, SIZE, 3), np.float32), [np.zeros((8, 8, 3), np.float32)], None, r"others\[0\]"),
    (np.zeros((SIZE, SIZE, 3), np.float32), None, "dent", "unknown defect kind"),
])
def test_bad_inputs_are_named(image, others, kind, message):
    with pytest.raises(InspectdError, match=message):
        RealisticDefects(CONFIG)(image, others, kind)


@pytest.mark.parametrize("kwargs, message", [
    ({"size": 8}, "size"),
    ({"size": 64.0}, "size"),
    ({"area_range": (0.03, 0.001)}, "area_range"),
    ({"area_range": (0.0, 0.1)}, "area_range"),
    ({"area_range": (0.1, 0.9)}, "area_range"),
    ({"area_range": (0.1,)}, "area_range"),
    ({"contrast_range": (0.1, 0.9)}, "contrast_range"),
    ({"contrast_range": ("a", 0.2)}, "contrast_range"),
    ({"kinds": ()}, "kinds"),
    ({"kinds": ("stain", "dent")}, "dent"),
    ({"kinds": "stain"}, "kinds"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        RealisticConfig(**kwargs)


def test_config_accepts_lists():
    cfg = RealisticConfig(size=64, area_range=[0.01, 0.02], contrast_range=[0.1, 0.1], kinds=["stain"])
    assert cfg.area_range == (0.01, 0.02) and cfg.contrast_range == (0.1, 0.1) and cfg.kinds == ("stain",)


def test_area_px_sets_the_defect_size(parts):
    """The calibration asks for sizes across the range; a defect drawn at area_px comes out about
    that large (its truth mask is the visibly changed part of the drawn shape)."""
    lo, hi = (a * SIZE * SIZE for a in CONFIG.area_range)
    normal = parts["brick"][0]
    for kind in ("stain", "patch", "perlin"):
        small = RealisticDefects(CONFIG, seed=3)(normal, kind=kind, area_px=lo)[1].sum()
        large = RealisticDefects(CONFIG, seed=3)(normal, kind=kind, area_px=hi)[1].sum()
        assert small < large and large > hi / 4, (kind, small, large)
    with pytest.raises(ConfigError, match="area_px"):
        RealisticDefects(CONFIG)(normal, kind="stain", area_px=2 * hi)


def test_calibration_areas_take_one_defect_from_every_slice_of_log_area():
    from inspectd.bundle.calibration import stratified_areas

    n, size, area_range = 24, 256, (0.002, 0.1)
    areas = stratified_areas(n, area_range, size, seed=5)
    lo, hi = np.log(np.array(area_range) * size * size)
    slices = np.floor((np.log(areas) - lo) / (hi - lo) * n).astype(int)
    assert sorted(slices.tolist()) == list(range(n))  # every slice once
    assert not np.array_equal(slices, np.arange(n))  # in a shuffled order (sizes do not follow the kinds)
    np.testing.assert_array_equal(areas, stratified_areas(n, area_range, size, seed=5))
