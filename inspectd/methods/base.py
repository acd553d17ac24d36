"""The one interface every feature-level method implements.

A method is an nn.Module holding a frozen backbone and its fitted statistics (buffers or
learned parameters). Images are float tensors (B,3,H,W) in [0, 1] at `config.image_size`.

    fit(images)              learn from normal images only
    features(images)         method-specific feature map (B,C,h,w) (differentiable)
    score_features(feats)    per-location anomaly score (B,h,w) (differentiable)
    score_map(images)        = score_features(features(images))
    anomaly_map(images)      score map upsampled to the input size and smoothed (B,H,W)
    predict(images)          anomaly maps and image scores as numpy, in batches
    save(dir) / load(dir)    self-contained bundle with a sha256 manifest
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from inspectd.errors import BundleError, ConfigError, InspectdError
from inspectd.features.backbone import BackboneConfig, FeatureExtractor
from inspectd.methods import bundle as B

STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"


@dataclass
class MethodConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    image_size: int = 256
    blur_sigma: float = 4.0  # smoothing of the upsampled map, as PaDiM/PatchCore do
    batch_size: int = 16
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MethodConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown setting(s) {sorted(unknown)}; known: {sorted(known)}")
        data = dict(data)
        if isinstance(data.get("backbone"), dict):
            data["backbone"] = BackboneConfig(**data["backbone"])
        return cls(**data)


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(4 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B,H,W) maps with reflect padding; differentiable, ONNX-friendly."""
    if sigma <= 0:
        return maps
    k = gaussian_kernel1d(sigma).to(maps)
    r = k.numel() // 2
    x = maps[:, None]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return x[:, 0]


def as_batches(images, batch_size: int):
    """Yield float tensors (b,3,H,W) from a tensor, an array (N,H,W,3) or a list of (H,W,3) arrays."""
    if isinstance(images, torch.Tensor):
        for i in range(0, len(images), batch_size):
            yield images[i : i + batch_size].float()
        return
    for i in range(0, len(images), batch_size):
        chunk = np.stack(list(images[i : i + batch_size])).astype(np.float32)
        yield torch.from_numpy(chunk).permute(0, 3, 1, 2).contiguous()


class AnomalyMethod(nn.Module, ABC):
    name: ClassVar[str] = "base"
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    # Whether F2PAD can differentiate score_features w.r.t. the input pixels.
    differentiable: ClassVar[bool] = True

    def __init__(self, config: MethodConfig | None = None, load_weights: bool = True):
        super().__init__()
        self.config = config or self.Config()
        self.backbone = FeatureExtractor(self.config.backbone, load_weights=load_weights)
        self.fitted = False
        # Decision thresholds on the anomaly map / image score; set by calibrate() or eval.
        self.thresholds: dict[str, float] = {}

    # --- what each method implements --------------------------------------------------------
    @abstractmethod
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Method-specific feature map (B,C,h,w) of images (B,3,H,W) in [0, 1]."""

    @abstractmethod
    def score_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Per-location anomaly scores (B,h,w), differentiable in `feats`."""

    @abstractmethod
    def _fit(self, batches, n_images: int) -> None:
        """Learn from batches of normal images (called under torch.no_grad)."""

    # --- shared behaviour ----------------------------------------------------------------
    def train(self, mode: bool = True):  # fitted statistics never switch to training behaviour
        return super().train(False)

    def fit(self, images, progress: bool = True) -> "AnomalyMethod":
        n = len(images)
        if n == 0:
            raise InspectdError(f"{self.name}: cannot fit on an empty training set")
        torch.manual_seed(self.config.seed)
        bs = self.config.batch_size
        batches = tqdm(
            as_batches(images, bs), total=math.ceil(n / bs), desc=f"{self.name}: features", unit="batch",
            disable=not progress, leave=False,
        )
        with torch.no_grad():
            self._fit(batches, n)
        self.fitted = True
        return self

    # --- hooks used by F2PAD ---------------------------------------------------------------
    @property
    def feature_stride(self) -> int:
        """Pixels per cell of the feature map (maps are brought to the finest selected layer)."""
        return self.backbone.strides[0]

    @property
    def input_alignment(self) -> int:
        """Image pixels between two inputs whose feature grids line up: the coarsest stride of the
        backbone layers the method runs (and a whole number of the scorer's cells). F2PAD puts
        its crop corners on multiples of it."""
        return math.lcm(max(self.backbone.strides), self.feature_stride)

    def score_features_at(self, feats: torch.Tensor, offset: tuple[int, int]) -> torch.Tensor:
        """Scores of the features of an image crop whose first cell is `offset` (row, col) of the
        full-image feature grid. Position-independent methods ignore the offset."""
        return self.score_features(feats)

    def refine_scorer(self, feats0: torch.Tensor, offset: tuple[int, int], cells: torch.Tensor):
        """The scores F2PAD minimises: a function of the crop's features (1,C,h,w) returning the
        scores of the feature cells selected by the bool mask `cells` (h,w), given the features
        of the initial estimate. Methods may simplify the score around that estimate
        (PatchCore's candidate sets) or compute only the selected cells (PaDiM)."""
        return lambda feats: self.score_features_at(feats, offset)[0][cells]

    def score_map(self, images: torch.Tensor) -> torch.Tensor:
        return self.score_features(self.features(images))

    def upsample(self, scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        up = F.interpolate(scores[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        return gaussian_blur(up, self.config.blur_sigma)

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.score_map(images), images.shape[-2:])

    @staticmethod
    def image_score(maps: torch.Tensor) -> torch.Tensor:
        return maps.flatten(1).amax(dim=1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(anomaly map at input resolution, image score): the graph exported to ONNX."""
        maps = self.anomaly_map(images)
        return maps, self.image_score(maps)

    def check_fitted(self) -> None:
        if not self.fitted:
            raise InspectdError(f"{self.name}: the method is not fitted")

    @torch.no_grad()
    def predict(self, images, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        self.check_fitted()
        maps, scores = [], []
        bs = self.config.batch_size
        n = len(images)
        for batch in tqdm(as_batches(images, bs), total=math.ceil(n / bs), desc=f"{self.name}: scoring",
                          unit="batch", disable=not progress, leave=False):
            m, s = self(batch)
            maps.append(m.numpy())
            scores.append(s.numpy())
        return np.concatenate(maps), np.concatenate(scores)

    # --- bundles -------------------------------------------------------------------------
    def extra_files(self) -> dict[str, bytes]:
        """Method-specific files to store in the bundle besides config and state."""
        return {}

    def save(self, out_dir: str | Path, extra: dict[str, bytes] | None = None) -> Path:
        self.check_fitted()
        config = {"method": self.name, "config": self.config.to_dict(), "thresholds": self.thresholds}
        files = {
            CONFIG_FILE: json.dumps(config, indent=2).encode(),
            STATE_FILE: B.tensor_bytes(self.state_dict()),
            **self.extra_files(),
            **(extra or {}),
        }
        return B.write_bundle(out_dir, files, {"method": self.name, "model_id": model_id(out_dir)})

    def _without_unused_backbone_weights(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Bundles written before the backbone stopped at its deepest used layer
        (features.backbone.drop_unused_stages) carry the weights of the stages after it: they
        are never used, so they are dropped instead of failing the strict load."""
        own = self.state_dict().keys()
        return {k: v for k, v in state.items() if k in own or not k.startswith("backbone.body.")}

    def _prepare_for_state(self, state: dict[str, torch.Tensor]) -> None:
        """Give fitted buffers the shapes stored in `state` (e.g. a memory bank's size)."""
        for key, value in state.items():
            module_path, _, leaf = key.rpartition(".")
            module = self.get_submodule(module_path) if module_path else self
            if leaf in module._buffers:
                module._buffers[leaf] = torch.empty_like(value)

    @classmethod
    def from_bundle(cls, bundle_dir: Path, manifest: dict, cfg: dict) -> "AnomalyMethod":
        config = cls.Config.from_dict(cfg["config"])
        method = cls(config, load_weights=False)  # weights come from the bundle's own state
        state = method._without_unused_backbone_weights(B.load_tensors(bundle_dir / STATE_FILE))
        method._prepare_for_state(state)
        try:
            method.load_state_dict(state)
        except RuntimeError as exc:
            raise BundleError(f"{bundle_dir}: state does not fit method {cls.name} ({exc})") from exc
        method.thresholds = {k: float(v) for k, v in cfg.get("thresholds", {}).items()}
        method.fitted = True
        method.bundle_dir = bundle_dir
        method.model_id = manifest.get("model_id", bundle_dir.name)
        return method


def model_id(bundle_dir: str | Path) -> str:
    return Path(bundle_dir).name


def read_bundle_config(bundle_dir: str | Path) -> tuple[dict, dict]:
    bundle_dir = Path(bundle_dir)
    manifest = B.verify_bundle(bundle_dir)
    try:
        cfg = json.loads((bundle_dir / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{bundle_dir}/{CONFIG_FILE}: unreadable ({exc})") from exc
    return manifest, cfg
