"""F2PAD hyper-parameters. Pixel values are in [0, 1] RGB units throughout."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from inspectd.errors import ConfigError


@dataclass
class F2PADSettings:
    # objective (eq. 12): L(X_N) + lam1 * LOG(A) + lam2 * MOG(X_N) + lam3 * TV(X_N)
    lam: float = 0.3  # sparsity weight before scaling by the anomaly size: lam1 = lam * ref_area / area
    ref_area: float = 1000.0  # pixels; makes lam O(1) for typical defects
    size_power: float = 1.0  # lam1 = lam * (ref_area / area) ** size_power; 1 = the paper's 1/size
    eps: float = 0.02  # LOG penalty scale (eq. 8)
    lam2: float = 0.002  # mixture-of-Gaussians pixel prior (eq. 10); 0 disables
    lam3: float = 0.05  # vectorial total variation (eq. 11)
    # solver (section III-D)
    lr: float = 0.02  # Adan step for pixel values
    neighbourhood: int = 5  # n x n gradient-sharing window (eq. 13)
    sigma_spatial: float = 3.0  # spatial kernel width of the sharing weights (eq. 14)
    sigma_colour: float = 0.01  # colour kernel width (squared RGB distance) of the sharing weights
    share_gradients: bool = True
    adaptive_gain: float = 3.0  # step multiplier where A_ij is near 0 (eq. 15)
    clip: float = 0.03  # largest change of one pixel's value per iteration
    max_iters: int = 150
    min_iters: int = 20
    rel_tol: float = 1e-3  # stop when the loss falls by less than this fraction over `window` iterations
    window: int = 10
    # stop when no more than this share of the ROI's pixels saw ||A|| move by more than eps over
    # the last `window` iterations (the mask is what is reported); 0 = stop on the loss alone
    mask_tol: float = 0.01
    # initialisation and region of interest (section III-E)
    threshold: float | None = None  # coarse-map threshold; None -> the method bundle's pixel threshold
    # within each connected region of the map above the threshold, the coarse mask keeps the pixels
    # above this share of the region's own peak (0 = the whole region): a detector's map spreads
    # around a defect by its features' reach, further the stronger the defect, so one absolute
    # threshold outlines strong defects far too wide
    peak_ratio: float = 0.0
    dilate_px: int = 6  # dilation of the coarse mask: the region that is inpainted and optimised
    inpaint: str = "telea"  # telea | ns | nearest (pixels of the nearest normal training image)
    context_px: int = 32  # image margin around the ROI given to the backbone (receptive field)
    loss_margin_px: int = 8  # feature locations within this distance of the ROI enter the loss
    max_roi_fraction: float = 0.6  # beyond this share of the image the coarse mask is returned as is
    # output
    tau: float = 0.1  # mask = ||A_ij|| > tau (eq. 2)
    # The paper's mask is ||A_ij|| > tau alone. Subtle real defects leave A small in parts of the
    # defect, so that mask comes out speckled; an operator wants the defect's outline, so the
    # speckles can be joined (closing) and enclosed gaps filled. 0 / False = the paper's mask.
    close_px: int = 0  # radius of a morphological closing of the mask
    fill_holes: bool = False  # fill regions enclosed by the mask
    reestimate: bool = False  # solve again with lam1 = 0 inside the mask for a clean X_N
    reestimate_iters: int = 60
    device: str = "auto"  # auto | cpu | cuda

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "F2PADSettings":
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"F2PAD: unknown setting(s) {sorted(unknown)}; known: {sorted(known)}")
        settings = cls(**data)
        settings.validate()
        return settings

    def replace(self, **changes) -> "F2PADSettings":
        return F2PADSettings.from_dict({**self.to_dict(), **changes})

    def validate(self) -> None:
        if self.neighbourhood < 1 or self.neighbourhood % 2 == 0:
            raise ConfigError(f"F2PAD: neighbourhood must be an odd number >= 1, got {self.neighbourhood}")
        if self.inpaint not in ("telea", "ns", "nearest"):
            raise ConfigError(f"F2PAD: inpaint must be telea, ns or nearest, got {self.inpaint!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"F2PAD: device must be auto, cpu or cuda, got {self.device!r}")
        if not 0 <= self.mask_tol < 1:
            raise ConfigError(f"F2PAD: mask_tol must be in [0, 1) (a share of the ROI's pixels), got {self.mask_tol}")
        if not 0 <= self.peak_ratio < 1:
            raise ConfigError(f"F2PAD: peak_ratio must be in [0, 1) (a share of a region's peak), got {self.peak_ratio}")
        if self.close_px < 0:
            raise ConfigError(f"F2PAD: close_px must be >= 0, got {self.close_px}")
        for name in ("eps", "lr", "clip", "tau"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"F2PAD: {name} must be > 0")
