"""Export a fitted method to one ONNX graph: image in [0, 1] -> (anomaly map, image score).

The graph holds everything: normalisation, backbone, scorer, upsampling and smoothing, so the
screening process needs nothing but ONNX Runtime and the bundle. PatchCore's nearest-neighbour
search is exported block by block (see patchcore.chunked_nearest): its working memory is
(patches x score_chunk) whatever the size of the memory bank.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from inspectd.errors import InspectdError
from inspectd.methods import bundle as B

ONNX_FILE = "screen.onnx"
ONNX_META_FILE = "screen.json"
OPSET = 17


def export_onnx_bytes(method, batch: int = 1) -> bytes:
    """Serialise `method.forward` to ONNX (batch dimension dynamic)."""
    method.check_fitted()
    method.cpu().eval()
    size = method.config.image_size
    dummy = torch.rand(batch, 3, size, size)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape arithmetic
        torch.onnx.export(method, (dummy,), buf, input_names=["image"], output_names=["anomaly_map", "score"],
                          dynamic_axes={"image": {0: "batch"}, "anomaly_map": {0: "batch"}, "score": {0: "batch"}},
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
    return buf.getvalue()


def export_to_bundle(method, bundle_dir) -> dict:
    """Write screen.onnx and its metadata into the bundle (manifest updated)."""
    meta = {"input": "image", "layout": "NCHW, RGB, float32 in [0, 1]", "image_size": method.config.image_size,
            "outputs": ["anomaly_map", "score"], "thresholds": method.thresholds, "method": method.name,
            "model_id": getattr(method, "model_id", None), "opset": OPSET}
    graph = export_onnx_bytes(method)
    B.add_files(bundle_dir, {ONNX_FILE: graph, ONNX_META_FILE: json.dumps(meta, indent=2).encode()})
    return {**meta, "bytes": len(graph)}


def onnx_providers(device: str = "auto") -> list[str]:
    """CUDA only when a GPU is really usable (onnxruntime-gpu lists CUDA even without one)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    gpu = "CUDAExecutionProvider" in available and torch.cuda.is_available()
    if device == "cuda" and not gpu:
        raise InspectdError("screening: device cuda requested but no usable CUDA GPU / ONNX Runtime CUDA provider")
    use_gpu = gpu and device in ("auto", "cuda")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_gpu else ["CPUExecutionProvider"]


class OnnxScreener:
    """Screens frames with a bundle's ONNX graph: (H,W,3) float RGB -> (map (H,W), score)."""

    def __init__(self, bundle_dir, device: str = "auto", threads: int = 0):
        import onnxruntime as ort

        bundle_dir = Path(bundle_dir)
        manifest = B.verify_bundle(bundle_dir)
        if ONNX_FILE not in manifest["files"]:
            raise InspectdError(f"{bundle_dir}: no {ONNX_FILE} in the bundle; run `inspectd export --model {bundle_dir}`")
        self.meta = json.loads((bundle_dir / ONNX_META_FILE).read_text())
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: no provider warnings on CPU-only machines
        # No busy-waiting between frames: the capture loop idles between frames and, with
        # `inspectd run`, shares the cores with the refiner.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(bundle_dir / ONNX_FILE), options, providers=onnx_providers(device))
        self.size = int(self.meta["image_size"])
        self.thresholds = self.meta.get("thresholds", {})
        self.model_id = self.meta.get("model_id") or bundle_dir.name

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N,H,W,3) float32 -> maps (N,H,W), scores (N,)."""
        if batch.ndim != 4 or batch.shape[1:] != (self.size, self.size, 3):
            raise InspectdError(f"screening: expected frames of {self.size}x{self.size}x3, got {batch.shape[1:]}")
        x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
        maps, scores = self.session.run(None, {"image": x})
        return maps, scores

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        maps, scores = self.run(image[None])
        return maps[0], float(scores[0])
