"""Issue 11, analysis (reads test labels: oracle, never a calibration input): does the fit's
coarse-mask peak ratio, chosen on its synthetic calibration set, transfer to real defects?

For a fitted bundle, the coarse mask of the chain (its thresholds, coarse_threshold, each region
cut at a share of its own peak: coarse_region) is scored for every ratio of the fit's grid on the
fit's own synthetic set (rebuilt from the bundle's holdout split, exactly as `inspectd fit` builds
it) and on every real defective test image. Prints the mean coarse IOU per ratio on both, and
the ratio the fit's own rule (choose_peak_ratio) picks on each.

Usage: python scripts/peak_ratio_vs_real.py BUNDLE DATA [--out FILE.json]
"""
import json

from inspectd.bundle import calibration as cal
from oracle_inputs import oracle_inputs, parse_args


def main() -> None:
    args = parse_args(__doc__)
    inputs = oracle_inputs(args)
    c, method, chain = inputs.config, inputs.inspector.method, inputs.inspector.settings
    report = {"bundle": args.bundle, "deployed_ratio": chain.f2pad.peak_ratio, "grid": list(c.peak_ratio)}
    for name, (images, truths) in [("synthetic", inputs.synthetic), ("real", inputs.real)]:
        picked, table = cal.choose_peak_ratio(method, chain, [(name, images, truths)], c.peak_ratio,
                                              c.peak_ratio_tolerance)
        report[name] = {"coarse_mean_iou": table, "rule_picks": picked}
        print(f"{name:9s} rule picks {picked}: " + "  ".join(f"{r}: {v:.1f}" for r, v in table.items()))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
