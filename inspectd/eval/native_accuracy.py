"""`inspectd bench native-accuracy`: what refining at the camera's own pixels gains, on
generated camera frames whose defects are small next to the frame.

One generated MVTec-layout set (data/camera.py: brick frames at the camera's size, stains of a
range of lengths), two bundles fitted on its normal frames with the plain fit (a whole-frame
screening bundle at --size px, a tile refiner on --tile px native crops), and the deployed eval
(`eval --deployed`, thresholds from the bundles only) three ways on the same test frames:
(a) the whole-frame bundle refines the downscaled frame and its mask is upsampled (the baseline);
(b) the tile refiner refines native crops around what the screening bundle flags;
(c) the whole-frame bundle solves F2PAD at native pixels with features at its own scale;
(d) the tile bundle screens the native frame in overlapping windows (screening.tiles) and refines
    the native crops around what it flags: nothing is seen downscaled.
Beside them, the resolution ceiling: what the true masks score when drawn at --size px.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from inspectd.errors import InspectdError

MODES = {
    "a": "(a) whole-frame bundle, mask upsampled",
    "b": "(b) tile refiner at native pixels",
    "c": "(c) whole-frame bundle, F2PAD at native pixels",
    "d": "(d) tiled screening + tile refiner, all native",
}


def parse_hw(text: str) -> tuple[int, int]:
    """'2000x1500' (width x height, as cameras are named) -> (1500, 2000)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InspectdError(f"--frame {text!r}: expected WIDTHxHEIGHT, e.g. 2000x1500") from None
    return h, w


def prepare(args, out: Path) -> tuple[Path, Path, Path]:
    """The generated set and both bundles, made once per --out folder (a re-run re-evaluates)."""
    from inspectd.bundle import fit_bundle
    from inspectd.data.camera import write_camera_set

    data, screening, refiner = out / "data", out / "screening", out / "tile"
    if not (data / "camera_set.json").is_file():
        write_camera_set(data, parse_hw(args.frame), args.train, args.defects, args.good,
                         (args.min_length, args.max_length), args.seed)
    made = json.loads((data / "camera_set.json").read_text())
    asked = {"size_hw": list(parse_hw(args.frame)), "train": args.train, "defective": args.defects,
             "good": args.good, "seed": args.seed}
    if {k: made[k] for k in asked} != asked:  # a re-run measures what was made, not other options
        raise InspectdError(f"{out} holds a camera set made with other options ({made['size_hw']}, "
                            f"{made['train']} train, {made['defective']} stains, seed {made['seed']}): "
                            "give another --out or delete it")
    if not (screening / "manifest.json").is_file():
        fit_bundle(args.method, data, screening, {"image_size": args.size}, holdout=args.holdout, seed=args.seed)
    if {"b", "d"} & set(args.modes) and not (refiner / "manifest.json").is_file():
        fit_bundle(args.method, data, refiner, None, holdout=args.holdout, seed=args.seed, tile=args.tile,
                   tiles_per_image=args.tiles_per_image)
    return data, screening, refiner


def run_native_accuracy_bench(args) -> dict:
    from inspectd.eval.bench import machine
    from inspectd.eval.deployed import evaluate_deployed

    command = "inspectd " + " ".join(sys.argv[1:])
    print(f"command: {command}\nmachine: {machine()}")
    out = Path(args.out)
    data, screening, refiner = prepare(args, out)
    results = {}
    for mode in args.modes:
        model, screen = {"b": (refiner, screening), "d": (refiner, refiner)}.get(mode, (screening, None))
        results[mode] = evaluate_deployed(model, data, out / f"deployed-{mode}.json", overlays=args.overlays,
                                          device="cpu", progress=False, screening=screen,
                                          whole_frame="native" if mode == "c" else "upsample")
    report = summary(results, json.loads((data / "camera_set.json").read_text()))
    report.update({"command": command, "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M")})
    print(format_report(report))
    (out / "native-accuracy.json").write_text(json.dumps(report, indent=2, default=float))
    print(f"written: {out / 'native-accuracy.json'}")
    return report


def summary(results: dict, camera_set: dict) -> dict:
    """The numbers that compare the modes, each mode's IOU also as a gain over (a)'s."""
    rows = {}
    for mode, r in results.items():
        rows[mode] = {k: r[k] for k in ("frame_recall", "good_defect_rate", "pixel_f1", "mean_iou",
                                        "coarse_mean_iou", "area_within_10pct", "area_error_median",
                                        "refine_seconds_median", "refine_seconds_p90")}
    base = rows.get("a", {}).get("mean_iou")
    for row in rows.values():
        row["iou_gain_over_a"] = None if base is None else row["mean_iou"] - base
    ceiling = next((r["resolution_ceiling"] for r in results.values() if r["resolution_ceiling"]), {})
    return {"modes": rows, "resolution_ceiling": ceiling, "camera_set": camera_set}


def format_report(report: dict) -> str:
    s = report["camera_set"]
    lines = [f"camera set: {s['size_hw'][1]}x{s['size_hw'][0]} frames, {s['defective']} stains "
             f"{min(s['stain_lengths_px']):.0f}-{max(s['stain_lengths_px']):.0f} px long, {s['good']} good; "
             f"fitted on {s['train']} normal frames",
             f"{'mode':<48}{'recall%':>8}{'good def%':>10}{'pixF1':>7}{'IOU':>7}{'vs (a)':>8}{'area±10%':>9}"
             f"{'s med':>7}{'s p90':>7}"]
    for mode, r in report["modes"].items():
        gain = "" if r["iou_gain_over_a"] is None else f"{r['iou_gain_over_a']:+.1f}"
        lines.append(f"{MODES[mode]:<48}{100 * r['frame_recall']:>8.1f}{100 * r['good_defect_rate']:>10.1f}"
                     f"{r['pixel_f1']:>7.3f}{r['mean_iou']:>7.1f}{gain:>8}{100 * r['area_within_10pct']:>9.1f}"
                     f"{r['refine_seconds_median']:>7.2f}{r['refine_seconds_p90']:>7.2f}")
    c = report["resolution_ceiling"]
    if c:
        lines.append(f"resolution ceiling: the true masks drawn at {c['size']} px and upsampled score "
                     f"{c['mean_iou']:.1f} mean IOU, {100 * c['area_within_10pct']:.0f} % of areas within 10 %")
    return "\n".join(lines)
