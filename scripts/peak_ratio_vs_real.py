"""Issue 11, analysis (reads test labels: oracle, never a calibration input): does the fit's
coarse-mask peak ratio, chosen on its synthetic calibration set, transfer to real defects?

For a fitted bundle, the coarse mask of the chain (its thresholds, coarse_threshold, each region
cut at a share of its own peak: coarse_region) is scored for every ratio of the fit's grid on the
fit's own synthetic set (rebuilt from the bundle's holdout split, exactly as `inspectd fit` builds
it) and on every real defective test image. Prints the mean coarse IOU per ratio on both, and
the ratio the fit's own rule (choose_peak_ratio) picks on each.

Usage: python scripts/peak_ratio_vs_real.py BUNDLE DATA [--out FILE.json]
"""
import argparse
import json

import numpy as np

from inspectd.bundle import calibration as cal
from inspectd.bundle.fit import split_holdout
from inspectd.data.mvtec import load_test, load_train
from inspectd.deploy.inspector import Inspector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("data")
    parser.add_argument("--out")
    parser.add_argument("--holdout", type=float, default=0.2, help="the fit's --holdout")
    parser.add_argument("--seed", type=int, default=0, help="the fit's --seed")
    args = parser.parse_args()

    inspector = Inspector.from_bundle(args.bundle, device="cpu")
    method, chain = inspector.method, inspector.settings
    c = cal.CalibrationConfig(seed=args.seed)
    train = load_train(args.data, method.config.image_size, progress=False)
    holdout = train[split_holdout(len(train), args.holdout, args.seed)[1]]
    syn_images, syn_truths, _ = cal.visible_synthetic_set(method, holdout, c.synthetic_images, c.seed,
                                                          chain.screen_threshold)
    test = load_test(args.data, method.config.image_size, progress=False)
    defective = np.nonzero(test.labels)[0]
    report = {"bundle": args.bundle, "deployed_ratio": chain.f2pad.peak_ratio, "grid": list(c.peak_ratio)}
    for name, images, truths in [("synthetic", syn_images, syn_truths),
                                 ("real", test.images[defective], test.masks[defective])]:
        picked, table = cal.choose_peak_ratio(method, chain, [(name, images, truths)], c.peak_ratio,
                                              c.peak_ratio_tolerance)
        report[name] = {"coarse_mean_iou": table, "rule_picks": picked}
        print(f"{name:9s} rule picks {picked}: " + "  ".join(f"{r}: {v:.1f}" for r, v in table.items()))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
