"""`inspectd demo`: the whole inspection chain on an embedded synthetic production line.

Parts are cut from a texture that ships with scikit-image; cut-paste defects are injected at
a set rate with their truth masks kept. A method is fitted on defect-free parts (thresholds
calibrated on synthetic defects of held-out parts), every frame is screened, and flagged
frames are refined by F2PAD and measured. Each published defect is printed with its
geometry and, because the truth is known, the IOU of the coarse and refined masks.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from inspectd.data.synth import DefectSynthesizer, SynthConfig
from inspectd.data.textures import texture_parts
from inspectd.eval.calibrate import fit_and_calibrate, load_prior
from inspectd.eval.metrics import iou
from inspectd.geometry import measure_defects
from inspectd.methods import load_method
from inspectd.refine import F2PADSettings, refine


def add_demo_parser(sub, handler) -> None:
    p = sub.add_parser("demo", help="run the inspection chain on the embedded synthetic production line")
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--defect-rate", type=float, default=0.3)
    p.add_argument("--method", default="patchcore")
    p.add_argument("--texture", default="brick", help="brick | gravel | grass")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--train", type=int, default=40, help="defect-free parts to fit on")
    p.add_argument("--model", default=None, help="bundle directory (default models/demo-<texture>-<method>)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=handler)


def ensure_model(args) -> Path:
    bundle = Path(args.model or f"models/demo-{args.texture}-{args.method}")
    if (bundle / "manifest.json").is_file():
        return bundle
    print(f"fitting {args.method} on {args.train} defect-free {args.texture} parts -> {bundle}")
    normals = texture_parts(args.texture, args.train, args.size, seed=args.seed)
    fit_and_calibrate(args.method, f"<{args.texture} parts>", bundle, {"image_size": args.size},
                      holdout=0.2, seed=args.seed, progress=False, train=normals)
    return bundle


def frame_stream(args):
    """Endless parts from the line; a share of them carries a pasted defect (truth kept)."""
    rng = np.random.default_rng(args.seed + 1000)
    synth = DefectSynthesizer(None, SynthConfig(size=args.size, area_range=(0.005, 0.05)), seed=args.seed + 1)
    frame_id = 0
    while True:
        part = texture_parts(args.texture, 1, args.size, seed=int(rng.integers(1 << 31)))[0]
        if rng.random() < args.defect_rate:
            image, truth = synth(part)
        else:
            image, truth = part, np.zeros(part.shape[:2], bool)
        yield frame_id, image, truth
        frame_id += 1


def run_demo(args) -> dict:
    method = load_method(ensure_model(args))
    prior = load_prior(method.bundle_dir)
    settings = F2PADSettings()
    image_thr = method.thresholds["image"]
    counts = {"frames": 0, "flagged": 0, "defective": 0, "caught": 0, "false_alarms": 0}
    coarse_ious, refined_ious, refine_seconds, screen_seconds = [], [], [], []
    print(f"model {method.model_id}: image threshold {image_thr:.3f}, pixel threshold {method.thresholds['pixel']:.3f}")
    for frame_id, image, truth in frame_stream(args):
        if frame_id >= args.frames:
            break
        started = time.perf_counter()
        maps, scores = method.predict(image[None])
        screen_seconds.append(time.perf_counter() - started)
        counts["frames"] += 1
        counts["defective"] += int(truth.any())
        if scores[0] <= image_thr:
            continue
        counts["flagged"] += 1
        result = refine(image, method, maps[0], prior, settings)
        refine_seconds.append(result.stats["seconds"])
        defects = measure_defects(result.mask, maps[0], min_area_px=4)
        if truth.any():
            counts["caught"] += 1
            coarse_ious.append(iou(result.coarse_mask, truth))
            refined_ious.append(iou(result.mask, truth))
            verdict = f"IOU coarse {coarse_ious[-1]:.2f} -> F2PAD {refined_ious[-1]:.2f}"
        else:
            counts["false_alarms"] += 1
            verdict = "no injected defect (false alarm)"
        print(f"frame {frame_id:4d} score {scores[0]:7.3f} | {len(defects)} defect(s) | {verdict} | "
              f"{result.stats['seconds']:.1f} s, {result.stats['iterations']} it")
        for d in defects[:3]:
            print(f"           area {d['area_px']:5d} px  bbox {d['bbox']}  centroid {d['centroid']}  "
                  f"orientation {d['orientation_deg']:6.1f} deg  axes {d['major_axis_px']:.1f} x {d['minor_axis_px']:.1f}")
    summary = {**counts, "missed": counts["defective"] - counts["caught"],
               "mean_iou_coarse": float(np.mean(coarse_ious)) if coarse_ious else None,
               "mean_iou_f2pad": float(np.mean(refined_ious)) if refined_ious else None,
               "screen_ms_median": 1000 * float(np.median(screen_seconds)) if screen_seconds else None,
               "refine_s_median": float(np.median(refine_seconds)) if refine_seconds else None}
    print("summary: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))
    return summary
