import json

import numpy as np
import pytest
import torch

from conftest import SIZE, paste_square
from inspectd.data.images import to_tensor
from inspectd.errors import BundleError, ConfigError, InspectdError
from inspectd.methods import create_method, load_method, method_names
from inspectd.methods.patchcore import chunked_nearest, greedy_coreset, partitioned_coreset


def test_registry_and_bad_settings():
    assert {"padim", "patchcore"} <= set(method_names())
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        create_method("nope")
    with pytest.raises(ConfigError, match="unknown setting"):
        create_method("padim", {"no_such_setting": 1})


def test_empty_training_set_is_refused():
    with pytest.raises(InspectdError, match="empty training set"):
        create_method("padim", {"image_size": SIZE}).fit(np.zeros((0, SIZE, SIZE, 3), np.float32))


@pytest.mark.parametrize("name", ["padim", "patchcore", "padim-grid8"])
def test_pasted_defect_ranks_above_normal_pixels(fitted, normals, name):
    method = fitted[name]
    defective, mask = paste_square(normals[0], 30, 40, 16)
    maps, scores = method.predict(np.stack([defective, normals[1]]))
    assert maps.shape == (2, SIZE, SIZE)
    from sklearn.metrics import roc_auc_score

    assert maps[0][mask].mean() > 1.5 * maps[0][~mask].mean()
    assert roc_auc_score(mask.ravel(), maps[0].ravel()) > 0.95
    assert scores[0] > scores[1]


@pytest.mark.parametrize("name", ["padim", "patchcore"])
def test_score_map_is_differentiable_in_the_input(fitted, normals, name):
    x = to_tensor(normals[0]).requires_grad_(True)
    fitted[name].score_map(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["padim", "patchcore", "padim-grid8"])
def test_crop_scores_match_full_image_scores(fitted, name):
    """F2PAD scores crops: away from the cut, crop scores at the right grid offset must match
    the full-image scores (PaDiM's statistics are per location, so the offset matters)."""
    from conftest import texture_crops

    method = fitted[name]
    x = to_tensor(texture_crops(n=1, seed=5)[0])  # not a training image
    s = method.feature_stride
    with torch.no_grad():
        full = method.score_map(x)[0][32 // s :, 32 // s :]
        feats = method.features(x[:, :, 32:, 32:])

        def rel_error(offset):
            part = method.score_features_at(feats, (32 // s + offset, 32 // s + offset))[0]
            far = slice(part.shape[0] // 2, None)  # cells at least 16 px from the cut
            return float((part[far, far] - full[far, far]).abs().mean() / full[far, far].mean())

    assert rel_error(0) < 0.3
    if name.startswith("padim"):
        assert rel_error(1) > 2 * rel_error(0)


def test_padim_grid_stride_pools_finer_layers_into_a_coarser_grid(fitted, normals):
    x = to_tensor(normals[0])
    assert fitted["padim"].score_map(x).shape[-1] == SIZE // 4
    coarse = fitted["padim-grid8"]
    assert coarse.feature_stride == 8 and coarse.score_map(x).shape[-1] == SIZE // 8
    assert coarse.features(x[:, :, :, :90]).shape[-1] == 12  # ceil(90 / 8), as the backbone pads


@pytest.mark.parametrize("name", ["padim", "patchcore"])
def test_save_load_gives_identical_scores(fitted, normals, tmp_path, name):
    method = fitted[name]
    method.thresholds = {"pixel": 1.5, "image": 2.5}
    method.save(tmp_path / name)
    loaded = load_method(tmp_path / name)
    a, _ = method.predict(normals[:2])
    b, _ = loaded.predict(normals[:2])
    assert np.array_equal(a, b)
    assert loaded.thresholds == {"pixel": 1.5, "image": 2.5}


def test_bundle_that_fails_its_manifest_is_refused(fitted, tmp_path):
    bundle = fitted["padim"].save(tmp_path / "b")
    with open(bundle / "state.pt", "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(BundleError, match="state.pt fails its sha256"):
        load_method(bundle)
    with pytest.raises(BundleError, match="directory missing"):
        load_method(tmp_path / "absent")
    (tmp_path / "c").mkdir()
    with pytest.raises(BundleError, match="manifest.json missing"):
        load_method(tmp_path / "c")


def test_bundle_write_is_atomic(fitted, tmp_path, monkeypatch):
    from inspectd.methods import bundle as B

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(B, "sha256_file", boom)
    with pytest.raises(RuntimeError):
        fitted["padim"].save(tmp_path / "half")
    assert not (tmp_path / "half").exists()
    assert list(tmp_path.iterdir()) == []


def test_chunked_nearest_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    q, bank = torch.randn(50, 8, generator=gen), torch.randn(333, 8, generator=gen)
    d, i = chunked_nearest(q, bank, chunk=64, k=3)
    ref = torch.cdist(q, bank) ** 2
    ref_d, ref_i = ref.topk(3, largest=False)
    assert torch.equal(i, ref_i)
    assert torch.allclose(d, ref_d, atol=1e-4)


def test_greedy_coreset_is_a_k_center_cover():
    gen = torch.Generator().manual_seed(0)
    # three tight clusters: a 3-point k-center coreset must take one point from each
    pts = torch.cat([torch.randn(40, 2, generator=gen) * 0.01 + c for c in (torch.tensor([0.0, 0]), torch.tensor([5.0, 0]), torch.tensor([0.0, 5]))])
    chosen = greedy_coreset(pts, 3)
    assert sorted((chosen // 40).tolist()) == [0, 1, 2]
    idx = partitioned_coreset(pts, 0.1, 0, 60, gen, progress=False)
    assert len(idx) == 12 and len(set(idx.tolist())) == 12
