"""Issue 11, analysis (reads test labels: oracle, never a calibration input): how well does the
fit's label-free F2PAD pick transfer to real defects?

For a fitted bundle, every lam x tau of the fit's grid is solved on the fit's own synthetic
calibration set (rebuilt from the bundle's holdout split, exactly as `inspectd fit` builds it)
and on every real defective test image, through the bundle's chain (its thresholds and its
iteration cap). Prints, per cell, the synthetic and the real mean IOU; the synthetic pick; and
the real IOU the pick can be expected to reach under the synthetic set's own noise (bootstrap
over the synthetic images: each resample picks its argmax, the real IOU of those picks is
averaged).

Usage: python scripts/pick_vs_real.py BUNDLE DATA [--out FILE.json]
"""
import json
import time

import numpy as np
import torch

from inspectd.bundle import calibration as cal
from oracle_inputs import oracle_inputs, parse_args


def per_image_iou(runs, probe_runs, truths, mask, area_cap) -> np.ndarray:
    """IOU per image of one mask setting (tau, close_px, fill_holes), scored by the fit's own
    score_masks (its minimum defect area from the normal probes)."""
    *_, weighted = cal.score_masks({"set": runs}, probe_runs, [("set", None, truths)], mask, area_cap)
    return weighted * len(truths)


def main() -> None:
    args = parse_args(__doc__)
    torch.set_num_threads(1)  # F2PAD's solves run on one thread in the chain too

    inputs = oracle_inputs(args)
    inspector, c = inputs.inspector, inputs.config
    method, chain = inspector.method, inspector.settings
    maps, scores = method.predict(inputs.holdout)
    syn_images, syn_truths = inputs.synthetic
    probes = cal.normal_probes(inputs.holdout, maps, scores, chain, c.normal_probes)
    sets = [("synthetic", syn_images, syn_truths), ("real", *inputs.real)]
    area_cap = max(4, int(c.max_min_area_share * syn_images.shape[1] * syn_images.shape[2]))

    cells = {}
    for lam in c.lam:
        started = time.perf_counter()
        runs, probe_runs = cal.solve_candidate(method, inspector.prior, inspector.references, chain,
                                               chain.f2pad.replace(lam=lam), sets, probes, progress=False)
        for tau in c.tau:
            cells[f"lam={lam} tau={tau}"] = {
                name: per_image_iou(runs[name], probe_runs, truths, (tau, chain.f2pad.close_px, chain.f2pad.fill_holes),
                                    area_cap) for name, _, truths in sets}
        print(f"lam {lam}: {time.perf_counter() - started:.0f} s", flush=True)

    keys = list(cells)
    syn = np.stack([cells[k]["synthetic"] for k in keys])
    real = np.array([cells[k]["real"].mean() for k in keys])
    pick = int(np.argmax(syn.mean(1)))
    rng = np.random.default_rng(0)
    n = syn.shape[1]
    picks = [int(np.argmax(syn[:, rng.integers(0, n, n)].mean(1))) for _ in range(2000)]
    print(f"{args.bundle} (iteration cap {chain.f2pad.max_iters}; {n} synthetic, {len(inputs.real[0])} real defects)")
    print("cell                   synthetic  real   (mean IOU)")
    for i, k in enumerate(keys):
        print(f"{k:22s} {100 * syn[i].mean():8.1f} {100 * real[i]:6.1f}{'   <- pick' if i == pick else ''}")
    expected = 100 * real[picks].mean()
    print(f"pick {keys[pick]}: real {100 * real[pick]:.1f}; under the synthetic set's noise (bootstrap): "
          f"{expected:.1f} expected, p10 {100 * np.quantile(real[picks], 0.1):.1f}; best cell {100 * real.max():.1f}")
    if args.out:
        result = {"bundle": args.bundle, "max_iters": chain.f2pad.max_iters, "pick": keys[pick],
                  "expected_real_iou_of_pick": round(expected, 2),
                  "synthetic_areas_px": [int(a) for a in syn_truths.sum((1, 2))],
                  "cells": {k: {name: [round(100 * float(v), 2) for v in vals] for name, vals in cell.items()}
                            for k, cell in cells.items()}}
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
