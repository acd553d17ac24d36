"""Issue 12: A/B in one process: screening frames/s, before (full float decode + float downscale) and after
(Frame.for_screening: reduced JPEG decode, 8-bit shrink), interleaved rounds, same ONNX session.
Usage: python scripts/screening_ab.py BUNDLE [ROUNDS]
"""
import sys, time
import cv2, numpy as np
from inspectd.data.images import decode_image
from inspectd.deploy.native import downscale
from inspectd.data.camera import camera_frame
from inspectd.eval.native_bench import SIZES, screen_encoded
from inspectd.methods.export import OnnxScreener

onnx = OnnxScreener(sys.argv[1], device="cpu")
n = int(sys.argv[2]) if len(sys.argv) > 2 else 20
def before(data):
    return onnx(downscale(decode_image(data, "frame"), onnx.size))[1]
def after(data):
    return screen_encoded(onnx, onnx.size, data)
for size in ("256", "900", "5MP"):
    enc = [cv2.imencode(".jpg", camera_frame(SIZES[size], s), [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes() for s in range(3)]
    times = {"before": [], "after": []}
    before(enc[0]); after(enc[0])
    for r in range(n):
        for name, fn in (("before", before), ("after", after)) if r % 2 == 0 else (("after", after), ("before", before)):
            t0 = time.perf_counter(); fn(enc[r % 3]); times[name].append(time.perf_counter() - t0)
    fb, fa = [len(t) / sum(t) for t in (times["before"], times["after"])]
    print(f"{size:>4}: before {fb:5.1f} fps (p50 {np.median(times['before'])*1000:.0f} ms), after {fa:5.1f} fps "
          f"(p50 {np.median(times['after'])*1000:.0f} ms), after/before {fa/fb:.2f}x")
