"""CFLOW-AD, CFA and DFR on small generated textures: ranking, gradients, positions, bundles, F2PAD."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import SIZE, paste_square, texture_crops
from inspectd.data.images import to_tensor
from inspectd.methods import create_method, load_method, method_names
from inspectd.refine import F2PADSettings, refine

EXTRA = ["cflow", "cfa", "dfr"]


@pytest.fixture
def extra(fitted_extra):  # fitted once per session in conftest, with tiny training budgets
    return fitted_extra


def test_registry_lists_them():
    assert set(EXTRA) <= set(method_names())


@pytest.mark.parametrize("name", EXTRA)
def test_pasted_defect_ranks_above_normal_pixels(extra, normals, name):
    defective, mask = paste_square(normals[0], 30, 40, 16)
    maps, scores = extra[name].predict(np.stack([defective, normals[1]]))
    assert maps.shape == (2, SIZE, SIZE) and np.isfinite(maps).all()
    assert roc_auc_score(mask.ravel(), maps[0].ravel()) > 0.95
    assert maps[0][mask].mean() > 1.5 * maps[0][~mask].mean()
    assert scores[0] > scores[1]


def test_cflow_log_likelihood_is_finite_and_its_gradient_reaches_the_input(extra, normals):
    method = extra["cflow"]
    x = to_tensor(normals[2]).requires_grad_(True)
    ll = method.log_likelihood_at(method.features(x))
    assert ll.shape[1] == len(method.backbone.channels) and torch.isfinite(ll).all()
    ll.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # scores lie in [0, 1), and a normal cell is near 0: the reference is the training mean
    scores = method.score_from_log_likelihood(ll.detach())
    assert scores.min() >= 0 and scores.max() < 1 and float(scores.median()) < 0.3


@pytest.mark.parametrize("name", EXTRA)
def test_score_map_is_differentiable_in_the_input(extra, normals, name):
    x = to_tensor(normals[0]).requires_grad_(True)
    extra[name].score_map(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in extra[name].parameters())  # fitted parts stay frozen


@pytest.mark.parametrize("name", ["cflow", "cfa"])
def test_position_dependent_scores_honour_the_offset(extra, normals, name):
    """F2PAD scores crops: CFLOW's positional condition and CFA's CoordConv must see full-grid
    positions. Scoring is per cell, so a window of the full feature map scored at its offset
    must give exactly the full map's scores there, and a wrong offset must not."""
    method = extra[name]
    with torch.no_grad():
        feats = method.features(to_tensor(normals[3]))
        full = method.score_features(feats)[0]
        window = feats[:, :, 4:, 5:]
        right = method.score_features_at(window, (4, 5))[0]
        wrong = method.score_features_at(window, (0, 0))[0]
    assert torch.allclose(right, full[4:, 5:], rtol=1e-4, atol=1e-6)
    assert (wrong - full[4:, 5:]).abs().mean() > 1e-3 * full.abs().mean()


@pytest.mark.parametrize("name", EXTRA)
def test_save_load_gives_identical_scores(extra, normals, tmp_path, name):
    method = extra[name]
    method.thresholds = {"pixel": 1.5, "image": 2.5}
    method.save(tmp_path / name)
    loaded = load_method(tmp_path / name)
    a, _ = method.predict(normals[:2])
    b, _ = loaded.predict(normals[:2])
    assert np.array_equal(a, b)
    assert loaded.thresholds == {"pixel": 1.5, "image": 2.5}


def test_dfr_latent_width_comes_from_pca_and_is_stored(extra, tmp_path):
    method = extra["dfr"]
    channels = sum(method.backbone.channels)
    assert 0 < method.config.latent_dim < channels
    method.save(tmp_path / "dfr")
    assert load_method(tmp_path / "dfr").config.latent_dim == method.config.latent_dim
    wider = create_method("dfr", {"image_size": SIZE, "epochs": 0.01, "explained_variance": 0.99}, load_weights=True)
    wider.fit(texture_crops(n=4), progress=False)
    assert wider.config.latent_dim > create_method("dfr", {"image_size": SIZE, "epochs": 0.01}).fit(
        texture_crops(n=4), progress=False).config.latent_dim


def test_cfa_memory_does_not_grow_with_the_training_set():
    sizes = []
    for n in (3, 9):
        method = create_method("cfa", {"image_size": SIZE, "epochs": 0.01})
        sizes.append(len(method.fit(texture_crops(n=n), progress=False).memory_bank))
    side = SIZE // method.feature_stride
    assert sizes == [side * side, side * side]
    method = create_method("cfa", {"image_size": SIZE, "epochs": 0.01, "bank_ratio": 4})
    assert len(method.fit(texture_crops(n=3), progress=False).memory_bank) == side * side // 4


@pytest.mark.parametrize("name", EXTRA)
def test_f2pad_refines_each_method(extra, name):
    base = texture_crops(n=1, seed=7)[0]
    image, truth = paste_square(base, 36, 30, 14)
    method = extra[name]
    maps, _ = method.predict(image[None])
    amap = maps[0]
    threshold = float(np.quantile(amap, 1 - 2 * truth.mean()))  # a coarse mask about twice the defect
    out = refine(image, method, amap, None, F2PADSettings(threshold=threshold, max_iters=25, min_iters=5))
    assert out.stats["status"] == "refined" and out.stats["iterations"] > 0
    assert out.mask.shape == truth.shape and out.mask.dtype == bool
    assert out.mask[truth].mean() > 0.5 and out.mask[~truth].mean() < 0.1


@pytest.mark.parametrize("name", ["cfa", "cflow"])
def test_refine_scorer_matches_the_full_score_at_the_start(extra, normals, name):
    """The F2PAD loss computes less than the full map (CFA searches the memory once; CFLOW runs
    its flows on the scored cells only): at the initial features it equals the full score on
    those cells, and it stays differentiable in the features."""
    method = extra[name]
    image, _ = paste_square(normals[0], 30, 40, 16)
    with torch.no_grad():
        feats = method.features(to_tensor(image))
        full = method.score_features_at(feats, (1, 2))[0]
    cells = torch.zeros(full.shape, dtype=torch.bool)
    cells[2:9, 3:10] = True
    scorer = method.refine_scorer(feats, (1, 2), cells)
    assert torch.allclose(scorer(feats), full[cells], rtol=1e-4, atol=1e-6)
    moving = feats.clone().requires_grad_(True)
    scorer(moving).sum().backward()
    assert torch.isfinite(moving.grad).all() and moving.grad.abs().sum() > 0
