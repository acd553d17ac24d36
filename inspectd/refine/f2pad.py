"""F2PAD as one pure function: (image, fitted method, coarse map, prior, settings) -> result.

    X = X_N + A,  min over X_N of  L(X_N)/thr + lam1 LOG(A) + lam2 MOG(X_N) + lam3 TV(X_N)

Only the pixels of the region of interest (the dilated coarse mask) are variables; the
backbone sees only the crop around them plus a context margin, and the loss only counts the
feature locations near that region, which is what makes one image take seconds, not minutes.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np
from scipy import ndimage
import torch
import torch.nn.functional as F
from timm.optim import Adan

from inspectd.errors import BadImageError, InspectdError
from inspectd.refine import terms
from inspectd.refine.prior import PixelPrior
from inspectd.refine.settings import F2PADSettings
from inspectd.refine.sharing import sharing_matrix

# Crop corners on multiples of the coarsest stride the backbone runs keep every layer's grid
# aligned with the full image's (a method says so with `input_alignment`); 32 when it does not.
CROP_ALIGN = 32


@dataclass
class RefineResult:
    mask: np.ndarray  # (H,W) bool: the pixel-accurate defect mask
    normal: np.ndarray  # (H,W,3) X_N, the recovered defect-free image
    anomaly: np.ndarray  # (H,W,3) A = X - X_N
    coarse_mask: np.ndarray  # (H,W) bool: the thresholded coarse map F2PAD started from
    init_mask: np.ndarray  # (H,W) bool: ||X - X_N^0|| > tau, the initialisation alone
    stats: dict = field(default_factory=dict)
    block: tuple[int, int] = (1, 1)  # native pixels (y, x) per pixel of the bundle's scale

    @functools.cached_property
    def anomaly_magnitude(self) -> np.ndarray:
        """(H,W) what every mask setting thresholds: ||A_ij||, or at native resolution ||A||
        averaged over the block of native pixels one bundle pixel covers (magnitude_at_scale)."""
        return magnitude_at_scale(self.anomaly, self.block)


def magnitude_at_scale(anomaly: np.ndarray, block: tuple[int, int] = (1, 1)) -> np.ndarray:
    """||A|| with A first averaged over a sliding block of native pixels (a box filter; a
    (1, 1) block is plain ||A||). At native resolution the features only constrain X_N's
    averages over such blocks (they are taken on X_N shrunk to the bundle's size), and the log
    sparsity term is concave, so inside a block a few native pixels changed a lot are cheaper than
    all of them a little: per-pixel ||A|| comes out as spikes above tau along edges, which closing
    then joins into blobs (native masks twice the true area on bottle). Averaged over the block, A
    is the quantity tau was calibrated on (A at the bundle's scale), while the outline keeps
    native pixels (the block slides one native pixel at a time)."""
    if tuple(block) != (1, 1):
        anomaly = cv2.blur(np.ascontiguousarray(anomaly, dtype=np.float32), (int(block[1]), int(block[0])))
    return np.linalg.norm(anomaly, axis=2)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise InspectdError("F2PAD: device cuda requested but no usable CUDA GPU was found")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise BadImageError(f"F2PAD: expected an (H,W), (H,W,1) or (H,W,3) image, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise BadImageError("F2PAD: image contains NaN or infinite values")
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


def disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), disk(radius)) > 0 if radius > 0 else mask.copy()


def anomaly_mask(anomaly: np.ndarray, tau: float, close_px: int = 0, fill_holes: bool = False) -> np.ndarray:
    """The defect mask from A (H,W,3): ||A_ij|| > tau (eq. 2), optionally closed and hole-filled.
    Pure post-processing: the bench tunes tau, close_px and fill_holes without re-solving."""
    return mask_from_magnitude(np.linalg.norm(anomaly, axis=2), tau, close_px, fill_holes)


def mask_from_magnitude(magnitude: np.ndarray, tau: float, close_px: int = 0, fill_holes: bool = False) -> np.ndarray:
    """anomaly_mask for a precomputed ||A|| (H,W), so trying many settings computes it once."""
    mask = magnitude > tau
    if close_px > 0 and mask.any():
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, disk(close_px)) > 0
    if fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    return mask


def inpaint(image: np.ndarray, mask: np.ndarray, how: str, references: np.ndarray | None) -> np.ndarray:
    """Initial X_N^0: fill the masked pixels from their surroundings or from a normal image."""
    if how == "nearest":
        if references is None or len(references) == 0:
            raise InspectdError("F2PAD: inpaint=nearest needs normal reference images")
        keep = ~mask
        target = image[keep]  # taken once, not once per reference
        errors = [((ref[keep] - target) ** 2).mean() for ref in references]
        out = image.copy()
        out[mask] = references[int(np.argmin(errors))][mask]
        return out
    flag = cv2.INPAINT_TELEA if how == "telea" else cv2.INPAINT_NS
    img8 = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    filled = cv2.inpaint(img8, mask.astype(np.uint8), 5, flag).astype(np.float32) / 255.0
    out = image.copy()
    out[mask] = filled[mask]
    return out


def coarse_region(score_map: np.ndarray, threshold: float, peak_ratio: float = 0.0) -> np.ndarray:
    """The coarse mask: the map above `threshold`, each connected region of it cut down to the
    pixels above `peak_ratio` times that region's own peak. Per region, so a weak defect beside a
    strong one in the same frame keeps its own outline."""
    above = score_map > threshold
    if peak_ratio <= 0 or not above.any():
        return above
    n, labels = cv2.connectedComponents(above.astype(np.uint8), connectivity=8)
    floors = np.zeros(n, dtype=np.float32)  # float32: a native frame's map must not get a float64 copy
    floors[1:] = peak_ratio * np.asarray(ndimage.maximum(score_map, labels, np.arange(1, n)))
    return above & (score_map >= floors[labels])


def crop_box(roi: np.ndarray, margin: int, shape: tuple[int, int],
             align: int = CROP_ALIGN) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) around the ROI plus margin, corners on multiples of `align`."""
    ys, xs = np.nonzero(roi)
    h, w = shape
    y0 = max(0, (ys.min() - margin) // align * align)
    x0 = max(0, (xs.min() - margin) // align * align)
    y1 = min(h, math.ceil((ys.max() + 1 + margin) / align) * align)
    x1 = min(w, math.ceil((xs.max() + 1 + margin) / align) * align)
    return int(y0), int(y1), int(x0), int(x1)


class Problem:
    """The objective on one crop, with the ROI pixels as the only variables."""

    def __init__(self, method, crop: torch.Tensor, roi: torch.Tensor, init: torch.Tensor, offset_cells,
                 loss_cells: torch.Tensor, threshold: float, prior: PixelPrior | None, s: F2PADSettings,
                 lam1: float, feature_hw: tuple[int, int] | None = None):
        self.method, self.crop, self.roi, self.s, self.lam1 = method, crop, roi, s, lam1
        self.feature_hw = feature_hw  # the crop's size at the bundle's scale (None: the crop's own)
        self.flat_index = roi.flatten().nonzero()[:, 0]
        # (P,3) pixels of X in the ROI; contiguous: per-pixel norms of a transposed view are 4x slower
        self.observed = crop.flatten(1)[:, self.flat_index].T.contiguous()
        self.start = init.flatten(1)[:, self.flat_index].T.contiguous()
        self.loss_cells = loss_cells
        self.threshold = threshold
        self.prior = terms.mog_whitening(*prior.tensors(crop.device)) if (prior is not None and s.lam2 > 0) else None
        with torch.no_grad():
            feats0 = self.features(self.assemble(self.start))
        self.scorer = method.refine_scorer(feats0, offset_cells, loss_cells > 0)

    def features(self, xn: torch.Tensor) -> torch.Tensor:
        """The method's features of X_N (3,H,W). A native-resolution crop is first shrunk to the
        bundle's scale by area averaging (differentiable), so the features have the scale they
        were fitted at while the variables stay native pixels."""
        x = xn[None]
        if self.feature_hw is not None and tuple(x.shape[-2:]) != tuple(self.feature_hw):
            x = F.interpolate(x, size=self.feature_hw, mode="area")
        return self.method.features(x)

    def restricted_to(self, keep: torch.Tensor, z: torch.Tensor) -> "Problem":
        """The same objective with only the ROI pixels `keep` as variables, the others fixed at z."""
        sub = copy.copy(self)
        sub.crop = self.assemble(z)
        sub.flat_index = self.flat_index[keep]
        sub.observed = self.observed[keep]
        return sub

    def assemble(self, z: torch.Tensor) -> torch.Tensor:
        """Crop image with the ROI pixels replaced by the variables z (P,3)."""
        return self.crop.flatten(1).index_copy(1, self.flat_index, z.T).view_as(self.crop)

    def loss(self, z: torch.Tensor, lam1: float | None = None) -> tuple[torch.Tensor, dict]:
        lam1 = self.lam1 if lam1 is None else lam1
        xn = self.assemble(z)
        feature = self.scorer(self.features(xn)).sum() / self.threshold
        total = feature
        parts = {"feature": float(feature.detach())}
        if lam1 > 0:
            sparsity = terms.log_sparsity(self.observed - z, self.s.eps)
            total = total + lam1 * sparsity
            parts["sparsity"] = float(sparsity.detach())
        if self.prior is not None:
            prior = terms.whitened_mog_energy(z, *self.prior)
            total = total + self.s.lam2 * prior
            parts["prior"] = float(prior.detach())
        if self.s.lam3 > 0:
            tv = terms.total_variation(xn)
            total = total + self.s.lam3 * tv
            parts["tv"] = float(tv.detach())
        return total, parts


def solve(problem: Problem, z0: torch.Tensor, s: F2PADSettings, lam1: float, max_iters: int,
          sharing_for: Callable[[torch.Tensor], torch.Tensor] | None) -> tuple[torch.Tensor, dict]:
    """Adan with local gradient sharing, a per-pixel adaptive step and per-pixel step clipping."""
    z = z0.clone().requires_grad_(True)
    opt = Adan([z], lr=s.lr)
    history: list[float] = []
    magnitudes: list[torch.Tensor] = []  # ||A|| per ROI pixel, every `window` iterations
    parts: dict = {}
    sharing = sharing_for(problem.flat_index) if sharing_for is not None else None
    for it in range(max_iters):
        opt.zero_grad()
        loss, parts = problem.loss(z, lam1)
        loss.backward()
        history.append(float(loss.detach()))
        if sharing is not None:
            z.grad = sharing @ z.grad
        before = z.detach().clone()
        opt.step()
        with torch.no_grad():
            step = z - before
            # eq. (15): larger steps where A_ij is near 0, where the gradient is small
            a_norm = (problem.observed - before).norm(dim=1, keepdim=True)
            step *= 1 + (s.adaptive_gain - 1) * torch.exp(-a_norm / s.eps)
            norm = step.norm(dim=1, keepdim=True).clamp_min(1e-12)
            step *= torch.clamp(s.clip / norm, max=1.0)
            # projection keeps every pixel a valid colour
            z.copy_((before + step).clamp_(0.0, 1.0))
        if converged(history, s, it) or mask_settled(problem, z, s, it, magnitudes):
            break
    return z.detach(), {"iterations": len(history), "loss_first": history[0], "loss_last": history[-1],
                        "terms": parts}


def mask_settled(problem: Problem, z: torch.Tensor, s: F2PADSettings, it: int, magnitudes: list) -> bool:
    """The answer is the mask, not the loss: once no more than `mask_tol` of the ROI's pixels saw
    ||A|| move by more than eps (the scale at which the LOG penalty calls A non-zero) over the
    last `window` iterations, further iterations only polish X_N. Independent of tau, so the
    calibration can re-threshold the same solution."""
    if s.mask_tol <= 0 or (it + 1) % s.window:
        return False
    with torch.no_grad():
        magnitudes.append((problem.observed - z).norm(dim=1))
    if it + 1 < s.min_iters or len(magnitudes) < 2:
        return False
    moved = int(((magnitudes[-1] - magnitudes[-2]).abs() > s.eps).sum())
    del magnitudes[:-1]
    return moved <= s.mask_tol * magnitudes[-1].numel()


def converged(history: list[float], s: F2PADSettings, it: int) -> bool:
    if it + 1 < max(s.min_iters, s.window + 1):
        return False
    old, new = history[-1 - s.window], history[-1]
    return (old - new) < s.rel_tol * s.window * max(abs(new), 1e-6)


def refine(image: np.ndarray, method, coarse_map: np.ndarray, prior: PixelPrior | None = None,
           settings: F2PADSettings | None = None, references: np.ndarray | None = None) -> RefineResult:
    """Refine one image. `coarse_map` is the method's anomaly map at image resolution."""
    image, coarse_map = as_rgb(image), np.asarray(coarse_map, dtype=np.float32)
    if coarse_map.shape != image.shape[:2]:
        raise BadImageError(f"F2PAD: coarse map {coarse_map.shape} does not match image {image.shape[:2]}")
    return solve_image(image, method, coarse_map, prior, settings or F2PADSettings(), references)


def refine_native(image: np.ndarray, method, coarse_map: np.ndarray, prior: PixelPrior | None = None,
                  settings: F2PADSettings | None = None, references: np.ndarray | None = None) -> RefineResult:
    """Refine a camera-resolution image (H, W) with a bundle fitted at a smaller scale.

    `coarse_map` is the method's map of the image shrunk to the bundle's size (h, w). X_N's
    variables, the sparsity, prior and TV terms and the mask are native pixels; the method's
    features are taken on X_N shrunk back to (h, w) by area averaging (differentiable), the scale
    they were fitted at. `settings` and `references` are the bundle's, at its scale
    (native_settings carries them to native pixels).
    """
    image, coarse_map = as_rgb(image), np.asarray(coarse_map, dtype=np.float32)
    if coarse_map.ndim != 2 or coarse_map.shape[0] > image.shape[0] or coarse_map.shape[1] > image.shape[1]:
        raise BadImageError(f"F2PAD: coarse map {coarse_map.shape} is not a downscale of image {image.shape[:2]}")
    return solve_image(image, method, coarse_map, prior, settings or F2PADSettings(), references)


def native_settings(s: F2PADSettings, ry: float, rx: float) -> F2PADSettings:
    """Settings calibrated at the bundle's scale for an image ry x rx times larger, by rule: a
    length in pixels (dilate_px, close_px) scales with the linear ratio; a term summed over pixels
    (sparsity, prior) has ry * rx native pixels per bundle pixel, so its weight is divided by the
    area ratio (and ref_area, an area, multiplied by it); total variation sums edge lengths, so
    its weight is divided by the linear ratio. Colour units (tau, eps, lr, clip) have no scale;
    context_px and loss_margin_px stay at the bundle's scale, where the features are taken."""
    area = ry * rx
    r = math.sqrt(area)
    if area == 1.0:
        return s
    return s.replace(dilate_px=round(s.dilate_px * r), close_px=round(s.close_px * r), lam=s.lam / area,
                     ref_area=s.ref_area * area, lam2=s.lam2 / area, lam3=s.lam3 / r)


def solve_image(image: np.ndarray, method, coarse_map: np.ndarray, prior: PixelPrior | None, bundle: F2PADSettings,
                references: np.ndarray | None) -> RefineResult:
    """F2PAD on `image`, whose map `coarse_map` may be at a smaller (the bundle's) scale."""
    started = time.perf_counter()
    if not method.differentiable:
        raise InspectdError(f"F2PAD: method {method.name} has no differentiable score map")
    threshold = bundle.threshold if bundle.threshold is not None else method.thresholds.get("pixel")
    if threshold is None or not np.isfinite(threshold) or threshold <= 0:
        raise InspectdError("F2PAD: no coarse-map threshold (settings.threshold or the bundle's pixel threshold)")

    (H, W), (h, w) = image.shape[:2], coarse_map.shape
    scaled = (H, W) != (h, w)
    s = native_settings(bundle, H / h, W / w)  # the same settings when the scales agree
    # the map upsampled (bilinear) before thresholding: the coarse outline is not blocky
    native_map = cv2.resize(coarse_map, (W, H), interpolation=cv2.INTER_LINEAR) if scaled else coarse_map
    coarse = coarse_region(native_map, threshold, s.peak_ratio)
    stats = {"threshold": float(threshold), "settings": s.to_dict(), "coarse_area": int(coarse.sum())}
    if scaled:
        stats["scale"] = [H / h, W / w]
    if not coarse.any():
        return finished(image, image, coarse, coarse, coarse, s, stats, started, "empty coarse mask")
    roi = dilate(coarse, s.dilate_px)
    if roi.mean() > s.max_roi_fraction:
        return finished(image, image, coarse, coarse, coarse, s, stats, started,
                        f"coarse mask covers {roi.mean():.0%} of the image (> max_roi_fraction): returned as is")

    if scaled and s.inpaint == "nearest" and references is not None:
        references = nearest_reference(image, roi, references)
    # X_N starts inpainted over the coarse mask only (the paper's initialisation); the dilation
    # ring around it is free to change but starts at X. Inpainting the whole dilated ROI started
    # normal pixels there away from X (a reference never matches a part or a texture pixel for
    # pixel), and the concave log sparsity term pulls a large ||A|| back only weakly, so the mask
    # came out as most of the ROI: on a brick stain IOU 0.37 -> 0.72, on every 3rd bottle test
    # image 54.8 -> 56.8 (BENCHMARKS.md, 2026-12-07).
    init = inpaint(image, coarse, s.inpaint, references)
    init_mask = np.linalg.norm(image - init, axis=2) > s.tau
    device = resolve_device(s.device)
    method.to(device)
    # the crop is chosen on the bundle's grid (corners on its strides), then mapped to native pixels
    roi_small = shrink_mask(roi, (h, w)) if scaled else roi
    # aligned to the backbone's own coarsest stride, not a fixed 32: at 16 (PatchCore's layers)
    # crops are about 10 % smaller in area with the same context, measured 10-15 % faster per
    # bottle defect at the same IOU (BENCHMARKS.md, 2026-12-07)
    y0, y1, x0, x1 = crop_box(roi_small, bundle.context_px, (h, w), getattr(method, "input_alignment", CROP_ALIGN))
    Y0, Y1, X0, X1 = native_span(y0, y1, h, H) + native_span(x0, x1, w, W)
    stride = method.feature_stride
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
    crop = to_t(image[Y0:Y1, X0:X1]).permute(2, 0, 1).contiguous()
    init_crop = to_t(init[Y0:Y1, X0:X1]).permute(2, 0, 1).contiguous()
    roi_crop = to_t(roi[Y0:Y1, X0:X1])
    cells = loss_cells(roi_small[y0:y1, x0:x1], bundle.loss_margin_px, stride, (y1 - y0, x1 - x0), device)
    lam1 = s.lam * (s.ref_area / max(int(coarse.sum()), 1)) ** s.size_power  # the paper's size-scaled weight
    problem = Problem(method, crop, roi_crop, init_crop, (y0 // stride, x0 // stride), cells, float(threshold),
                      prior, s, lam1, feature_hw=(y1 - y0, x1 - x0))
    sharing_for = (functools.partial(sharing_matrix, crop, roi_crop, n=s.neighbourhood,
                                     sigma_spatial=s.sigma_spatial, sigma_colour=s.sigma_colour)
                   if s.share_gradients and s.neighbourhood > 1 else None)
    with one_cpu_thread(device):
        z, solve_stats = solve(problem, problem.start, s, lam1, s.max_iters, sharing_for)
        a_norm = (problem.observed - z).norm(dim=1)
        in_mask = a_norm > s.tau
        stats.update(solve_stats, lam1=lam1, crop=[Y0, Y1, X0, X1], roi_area=int(roi.sum()))
        if s.reestimate and bool(in_mask.any()):
            z = reestimate(problem, z, in_mask, s, sharing_for, stats)
    normal = image.copy()
    normal[Y0:Y1, X0:X1] = problem.assemble(z).permute(1, 2, 0).cpu().numpy()
    block = (max(1, round(H / h)), max(1, round(W / w)))
    mask = mask_from_magnitude(magnitude_at_scale(image - normal, block), s.tau, s.close_px, s.fill_holes)
    return finished(image, normal, coarse, init_mask, mask, s, stats, started, "refined", block)


@contextlib.contextmanager
def one_cpu_thread(device: torch.device):
    """The solve on CPU runs on one torch thread. Its passes are small (a crop of a few hundred
    pixels a side, one image): measured alone on 2 cores, 6 bottle defects took the same wall
    time with one thread as with two spinning threads (median 4.13 vs 4.16 s) at half the CPU,
    and 5.29 s with two passively waiting ones, so a second thread only costs. One thread also
    leaves the other core to the capture process beside it. Restored afterwards."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def native_span(start: int, stop: int, small: int, native: int) -> tuple[int, int]:
    """[start, stop) on an axis of `small` pixels as native pixels of an axis of `native`."""
    if small == native:
        return start, stop
    return round(start * native / small), native if stop >= small else round(stop * native / small)


def shrink_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A native mask at (h, w): a small pixel belongs to it when any of its native pixels does."""
    return cv2.resize(mask.astype(np.float32), (hw[1], hw[0]), interpolation=cv2.INTER_AREA) > 0


def nearest_reference(image: np.ndarray, roi: np.ndarray, references: np.ndarray) -> np.ndarray:
    """The normal reference (bundle scale) closest to the image outside the ROI, picked at the
    bundle's scale and only that one upsampled to the image's size."""
    h, w = references.shape[1:3]
    small = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    keep = ~shrink_mask(roi, (h, w))
    best = int(np.argmin([((ref[keep] - small[keep]) ** 2).mean() for ref in references]))
    return cv2.resize(references[best], (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)[None]


def reestimate(problem: Problem, z: torch.Tensor, in_mask: torch.Tensor, s: F2PADSettings, sharing_for,
               stats) -> torch.Tensor:
    """Section III-E3: with the mask known, pixels outside it are X exactly and the pixels
    inside are solved again without the sparsity term, giving a clean X_N."""
    z_fixed = torch.where(in_mask[:, None], z, problem.observed)
    keep = in_mask.nonzero()[:, 0]
    sub = problem.restricted_to(keep, z_fixed)
    z_in, re_stats = solve(sub, z_fixed[keep], s, 0.0, s.reestimate_iters, sharing_for)
    stats["reestimate_iterations"] = re_stats["iterations"]
    return z_fixed.index_copy(0, keep, z_in)


def loss_cells(roi: np.ndarray, margin: int, stride: int, crop_hw, device) -> torch.Tensor:
    """Feature cells (h/stride, w/stride) lying within `margin` pixels of the ROI."""
    near = torch.from_numpy(dilate(roi, margin).astype(np.float32)).to(device)[None, None]
    hf, wf = math.ceil(crop_hw[0] / stride), math.ceil(crop_hw[1] / stride)
    return F.adaptive_max_pool2d(near, (hf, wf))[0, 0]


def finished(image, normal, coarse, init_mask, mask, s, stats, started, status,
             block: tuple[int, int] = (1, 1)) -> RefineResult:
    stats.update(status=status, seconds=time.perf_counter() - started, mask_area=int(mask.sum()))
    stats.setdefault("iterations", 0)
    return RefineResult(mask=mask, normal=normal, anomaly=image - normal, coarse_mask=coarse,
                        init_mask=init_mask, stats=stats, block=block)
