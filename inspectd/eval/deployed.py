"""`inspectd eval --deployed`: the daemon's own chain on every test image, nothing tuned on labels.

Each image goes through the deployed chain (deploy.NativeChain over deploy.Inspector) exactly as
the daemon runs it: the screening bundle's threshold decides, its pixel threshold gives the
flagged regions, F2PAD refines with the refiner bundle's settings, and the frame is a defect
when a region of the calibrated size is left. Everything is scored at the images' own
resolution: a whole-frame bundle's mask is upsampled to it, a tile bundle (`fit --tile`)
refines native crops. Labels are only used to score. Labelled defects that the fit used
(`inspectd fit --defects`) are left out of the test.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from inspectd.bundle import load_calibration
from inspectd.data.images import write_image
from inspectd.data.mvtec import GOOD, load_test
from inspectd.deploy import DEFECT
from inspectd.deploy.native import NativeChain, NativeInspection, upsample
from inspectd.eval import metrics
from inspectd.eval.bench import machine, speed_probe
from inspectd.geometry import iou


def pooled_f1(truths: np.ndarray, preds: np.ndarray) -> float:
    """Pixel F1 over all pixels of all images at once (MVTec AD 2's SegF1)."""
    tp = np.count_nonzero(truths & preds)
    denominator = np.count_nonzero(truths) + np.count_nonzero(preds)
    return float(2 * tp / denominator) if denominator else float("nan")


def rate(flags: list[bool]) -> float:
    return float(np.mean(flags)) if len(flags) else float("nan")


def area_errors(truths: np.ndarray, reported: list[int], defective) -> list[float]:
    """Relative error of the reported defect area (sum of the defects' area_px) against the
    true defect area, per defective image, in the images' own pixels."""
    return [abs(a - int(np.count_nonzero(t))) / max(1, int(np.count_nonzero(t)))
            for t, a, d in zip(truths, reported, defective) if d]


def resolution_ceiling(truths: np.ndarray, size: int) -> dict:
    """What a mask drawn at `size` px can score at the images' own resolution at best: each true
    mask shrunk to size x size the way the chain shrinks a frame (area averaging), cut at one half,
    and upsampled back the way the chain upsamples a mask. It bounds what resolution alone costs
    pipeline (a) (refine at the bundle's scale, upsample the mask), so what native refinement can
    gain over it by resolution is at most 100 minus this IOU: the rest of any gap is the mask
    against the human outline, at any resolution."""
    defective = [t for t in np.asarray(truths, bool) if t.any()]
    if not defective:
        return {}
    ious, errors = [], []
    for truth in defective:
        small = cv2.resize(truth.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) >= 0.5
        back = upsample(small, truth.shape)
        ious.append(100 * iou(back, truth))
        errors.append(abs(int(back.sum()) - int(truth.sum())) / int(truth.sum()))
    return {"size": int(size), "mean_iou": float(np.mean(ious)), "min_iou": float(np.min(ious)),
            "area_within_10pct": rate([e <= 0.10 for e in errors]),
            "note": f"the true masks drawn at {size} px and upsampled: the best a {size}-px mask scores here"}


def score_group(truths, coarse, final, flagged, decisions, seconds, labels, areas) -> dict:
    """Every reported number for one group of images (all of them, or one defect type)."""
    defective = labels
    errors = area_errors(truths, areas, defective)
    ious = [100 * iou(p, t) for p, t, d in zip(final, truths, defective) if d]
    coarse_ious = [100 * iou(p, t) for p, t, d in zip(coarse, truths, defective) if d]
    return {
        "n": int(len(labels)), "n_defective": int(np.sum(defective)),
        "frame_recall": rate([dec == DEFECT for dec, d in zip(decisions, defective) if d]),
        "screen_recall": rate([f for f, d in zip(flagged, defective) if d]),
        "good_flagged_rate": rate([f for f, d in zip(flagged, defective) if not d]),
        "good_defect_rate": rate([dec == DEFECT for dec, d in zip(decisions, defective) if not d]),
        "pixel_f1": pooled_f1(truths, final), "coarse_pixel_f1": pooled_f1(truths, coarse),
        "mean_iou": float(np.mean(ious)) if ious else float("nan"),
        "coarse_mean_iou": float(np.mean(coarse_ious)) if coarse_ious else float("nan"),
        "area_within_10pct": rate([e <= 0.10 for e in errors]),
        "area_error_median": float(np.median(errors)) if errors else float("nan"),
        "refine_seconds_median": float(np.median(seconds)) if seconds else float("nan"),
        "refine_seconds_p90": float(np.percentile(seconds, 90)) if seconds else float("nan"),
    }


def evaluate_deployed(model: str | Path, data: str | Path, out: str | Path | None = None, limit: int = 0,
                      overlays: int = 8, device: str = "auto", progress: bool = True,
                      screening: str | Path | None = None, stride: int = 1, whole_frame: str = "upsample") -> dict:
    chain = NativeChain.from_bundles(model, screening, device=device, whole_frame=whole_frame)
    inspector = chain.refiner
    test = load_test(data, None, progress=progress)  # scored at the data's own resolution
    used = {str(Path(p).resolve()) for p in (load_calibration(model) or {}).get("defects_used", [])}
    keep = [i for i, p in enumerate(test.paths) if str(Path(p).resolve()) not in used]
    keep = keep[::max(1, stride)]  # every k-th image: a quick look that still spans every defect type
    if limit:
        keep = keep[:limit]
    test = test.subset(keep)
    probe_before = speed_probe(inspector.method)
    timed = [inspect_timed(chain, img) for img in tqdm(
        test.images, desc="deployed chain", unit="img", disable=not progress, leave=False)]
    runs = [run for run, _ in timed]
    result = summarise(test, runs)
    result.update(refine_cost(runs, [cpu for _, cpu in timed]))
    result["speed_probe_ms"] = {"before": probe_before, "after": speed_probe(inspector.method),
                                "what": "one F2PAD iteration's backbone pass of this method, 160 px crop, "
                                        "1 thread (eval/bench.py speed_probe): compare seconds between runs "
                                        "only at a similar probe"}
    height, width = test.images.shape[1:3]
    screen_maps = np.stack([cv2.resize(r.screen_map, (width, height), interpolation=cv2.INTER_LINEAR) for r in runs])
    oracle_threshold, oracle_f1 = metrics.f1_optimal_threshold(test.masks, screen_maps)
    del screen_maps
    result.update({
        "oracle_coarse": {"note": "threshold F1-optimal on this test set (uses its labels): not deployable",
                          "threshold": oracle_threshold, "pixel_f1": oracle_f1},
        "chain": inspector.settings.to_dict(), "model": str(model), "data": str(data), "method": inspector.method.name,
        "screening": str(screening) if screening else str(model), "tile": chain.tile,
        "whole_frame": None if chain.tile else chain.whole_frame,
        "resolution": [int(height), int(width)],
        # (a tiled screening never shrinks the frame: no ceiling of that kind)
        "resolution_ceiling": resolution_ceiling(test.masks, chain.screener.image_size)
        if (height, width) != (chain.screener.image_size,) * 2 and not chain.screen_tile else {},
        "defects_left_out": len(used), "stride": stride, "command": command_line(), "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    })
    print(format_table(result))
    out = Path(out) if out else Path("runs") / f"deployed-{Path(model).name}-{Path(data).name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_safe(result), indent=2, default=float))
    if overlays:
        folder = out.with_suffix("")
        write_overlays(folder, test, runs, overlays)
        print(f"overlays (image | truth | coarse | final): {folder}/")
    print(f"written: {out}")
    return result


def inspect_timed(chain: NativeChain, image: np.ndarray) -> tuple[NativeInspection, float]:
    """One frame through the chain, and the CPU seconds the process spent on it (all threads)."""
    started = time.process_time()
    run = chain.inspect(image)
    return run, time.process_time() - started


def refine_cost(runs: list[NativeInspection], cpu_seconds: list[float]) -> dict:
    """What a refined frame costs in counts that do not grow when other jobs share the cores
    (wall seconds do): CPU seconds of the whole frame and F2PAD iterations."""
    refined = [i for i, r in enumerate(runs) if r.refine_seconds is not None]
    cpu = [cpu_seconds[i] for i in refined]
    iterations = [runs[i].iterations for i in refined]
    return {"refine_cpu_seconds_median": float(np.median(cpu)) if cpu else float("nan"),
            "refine_iterations_median": float(np.median(iterations)) if iterations else float("nan"),
            "refine_iterations_total": int(np.sum(iterations))}


def summarise(test, runs: list[NativeInspection]) -> dict:
    truths = np.asarray(test.masks, bool)
    coarse = np.stack([r.full_coarse() for r in runs])
    final = np.stack([r.full_mask() for r in runs])
    flagged = [r.flagged for r in runs]
    decisions = [r.decision for r in runs]
    seconds = [r.refine_seconds for r in runs if r.refine_seconds is not None]
    areas = [sum(d["area_px"] for d in r.defects) for r in runs]
    result = score_group(truths, coarse, final, flagged, decisions, seconds, np.asarray(test.labels, bool), areas)
    result["n_refined"] = len(seconds)
    per_type = {}
    for kind in sorted(set(test.defect_types)):
        idx = [i for i, k in enumerate(test.defect_types) if k == kind]
        per_type[kind] = score_group(truths[idx], coarse[idx], final[idx], [flagged[i] for i in idx],
                                     [decisions[i] for i in idx],
                                     [runs[i].refine_seconds for i in idx if runs[i].refine_seconds is not None],
                                     np.asarray(test.labels, bool)[idx], [areas[i] for i in idx])
    result["per_type"] = per_type
    result["images"] = per_image(test, runs, truths, coarse, final, areas)
    return result


def per_image(test, runs: list[NativeInspection], truths, coarse, final, areas) -> list[dict]:
    """One record per test image, so a reader can see which frames were missed and which masks
    ran over (the summary alone hides it)."""
    records = []
    for i, run in enumerate(runs):
        defective = bool(test.labels[i])
        records.append({
            "path": "/".join(Path(test.paths[i]).parts[-2:]) if test.paths else str(i),
            "type": test.defect_types[i], "score": round(float(run.score), 4), "flagged": bool(run.flagged),
            "decision": run.decision,
            "iou": round(100 * iou(final[i], truths[i]), 2) if defective else None,
            "coarse_iou": round(100 * iou(coarse[i], truths[i]), 2) if defective else None,
            "true_area_px": int(np.count_nonzero(truths[i])), "reported_area_px": int(areas[i]),
            "refine_seconds": None if run.refine_seconds is None else round(float(run.refine_seconds), 3),
            "iterations": int(run.iterations),
        })
    return records


def json_safe(value):
    """NaN (a rate with nothing to count, e.g. recall of a defect-free group) as null: strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value


def format_table(r: dict) -> str:
    def pct(v):
        return "   -" if v != v else f"{100 * v:5.1f}"

    def num(v, fmt):
        return "   -" if v != v else format(v, fmt)

    head = (f"{'type':<16}{'n':>4}{'recall%':>9}{'good flag%':>11}{'good defect%':>13}{'pixF1':>7}{'coarseF1':>9}"
            f"{'IOU':>7}{'coarseIOU':>10}{'area±10%':>9}{'s med':>7}{'s p90':>7}")
    lines = ["Deployed chain (thresholds and settings from the bundle only; no test label used)", head]
    rows = [*r["per_type"].items(), ("all", r)]
    for name, g in rows:
        lines.append(f"{name:<16}{g['n']:>4}{pct(g['frame_recall']):>9}{pct(g['good_flagged_rate']):>11}"
                     f"{pct(g['good_defect_rate']):>13}{num(g['pixel_f1'], '.3f'):>7}{num(g['coarse_pixel_f1'], '.3f'):>9}"
                     f"{num(g['mean_iou'], '.1f'):>7}{num(g['coarse_mean_iou'], '.1f'):>10}{pct(g['area_within_10pct']):>9}"
                     f"{num(g['refine_seconds_median'], '.2f'):>7}{num(g['refine_seconds_p90'], '.2f'):>7}")
    if "refine_cpu_seconds_median" in r:
        lines.append(f"refined frames: median {num(r['refine_cpu_seconds_median'], '.2f')} CPU s, "
                     f"median {num(r['refine_iterations_median'], '.0f')} F2PAD iterations")
    p = r.get("speed_probe_ms")
    if p:
        lines.append(f"machine speed probe (one F2PAD backbone pass, 160 px, 1 thread): {p['before']:.1f} ms "
                     f"before, {p['after']:.1f} ms after")
    c = r.get("resolution_ceiling")
    if c:
        lines.append(f"resolution ceiling (true masks drawn at {c['size']} px, upsampled): mean IOU {c['mean_iou']:.1f}, "
                     f"areas within 10 % {100 * c['area_within_10pct']:.0f} %")
    o = r.get("oracle_coarse")
    if o:
        lines.append(f"oracle (threshold picked on this test set, not deployable): coarse pixel F1 {o['pixel_f1']:.3f}")
    return "\n".join(lines)


def outlined(image: np.ndarray, mask: np.ndarray, colour: tuple[float, float, float]) -> np.ndarray:
    """The image with the outline of `mask` drawn in `colour` (RGB in [0, 1])."""
    out = np.ascontiguousarray(np.clip(image, 0, 1) * 255).astype(np.uint8)
    contours, _ = cv2.findContours(np.asarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, tuple(int(255 * c) for c in colour), 1)
    return out.astype(np.float32) / 255


def write_overlays(folder: Path, test, runs: list[NativeInspection], n: int) -> None:
    """Panels image | truth | coarse | final for a few images of each type (defects and good ones
    the chain flagged), so a person can look."""
    per_type = max(1, n // max(1, len(set(test.defect_types))))
    chosen: dict[str, int] = {}
    for i, (kind, run) in enumerate(zip(test.defect_types, runs)):
        if chosen.get(kind, 0) >= per_type or (kind == GOOD and not run.flagged):
            continue
        chosen[kind] = chosen.get(kind, 0) + 1
        img = test.images[i]
        panel = np.concatenate([img, outlined(img, test.masks[i], (0, 1, 0)), outlined(img, run.full_coarse(), (1, 1, 0)),
                                outlined(img, run.full_mask(), (1, 0, 0))], axis=1)
        write_image(folder / f"{kind}_{i:03d}_{run.decision}.png", panel)


def command_line() -> str:
    return "inspectd " + " ".join(shlex.quote(a) for a in sys.argv[1:])
