"""ONNX export: the screening graph must give the torch scores (relative max difference <= 1e-3)."""

import numpy as np
import pytest

from inspectd.errors import InspectdError
from inspectd.methods.export import ONNX_FILE, OnnxScreener, export_to_bundle, onnx_providers


@pytest.mark.parametrize("name", ["padim", "patchcore", "cflow", "cfa", "dfr"])
def test_onnx_matches_torch(request, normals, tmp_path, name):
    from conftest import paste_square

    method = request.getfixturevalue("fitted" if name in ("padim", "patchcore") else "fitted_extra")[name]
    method.thresholds = {"pixel": 1.0, "image": 2.0}
    bundle = method.save(tmp_path / name)
    info = export_to_bundle(method, bundle)
    assert (bundle / ONNX_FILE).is_file() and info["thresholds"] == {"pixel": 1.0, "image": 2.0}
    screener = OnnxScreener(bundle, device="cpu")
    frames = np.stack([normals[0], paste_square(normals[1], 20, 20, 14)[0]])
    torch_maps, torch_scores = method.predict(frames)
    onnx_maps, onnx_scores = screener.run(frames)  # batch of 2: the batch axis is dynamic
    rel = np.abs(onnx_maps - torch_maps).max() / np.abs(torch_maps).max()
    assert rel <= 1e-3, rel
    assert np.allclose(onnx_scores, torch_scores, rtol=1e-3)
    single_map, single_score = screener(frames[1])
    assert single_map.shape == frames.shape[1:3] and np.isclose(single_score, torch_scores[1], rtol=1e-3)


def test_patchcore_graph_scores_in_fixed_blocks(fitted, normals, tmp_path):
    """A bank larger than one block is searched block by block inside the graph."""
    method = fitted["patchcore"]
    saved = method.config.score_chunk
    method.config.score_chunk = max(1, len(method.memory_bank) // 3)
    try:
        bundle = method.save(tmp_path / "pc")
        export_to_bundle(method, bundle)
        onnx_maps, _ = OnnxScreener(bundle, device="cpu").run(normals[:1])
        torch_maps, _ = method.predict(normals[:1])
        assert np.abs(onnx_maps - torch_maps).max() / np.abs(torch_maps).max() <= 1e-3
    finally:
        method.config.score_chunk = saved


def test_screener_errors_are_clear(fitted, normals, tmp_path):
    bundle = fitted["padim"].save(tmp_path / "noonnx")
    with pytest.raises(InspectdError, match="inspectd export"):
        OnnxScreener(bundle)
    export_to_bundle(fitted["padim"], bundle)
    with pytest.raises(InspectdError, match="expected frames of 96x96x3"):
        OnnxScreener(bundle, device="cpu").run(np.zeros((1, 50, 50, 3), np.float32))


def test_cpu_provider_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CPU-only path is not what runs here")
    assert onnx_providers("auto") == ["CPUExecutionProvider"]
    with pytest.raises(InspectdError, match="no usable CUDA"):
        onnx_providers("cuda")
