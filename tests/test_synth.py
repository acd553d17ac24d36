import numpy as np
import pytest

from conftest import texture_crops
from inspectd.data.images import read_image, read_mask, write_image
from inspectd.data.synth import DefectSynthesizer, SynthConfig, load_mask_sources, write_synthetic_set
from inspectd.errors import InspectdError

SIZE = 64


@pytest.fixture(scope="module")
def bases():
    return texture_crops(n=6, size=SIZE, seed=11)


def square_source(side=20):
    m = np.zeros((SIZE, SIZE), bool)
    m[10 : 10 + side, 10 : 10 + side] = True
    return m


def test_masks_stay_in_the_area_range_with_and_without_sources():
    cfg = SynthConfig(size=SIZE, area_range=(0.01, 0.1))
    for sources in (None, [square_source()]):
        synth = DefectSynthesizer(sources, cfg, seed=0)
        for _ in range(20):
            area = synth.make_mask().mean()
            assert 0.01 <= area <= 0.1


def test_mask_sources_keep_their_shape():
    synth = DefectSynthesizer([square_source(16)], SynthConfig(size=SIZE, scale_range=(1.0, 1.0)), seed=3)
    mask = synth.make_mask()
    ys, xs = np.nonzero(mask)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    # a rotated 16x16 square: area kept (up to resampling) and it fills a good part of its box
    assert 200 <= mask.sum() <= 300 and mask.sum() / box >= 0.45


def test_same_seed_same_defects(bases):
    a = DefectSynthesizer(None, SynthConfig(size=SIZE), seed=5)(bases[0], list(bases[1:]))
    b = DefectSynthesizer(None, SynthConfig(size=SIZE), seed=5)(bases[0], list(bases[1:]))
    c = DefectSynthesizer(None, SynthConfig(size=SIZE), seed=6)(bases[0], list(bases[1:]))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("structural", [0.0, 1.0])
def test_outside_unchanged_and_inside_contrasted(bases, structural):
    cfg = SynthConfig(size=SIZE, structural_prob=structural, min_contrast=0.25)
    synth = DefectSynthesizer([square_source()], cfg, seed=1)
    for i in range(5):
        image, mask = synth(bases[i], [bases[5]])
        assert np.array_equal(image[~mask], bases[i][~mask])
        dist = np.linalg.norm(image[mask] - bases[i][mask], axis=1)
        assert dist.min() >= 0.25 - 1e-6


def test_colour_defects_are_one_solid_colour(bases):
    part = 0.3 + 0.2 * bases[0]  # a part with a narrow colour range, like most products
    image, mask = DefectSynthesizer(None, SynthConfig(size=SIZE), seed=2)(part)
    _, counts = np.unique(image[mask].round(4), axis=0, return_counts=True)
    assert counts.max() >= 0.9 * mask.sum()  # a few pixels may be pushed apart individually


def test_structural_defects_copy_pixels_of_another_image(bases):
    cfg = SynthConfig(size=SIZE, structural_prob=1.0, min_contrast=0.0001)
    image, mask = DefectSynthesizer(None, cfg, seed=4)(bases[0], [bases[3]])
    pasted = image[mask]
    other_pixels = {tuple(p) for p in bases[3].reshape(-1, 3).round(5)}
    assert np.mean([tuple(p) in other_pixels for p in pasted.round(5)]) > 0.9


def test_write_synthetic_set_layout_and_exact_masks(tmp_path, bases):
    normal_dir = tmp_path / "normal"
    for i, img in enumerate(bases):
        write_image(normal_dir / f"{i}.png", img)
    masks_dir = tmp_path / "masks"
    write_image(masks_dir / "a" / "m.png", square_source())
    summary = write_synthetic_set(normal_dir, masks_dir, tmp_path / "out", n=5, seed=0, size=SIZE)
    assert summary["defective"] == 5 and summary["mask_sources"] == 1
    for i in range(5):
        image = read_image(tmp_path / "out" / "test" / "cutpaste" / f"{i:03d}.png")
        mask = read_mask(tmp_path / "out" / "ground_truth" / "cutpaste" / f"{i:03d}_mask.png")
        assert mask.shape == image.shape[:2] == (SIZE, SIZE) and mask.any()
        # the mask is exactly where the image differs from every normal base
        closest = min(bases, key=lambda b: np.abs(b[~mask] - image[~mask]).mean())
        changed = np.abs(image - closest).max(axis=2) > 2 / 255
        assert np.array_equal(changed, mask)
    assert len(list((tmp_path / "out" / "test" / "good").iterdir())) >= 1


def test_bad_inputs_are_named(tmp_path, bases):
    with pytest.raises(InspectdError, match="not found"):
        write_synthetic_set(tmp_path / "absent", None, tmp_path / "o", n=2, seed=0, size=SIZE)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InspectdError, match="no normal images"):
        write_synthetic_set(tmp_path / "empty", None, tmp_path / "o", n=2, seed=0, size=SIZE)
    with pytest.raises(InspectdError, match="mask folder not found"):
        load_mask_sources(tmp_path / "nomasks", SIZE)
    write_image(tmp_path / "n" / "0.png", bases[0])
    (tmp_path / "n" / "1.png").write_bytes(b"garbage")
    with pytest.raises(InspectdError, match="1.png"):
        write_synthetic_set(tmp_path / "n", None, tmp_path / "o", n=2, seed=0, size=SIZE)
    assert not (tmp_path / "o").exists()  # nothing half-written
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    with pytest.raises(InspectdError, match="not empty"):
        write_synthetic_set(tmp_path / "n", None, tmp_path / "full", n=1, seed=0, size=SIZE)
