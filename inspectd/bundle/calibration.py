"""Calibrating the inspection chain at fit time, from normal images (plus optional labelled defects).

What a line has is normal parts. Every threshold and setting the chain uses is chosen here and
saved in the bundle (calibration.json), so `inspectd fit` alone gives a deployable model:

- pixel threshold (where the coarse mask starts): the top of the held-out normal image scores
  (2 % of normal frames pass it), not where strong synthetic defects would put it, so hardly a
  normal pixel starts F2PAD.
- screen threshold: screening is for recall, the refiner clears what passes, so it lets a share
  of normal frames through (5 % by default), never above the pixel threshold. A "2 %" budget on
  a few dozen held-out images is their single highest score, which one unusual normal part sets;
  a flagged frame whose map stays under the pixel threshold starts F2PAD from this one.
- tiled screen threshold: a tile bundle (`fit --tile`) screening a native frame (screening.tiles)
  scores it as its highest window, which runs above what one window scores; its frame decision
  uses the same budget on held-out native frames screened whole in windows (and so does its drift
  reference). Where a coarse region starts stays a window's pixel threshold.
- coarse mask peak ratio: a detector's map spreads around a defect as far as its features
  reach, and further the stronger the defect, so the region above one absolute threshold is far
  wider than a clear defect. Each region is cut to the pixels above a share of its own peak; the
  smallest share within a point of the best coarse-mask IOU on the calibration defects (0 keeps
  the whole region; F2PAD can take pixels out of a wide region, not add them to a tight one).
- inpaint: the initialisation that reconstructs held-out normal pixels best under random masks
  (aligned parts favour the nearest normal image, textures favour classical inpainting).
- ROI dilation: one feature stride, the distance over which a feature cell mixes pixels.
- mask shape, by rule: F2PAD only needs to change some pixels of a feature cell to make the cell
  look normal, so on textured defects A comes out speckled at the scale of the deepest layer's
  cells; the mask is closed with a radius of a quarter of that stride (bridging gaps up to half a
  cell) and its holes are filled (defects are reported as outlines, the way people annotate them).
- lam, tau: the F2PAD settings with the best mean IOU on realistic synthetic
  defects (subtle stains, scratches, blended patches, displaced texture) pasted on held-out
  normal images, run through the chain itself; every kind equally often and one defect per
  slice of log-area, so the set spans specks to a tenth of the part whatever the draw. The set
  is as subtle as this detector can still see (contrast raised only until half of it is
  flagged); labelled real defects, when given, count as much as all the synthetic ones together.
- how sure the pick is: its lead over the runner-up, paired image by image, with a standard
  error; a lead within two of them is a near tie, and the fit warns that a few labelled defects
  should decide (two near-tied settings can differ by several IOU points on real defects).
- max_iters: the fewest F2PAD iterations (of a few caps) whose calibration mean IOU stays within a
  point of the solve run to its stopping rule, on all calibration defects and on their larger half
  (a cap costs the large defects first). Time per refined frame is proportional to the
  iterations, and how soon a solve is good enough depends on the line, so the fit measures it.
- min_defect_area_px: larger than what F2PAD leaves on the highest-scoring normal images. It
  depends on lam and tau (a lower tau leaves larger false regions), so every candidate is scored
  with its own minimum area, exactly as it would be deployed.
- drift reference: the held-out normal images' screening scores, kept so the running line can
  tell when its normal parts stop scoring like them (inspectd/deploy/drift.py).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import asdict, dataclass

import cv2
import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from inspectd.bundle.assets import CALIBRATION_VERSION
from inspectd.data.realistic import KINDS, RealisticConfig, RealisticDefects
from inspectd.deploy.inspector import ChainSettings, Inspector, coarse_threshold, judge
from inspectd.errors import ConfigError, InspectdError
from inspectd.geometry import iou, measure_defects
from inspectd.refine import F2PADSettings
from inspectd.refine.f2pad import coarse_region, disk, inpaint, mask_from_magnitude

log = logging.getLogger(__name__)
SUBTLE_CONTRAST = (0.04, 0.2)  # mean RGB change over the defect, pixel values in [0, 1]
AREA_RANGE = (0.002, 0.1)  # synthetic defect areas, shares of the image: industrial defects run from a speck to a tenth of the part


@dataclass
class CalibrationConfig:
    normal_frame_budget: float = 0.02  # share of normal frames whose map passes the pixel (coarse-mask) threshold
    screen_frame_budget: float = 0.05  # share of normal frames screening passes to the refiner (recall first)
    # realistic synthetic defects the F2PAD settings are chosen on. 24, not 12: the pick is a near
    # tie on every bottle fit, and twice the images cut its noise (docs/BENCHMARKS.md, fifth session)
    synthetic_images: int = 24
    lam: tuple[float, ...] = (0.01, 0.03, 0.1)
    tau: tuple[float, ...] = (0.03, 0.05, 0.08)
    # coarse-mask peak ratios tried (F2PADSettings.peak_ratio), by the coarse mask's IOU alone; the
    # smallest whose coarse mean IOU (0-1) is within the tolerance of the best is kept
    peak_ratio: tuple[float, ...] = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8)
    peak_ratio_tolerance: float = 0.01
    # None: by rule (half a feature stride; filled outlines), a tuple: tried on the synthetic set
    close_px: tuple[int, ...] | None = None
    fill_holes: tuple[bool, ...] | None = None
    # iteration caps tried, smallest first, after lam and tau (choose_max_iters); () keeps the solver's own
    # stopping rule. Up to 100: most solves stop by 80-110 iterations, and a cap pays where it cuts the long ones
    max_iters: tuple[int, ...] = (40, 60, 80, 100)
    max_iters_tolerance: float = 0.01  # synthetic mean IOU (0-1) the fit may give up for a cap
    normal_probes: int = 4  # highest-scoring held-out normals refined to size min_defect_area_px
    max_min_area_share: float = 0.002  # min_defect_area_px never exceeds this share of the image
    seed: int = 0

    def __post_init__(self):
        for name in ("normal_frame_budget", "screen_frame_budget"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"calibration: {name} must be in (0, 1), got {getattr(self, name)}")
        if self.synthetic_images < 1 or not self.lam or not self.tau:
            raise ConfigError("calibration: need synthetic_images >= 1 and non-empty lam and tau grids")
        if not self.peak_ratio or any(not 0 <= r < 1 for r in self.peak_ratio) or not 0 <= self.peak_ratio_tolerance < 1:
            raise ConfigError(f"calibration: peak_ratio needs values in [0, 1) and peak_ratio_tolerance in [0, 1), "
                              f"got {self.peak_ratio} and {self.peak_ratio_tolerance}")
        if any(int(i) < 1 for i in self.max_iters) or not 0 <= self.max_iters_tolerance < 1:
            raise ConfigError(f"calibration: max_iters caps must be >= 1 and max_iters_tolerance in [0, 1), got "
                              f"{self.max_iters} and {self.max_iters_tolerance}")


def calibrate_chain(method, prior, fit_images: np.ndarray, holdout: np.ndarray, references: np.ndarray,
                    defects: tuple[np.ndarray, np.ndarray] | None = None, config: CalibrationConfig | None = None,
                    progress: bool = True, frame_scores: np.ndarray | None = None) -> dict:
    """The chain's settings for a fitted `method`; returns calibration.json's content.

    `frame_scores`: a tile bundle's held-out native frames, each scored as the highest of its
    windows (fit.tiled_frame_scores): the screen frame budget is a share of frames, so a tiled
    screening's threshold (and the drift reference, which compares the capture's frame scores) is
    set on these; the pixel threshold stays a window's, where a coarse region starts."""
    c = config or CalibrationConfig()
    if len(holdout) < 2:
        raise InspectdError(f"calibration needs at least 2 held-out normal images, got {len(holdout)} "
                            "(raise --holdout or add training images)")
    maps, scores = method.predict(holdout)
    threshold = float(np.quantile(scores, 1 - c.normal_frame_budget))
    screen = min(threshold, float(np.quantile(scores, 1 - c.screen_frame_budget)))
    tiled = None if frame_scores is None else {
        "tiled_screen_threshold": float(np.quantile(frame_scores, 1 - c.screen_frame_budget))}
    chosen_inpaint, inpaint_errors = choose_inpaint(holdout, references, c.seed)
    base = F2PADSettings(size_power=0, inpaint=chosen_inpaint, dilate_px=int(method.feature_stride))
    chain = ChainSettings(screen_threshold=screen, pixel_threshold=threshold, f2pad=base)
    *synthetic, synthetic_info = visible_synthetic_set(method, holdout, c.synthetic_images, c.seed, screen)
    sets = calibration_sets(synthetic, defects)
    peak_ratio, peak_ratio_table = choose_peak_ratio(method, chain, sets, c.peak_ratio, c.peak_ratio_tolerance)
    chain.f2pad = base = base.replace(peak_ratio=peak_ratio)
    probes = normal_probes(holdout, maps, scores, chain, c.normal_probes)
    best, tables, normal_areas = choose_f2pad(method, prior, references, chain, sets, probes, c, progress)
    min_area = best.pop("min_defect_area_px")
    chain.f2pad = base.replace(**best)
    chain.min_defect_area_px = min_area
    f2pad_chosen = {k: v for k, v in chain.f2pad.to_dict().items() if k != "device"}
    return {
        "version": CALIBRATION_VERSION,
        "chain": {"screen_threshold": screen, "pixel_threshold": threshold, "min_defect_area_px": min_area,
                  "f2pad": f2pad_chosen, **(tiled or {})},
        # what normal frames score: the capture's drift monitor compares a line's recent scores with these
        "drift_reference": {"normal_scores": [round(float(v), 6) for v in
                                              (scores if frame_scores is None else frame_scores)]},
        "evidence": {
            "config": asdict(c), "n_holdout": int(len(holdout)),
            "normal_scores": {"median": float(np.median(scores)), "max": float(scores.max())},
            **({} if frame_scores is None else {"normal_frame_scores": [float(v) for v in frame_scores]}),
            "inpaint_reconstruction_error": inpaint_errors,
            "synthetic_images": int(len(synthetic[0])), "synthetic_set": synthetic_info, "real_defects": int(len(defects[0])) if defects else 0,
            "peak_ratio_coarse_mean_iou": peak_ratio_table,
            "f2pad_grid_mean_iou": tables["grid"], "f2pad_pick": tables["pick"],
            "max_iters_mean_iou": tables["max_iters"],
            "max_iters_large_half_loss": tables["max_iters_large_half_loss"],
            "normal_probe_areas_px": normal_areas,
        },
    }


def choose_inpaint(normals: np.ndarray, references: np.ndarray, seed: int) -> tuple[str, dict]:
    """telea or nearest, whichever fills random holes of held-out normal images closer to the truth.
    Label-free: it measures how much a part looks like its neighbours vs like other parts."""
    rng = np.random.default_rng(seed + 17)
    h, w = normals.shape[1:3]
    errors = {"telea": [], "nearest": []}
    for image in normals[:8]:
        mask = np.zeros((h, w), np.uint8)
        r = max(3, min(h, w) // 12)
        cy, cx = rng.integers(r, h - r), rng.integers(r, w - r)
        cv2.circle(mask, (int(cx), int(cy)), int(r), 1, -1)
        hole = mask > 0
        for how in errors:
            filled = inpaint(image, hole, how, references)
            errors[how].append(float(np.abs(filled[hole] - image[hole]).mean()))
    mean = {how: float(np.mean(v)) for how, v in errors.items()}
    return min(mean, key=mean.get), mean


def as_annotated(mask: np.ndarray) -> np.ndarray:
    """A defect as a person outlines it: the changed pixels joined and their holes filled.
    Real defect masks (MVTec and the like) are drawn outlines, so the mask settings are chosen
    against outlines, not against the speckle of pixels that happen to differ."""
    radius = max(1, round(mask.shape[0] / 128))
    closed = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, disk(radius)) > 0
    return ndimage.binary_fill_holes(closed | mask)


def realistic_set(normals: np.ndarray, n: int, seed: int, contrast: tuple[float, float] = SUBTLE_CONTRAST
                  ) -> tuple[np.ndarray, np.ndarray]:
    """`n` realistic synthetic defects on the held-out normal images (cycled), with outlined truth."""
    config = RealisticConfig(size=normals.shape[1], area_range=AREA_RANGE, contrast_range=contrast)
    synth = RealisticDefects(config, seed=seed + 101)
    areas = stratified_areas(n, config.area_range, config.size, seed + 202)
    images, masks = [], []
    for i in range(n):
        base = normals[i % len(normals)]
        others = [normals[j] for j in range(len(normals)) if j != i % len(normals)] or None
        # every kind equally often, every size stratum once
        image, mask = synth(base, others, kind=KINDS[i % len(KINDS)], area_px=areas[i])
        images.append(image)
        masks.append(as_annotated(mask))
    return np.stack(images), np.stack(masks)


def stratified_areas(n: int, area_range: tuple[float, float], size: int, seed: int) -> np.ndarray:
    """`n` defect areas in pixels, one drawn inside each of n equal slices of log-area over
    `area_range` (shares of a size x size image), in a shuffled order. Independent draws leave
    gaps: 24 of them covered 160-4000 px of a 130-6550 px range on bottle, so the pick rested on
    small defects; one per slice spans the range with the same log-uniform law (a variance
    reduction, not a different prior)."""
    rng = np.random.default_rng(seed)
    lo, hi = np.log(np.asarray(area_range, float) * size * size)
    u = (rng.permutation(n) + rng.uniform(size=n)) / n
    return np.exp(lo + u * (hi - lo))


def visible_synthetic_set(method, normals: np.ndarray, n: int, seed: int, threshold: float):
    """Synthetic defects at the edge of what this detector sees. The settings only matter for
    subtle defects (a strong one comes out under any of them), so the set starts subtle; where
    the detector flags fewer than half of them, they carry no information about the settings,
    and the contrast is raised until it does."""
    low, high = SUBTLE_CONTRAST
    for _ in range(4):
        images, masks = realistic_set(normals, n, seed, (low, high))
        _, scores = method.predict(images)
        flagged = float(np.mean(scores > threshold))
        if flagged >= 0.5 or high >= 0.8:
            break
        low, high = min(2 * low, 0.4), min(2 * high, 0.8)
    return images, masks, {"contrast_range": [low, high], "flagged_share": flagged}


def closing_radius(method) -> int:
    """A quarter of the coarsest backbone stride the method reads (see the module's docstring)."""
    strides = getattr(getattr(method, "backbone", None), "strides", None) or [method.feature_stride]
    return max(1, int(max(strides)) // 4)


def normal_probes(normals, maps, scores, chain: ChainSettings, n: int) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """The `n` highest-scoring normal images, each with the coarse threshold that gives it a
    region as if screening had flagged it (the top 0.5 % of its own map at most)."""
    return [(normals[i], maps[i], min(chain.pixel_threshold, float(np.quantile(maps[i], 0.995))))
            for i in np.argsort(scores)[::-1][:n]]


def calibration_sets(synthetic, defects) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, images, truth masks): the synthetic set, and the labelled real defects when given."""
    return [("synthetic", *synthetic)] + ([("real", *defects)] if defects is not None and len(defects[0]) else [])


def choose_peak_ratio(method, chain: ChainSettings, sets, grid: tuple[float, ...], tolerance: float = 0.0
                      ) -> tuple[float, dict]:
    """The smallest coarse-mask peak ratio whose mean IOU of the coarse mask alone (each image
    thresholded by the chain's own rule, coarse_threshold) is within `tolerance` of the best.
    Chosen before F2PAD's settings, on the maps alone: it sets the region F2PAD works in, and no
    solve is needed to compare them. The smaller ratio wins near ties because the two errors are
    not alike: F2PAD takes normal pixels out of a region that is too wide, but cannot reach a
    defect's pixels that a too-tight region left out (CFLOW-AD on bottle: 0.8 led 0 by 0.4
    points, within the synthetic set's noise)."""
    maps = np.concatenate([method.predict(images)[0] for _, images, _ in sets])
    truths = np.concatenate([t for _, _, t in sets])
    weights = calibration_weights(sets)
    table = {}
    for ratio in grid:
        ious = [iou(coarse_region(m, coarse_threshold(chain, float(m.max())), ratio), t) for m, t in zip(maps, truths)]
        table[str(ratio)] = float(np.dot(ious, weights))
    top = max(table.values())
    best = min(r for r in grid if table[str(r)] >= top - tolerance)
    log.info("calibration: coarse mask peak ratio %s (coarse mean IOU %.1f; without it %.1f)", best,
             100 * table[str(best)], 100 * table[str(grid[0])])
    return float(best), {k: round(100 * v, 2) for k, v in table.items()}


def choose_f2pad(method, prior, references, chain: ChainSettings, sets, probes,
                 c: CalibrationConfig, progress: bool) -> tuple[dict, dict, list[int]]:
    """lam by re-solving; tau, close_px and fill_holes by post-processing the same solutions;
    then the iteration cap (choose_max_iters). Each candidate's minimum defect area comes from the
    normal probes solved with it, and the candidate is scored with that area (see the module's
    docstring)."""
    close = c.close_px if c.close_px is not None else (closing_radius(method),)
    fill = c.fill_holes if c.fill_holes is not None else (True,)
    h, w = sets[0][1].shape[1:3]
    cap = max(4, int(c.max_min_area_share * h * w))
    table: dict[str, float] = {}
    per_image: dict[str, np.ndarray] = {}
    best, best_score, best_areas = None, -1.0, []
    for lam in c.lam:
        f2pad = chain.f2pad.replace(lam=lam)
        runs, probe_runs = solve_candidate(method, prior, references, chain, f2pad, sets, probes, progress)
        for tau, close_px, fill_holes in itertools.product(c.tau, close, fill):
            score, min_area, areas, weighted = score_masks(runs, probe_runs, sets, (tau, close_px, fill_holes), cap)
            key = f"lam={lam} tau={tau} close_px={close_px} fill_holes={fill_holes} min_area={min_area}"
            table[key], per_image[key] = round(100 * score, 2), weighted
            if score > best_score:
                best_score, best_areas, best_key = score, areas, key
                best = {"lam": lam, "tau": tau, "close_px": close_px, "fill_holes": fill_holes,
                        "min_defect_area_px": min_area}
    log.info("calibration: F2PAD %s (mean IOU %.1f)", best, 100 * best_score)
    pick = pick_margin(per_image, best_key, labelled=len(sets) > 1)
    best, iters_table, capped_areas = choose_max_iters(method, prior, references, chain, sets, probes, c, best,
                                                       per_image[best_key], cap, progress)
    return best, {"grid": table, "pick": pick, **iters_table}, capped_areas or best_areas


def pick_margin(per_image: dict[str, np.ndarray], chosen: str, labelled: bool = False) -> dict:
    """How far the chosen F2PAD setting is ahead of the runner-up on the same calibration images:
    the difference of their scores and its standard error, paired image by image. A lead within
    two standard errors is a near tie: which of the two is deployed is then decided by the
    particular synthetic defects (or float rounding in the solves), not by the line, and the two
    can differ on real defects. The fit says so, and a few labelled defects settle it."""
    others = {k: v for k, v in per_image.items() if k != chosen}
    if not others:
        return {"chosen": chosen, "runner_up": None, "margin": None, "standard_error": None, "near_tie": False}
    runner_up = max(others, key=lambda k: others[k].sum())
    diff = per_image[chosen] - others[runner_up]  # per-image contributions: they sum to the margin
    n, margin = len(diff), float(diff.sum())
    se = float(np.sqrt(n / (n - 1) * ((diff - margin / n) ** 2).sum())) if n > 1 else float("inf")
    near_tie = bool(margin < 2 * se)
    if near_tie:
        advice = ("more labelled defects (a larger --defects-n) narrow it" if labelled else
                  "a few labelled defects (inspectd fit --defects DIR --defects-n 3) decide between them")
        log.warning("calibration: the F2PAD settings are a near tie: %s leads %s by %.1f +- %.1f mean IOU points on "
                    "%d calibration defects; they may differ on real defects: %s.", chosen, runner_up,
                    100 * margin, 100 * se, n, advice)
    return {"chosen": chosen, "runner_up": runner_up, "margin": round(100 * margin, 2),
            "standard_error": round(100 * se, 2), "near_tie": near_tie}


def choose_max_iters(method, prior, references, chain: ChainSettings, sets, probes, c: CalibrationConfig,
                     best: dict, uncapped_per_image: np.ndarray, area_cap: int, progress: bool
                     ) -> tuple[dict, dict, list[int] | None]:
    """The fewest F2PAD iterations that keep the chosen settings' calibration mean IOU within
    `max_iters_tolerance` of the uncapped solve, over all calibration defects and over their
    larger half alone. Refinement time is proportional to the iterations, and the stopping rule
    (the loss or the mask settled) is generic: on a given line a solve can be good long before it
    settles. But a larger region takes more iterations to settle, so a cap costs the large
    defects and hardly the small ones (bottle, PatchCore, 40 iterations: 1.1 points on the larger
    half, 0.1 on the smaller), and a line's real defects may be larger than most calibration
    ones. Re-solved with each cap, so the minimum defect area and the mask are what the capped
    chain deploys."""
    uncapped = chain.f2pad.max_iters
    weights = calibration_weights(sets)
    areas_px = truth_areas(sets)
    large = areas_px >= np.median(areas_px)
    table = {str(uncapped): round(100 * float(uncapped_per_image.sum()), 2)}
    large_half_loss = {}
    mask = (best["tau"], best["close_px"], best["fill_holes"])
    for max_iters in sorted(i for i in c.max_iters if i < uncapped):
        f2pad = chain.f2pad.replace(lam=best["lam"], max_iters=max_iters)
        runs, probe_runs = solve_candidate(method, prior, references, chain, f2pad, sets, probes, progress)
        score, min_area, areas, per_image = score_masks(runs, probe_runs, sets, mask, area_cap)
        loss = uncapped_per_image - per_image  # weighted per-image contributions
        loss_large = float(loss[large].sum() / weights[large].sum())
        table[str(max_iters)], large_half_loss[str(max_iters)] = round(100 * score, 2), round(100 * loss_large, 2)
        if loss.sum() <= c.max_iters_tolerance and loss_large <= c.max_iters_tolerance:
            log.info("calibration: F2PAD max_iters %d (mean IOU %.1f, uncapped %.1f; %.1f points lost on the larger "
                     "half)", max_iters, 100 * score, 100 * uncapped_per_image.sum(), 100 * loss_large)
            return ({**best, "max_iters": max_iters, "min_defect_area_px": min_area},
                    {"max_iters": table, "max_iters_large_half_loss": large_half_loss}, areas)
    return {**best, "max_iters": uncapped}, {"max_iters": table, "max_iters_large_half_loss": large_half_loss}, None


def calibration_weights(sets) -> np.ndarray:
    """Each calibration image's weight in the score (score_masks): every set weighs the same."""
    return np.concatenate([np.full(len(truths), 1 / (len(truths) * len(sets))) for _, _, truths in sets])


def truth_areas(sets) -> np.ndarray:
    """Each calibration image's true defect area in pixels, in score_masks' order."""
    return np.concatenate([truths.reshape(len(truths), -1).sum(1) for _, _, truths in sets])


def solve_candidate(method, prior, references, chain: ChainSettings, f2pad: F2PADSettings, sets, probes,
                    progress: bool) -> tuple[dict, list]:
    """One F2PAD setting through the chain: every calibration image and every normal probe."""
    inspector = Inspector(method, ChainSettings(chain.screen_threshold, chain.pixel_threshold, 1, f2pad),
                          prior, references, device=f2pad.device)
    label = f"lam={f2pad.lam} max_iters={f2pad.max_iters}"
    runs = {name: [inspector.refine(img) for img in
                   tqdm(images, desc=f"calibrating F2PAD {label} ({name})", leave=False, disable=not progress)]
            for name, images, _ in sets}
    probe_runs = [Inspector(method, ChainSettings(chain.screen_threshold, threshold, 1, f2pad), prior,
                            references, device=f2pad.device).refine(image, amap)
                  for image, amap, threshold in probes]
    return runs, probe_runs


def score_masks(runs: dict, probe_runs: list, sets, mask: tuple[float, int, bool], area_cap: int
                ) -> tuple[float, int, list[int], np.ndarray]:
    """(score, min_defect_area_px, probe areas, per-image contributions) of one mask setting (tau,
    close_px, fill_holes): the minimum area just clears the normal probes; the score is the mean
    IOU per set, averaged over the sets (real defects, when given, weigh as much as all synthetic
    ones); each calibration image's IOU times its weight in that average sums to the score."""
    areas = [largest_region(mask_with(run, *mask, 1)) for run in probe_runs]
    min_area = int(min(area_cap, max(4, max(areas, default=0) + 1)))
    ious = np.concatenate([[iou(mask_with(run, *mask, min_area), t) for run, t in zip(runs[name], truths)]
                           for name, _, truths in sets])
    weighted = ious * calibration_weights(sets)
    return float(weighted.sum()), min_area, areas, weighted


def largest_region(mask: np.ndarray) -> int:
    return max((r["area_px"] for r in measure_defects(mask)), default=0)


def mask_with(run, tau: float, close_px: int, fill_holes: bool, min_area_px: int) -> np.ndarray:
    """The chain's final mask for other mask settings, from the same F2PAD solution."""
    if run.anomaly_magnitude is None:  # not solved (empty or too-large coarse region): its mask as is
        return judge(run.mask, None, min_area_px)[2]
    return judge(mask_from_magnitude(run.anomaly_magnitude, tau, close_px, fill_holes), None, min_area_px)[2]
