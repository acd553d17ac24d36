"""`inspectd bench f2pad`: the F2PAD paper's protocol on any MVTec-layout folder.

From DIR: 54 (by default) seeded cut-paste test images whose bases are DIR's test/good images
plus train/good images held out of fitting, with defect shapes from DIR's ground_truth; a
validation set made the same way with another seed from other held-out train images (the only
place thresholds are chosen); each method is fitted on the remaining train/good images.
Prints Table I (coarse vs F2PAD IOU/DICE), Table III ablations, timing, the same on DIR's real
defects, and writes overlays and a JSON record.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from inspectd.data.images import list_images, read_image, write_image
from inspectd.data.mvtec import load_test, load_train
from inspectd.data.synth import DefectSynthesizer, SynthConfig, load_mask_sources
from inspectd.eval import metrics
from inspectd.errors import ConfigError
from inspectd.bundle.fit import peak_memory_gb
from inspectd.methods import create_method
from inspectd.refine import F2PADSettings, PixelPrior, refine
from inspectd.refine.f2pad import mask_from_magnitude, one_cpu_thread

TUNED = ("lam", "size_power", "inpaint", "tau", "close_px", "fill_holes")
ABLATIONS = {
    "without pixel prior": {"lam2": 0.0},
    "without sparsity": {"lam": 0.0},
    "Adan without gradient sharing": {"share_gradients": False},
}


def add_bench_parser(sub, handler) -> None:
    p = sub.add_parser("bench", help="benchmarks (print their command and machine)")
    bsub = p.add_subparsers(dest="bench", required=True)
    f = bsub.add_parser("f2pad", help="F2PAD paper protocol: coarse vs refined masks, ablations, timing")
    f.add_argument("--data", required=True, help="MVTec-layout folder")
    f.add_argument("--methods", default="patchcore,padim")
    f.add_argument("--n-test", type=int, default=54)
    f.add_argument("--size", type=int, default=256, help="images are resized to this (the paper: 256)")
    f.add_argument("--n-val", type=int, default=18)
    f.add_argument("--seed", type=int, default=0, help="test-set seed (the validation set uses seed+1)")
    f.add_argument("--shots", type=int, default=0, help="fit on this many normal images (paper's few-shot: 16)")
    f.add_argument("--ablation-images", type=int, default=18, help="test images the ablations run on")
    f.add_argument("--no-real", action="store_true", help="skip DIR's real defects")
    f.add_argument("--real-only", action="store_true",
                   help="only DIR's real defects (lam from --set/--settings; the validation set still sets the "
                        "cut-paste threshold that is reported for comparison)")
    f.add_argument("--limit", type=int, default=0, help="refine only the first N test images (quick look)")
    f.add_argument("--overlays", type=int, default=6)
    f.add_argument("--out", default="runs/bench-f2pad")
    f.add_argument("--settings", help="YAML file of F2PAD settings (see configs/f2pad.yaml)")
    f.add_argument("--set", action="append", metavar="KEY=VALUE", help="F2PAD setting, e.g. lam=0.5")
    f.add_argument("--tune", default="0.03,0.1,0.3",
                   help="lam values tried on the validation set (the paper grid-searches it per category); '' = no tuning")
    f.add_argument("--tune-size-power", default="1,0",
                   help="size_power values tried with each lam (1 = the paper's lam/size, 0 = no size scaling)")
    f.add_argument("--tune-inpaint", default="telea,nearest",
                   help="initialisations tried (nearest = pixels of the closest fit image, for aligned parts)")
    f.add_argument("--tune-tau", default="0.03,0.05,0.07,0.1",
                   help="mask thresholds tau tried (post-processing: no re-solve per value)")
    f.add_argument("--tune-close", default="0,2,4", help="mask closing radii tried (close_px)")
    f.add_argument("--tune-fill", default="false,true", help="fill_holes values tried")
    f.add_argument("--tune-real", default="0.003,0.01,0.03",
                   help="lam values tried on the real defects (2-fold: each half uses the other half's best)")
    f.add_argument("--tune-images", type=int, default=10, help="validation images used for tuning")
    f.set_defaults(func=handler)

    nb = bsub.add_parser("native", help="camera-resolution frames: screening frames/s per frame size, message "
                                         "sizes at 5 MP, peak memory of screening and refining at 5 and 20 MP")
    nb.add_argument("--screening", required=True, help="screening bundle (whole-frame)")
    nb.add_argument("--refiner", help="tile bundle (`fit --tile`) for the refining memory (default: --screening)")
    nb.add_argument("--sizes", default="900,5MP", help="frame sizes to screen: 256, 900, 5MP, 20MP")
    nb.add_argument("--tiled", help="a tile bundle: also frames/s of screening in its windows (screening.tiles)")
    nb.add_argument("--frames", type=int, default=60)
    nb.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory processes")
    nb.add_argument("--whole-frame-native", action="store_true",
                    help="also the peak memory of refining a whole frame at native pixels with the screening bundle")
    nb.add_argument("--out", help="JSON results file")
    nb.set_defaults(func=handler)

    na = bsub.add_parser("native-accuracy", help="camera frames with small defects (generated): deployed masks "
                                                  "upsampled vs refined at native pixels, same frames, same run")
    na.add_argument("--out", default="runs/native-accuracy",
                    help="folder for the generated set, the bundles and the results (a re-run reuses them)")
    na.add_argument("--method", default="patchcore")
    na.add_argument("--frame", default="2000x1500", help="camera frame size, WIDTHxHEIGHT")
    na.add_argument("--size", type=int, default=256, help="the whole-frame (screening) bundle's image size")
    na.add_argument("--tile", type=int, default=256, help="the tile refiner's crop size (native pixels)")
    na.add_argument("--tiles-per-image", type=int, default=8)
    na.add_argument("--train", type=int, default=16, help="normal frames to fit on")
    na.add_argument("--holdout", type=float, default=0.25, help="share of the normal frames kept for calibration")
    na.add_argument("--defects", type=int, default=16, help="test frames with a stain")
    na.add_argument("--good", type=int, default=6, help="normal test frames")
    na.add_argument("--min-length", type=float, default=40.0, help="shortest stain, native px")
    na.add_argument("--max-length", type=float, default=240.0, help="longest stain, native px")
    na.add_argument("--modes", default="abcd",
                    help="which of (a) upsampled, (b) tile refiner, (c) whole-frame native, (d) tiled screening too")
    na.add_argument("--overlays", type=int, default=4)
    na.add_argument("--seed", type=int, default=0)
    na.set_defaults(func=handler)

    sc = bsub.add_parser("screening", help="frames/s and latency of ONNX Runtime vs eager torch, same model, same run")
    sc.add_argument("--models", nargs="+", required=True, help="bundle directories (exported or not)")
    sc.add_argument("--frames", type=int, default=200)
    sc.add_argument("--warmup", type=int, default=10)
    sc.add_argument("--rounds", type=int, default=3, help="passes over the frames per runtime; best kept")
    sc.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    sc.set_defaults(func=handler)

    so = bsub.add_parser("soak", help="capture + refiner processes on the demo line: memory over a long run")
    so.add_argument("--minutes", type=float, default=10.0)
    so.add_argument("--warmup-minutes", type=float, default=1.0, help="growth is measured after this")
    so.add_argument("--interval", type=float, default=15.0, help="seconds between memory samples")
    so.add_argument("--settings", default="configs/demo.yaml")
    so.add_argument("--out", default="runs/soak")
    so.set_defaults(func=handler)

    sl = bsub.add_parser("scale", help="refined frames/s with 1, 2, ... refiner processes, one core each")
    sl.add_argument("--refiners", default="1,2", help="refiner counts to run (1 is always run: the baseline)")
    sl.add_argument("--frames", type=int, default=24,
                    help="flagged demo frames sent through each run (more frames: a smaller share for the last one's tail)")
    sl.add_argument("--settings", default="configs/demo.yaml")
    sl.add_argument("--out", default="runs/scale")
    sl.set_defaults(func=handler)

    from inspectd.eval.chaos_bench import add_chaos_parser

    add_chaos_parser(bsub, handler)


def main(args) -> None:
    if args.bench == "native":
        from inspectd.eval.native_bench import run_native_bench

        run_native_bench(args)
    elif args.bench == "native-accuracy":
        from inspectd.eval.native_accuracy import run_native_accuracy_bench

        run_native_accuracy_bench(args)
    elif args.bench == "f2pad":
        run_f2pad_bench(args)
    elif args.bench == "screening":
        from inspectd.eval.screening_bench import run_screening_bench

        run_screening_bench(args)
    elif args.bench == "scale":
        from inspectd.eval.scale_bench import run_scale_bench

        run_scale_bench(args)
    elif args.bench == "soak":
        from inspectd.eval.soak_bench import run_soak_bench

        run_soak_bench(args)
    elif args.bench == "chaos":
        from inspectd.eval.chaos_bench import run_chaos_bench

        report = run_chaos_bench(args)
        if report["crashes"] or report["frames_lost"] or report["uncounted"]:
            raise SystemExit(1)


def machine() -> str:
    return (f"{platform.node()}: {platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}")


def speed_probe(method, size: int = 160, repeats: int = 15) -> float:
    """Median milliseconds of one F2PAD iteration's backbone work for `method` (its features of a
    fixed size x size crop, forward and backward to the pixels) on one torch thread, as F2PAD runs
    on CPU. The cores of a shared VM run at speeds that drift by a quarter between hours, so a
    timing is comparable with another run's only at a similar probe."""
    if not getattr(method, "differentiable", True):  # F2PAD does not run on it: nothing to probe
        return float("nan")
    device = next((p.device for p in method.parameters()), torch.device("cpu"))
    crop = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    times = []
    with one_cpu_thread(device):
        for _ in range(repeats + 2):  # the first two warm caches and allocators up
            x = crop.clone().requires_grad_(True)
            started = time.perf_counter()
            method.features(x).sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
    return float(np.median(times[2:]) * 1000)


def build_protocol(data: Path, size: int, n_test: int, n_val: int, seed: int, shots: int):
    """Split train/good into fit / test bases / val bases and paste the defects."""
    train = load_train(data, size, progress=False)
    good_paths = list_images(data / "test" / "good") if (data / "test" / "good").is_dir() else []
    test_good = [read_image(p, size) for p in good_paths][:n_test]
    n_from_train = n_test - len(test_good)
    order = np.random.default_rng(seed).permutation(len(train))
    if n_from_train + n_val >= len(train):
        from inspectd.errors import InspectdError

        raise InspectdError(f"{data}: {len(train)} train images are too few for {n_from_train} test and {n_val} "
                            "validation bases plus a fit set")
    test_bases = test_good + list(train[order[:n_from_train]])
    val_bases = list(train[order[n_from_train:n_from_train + n_val]])
    fit_idx = np.sort(order[n_from_train + n_val:])
    if shots:
        fit_idx = fit_idx[:shots]
    gt_dir = data / "ground_truth"
    sources = load_mask_sources(gt_dir, size) if gt_dir.is_dir() else None
    synth_cfg = SynthConfig(size=size)
    test = paste(test_bases, DefectSynthesizer(sources, synth_cfg, seed=seed), list(train[fit_idx]))
    val = paste(val_bases, DefectSynthesizer(sources, synth_cfg, seed=seed + 1), list(train[fit_idx]))
    return train[fit_idx], test, val


def paste(bases, synth, others):
    pairs = [synth(base, others) for base in bases]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def seg(masks, pred) -> dict:
    return metrics.segmentation_scores(masks, pred)


def refine_all(images, maps, method, prior, settings, desc, references=None):
    results = []
    for img, amap in tqdm(list(zip(images, maps)), desc=desc, unit="img", leave=False):
        results.append(refine(img, method, amap, prior, settings, references))
    return results


def summarise_runs(truth, runs, masks=None) -> dict:
    seconds = np.array([r.stats["seconds"] for r in runs])
    iters = np.array([r.stats["iterations"] for r in runs])
    masks = np.stack([r.mask for r in runs]) if masks is None else masks
    return {**seg(truth, masks),
            "init": seg(truth, np.stack([r.init_mask for r in runs])),
            "seconds_median": float(np.median(seconds)), "seconds_p90": float(np.percentile(seconds, 90)),
            "iterations_median": float(np.median(iters)), "iterations_p90": float(np.percentile(iters, 90))}


def run_method(name, fit_images, test, val, real, settings, args, out_dir) -> dict:
    method = create_method(name, {"image_size": args.size})
    t0 = time.perf_counter()
    method.fit(fit_images, progress=False)
    fit_seconds = time.perf_counter() - t0
    prior = PixelPrior.fit(fit_images, seed=args.seed)
    val_maps, _ = method.predict(val[0])
    threshold, _ = metrics.f1_optimal_threshold(val[1], val_maps)
    s = settings.replace(threshold=float(threshold))
    refs = fit_images  # for inpaint=nearest: normal images the method was fitted on
    tuning = {}
    if args.tune and not getattr(args, "real_only", False):
        s, tuning = tune(method, prior, val[0][: args.tune_images], val[1][: args.tune_images],
                         val_maps[: args.tune_images], s, tuning_grid(args), refs, mask_grid(args))
    chosen = {k: getattr(s, k) for k in TUNED}
    real_grid = _product([("lam", _values(getattr(args, "tune_real", ""), float))])
    if getattr(args, "real_only", False):
        return {"fit_seconds": round(fit_seconds, 1), **chosen,
                "real": run_real(name, method, prior, s, real, refs, real_grid, mask_grid(args))}
    test_images, test_masks = test
    if args.limit:
        test_images, test_masks = test_images[: args.limit], test_masks[: args.limit]
    maps, _ = method.predict(test_images)
    oracle_thr, _ = metrics.f1_optimal_threshold(test_masks, maps)
    runs = refine_all(test_images, maps, method, prior, s, f"{name}: F2PAD", refs)
    row = {"fit_seconds": round(fit_seconds, 1), "threshold": float(threshold), "n_test": len(test_images),
           **chosen, "tuning_iou": tuning,
           "coarse": seg(test_masks, maps > threshold),
           "coarse_oracle_threshold": seg(test_masks, maps > oracle_thr),
           "f2pad": summarise_runs(test_masks, runs), "ablations": {}}
    k = min(args.ablation_images, len(test_images))
    if k > 0:
        row["ablations"] = run_ablations(test_images[:k], test_masks[:k], maps[:k], runs[:k], method, prior, s,
                                         name, refs)
    if real is not None:
        row["real"] = run_real(name, method, prior, s, real, refs, real_grid, mask_grid(args))
    write_overlays(out_dir / name, test_images, test_masks, maps > threshold, runs, args.overlays)
    return row


def run_ablations(images, masks, maps, runs, method, prior, s, name, refs) -> dict:
    """Table III on the given test images: the full runs' own initialisation, then each ablation."""
    out = {"initialisation only": seg(masks, np.stack([r.init_mask for r in runs])),
           "full F2PAD": seg(masks, np.stack([r.mask for r in runs]))}
    for label, change in ABLATIONS.items():
        abl = refine_all(images, maps, method, prior, s.replace(**change), f"{name}: {label}", refs)
        out[label] = seg(masks, np.stack([r.mask for r in abl]))
    return out


def run_real(name, method, prior, settings, real, refs, grid=None, grid_masks=None) -> dict:
    """Real defects, 2-fold throughout: each half is thresholded at the F1-optimal coarse
    threshold of the other half, and refined with the F2PAD settings (from `grid` x
    `grid_masks`) that score best on the other half, so no image's own truth picks anything.
    (The cut-paste validation set favours a strong sparsity weight that erases subtle real
    defects, which is why real defects get settings chosen on real defects.)"""
    maps, _ = method.predict(real.images)
    folds = [np.arange(len(real)) % 2 == k for k in (0, 1)]
    thresholds = np.empty(len(real))
    for k, fold in enumerate(folds):
        thresholds[fold] = metrics.f1_optimal_threshold(real.masks[folds[1 - k]], maps[folds[1 - k]])[0]
    coarse = maps > thresholds[:, None, None]
    runs_by_solver = {}
    for change in grid or [{}]:
        s = settings.replace(**change)
        runs_by_solver[label_of(change)] = (change, [
            refine(img, method, amap, prior, s.replace(threshold=float(t)), refs)
            for img, amap, t in tqdm(list(zip(real.images, maps, thresholds)),
                                     desc=f"{name}: real defects {label_of(change)}", leave=False)])
    masks = np.zeros_like(real.masks)
    chosen_runs = [None] * len(real)
    choices = []
    for k, fold in enumerate(folds):
        scores = score_grid(runs_by_solver, real.masks, settings, grid_masks or [{}], select=folds[1 - k])
        key = max(scores, key=lambda c: scores[c][0])
        change, runs = runs_by_solver[key[0]]
        idx = np.nonzero(fold)[0]
        masks[idx] = masks_of([runs[i] for i in idx], settings, scores[key][1])
        for i in idx:
            chosen_runs[i] = runs[i]
        choices.append({"settings": scores[key][1], "other_half_iou": round(scores[key][0], 2)})
    return {"coarse": seg(real.masks, coarse), "f2pad": summarise_runs(real.masks, chosen_runs, masks),
            "n": len(real), "thresholds": "2-fold F1-optimal", "settings_by_fold": choices,
            "coarse_at_cutpaste_threshold": seg(real.masks, maps > settings.threshold)}


def _values(text, cast) -> list:
    return [cast(v.strip()) for v in text.split(",") if v.strip()] if text else []


def _flag(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"--tune-fill: expected true or false, got {text!r}")
    return text.lower() in ("true", "1", "yes")


def _product(options: list[tuple[str, list]]) -> list[dict]:
    grid = [{}]
    for key, values in options:
        if values:
            grid = [{**g, key: v} for g in grid for v in values]
    return grid


def tuning_grid(args) -> list[dict]:
    """Every combination of the solver settings tried (--tune, --tune-size-power, --tune-inpaint;
    an empty list leaves that setting as it is). Each entry costs one F2PAD run per image."""
    return _product([("lam", _values(args.tune, float)), ("size_power", _values(args.tune_size_power, float)),
                     ("inpaint", _values(args.tune_inpaint, str))])


def mask_grid(args) -> list[dict]:
    """Every combination of the mask settings tried (tau, close_px, fill_holes): these only
    post-process A, so they are scored on the same runs at no extra solving cost."""
    return _product([("tau", _values(getattr(args, "tune_tau", ""), float)),
                     ("close_px", _values(getattr(args, "tune_close", ""), int)),
                     ("fill_holes", _values(getattr(args, "tune_fill", ""), _flag))])


def masks_of(runs, settings: F2PADSettings, change: dict) -> np.ndarray:
    """The runs' masks under other mask settings (tau, close_px, fill_holes)."""
    s = {k: change.get(k, getattr(settings, k)) for k in ("tau", "close_px", "fill_holes")}
    return np.stack([mask_from_magnitude(r.anomaly_magnitude, **s) for r in runs])


def label_of(change: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in change.items())


def score_grid(runs_by_solver: dict, masks: np.ndarray, settings, grid_masks, select=slice(None)) -> dict:
    """Mean IOU of every (solver, mask) combination on the images `select`."""
    scores = {}
    for key, (change, runs) in runs_by_solver.items():
        chosen = [runs[i] for i in np.arange(len(runs))[select]]
        for m in grid_masks:
            scores[(key, label_of(m))] = (seg(masks[select], masks_of(chosen, settings, m))["iou"], {**change, **m})
    return scores


def tune(method, prior, images, masks, maps, settings, grid, refs, grid_masks=None):
    """Pick the settings with the best mean IOU on validation images (never the test set)."""
    runs_by_solver = {label_of(c): (c, refine_all(images, maps, method, prior, settings.replace(**c),
                                                  f"{method.name}: tune {label_of(c)}", refs)) for c in grid}
    scores = score_grid(runs_by_solver, masks, settings, grid_masks or [{}])
    best_key = max(scores, key=lambda k: scores[k][0])  # first best in grid order
    best = scores[best_key][1]
    by_label = {f"{a}|{b}" if b else a: round(v[0], 2) for (a, b), v in scores.items()}
    print(f"{method.name}: validation IOU {scores[best_key][0]:.1f} with {best} "
          f"(of {len(scores)} settings)", flush=True)
    return settings.replace(**best), by_label


def write_overlays(folder: Path, images, truths, coarse, runs, n) -> None:
    """One PNG per image: input | truth | coarse mask | F2PAD mask | recovered normal image."""
    def rgb(mask):
        return np.repeat(mask[:, :, None].astype(np.float32), 3, axis=2)

    for i in range(min(n, len(runs))):
        panel = np.concatenate([images[i], rgb(truths[i]), rgb(coarse[i]), rgb(runs[i].mask),
                                np.clip(runs[i].normal, 0, 1)], axis=1)
        write_image(folder / f"overlay_{i:03d}.png", panel)


def format_tables(rows: dict) -> str:
    lines = ["Table I - cut-paste test set: IOU / DICE (x100); settings chosen on the validation set: "
             + "; ".join(f"{n} " + " ".join(f"{k}={r[k]}" for k in TUNED if k in r) for n, r in rows.items()),
             f"{'method':<11}{'coarse':>15}{'coarse*':>15}{'F2PAD':>15}{'gain IOU':>10}{'s med':>8}{'s p90':>8}{'it med':>8}"]
    for name, r in rows.items():
        if "coarse" not in r:
            continue
        c, o, f = r["coarse"], r["coarse_oracle_threshold"], r["f2pad"]
        lines.append(f"{name:<11}{c['iou']:>7.1f}/{c['dice']:<7.1f}{o['iou']:>7.1f}/{o['dice']:<7.1f}"
                     f"{f['iou']:>7.1f}/{f['dice']:<7.1f}{f['iou'] - c['iou']:>+10.1f}"
                     f"{f['seconds_median']:>8.2f}{f['seconds_p90']:>8.2f}{f['iterations_median']:>8.0f}")
    lines.append("coarse: threshold F1-optimal on the validation set; coarse*: F1-optimal on the test set itself "
                 "(the paper's baseline, optimistic)")
    lines.append("")
    lines.append("Table III - ablations on the first test images: IOU / DICE")
    for name, r in rows.items():
        for label, v in r.get("ablations", {}).items():
            lines.append(f"{name:<11}{label:<32}{v['iou']:>7.1f}/{v['dice']:<7.1f}")
    if any("real" in r for r in rows.values()):
        lines.append("")
        lines.append("Real defects (DIR/test), coarse thresholds and F2PAD settings 2-fold (each half uses the "
                     "other half's best): IOU / DICE")
        for name, r in rows.items():
            if "real" in r:
                c, f = r["real"]["coarse"], r["real"]["f2pad"]
                lines.append(f"{name:<11}coarse {c['iou']:.1f}/{c['dice']:.1f}  F2PAD {f['iou']:.1f}/{f['dice']:.1f}"
                             f"  ({r['real']['n']} images, median {f['seconds_median']:.2f} s)")
                for k, choice in enumerate(r["real"].get("settings_by_fold", [])):
                    lines.append(f"{'':<11}half {k}: {label_of(choice['settings'])} "
                                 f"(IOU {choice['other_half_iou']:.1f} on the other half)")
    return "\n".join(lines)


def run_f2pad_bench(args) -> dict:
    from inspectd.cli import load_settings

    data = Path(args.data)
    command = "inspectd " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[0].endswith("inspectd") \
        else "inspectd bench f2pad " + f"--data {data} --methods {args.methods}"
    print(f"command: {command}\nmachine: {machine()}", flush=True)
    settings = F2PADSettings.from_dict(load_settings(args.settings, args.set))
    size = args.size
    fit_images, test, val = build_protocol(data, size, args.n_test, args.n_val, args.seed, args.shots)
    real = None
    if not args.no_real:
        full = load_test(data, size, progress=False)
        real = full.subset(np.nonzero(full.labels)[0])
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
        rows[name] = run_method(name, fit_images, test, val, real, settings, args, out_dir)
        print(f"{name}: done (fit {rows[name]['fit_seconds']} s)\n{format_tables({name: rows[name]})}", flush=True)
        record = write_record(out_dir, command, fit_images, settings, rows)  # a long run keeps what it has
    print(format_tables(rows))
    print(f"written: {out_dir / 'results.json'} and overlays in {out_dir}/<method>/")
    return record


def write_record(out_dir: Path, command: str, fit_images, settings, rows: dict) -> dict:
    record = {"command": command, "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "n_fit": len(fit_images), "settings": settings.to_dict(), "results": rows,
              "peak_memory_gb": peak_memory_gb()}
    (out_dir / "results.json").write_text(json.dumps(record, indent=2, default=float))
    return record
