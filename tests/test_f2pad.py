import math

import numpy as np
import pytest
import torch

from conftest import paste_square
from inspectd.errors import BadImageError, ConfigError, InspectdError
from inspectd.refine import F2PADSettings, PixelPrior, refine
from inspectd.refine import terms
from inspectd.refine.f2pad import coarse_region
from inspectd.refine.sharing import share, sharing_matrix, sharing_weights


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


# --- objective terms -------------------------------------------------------------------------
def test_log_sparsity_values():
    a = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])  # norms 5 and 0
    assert math.isclose(float(terms.log_sparsity(a, eps=5.0)), math.log(2.0), rel_tol=1e-5)


def test_total_variation_values():
    img = torch.zeros(3, 2, 2)
    img[0, 0, 1] = 3.0  # a step of 3 in x on channel 0 only ...
    img[1, 1, 0] = 4.0  # ... and of 4 in y on channel 1: one cell, vectorial norm 5
    assert math.isclose(float(terms.total_variation(img, delta=0.0)), 5.0, rel_tol=1e-6)


def test_mog_energy_is_the_nearest_component_mahalanobis():
    means = torch.tensor([[0.0, 0, 0], [1.0, 1, 1]])
    precisions = torch.stack([torch.eye(3), 4 * torch.eye(3)])
    px = torch.tensor([[0.1, 0.0, 0.0], [0.9, 1.0, 1.0]])
    # 0.01 (first component) + 4 * 0.01 (second component)
    assert math.isclose(float(terms.mog_energy(px, means, precisions)), 0.05, rel_tol=1e-5)



def test_mog_energy_with_full_precisions_matches_the_prior_s_numpy_energy():
    """Correlated colour components (full precision matrices), as variational Bayes fits them."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(4, 3, 3))
    precisions = (a @ a.transpose(0, 2, 1) + np.eye(3)).astype(np.float32)
    prior = PixelPrior(rng.random((4, 3), dtype=np.float32), precisions, np.full(4, 0.25, np.float32))
    px = rng.random((50, 3), dtype=np.float32)
    want = prior.energy(px).sum()
    got = float(terms.mog_energy(torch.from_numpy(px), *prior.tensors("cpu")))
    assert math.isclose(got, want, rel_tol=1e-5)

@pytest.mark.parametrize("term", ["log", "tv", "mog"])
def test_terms_match_finite_differences(term):
    gen = torch.Generator().manual_seed(0)
    if term == "log":
        x = torch.rand(6, 3, generator=gen, dtype=torch.float64) + 0.1
        fn = lambda v: terms.log_sparsity(v, 0.05)  # noqa: E731
    elif term == "tv":
        x = torch.rand(3, 5, 4, generator=gen, dtype=torch.float64)
        fn = terms.total_variation
    else:
        x = torch.rand(7, 3, generator=gen, dtype=torch.float64)
        means = torch.rand(3, 3, generator=gen, dtype=torch.float64)
        precisions = torch.eye(3, dtype=torch.float64).expand(3, 3, 3) * torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64)[:, None, None]
        fn = lambda v: terms.mog_energy(v, means, precisions)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x.requires_grad_(True),), eps=1e-6, atol=1e-5)


def test_feature_loss_gradient_matches_finite_differences(fitted, normals):
    """The method loss L(X_N) that F2PAD differentiates, checked on a few pixels."""
    method = fitted["padim"]
    x = torch.from_numpy(normals[3]).permute(2, 0, 1)[None].double()
    method.double()
    try:
        cells = torch.ones(24, 24, dtype=torch.bool)
        with torch.no_grad():
            scorer = method.refine_scorer(method.features(x), (0, 0), cells)
        f = lambda img: scorer(method.features(img)).sum()  # noqa: E731
        x.requires_grad_(True)
        f(x).backward()
        for (c, i, j) in [(0, 40, 40), (1, 10, 70), (2, 60, 20)]:
            h = 1e-6
            xp, xm = x.detach().clone(), x.detach().clone()
            xp[0, c, i, j] += h
            xm[0, c, i, j] -= h
            numeric = (f(xp) - f(xm)) / (2 * h)
            assert math.isclose(float(numeric), float(x.grad[0, c, i, j]), rel_tol=5e-3, abs_tol=1e-6)
    finally:
        method.float()


# --- gradient sharing ------------------------------------------------------------------------
def test_sharing_weights_sum_to_one_and_respect_the_region():
    gen = torch.Generator().manual_seed(0)
    img = torch.rand(3, 9, 9, generator=gen)
    active = torch.zeros(9, 9, dtype=torch.bool)
    active[2:7, 2:7] = True
    w = sharing_weights(img, active, 5, 3.0, 0.05)
    assert w.shape == (25, 9, 9)
    assert torch.allclose(w.sum(0), torch.ones(9, 9), atol=1e-5)
    # a pixel on the region's corner only takes weight from active neighbours
    unfolded_active = torch.nn.functional.unfold(active[None, None].float(), 5, padding=2).view(25, 9, 9)
    assert float((w * (1 - unfolded_active))[:, 2, 2].abs().max()) == 0.0


def test_sharing_a_constant_gradient_keeps_it_and_colour_edges_block_it():
    img = torch.zeros(3, 8, 8)
    img[:, :, 4:] = 1.0  # two flat colours side by side
    active = torch.ones(8, 8, dtype=torch.bool)
    w = sharing_weights(img, active, 5, 3.0, 0.01)
    grad = torch.ones(3, 8, 8)
    assert torch.allclose(share(grad, w), grad, atol=1e-5)
    left_only = torch.zeros(3, 8, 8)
    left_only[:, :, :4] = 1.0
    shared = share(left_only, w)
    assert float(shared[:, :, 4:].abs().max()) < 1e-6  # nothing leaks across the colour edge



def test_sharing_matrix_is_share_at_the_optimised_pixels():
    """The sparse form gives the image form's result at the optimised pixels, for the whole
    region (touching the crop's border) and for a subset of it (re-estimation), where the
    pixels left out have no gradient."""
    gen = torch.Generator().manual_seed(1)
    img = torch.rand(3, 12, 10, generator=gen)
    active = torch.zeros(12, 10, dtype=torch.bool)
    active[0:7, 3:10] = True
    active[3, 5] = False
    w = sharing_weights(img, active, 5, 3.0, 0.05)
    roi = active.flatten().nonzero()[:, 0]
    for flat in (roi, roi[::3]):
        grad = torch.randn(len(flat), 3, generator=gen)
        image_grad = torch.zeros(3, 12 * 10)
        image_grad[:, flat] = grad.T
        want = share(image_grad.view(3, 12, 10), w).flatten(1)[:, flat].T
        assert torch.allclose(sharing_matrix(img, active, flat, 5, 3.0, 0.05) @ grad, want, atol=1e-6)

# --- pixel prior -----------------------------------------------------------------------------
def test_prior_fits_the_colours_and_round_trips(normals):
    prior = PixelPrior.fit(normals, n_components=4, n_pixels=3000)
    normal_px = normals[0].reshape(-1, 3)[:500]
    odd_px = np.tile(np.array([[1.0, 0.1, 0.6]], np.float32), (10, 1))
    assert prior.energy(odd_px).min() > 10 * np.median(prior.energy(normal_px))
    back = PixelPrior.from_bytes(prior.to_bytes())
    assert np.array_equal(back.means, prior.means) and np.array_equal(back.precisions, prior.precisions)


# --- the whole refinement ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def prior(normals):
    return PixelPrior.fit(normals, n_components=4, n_pixels=5000)


@pytest.fixture(scope="module")
def defect_case(fitted, normals):
    from conftest import texture_crops

    base = texture_crops(n=1, seed=7)[0]
    # a thin scratch: features blur it into a much wider coarse blob
    image, truth = paste_square(base, 40, 30, 4)
    for dx in range(1, 8):
        image, more = paste_square(image, 40, 30 + 4 * dx, 4)
        truth |= more
    maps, _ = fitted["padim"].predict(image[None])
    return image, truth, maps[0]


def coarse_threshold(amap, truth):
    from sklearn.metrics import precision_recall_curve

    p, r, t = precision_recall_curve(truth.ravel(), amap.ravel())
    f1 = 2 * p * r / np.maximum(p + r, 1e-12)
    return float(t[np.argmax(f1[:-1])])


def test_f2pad_beats_the_coarse_mask_on_a_pasted_defect(fitted, defect_case, prior):
    image, truth, amap = defect_case
    thr = coarse_threshold(amap, truth)
    out = refine(image, fitted["padim"], amap, prior, F2PADSettings(threshold=thr))
    coarse_iou = iou(amap > thr, truth)
    assert out.stats["status"] == "refined" and out.stats["iterations"] > 0
    assert iou(out.mask, truth) > coarse_iou + 0.15, (iou(out.mask, truth), coarse_iou)
    # the coarse blob is wider than the scratch and misses its left end: F2PAD keeps the scratch's
    # pixels inside it and drops the rest (X_N starts at X outside the coarse mask, and the log
    # sparsity term keeps a pixel that starts there unless the features insist)
    coarse = amap > thr
    assert (out.mask & truth).sum() >= 0.95 * out.mask.sum()
    assert (out.mask & truth).sum() >= 0.9 * (coarse & truth).sum()
    # X = X_N + A holds exactly, and X_N equals X outside the optimised region
    assert np.allclose(out.normal + out.anomaly, image, atol=1e-6)
    assert np.array_equal(out.normal[~out.coarse_mask & (out.mask == 0)][:10], image[~out.coarse_mask & (out.mask == 0)][:10])


def test_reestimation_gives_a_cleaner_normal_image(fitted, defect_case, prior):
    image, truth, amap = defect_case
    thr = coarse_threshold(amap, truth)
    s = F2PADSettings(threshold=thr, reestimate=True, reestimate_iters=20)
    out = refine(image, fitted["padim"], amap, prior, s)
    assert out.stats["reestimate_iterations"] > 0
    assert np.abs(out.anomaly[~out.mask]).max() == 0.0  # outside the mask X_N is X exactly


def test_empty_coarse_mask_returns_an_empty_mask(fitted, normals, prior):
    amap = np.zeros(normals[0].shape[:2], np.float32)
    out = refine(normals[0], fitted["padim"], amap, prior, F2PADSettings(threshold=1.0))
    assert not out.mask.any() and out.stats["status"] == "empty coarse mask"


def test_coarse_mask_covering_the_image_is_returned_as_is(fitted, normals, prior):
    amap = np.full(normals[0].shape[:2], 5.0, np.float32)
    out = refine(normals[0], fitted["padim"], amap, prior, F2PADSettings(threshold=1.0))
    assert out.mask.all() and "max_roi_fraction" in out.stats["status"]


def test_roi_touching_the_border_and_grey_input(fitted, normals, prior):
    base = normals[4].mean(axis=2)  # grey (H, W)
    image = base.copy()
    truth = np.zeros_like(base, bool)
    truth[:10, -12:] = True
    image[truth] = 1.0
    amap = np.zeros_like(base)
    amap[:16, -18:] = 10.0
    out = refine(image, fitted["padim"], amap, prior, F2PADSettings(threshold=1.0, max_iters=30))
    assert out.mask.shape == base.shape and out.normal.shape == base.shape + (3,)
    assert out.mask[truth].mean() > 0.5


def test_bad_inputs_are_clear_errors(fitted, normals, prior):
    image = normals[0].copy()
    amap = np.zeros(image.shape[:2], np.float32)
    image[3, 3, 1] = np.nan
    with pytest.raises(BadImageError, match="NaN"):
        refine(image, fitted["padim"], amap, prior, F2PADSettings(threshold=1.0))
    with pytest.raises(BadImageError, match="does not match"):
        refine(normals[0], fitted["padim"], amap[:10], prior, F2PADSettings(threshold=1.0))
    method = fitted["padim"]
    saved, method.thresholds = method.thresholds, {}
    try:
        with pytest.raises(InspectdError, match="no coarse-map threshold"):
            refine(normals[0], method, amap, prior, F2PADSettings())
    finally:
        method.thresholds = saved
    with pytest.raises(ConfigError, match="neighbourhood"):
        F2PADSettings.from_dict({"neighbourhood": 4})
    with pytest.raises(ConfigError, match="unknown setting"):
        F2PADSettings.from_dict({"lambda": 1})
    with pytest.raises(ConfigError, match="mask_tol"):
        F2PADSettings.from_dict({"mask_tol": 1.5})


def test_size_power_sets_how_the_sparsity_weight_follows_the_coarse_area(fitted, defect_case, prior):
    image, truth, amap = defect_case
    thr = coarse_threshold(amap, truth)
    area = int((amap > thr).sum())
    base = F2PADSettings(threshold=thr, max_iters=3, min_iters=1, lam=0.2, ref_area=500.0)
    paper = refine(image, fitted["padim"], amap, prior, base)
    flat = refine(image, fitted["padim"], amap, prior, base.replace(size_power=0.0))
    assert math.isclose(paper.stats["lam1"], 0.2 * 500.0 / area, rel_tol=1e-6)
    assert math.isclose(flat.stats["lam1"], 0.2, rel_tol=1e-6)


def test_nearest_inpainting_starts_from_the_closest_reference(fitted, defect_case, normals, prior):
    image, truth, amap = defect_case
    thr = coarse_threshold(amap, truth)
    s = F2PADSettings(threshold=thr, inpaint="nearest", max_iters=3, min_iters=1)
    out = refine(image, fitted["padim"], amap, prior, s, references=np.stack(normals))
    assert out.stats["status"] == "refined"
    with pytest.raises(InspectdError, match="reference"):
        refine(image, fitted["padim"], amap, prior, s)


def test_anomaly_mask_thresholds_then_closes_and_fills():
    from inspectd.refine.f2pad import anomaly_mask

    anomaly = np.zeros((40, 40, 3), np.float32)
    anomaly[10:30, 10:30] = 0.3  # a solid square defect ...
    anomaly[18:22, 18:22] = 0.0  # ... with a gap inside where X_N came back to X
    anomaly[12:28, 14] = 0.0  # and a one-pixel crack
    plain = anomaly_mask(anomaly, tau=0.1)
    assert np.array_equal(plain, np.linalg.norm(anomaly, axis=2) > 0.1)
    closed = anomaly_mask(anomaly, tau=0.1, close_px=1)
    assert not plain[12:28, 14].any() and closed[12:28, 14].all()  # the crack is joined ...
    assert not closed[19, 19]  # ... the 4x4 gap is not
    filled = anomaly_mask(anomaly, tau=0.1, close_px=1, fill_holes=True)
    assert filled[10:30, 10:30].all() and filled.sum() == 400  # nothing grows outside the defect
    assert not anomaly_mask(anomaly, tau=0.6, close_px=3, fill_holes=True).any()  # ||A|| = 0.52
    with pytest.raises(ConfigError, match="close_px"):
        F2PADSettings(close_px=-1).validate()


def test_at_native_resolution_the_mask_thresholds_A_at_the_bundles_scale():
    """A native solve (4x4 native pixels per bundle pixel) is thresholded on A averaged over the
    block one bundle pixel covers: isolated native spikes (what the concave sparsity term makes
    along edges) stay out, a defect as wide as a bundle pixel keeps its native outline."""
    from inspectd.refine.f2pad import RefineResult, magnitude_at_scale

    anomaly = np.zeros((64, 64, 3), np.float32)
    anomaly[2:30:4, 2:62:4] = 0.3  # one spike per 4x4 block: ||A|| 0.52 there, block mean 0.03
    anomaly[40:53, 21:38] = 0.3  # a solid defect, 13 x 17 native pixels (not on the block grid)
    per_pixel = np.linalg.norm(anomaly, axis=2) > 0.1
    at_scale = magnitude_at_scale(anomaly, (4, 4)) > 0.1
    assert per_pixel[:32].sum() == 7 * 15 and not at_scale[:32].any()
    ys, xs = np.nonzero(at_scale)  # native outline, not blocks: at most half a block wider
    assert at_scale[40:53, 21:38].all()
    assert np.allclose((ys.min(), ys.max(), xs.min(), xs.max()), (40, 52, 21, 37), atol=2)
    assert np.array_equal(magnitude_at_scale(anomaly), np.linalg.norm(anomaly, axis=2))  # (1, 1): per pixel
    run = RefineResult(mask=at_scale, normal=anomaly, anomaly=anomaly, coarse_mask=at_scale,
                       init_mask=at_scale, block=(4, 4))
    assert np.array_equal(run.anomaly_magnitude > 0.1, at_scale)  # what calibration re-thresholds


def test_refine_applies_the_mask_settings_to_its_anomaly(fitted, defect_case, prior):
    from inspectd.refine.f2pad import anomaly_mask

    image, truth, amap = defect_case
    s = F2PADSettings(threshold=coarse_threshold(amap, truth), max_iters=5, min_iters=1, close_px=2,
                      fill_holes=True)
    out = refine(image, fitted["padim"], amap, prior, s)
    assert np.array_equal(out.mask, anomaly_mask(out.anomaly, s.tau, 2, True))


def test_x_n_starts_inpainted_over_the_coarse_mask_only(fitted, defect_case, prior):
    """The dilation ring around the coarse mask is solved for but starts at X: only the coarse
    mask is inpainted (an inpainted ring starts normal pixels away from X, and the log sparsity
    term hardly pulls them back)."""
    image, truth, amap = defect_case
    s = F2PADSettings(threshold=coarse_threshold(amap, truth), max_iters=2, min_iters=1, dilate_px=6,
                      inpaint="telea")
    out = refine(image, fitted["padim"], amap, prior, s)
    assert out.init_mask.any() and not (out.init_mask & ~out.coarse_mask).any()


def test_the_solve_runs_on_one_cpu_thread_and_restores_the_setting(fitted, defect_case, prior, monkeypatch):
    image, truth, amap = defect_case
    method = fitted["padim"]
    seen = []
    features = method.features
    monkeypatch.setattr(method, "features", lambda x: (seen.append(torch.get_num_threads()), features(x))[1])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = refine(image, method, amap, prior, F2PADSettings(threshold=coarse_threshold(amap, truth), max_iters=25,
                                                               device="cpu"))
        assert out.stats["iterations"] > 0 and seen.count(1) >= out.stats["iterations"]  # every solver pass
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_solve_stops_once_the_anomaly_settles(fitted, defect_case, prior):
    image, truth, amap = defect_case
    # rel_tol -1: the loss rule would only stop on a tenfold rise; mask_tol 0: no settling rule
    s = F2PADSettings(threshold=coarse_threshold(amap, truth), rel_tol=-1.0, mask_tol=0.0)
    full = refine(image, fitted["padim"], amap, prior, s)
    settled = refine(image, fitted["padim"], amap, prior, s.replace(mask_tol=0.01))
    assert full.stats["iterations"] == s.max_iters
    assert s.min_iters <= settled.stats["iterations"] < s.max_iters and settled.stats["iterations"] % s.window == 0
    # stopped where ||A|| no longer moves: the mask is (nearly) the one of the full run
    assert iou(settled.mask, truth) > iou(full.mask, truth) - 0.05



def test_crop_corners_sit_on_the_method_s_alignment_around_the_roi_and_its_context():
    from inspectd.refine.f2pad import crop_box
    roi = np.zeros((256, 256), bool)
    roi[100:130, 70:75] = True
    y0, y1, x0, x1 = crop_box(roi, 32, (256, 256), align=16)
    assert (y0, y1, x0, x1) == (64, 176, 32, 112)  # every corner a multiple of 16, >= 32 px of context
    assert crop_box(roi, 32, (256, 256), align=32) == (64, 192, 32, 128)  # the old fixed alignment: larger
    roi[:] = False
    roi[250:, :3] = True
    assert crop_box(roi, 32, (256, 256), align=16) == (208, 256, 0, 48)  # clamped at the image's border


def test_input_alignment_is_the_coarsest_stride_the_method_runs():
    from inspectd.methods import create_method
    assert create_method("patchcore", load_weights=False).input_alignment == 16  # layers 2, 3: strides 8, 16
    padim = create_method("padim", {"backbone": {"layers": [1, 2]}, "grid_stride": 32}, load_weights=False)
    assert padim.backbone.strides == [4, 8] and padim.input_alignment == 32  # whole cells of its scored grid


def test_the_coarse_mask_cuts_each_region_at_its_own_peak():
    """peak_ratio: a wide map around a strong and a weak defect in one frame; each region keeps the
    pixels above its own peak's share, so the weak one is not lost to the strong one's peak."""
    yy, xx = np.mgrid[:64, :64]
    blob = lambda cy, cx, peak: peak * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 6.0**2))  # noqa: E731
    score_map = blob(16, 16, 10.0) + blob(48, 48, 2.0)
    whole = coarse_region(score_map, 0.5)
    cut = coarse_region(score_map, 0.5, peak_ratio=0.5)
    assert np.array_equal(whole, score_map > 0.5)  # 0: the plain threshold
    assert cut[16, 16] and cut[48, 48] and not cut[16, 26] and whole[16, 26]
    strong, weak = cut[:32, :32].sum(), cut[32:, 32:].sum()
    assert strong < whole[:32, :32].sum() and weak < whole[32:, 32:].sum()
    assert abs(strong - weak) <= 0.1 * strong  # half of each peak: the same width for both
    with pytest.raises(ConfigError, match="peak_ratio"):
        F2PADSettings(peak_ratio=1.0).validate()
