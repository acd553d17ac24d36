"""`inspectd bench native`: what camera-resolution frames cost the daemon.

- screening frames/s per frame size, through the capture's code (Frame.for_screening): JPEG
  decode at reduced size, 8-bit downscale to the screening bundle's size, float, ONNX Runtime;
  the ratio is against 256x256 frames measured in the same run;
- the frame message at 5 MP with the whole frame against the crops a tile refiner reads around
  one flagged defect (the --refiner bundle's tile, else 256 px): bytes and encode time; the
  result message with one defect (mask crop);
- peak memory (VmHWM) of a fresh process that screens, and one that refines (a tile bundle
  when given), one frame at 5 MP and at 20 MP; with --whole-frame-native also one that refines
  a whole frame at native pixels (refiner.whole_frame: native) with the screening bundle: its
  part enlarged to the frame's size with a stain pasted on it; with --tiled also one that
  screens a frame in the tile bundle's windows (screening.tiles).
Frames are generated (brick texture tiled at the camera's scale, noise on top).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from inspectd.data.camera import camera_frame

SIZES = {"256": (256, 256), "900": (900, 900), "5MP": (2048, 2448), "20MP": (3648, 5472)}


def screen_encoded(screen, size: int | None, data: bytes) -> float:
    """The capture's per-frame work on a camera frame, through the capture's own code
    (Frame.for_screening): reduced JPEG decode, 8-bit downscale, float at the screening size,
    ONNX Runtime."""
    from inspectd.data.images import EncodedImage
    from inspectd.service.capture import Frame

    frame = Frame("bench", "cam0", time.time(), None, encoded=EncodedImage(data, "frame"))
    _, score = screen(frame.pixels() if size is None else frame.for_screening(size))  # None: tiled, native
    return score


def screening_fps(screen, size: int | None, hw: tuple[int, int], frames: int) -> dict:
    encoded = [cv2.imencode(".jpg", camera_frame(hw, s), [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
               for s in range(3)]
    screen_encoded(screen, size, encoded[0])  # warm-up
    latencies = []
    for i in range(frames):
        t0 = time.perf_counter()
        screen_encoded(screen, size, encoded[i % len(encoded)])
        latencies.append(time.perf_counter() - t0)
    lat = np.asarray(latencies)
    return {"fps": float(len(lat) / lat.sum()), "p50_ms": float(np.median(lat) * 1000),
            "p99_ms": float(np.percentile(lat, 99) * 1000), "frames": frames}


def tiled_screening_fps(bundle: Path, sizes: list[str], frames: int) -> dict:
    """screening.tiles: the capture's path for a tile bundle (native 8-bit frame, one ONNX pass per
    overlapping window, maps stitched), frames/s per frame size."""
    from inspectd.bundle import load_tile
    from inspectd.deploy.native import default_overlap, screen_in_tiles, screening_windows
    from inspectd.methods import load_method
    from inspectd.methods.export import ONNX_FILE, OnnxScreener, export_to_bundle

    tile = load_tile(bundle)
    if not tile:
        raise SystemExit(f"--tiled {bundle}: not a tile bundle (fit it with --tile SIZE)")
    if not (bundle / ONNX_FILE).is_file():
        export_to_bundle(load_method(bundle), bundle)
    onnx, overlap = OnnxScreener(bundle, device="cpu"), default_overlap(tile)
    out = {}
    for size in sizes:
        r = screening_fps(lambda image: screen_in_tiles(onnx, image, tile, overlap), None, SIZES[size],
                          max(3, frames // 10))
        r["windows"] = len(screening_windows(SIZES[size], tile, overlap))
        out[size] = r
        print(f"tiled screening {size:>5} ({SIZES[size][1]}x{SIZES[size][0]}, {r['windows']} windows of {tile} px): "
              f"{r['fps']:6.2f} frames/s, p50 {r['p50_ms']:.0f} ms")
    return out


def message_sizes(tile: int) -> dict:
    """5 MP, one flagged defect: the frame message with the whole frame (schema 3) and with only
    the pixels a tile refiner of `tile` px reads (schema 4, transport.frame_payload: crops),
    bytes and encode time, both through the capture's encode_frame; the result message."""
    from inspectd.deploy.native import pixels_read
    from inspectd.geometry import Box, FrameCrops
    from inspectd.service.messages import encode_frame, encode_result

    frame = camera_frame(SIZES["5MP"])  # 8-bit, as a camera delivers it
    region = Box(1430, 960, 140, 80)  # where screening flagged the defect below
    header = {"frame_id": "cam0-1-0000001", "camera": "cam0", "captured_at": 1.0, "screened_at": 1.1, "score": 1.5,
              "threshold": 1.0, "map_summary": {}, "model_id": "m", "px_per_mm": None, "regions": [region]}
    crops = FrameCrops.cut(frame, pixels_read([region], SIZES["5MP"], tile))
    out = {}
    for name, image in (("frame_whole", frame), (f"frame_crops_tile{tile}", crops)):
        t0 = time.perf_counter()
        data = encode_frame(header, image)
        out[name] = {"bytes": sum(len(p) for p in data), "encode_ms": round((time.perf_counter() - t0) * 1000, 1)}
    out[f"frame_crops_tile{tile}"]["pixels"] = crops.pixels
    mask = np.zeros(SIZES["5MP"], bool)
    cv2.ellipse(mask.view(np.uint8), (1500, 1000), (60, 14), 30, 0, 360, 1, -1)
    ys, xs = np.nonzero(mask)
    defect = {"area_px": int(mask.sum()), "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1),
                                                   int(np.ptp(ys) + 1)], "centroid": [1500.0, 1000.0]}
    result = {"frame_id": "cam0-1-0000001", "camera": "cam0",
              "timestamps": {"captured": 1.0, "screened": 1.1, "refined": 2.0, "published": 2.01},
              "image_score": 1.5, "decision": "defect", "defects": [defect],
              "refinement": {"seconds": 0.9, "iterations": 120, "device": "cpu"}, "model_id": "m",
              "screening_model_id": "m"}
    out["result_one_defect"] = {"bytes": sum(len(p) for p in encode_result(result, mask))}
    return out


def child_peak_memory(role: str, size: str, screening: Path, refiner: Path | None) -> dict:
    """Run one role on one frame in a fresh process; its peak RSS before and after."""
    cmd = [sys.executable, "-m", "inspectd.eval.native_bench", role, size, str(screening), str(refiner or "")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def rss_gb() -> float:
    """This process's peak resident memory. VmHWM (Linux) belongs to the address space, which
    exec replaces; ru_maxrss survives exec, so a child of a large parent would report the
    parent's size (every child of the bench read 1.33 GB that way)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def child_main(role: str, size: str, screening: str, refiner: str) -> None:
    """One frame through one role (a process of the daemon), printing peak memory as JSON."""
    from inspectd.deploy import Inspector
    from inspectd.deploy.native import NativeChain
    from inspectd.geometry import Box
    from inspectd.methods.export import OnnxScreener
    from inspectd.deploy.native import downscale

    extra: dict = {}
    if role == "screen":
        screener = OnnxScreener(Path(screening), device="cpu")
        idle = rss_gb()
        frame = camera_frame(SIZES[size])  # the capture keeps a native frame in 8 bit
        screener(downscale(frame, screener.size))
    elif role == "screen-tiled":  # screening.tiles: `screening` is a tile bundle
        from inspectd.bundle import load_tile
        from inspectd.deploy.native import default_overlap, screen_in_tiles

        screener, tile = OnnxScreener(Path(screening), device="cpu"), load_tile(screening)
        idle = rss_gb()
        frame = camera_frame(SIZES[size])
        started = time.perf_counter()
        screen_in_tiles(screener, frame, tile, default_overlap(tile))
        extra = {"seconds": round(time.perf_counter() - started, 1)}
    elif role == "refine-native":
        chain = NativeChain.from_bundles(screening, device="cpu", whole_frame="native")
        idle = rss_gb()
        frame = part_frame_with_defect(chain.refiner.references[0], SIZES[size])
        started = time.perf_counter()
        run = chain.refine(frame)
        extra = {"decision": run.decision, "iterations": run.iterations,
                 "seconds": round(time.perf_counter() - started, 1)}
    else:
        tile_bundle = Path(refiner or screening)
        chain = NativeChain.from_bundles(tile_bundle, screening if refiner else None, device="cpu")
        idle = rss_gb()
        frame = camera_frame(SIZES[size]).astype(np.float32) / 255
        h, w = SIZES[size]
        chain.refine(frame, [Box(w // 2, h // 2, 300, 200)])
    print(json.dumps({"idle_gb": round(idle, 3), "peak_gb": round(rss_gb(), 3), **extra}))


def part_frame_with_defect(reference: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A frame of the bundle's own part at the camera's size (its first normal reference
    enlarged, uint8 as a camera gives it) with a dark stain of 10 % of the width pasted near the
    centre, so that the native refiner has a region to solve whatever the part."""
    h, w = hw
    frame = cv2.resize((reference * 255 + 0.5).astype(np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    axes = (max(2, w // 20), max(2, w // 32))
    cv2.ellipse(frame, (w // 2 + w // 8, h // 2), axes, 30, 0, 360, (40, 30, 25), -1)
    return frame


def run_native_bench(args) -> dict:
    from inspectd.eval.bench import machine
    from inspectd.methods import load_method
    from inspectd.methods.export import ONNX_FILE, OnnxScreener, export_to_bundle

    screening = Path(args.screening)
    if not (screening / ONNX_FILE).is_file():
        export_to_bundle(load_method(screening), screening)
    onnx = OnnxScreener(screening, device="cpu")

    print("command: inspectd " + " ".join(sys.argv[1:]))
    print(f"machine: {machine()}")
    sizes = [s for s in args.sizes.split(",") if s]
    fps = {s: screening_fps(onnx, onnx.size, SIZES[s], args.frames) for s in ["256", *[s for s in sizes if s != "256"]]}
    base = fps["256"]["fps"]
    for s, r in fps.items():
        r["ratio_vs_256"] = round(r["fps"] / base, 3)
        print(f"screening {s:>5} ({SIZES[s][1]}x{SIZES[s][0]}): {r['fps']:6.1f} frames/s, p50 {r['p50_ms']:.1f} ms, "
              f"p99 {r['p99_ms']:.1f} ms ({r['ratio_vs_256']:.2f}x of 256x256 frames)")
    tiled = tiled_screening_fps(Path(args.tiled), sizes, args.frames) if args.tiled else {}
    from inspectd.bundle import load_tile

    tile = load_tile(args.refiner) if args.refiner else None
    messages = message_sizes(tile or 256)
    for name, m in messages.items():
        print(f"message {name}: {m['bytes'] / 1024:.1f} KiB" + (f", encode {m['encode_ms']} ms" if "encode_ms" in m else ""))
    memory = {}
    if args.memory:
        refiner = Path(args.refiner) if args.refiner else None
        for size in ("5MP", "20MP"):
            for role in ("screen", "refine", *(("refine-native",) if args.whole_frame_native else ())):
                memory[f"{role}_{size}"] = child_peak_memory(role, size, screening, refiner)
                print(f"peak memory {role} {size}: {memory[f'{role}_{size}']}")
            if args.tiled:
                memory[f"screen-tiled_{size}"] = child_peak_memory("screen-tiled", size, Path(args.tiled), None)
                print(f"peak memory screen-tiled {size}: {memory[f'screen-tiled_{size}']}")
    result = {"screening": fps, "tiled_screening": tiled, "messages": messages, "memory": memory, "machine": machine(),
              "command": "inspectd " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d %H:%M")}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"written: {args.out}")
    return result


if __name__ == "__main__":
    child_main(*sys.argv[1:5])
