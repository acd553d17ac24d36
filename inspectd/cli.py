"""The `inspectd` command: thin argument parsing over the library; every error is one line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from inspectd.errors import InspectdError
from inspectd.runtime import keep_freed_memory


def parse_settings(pairs: list[str]) -> dict:
    """`--set key=value` pairs -> nested dict; values parsed as JSON when they look like it."""
    out: dict = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise InspectdError(f"--set {pair!r}: expected key=value")
        key, raw = pair.split("=", 1)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def load_settings(path: str | None, pairs: list[str] | None) -> dict:
    """Settings from a YAML file, then `--set key=value` pairs on top."""
    settings: dict = {}
    if path:
        import yaml

        try:
            settings = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InspectdError(f"{path}: cannot read settings ({exc})") from exc
        if not isinstance(settings, dict):
            raise InspectdError(f"{path}: expected a mapping of settings")
    return merge(settings, parse_settings(pairs))


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def cmd_fit(args) -> None:
    from inspectd.bundle import fit_bundle

    if args.defects_n is not None and not args.defects:
        raise InspectdError("--defects-n needs --defects DIR (an MVTec-layout folder with labelled defects)")
    summary = fit_bundle(args.method, args.data, args.out, load_settings(args.settings, args.set),
                         holdout=args.holdout, seed=args.seed, defects=args.defects,
                         n_defects=(3 if args.defects_n is None else args.defects_n) if args.defects else 0,
                         tile=args.tile, tiles_per_image=args.tiles_per_image)
    print(json.dumps(summary, indent=2))


def cmd_eval(args) -> None:
    if args.deployed:
        from inspectd.eval.deployed import evaluate_deployed

        evaluate_deployed(args.model, args.data, out=args.out, limit=args.limit, overlays=args.overlays,
                          device=args.device, screening=args.screening, stride=args.stride,
                          whole_frame=args.whole_frame)
        return
    from inspectd.eval.runner import evaluate_bundle

    evaluate_bundle(args.model, args.data, out=args.out, threshold=args.threshold)


def cmd_synth(args) -> None:
    from inspectd.data.synth import SynthConfig, write_synthetic_set

    summary = write_synthetic_set(args.normal, args.masks, args.out, n=args.n, seed=args.seed, size=args.size,
                                  config=SynthConfig(size=args.size, structural_prob=args.structural),
                                  overwrite=args.overwrite)
    print(json.dumps(summary, indent=2, default=str))


def cmd_bench(args) -> None:
    from inspectd.eval import bench

    bench.main(args)


def cmd_export(args) -> None:
    from inspectd.methods import load_method
    from inspectd.methods.export import export_to_bundle

    info = export_to_bundle(load_method(args.model), args.model)
    print(json.dumps(info, indent=2))


def cmd_demo(args) -> None:
    from inspectd.demo import run_demo

    run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inspectd", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="fit a method on train/good of an MVTec-layout folder and save a bundle")
    p.add_argument("--method", required=True)
    p.add_argument("--data", required=True, help="MVTec-layout folder (uses train/good)")
    p.add_argument("--out", required=True, help="bundle directory, e.g. models/bottle-padim")
    p.add_argument("--settings", help="YAML file of method settings (see configs/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="method setting, e.g. coreset_ratio=0.05")
    p.add_argument("--holdout", type=float, default=0.2,
                   help="fraction of train/good kept out of fitting: the chain's thresholds and F2PAD settings are "
                        "calibrated on it (and on realistic synthetic defects pasted on it)")
    p.add_argument("--defects", help="MVTec-layout folder with a few labelled real defects (test/<type>/ + "
                                     "ground_truth/) that join the calibration")
    p.add_argument("--defects-n", type=int, default=None,
                   help="how many (default 3) of --defects' defective images to use (a seeded pick; the bundle records which, "
                        "and `eval --deployed` leaves them out)")
    p.add_argument("--tile", type=int, default=None, metavar="SIZE",
                   help="fit a native-resolution refiner on SIZE x SIZE crops of the images at their own resolution "
                        "(refines native crops around what a screening bundle flags; see `eval --screening`)")
    p.add_argument("--tiles-per-image", type=int, default=4, help="--tile: random crops cut from each normal image")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("eval", help="image/pixel AUROC, AUPRO, IOU, DICE of a bundle on test/ of a folder")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", help="JSON result file (default runs/eval-<model>-<data>.json)")
    p.add_argument("--threshold", choices=["f1", "bundle"], default="f1",
                   help="mask threshold for IOU/DICE: F1-optimal on this data (oracle), or the bundle's calibrated one")
    p.add_argument("--deployed", action="store_true",
                   help="the daemon's own chain (screen, decide, coarse mask, F2PAD, defects) on every test image, "
                        "thresholds and settings from the bundle only: the headline numbers")
    p.add_argument("--limit", type=int, default=0, help="--deployed: only the first N test images (quick look)")
    p.add_argument("--stride", type=int, default=1,
                   help="--deployed: every K-th test image (a quick look across all defect types; 1 = all)")
    p.add_argument("--whole-frame", choices=["upsample", "native"], default="upsample",
                   help="--deployed, a whole-frame bundle on larger images: refine the downscaled image and "
                        "upsample its mask, or solve F2PAD at native pixels with features at the bundle's scale")
    p.add_argument("--overlays", type=int, default=8, help="--deployed: overlay PNGs to write (0 = none)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="--deployed: torch device")
    p.add_argument("--screening", help="--deployed: the screening bundle (default: --model screens too); needed "
                                       "when --model is a tile bundle that refines native crops")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="write the bundle's ONNX screening graph (image -> anomaly map, score)")
    p.add_argument("--model", required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("synth", help="write an MVTec-layout set of cut-paste defects (F2PAD eq. 16)")
    p.add_argument("--normal", required=True, help="folder of normal images (or an MVTec root: train/good)")
    p.add_argument("--masks", help="folder of real defect masks to reuse as shapes (default: random blobs)")
    p.add_argument("--out", required=True)
    p.add_argument("-n", type=int, default=54)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--structural", type=float, default=0.0, help="share of structural (copied-region) defects")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_synth)

    from inspectd.demo import add_demo_parser
    from inspectd.eval.bench import add_bench_parser
    from inspectd.service.cli import add_service_commands
    from inspectd.service.models import build_refiner, build_screener

    add_bench_parser(sub, cmd_bench)
    add_demo_parser(sub, cmd_demo)
    add_service_commands(sub, build_screener, build_refiner)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keep_freed_memory()
    started = time.time()
    try:
        args.func(args)
    except InspectdError as exc:
        print(f"inspectd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"inspectd {args.command}: interrupted after {time.time() - started:.0f} s", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
