"""`inspectd demo`: the whole inspection chain on an embedded synthetic production line.

Parts are cut from a texture that ships with scikit-image; cut-paste defects are injected at
a set rate with their truth masks kept. A method is fitted on defect-free parts (the chain calibrated on
held-out parts), and every frame goes through the deployed chain (deploy.Inspector): screened,
and when flagged refined by F2PAD, judged and measured. Each published defect is printed with its
geometry and, because the truth is known, the IOU of the coarse and refined masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inspectd.data.synth import DefectSynthesizer, SynthConfig
from inspectd.data.textures import texture_parts
from inspectd.bundle.demo import fit_demo_bundle
from inspectd.deploy import Inspector
from inspectd.geometry import iou


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
    if not (bundle / "manifest.json").is_file():
        print(f"fitting {args.method} on {args.train} defect-free {args.texture} parts -> {bundle}")
    return fit_demo_bundle(bundle, args.texture, args.size, args.train, args.seed, args.method, export=False)


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
    inspector = Inspector.from_bundle(ensure_model(args))
    chain = inspector.settings
    counts = {"frames": 0, "flagged": 0, "defective": 0, "caught": 0, "false_alarms": 0, "cleared": 0}
    coarse_ious, refined_ious, refine_seconds = [], [], []
    print(f"model {inspector.model_id}: screen threshold {chain.screen_threshold:.3f}, "
          f"pixel threshold {chain.pixel_threshold:.3f}, min defect area {chain.min_defect_area_px} px")
    for frame_id, image, truth in frame_stream(args):
        if frame_id >= args.frames:
            break
        inspection = inspector.inspect(image)
        counts["frames"] += 1
        counts["defective"] += int(truth.any())
        if not inspection.flagged:
            continue
        counts["flagged"] += 1
        refine_seconds.append(inspection.refine_seconds)
        if truth.any():
            counts["caught"] += int(inspection.decision == "defect")
            coarse_ious.append(iou(inspection.coarse_mask, truth))
            refined_ious.append(iou(inspection.mask, truth))
            verdict = f"IOU coarse {coarse_ious[-1]:.2f} -> F2PAD {refined_ious[-1]:.2f}"
        elif inspection.decision == "defect":
            counts["false_alarms"] += 1
            verdict = "no injected defect (false alarm)"
        else:
            counts["cleared"] += 1
            verdict = "no injected defect: cleared by F2PAD"
        print(f"frame {frame_id:4d} score {inspection.score:7.3f} | {inspection.decision} | "
              f"{len(inspection.defects)} defect(s) | {verdict} | "
              f"{inspection.refine_seconds:.1f} s, {inspection.stats['iterations']} it")
        for d in inspection.defects[:3]:
            print(f"           area {d['area_px']:5d} px  bbox {d['bbox']}  centroid {d['centroid']}  "
                  f"orientation {d['orientation_deg']:6.1f} deg  axes {d['major_axis_px']:.1f} x {d['minor_axis_px']:.1f}")
    summary = {**counts, "missed": counts["defective"] - counts["caught"],
               "mean_iou_coarse": float(np.mean(coarse_ious)) if coarse_ious else None,
               "mean_iou_f2pad": float(np.mean(refined_ious)) if refined_ious else None,
               "refine_s_median": float(np.median(refine_seconds)) if refine_seconds else None}
    print("summary: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))
    return summary
