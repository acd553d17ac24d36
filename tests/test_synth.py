"""Cut-paste synthesiser (F2PAD eq. 16) on small texture crops; no shared data needed."""

import json

import numpy as np
import pytest

from conftest import texture_crops
from inspectd.data.images import list_images, read_image, read_mask, write_image
from inspectd.data.synth import DefectSynthesizer, SynthConfig, load_mask_sources, write_synthetic_set
from inspectd.errors import ConfigError, InspectdError

SIZE = 64


@pytest.fixture(scope="module")
def bases():
    return texture_crops(n=6, size=SIZE, seed=11)


def square_source(side=20, size=SIZE):
    m = np.zeros((size, size), bool)
    m[10 : 10 + side, 10 : 10 + side] = True
    return m


def write_normals(folder, images):
    for i, img in enumerate(images):
        write_image(folder / f"{i}.png", img)
    return folder


def test_masks_stay_in_the_area_range_with_and_without_sources():
    cfg = SynthConfig(size=SIZE, area_range=(0.01, 0.1))
    for sources in (None, [square_source()]):
        synth = DefectSynthesizer(sources, cfg, seed=0)
        for _ in range(20):
            mask = synth.make_mask()
            assert mask.shape == (SIZE, SIZE) and mask.dtype == bool
            assert 0.01 <= mask.mean() <= 0.1


def test_mask_sources_keep_their_shape():
    synth = DefectSynthesizer([square_source(16)], SynthConfig(size=SIZE, scale_range=(1.0, 1.0)), seed=3)
    for _ in range(5):
        mask = synth.make_mask()
        ys, xs = np.nonzero(mask)
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        # a rotated 16x16 square placed wholly inside: area kept (up to resampling), fills its box well
        assert 200 <= mask.sum() <= 300 and mask.sum() / box >= 0.45


def test_large_sources_are_scaled_into_the_area_range():
    big = square_source(side=40, size=128)  # 10% of a 128 image, more than the 4% allowed
    synth = DefectSynthesizer([big], SynthConfig(size=SIZE, area_range=(0.01, 0.04)), seed=0)
    areas = [synth.make_mask().mean() for _ in range(10)]
    assert all(0.01 <= a <= 0.04 for a in areas)


def test_same_seed_same_defects(bases):
    def run(seed):
        return DefectSynthesizer([square_source()], SynthConfig(size=SIZE, structural_prob=0.5), seed=seed)(
            bases[0], list(bases[1:]))
    a, b, c = run(5), run(5), run(6)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("structural", [0.0, 1.0])
def test_outside_unchanged_and_inside_contrasted(bases, structural):
    cfg = SynthConfig(size=SIZE, structural_prob=structural, min_contrast=0.25)
    synth = DefectSynthesizer(None, cfg, seed=1)
    for i in range(5):
        image, mask = synth(bases[i], [bases[5]])
        assert image.dtype == np.float32 and image.shape == bases[i].shape
        assert np.array_equal(image[~mask], bases[i][~mask])
        assert image.min() >= 0 and image.max() <= 1
        dist = np.linalg.norm(image[mask] - bases[i][mask], axis=1)
        assert dist.mean() >= 0.25 and np.quantile(dist, 0.1) >= 0.25 and dist.min() >= 0.25 - 1e-6


def test_colour_defects_are_one_solid_colour(bases):
    part = 0.3 + 0.2 * bases[0]  # a part with a narrow colour range, like most products
    image, mask = DefectSynthesizer(None, SynthConfig(size=SIZE), seed=2)(part)
    _, counts = np.unique(image[mask].round(4), axis=0, return_counts=True)
    assert counts.max() >= 0.9 * mask.sum()  # a few pixels may be pushed apart individually


def test_structural_defects_copy_a_nearby_region_of_another_image(bases):
    cfg = SynthConfig(size=SIZE, structural_prob=1.0, min_contrast=0.0)
    image, mask = DefectSynthesizer([square_source(12)], cfg, seed=4)(bases[0], [bases[3]])
    ys, xs = np.nonzero(mask)
    reach = SIZE // 4
    matches = [(dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)
               if 0 <= ys.min() + dy and ys.max() + dy < SIZE and 0 <= xs.min() + dx and xs.max() + dx < SIZE
               and np.array_equal(image[mask], bases[3][ys + dy, xs + dx])]
    assert matches  # the pasted pixels are exactly a shifted (not wrapped) copy from the other image


def test_bad_settings_and_shapes_are_refused(bases):
    with pytest.raises(ConfigError, match="area_range"):
        SynthConfig(area_range=(0.1, 0.01))
    with pytest.raises(ConfigError, match="min_contrast"):
        SynthConfig(min_contrast=2.0)
    synth = DefectSynthesizer(None, SynthConfig(size=SIZE), seed=0)
    with pytest.raises(InspectdError, match="normal image has shape"):
        synth(bases[0][:32])
    with pytest.raises(InspectdError, match=r"others\[0\]"):
        synth(bases[0], [bases[1][:, :, :1]])


def test_load_mask_sources_reads_recursively_and_drops_empty(tmp_path):
    write_image(tmp_path / "gt" / "crack" / "000_mask.png", square_source())
    write_image(tmp_path / "gt" / "hole" / "000_mask.png", np.zeros((SIZE, SIZE), bool))
    masks = load_mask_sources(tmp_path / "gt", 32)
    assert len(masks) == 1 and masks[0].shape == (32, 32) and masks[0].sum() == 100
    with pytest.raises(InspectdError, match="mask folder not found"):
        load_mask_sources(tmp_path / "absent", SIZE)


def test_write_synthetic_set_layout_and_exact_masks(tmp_path, bases):
    normal_dir = write_normals(tmp_path / "normal", bases)
    write_image(tmp_path / "masks" / "a" / "m.png", square_source())
    config = SynthConfig(size=256)
    summary = write_synthetic_set(normal_dir, tmp_path / "masks", tmp_path / "out", n=5, seed=0, size=SIZE,
                                  config=config)
    assert config.size == 256  # the caller's config is not modified
    assert summary["defective"] == 5 and summary["good"] == 1 and summary["mask_sources"] == 1
    assert json.loads((tmp_path / "out" / "synth.json").read_text())["seed"] == 0
    for i in range(5):
        image = read_image(tmp_path / "out" / "test" / "cutpaste" / f"{i:03d}.png")
        mask = read_mask(tmp_path / "out" / "ground_truth" / "cutpaste" / f"{i:03d}_mask.png")
        assert mask.shape == image.shape[:2] == (SIZE, SIZE) and mask.any()
        # the mask is exactly where the image differs from the normal base it was made from
        closest = min(bases, key=lambda b: np.abs(b[~mask] - image[~mask]).mean())
        changed = np.abs(image - closest).max(axis=2) > 2 / 255
        assert np.array_equal(changed, mask)
    assert len(list_images(tmp_path / "out" / "test" / "good")) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp folder left


def test_write_synthetic_set_uses_train_good_of_an_mvtec_root(tmp_path, bases):
    write_normals(tmp_path / "mvtec" / "train" / "good", bases[:3])
    summary = write_synthetic_set(tmp_path / "mvtec", None, tmp_path / "out", n=3, seed=1, size=SIZE, n_good=3)
    assert summary["normal_images"] == 3 and summary["mask_sources"] == "random blobs"
    goods = [read_image(p) for p in list_images(tmp_path / "out" / "test" / "good")]
    assert len({g.tobytes() for g in goods}) == 3  # distinct normal images while there are enough


def test_bad_inputs_are_named(tmp_path, bases):
    with pytest.raises(InspectdError, match="absent: folder of normal images not found"):
        write_synthetic_set(tmp_path / "absent", None, tmp_path / "o", n=2, seed=0, size=SIZE)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InspectdError, match="no normal images"):
        write_synthetic_set(tmp_path / "empty", None, tmp_path / "o", n=2, seed=0, size=SIZE)
    write_image(tmp_path / "n" / "0.png", bases[0])
    with pytest.raises(InspectdError, match="nomasks: mask folder not found"):
        write_synthetic_set(tmp_path / "n", tmp_path / "nomasks", tmp_path / "o", n=2, seed=0, size=SIZE)
    (tmp_path / "n" / "1.png").write_bytes(b"garbage")
    with pytest.raises(InspectdError, match="1.png"):
        write_synthetic_set(tmp_path / "n", None, tmp_path / "o", n=2, seed=0, size=SIZE)
    assert not (tmp_path / "o").exists()  # nothing half-written
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("keep")
    with pytest.raises(InspectdError, match="not empty"):
        write_synthetic_set(tmp_path / "n", None, tmp_path / "full", n=1, seed=0, size=SIZE)
    assert (tmp_path / "full" / "keep.txt").read_text() == "keep"


def test_overwrite_replaces_a_non_empty_output(tmp_path, bases):
    normal_dir = write_normals(tmp_path / "normal", bases[:2])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    write_synthetic_set(normal_dir, None, tmp_path / "out", n=2, seed=0, size=SIZE, overwrite=True)
    assert not (tmp_path / "out" / "old.txt").exists()
    assert len(list_images(tmp_path / "out" / "test" / "cutpaste")) == 2
