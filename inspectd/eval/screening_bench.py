"""`inspectd bench screening`: one frame at a time, as the capture loop screens, ONNX Runtime
against the same model in eager torch, both measured in the same run on the same frames,
taking turns over several rounds (best round kept). Frames per second = 1 / mean latency."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from inspectd.data.textures import texture_parts
from inspectd.eval.bench import machine
from inspectd.methods import load_method
from inspectd.methods.export import ONNX_FILE, OnnxScreener, export_to_bundle


def warm_up(fn, frames, warmup: int) -> None:
    for i in range(warmup):
        fn(frames[i % len(frames)])


def time_rounds(runners: dict, frames, rounds: int = 3) -> dict:
    """Each runner times all frames once per round, runners taking turns; the best round of each
    is kept (as timeit does): on a shared 2-core VM single passes were seen up to 2x off."""
    best: dict = {}
    for _ in range(rounds):
        for name, fn in runners.items():
            latencies = []
            for frame in frames:
                t0 = time.perf_counter()
                fn(frame)
                latencies.append(time.perf_counter() - t0)
            stats = summarise(latencies)
            if name not in best or stats["fps"] > best[name]["fps"]:
                best[name] = stats
    return best


def summarise(latencies: list[float]) -> dict:
    lat = np.array(latencies) * 1000
    return {"fps": 1000 * len(lat) / lat.sum(), "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99))}


def bench_model(bundle: Path, frames: np.ndarray, warmup: int, device: str, rounds: int = 3) -> dict:
    method = load_method(bundle)
    if ONNX_FILE not in {p.name for p in bundle.iterdir()}:
        export_to_bundle(method, bundle)
    dev = torch.device("cuda" if device in ("cuda", "auto") and torch.cuda.is_available() else "cpu")
    method.to(dev)

    @torch.no_grad()
    def eager(frame):
        x = torch.from_numpy(frame).to(dev).permute(2, 0, 1)[None]
        amap, score = method(x)
        return amap.cpu().numpy(), float(score)

    screener = OnnxScreener(bundle, device=device)
    warm_up(eager, frames, warmup)
    warm_up(screener, frames, warmup)
    stats = time_rounds({"torch": eager, "onnx": screener}, frames, rounds)
    torch_stats, onnx_stats = stats["torch"], stats["onnx"]
    bank = getattr(method, "memory_bank", None)
    return {"method": method.name, "bank": None if bank is None else int(len(bank)), "torch": torch_stats,
            "onnx": onnx_stats, "provider": screener.provider, "speedup": onnx_stats["fps"] / torch_stats["fps"]}


def run_screening_bench(args) -> list[dict]:
    print(f"command: inspectd bench screening --models {' '.join(args.models)} --frames {args.frames} "
          f"--rounds {args.rounds} --device {args.device}\nmachine: {machine()}", flush=True)
    rows = []
    for model in args.models:
        bundle = Path(model)
        size = load_method(bundle).config.image_size
        frames = texture_parts("gravel", args.frames, size, seed=1)
        rows.append({"model": bundle.name, **bench_model(bundle, frames, args.warmup, args.device, args.rounds)})
    print(f"{'model':<28}{'bank':>8}{'torch f/s':>11}{'p50':>8}{'p99':>8}{'ONNX f/s':>10}{'p50':>8}{'p99':>8}{'ratio':>7}")
    for r in rows:
        t, o = r["torch"], r["onnx"]
        print(f"{r['model']:<28}{str(r['bank'] or '-'):>8}{t['fps']:>11.1f}{t['p50_ms']:>8.1f}{t['p99_ms']:>8.1f}"
              f"{o['fps']:>10.1f}{o['p50_ms']:>8.1f}{o['p99_ms']:>8.1f}{r['speedup']:>7.2f}")
    print("latencies in ms per frame (one frame per call); ratio = ONNX frames/s over torch frames/s")
    return rows
