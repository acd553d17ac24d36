"""Realistic synthetic defects, for calibrating thresholds when only normal images exist.

synth.py pastes saturated random colours: far stronger than real defects, so thresholds and
F2PAD settings calibrated on them sit too high. The defects made here look like real ones on any
surface: subtle stains, thin scratches and cracks, Poisson-blended foreign patches, displaced
texture (NSA / cut-paste style) and Perlin-shaped blends (DRAEM style). Their mean colour change
over the truth mask is drawn from `contrast_range` (or, for texture-copying kinds, kept inside it).

Truth mask, for every kind: the pixels inside the defect's footprint (where it was drawn, soft
edge included) whose RGB change ||defective - normal|| (L2 over the channels) is at least

    floor = min(0.5 * drawn contrast, FLOOR_CAP)

with 8-connected pieces smaller than MIN_COMPONENT pixels dropped. Outside the mask every pixel
differs from the normal image by less than `floor` (so by less than FLOOR_CAP = 0.03): faint soft
edges stay, stronger changes outside the mask are undone. Outside the footprint nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real

import cv2
import numpy as np

from inspectd.data.synth import MAX_CONTRAST, largest_component
from inspectd.errors import ConfigError, InspectdError

KINDS = ("stain", "scratch", "patch", "displaced", "perlin")
FLOOR_CAP = 0.03  # the largest change a pixel outside the truth mask may show
MIN_COMPONENT = 4  # truth-mask pieces smaller than this (pixels) are dropped
ATTEMPTS = 20  # defects of one call redrawn at most this often before falling back to a stain
FIT_STEPS = 6  # contrast rescaling rounds
GREY = np.full(3, 1 / np.sqrt(3), np.float32)  # unit RGB vector of pure brightness


@dataclass
class RealisticConfig:
    size: int = 256  # images are (size, size, 3) float in [0, 1]
    area_range: tuple[float, float] = (0.001, 0.03)  # truth-mask area as a share of the image
    contrast_range: tuple[float, float] = (0.06, 0.35)  # mean RGB change over the truth mask
    kinds: tuple[str, ...] = KINDS

    def __post_init__(self):
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or self.size < 16:
            raise ConfigError(f"realistic: size must be an integer >= 16, got {self.size!r}")
        self.area_range = _checked_range("area_range", self.area_range, 0.5)
        self.contrast_range = _checked_range("contrast_range", self.contrast_range, MAX_CONTRAST)
        if isinstance(self.kinds, str):  # a bare string would be read letter by letter
            raise ConfigError(f"realistic: kinds must be a list of names, got the string {self.kinds!r}")
        self.kinds = tuple(self.kinds)
        unknown = [k for k in self.kinds if k not in KINDS]
        if not self.kinds or unknown:
            raise ConfigError(f"realistic: kinds must be a non-empty selection of {', '.join(KINDS)}; "
                              f"got {list(self.kinds)}")


def _checked_range(name: str, value, top: float) -> tuple[float, float]:
    """(low, high) of real numbers with 0 < low <= high <= top, as a tuple of floats."""
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise ConfigError(f"realistic: {name} must be a pair (low, high), got {value!r}") from None
    if not all(isinstance(v, Real) and not isinstance(v, bool) for v in (lo, hi)):
        raise ConfigError(f"realistic: {name} must hold two numbers, got {value!r}")
    if not 0.0 < lo <= hi <= top:
        raise ConfigError(f"realistic: {name} must satisfy 0 < low <= high <= {top}, got {value!r}")
    return float(lo), float(hi)


class RealisticDefects:
    """Paste one subtle, realistic defect into a normal image; returns (image, truth mask)."""

    def __init__(self, config: RealisticConfig | None = None, seed: int = 0):
        self.config = config or RealisticConfig()
        self.rng = np.random.default_rng(seed)  # the only source of randomness: same seed, same defects
        self.last_info: dict = {}  # what the latest call made: kind, contrast, floor, attempts
        self._area_target: float | None = None  # the current call's area_px, when given

    def __call__(self, normal: np.ndarray, others: list[np.ndarray] | None = None,
                 kind: str | None = None, area_px: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(defective image float32 (H, W, 3) in [0, 1], truth mask (H, W) bool); kind None = random;
        area_px: the defect's drawn area in pixels (inside area_range), None = log-uniform at random."""
        normal = self._checked(normal, "normal image")
        others = [self._checked(o, f"others[{i}]") for i, o in enumerate(others or [])]
        if kind is not None and kind not in KINDS:
            raise ConfigError(f"realistic: unknown defect kind {kind!r}; available: {', '.join(KINDS)}")
        if area_px is not None:
            lo, hi = self._area_px()
            if not lo <= float(area_px) <= hi:
                raise ConfigError(f"realistic: area_px must lie in area_range ({lo:.0f}-{hi:.0f} px), got {area_px}")
        kind = kind or str(self.rng.choice(self.config.kinds))
        self._area_target = None if area_px is None else float(area_px)
        try:
            return self._make(kind, normal, others)
        finally:
            self._area_target = None

    def _make(self, kind: str, normal: np.ndarray, others: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        best = None
        for attempt in range(1, ATTEMPTS + 1):
            out, mask, contrast = self._attempt(kind, normal, others)
            if not mask.any() or not self._contrast_ok(out, normal, mask):
                continue  # e.g. a patch of flat texture: nothing real to show
            miss = self._area_miss(mask)
            if miss <= 1.0:
                return self._done(out, mask, kind, contrast, attempt)
            if best is None or miss < best[0]:  # the area nearest the range, in case none fits
                best = (miss, out, mask, contrast)
        if best is not None:
            return self._done(best[1], best[2], kind, best[3], ATTEMPTS)
        return self._fallback(normal)

    # --- checks and bookkeeping ----------------------------------------------------------------
    def _checked(self, image, name: str) -> np.ndarray:
        size = self.config.size
        if not isinstance(image, np.ndarray):
            raise InspectdError(f"realistic: {name} must be a numpy array, got {type(image).__name__}")
        if image.shape != (size, size, 3):
            raise InspectdError(f"realistic: {name} has shape {image.shape}, expected ({size}, {size}, 3)")
        if not np.issubdtype(image.dtype, np.floating):
            raise InspectdError(f"realistic: {name} has dtype {image.dtype}, expected float in [0, 1] "
                                "(divide 8-bit images by 255)")
        if not np.isfinite(image).all() or image.min() < -1e-6 or image.max() > 1 + 1e-6:
            raise InspectdError(f"realistic: {name} must hold finite values in [0, 1]")
        return np.clip(image, 0, 1).astype(np.float32)  # a copy: the caller's array is left alone

    def _area_px(self) -> tuple[float, float]:
        lo, hi = self.config.area_range
        return lo * self.config.size**2, hi * self.config.size**2

    def _area_miss(self, mask: np.ndarray) -> float:
        """1 when the mask area lies in area_range, else how many times too small or too large."""
        lo, hi = self._area_px()
        area = float(mask.sum())
        return max(1.0, lo / area, area / hi)

    def _contrast_ok(self, out: np.ndarray, normal: np.ndarray, mask: np.ndarray) -> bool:
        """Mean change over the mask within contrast_range, give or take 20% (clipping, rescaling)."""
        lo, hi = self.config.contrast_range
        mean = float(np.linalg.norm(out[mask] - normal[mask], axis=1).mean())
        return 0.8 * lo <= mean <= 1.2 * hi

    def _done(self, out, mask, kind, contrast, attempts, fallback=False):
        self.last_info = {"kind": kind, "contrast": contrast, "floor": floor_for(contrast),
                          "attempts": attempts, "fallback": fallback}
        return out, mask

    def _attempt(self, kind: str, normal: np.ndarray, others: list[np.ndarray]):
        """One defect of `kind`: the candidate image, fitted to its contrast and masked."""
        contrast = float(self.rng.uniform(*self.config.contrast_range))
        candidate, footprint, target = getattr(self, f"_{kind}")(normal, others, contrast)
        out, mask = self._finish(normal, candidate, footprint, floor_for(contrast), target)
        return out, mask, contrast

    def _fallback(self, normal: np.ndarray):
        """A stain, redrawn until it shows; last of all a hard-edged shift no pixel can clip away."""
        for attempt in range(ATTEMPTS):
            out, mask, contrast = self._attempt("stain", normal, [])
            if mask.any():
                return self._done(out, mask, "stain", contrast, ATTEMPTS + attempt + 1, fallback=True)
        contrast = self.config.contrast_range[1]
        shape = self._blob(self._area_px()[1], margin=1)
        # each pixel moves towards its own far cube corner: never clipped, always >= the floor
        step = np.where(normal < 0.5, 1.0, -1.0).astype(np.float32) / np.sqrt(3)
        out = normal.copy()
        out[shape] += step[shape] * max(contrast, 2 * floor_for(contrast))
        return self._done(np.clip(out, 0, 1), shape, "stain", contrast, 2 * ATTEMPTS, fallback=True)

    # --- truth mask and contrast -------------------------------------------------------------
    def _finish(self, normal, candidate, footprint, floor, target):
        """Scale the change so its mean over the truth mask lies in `target`; mask it; undo the rest.

        Scaling one factor keeps the defect's own texture and shape; clipping at 0 and 1 and the
        mask growing or shrinking with the factor are why it takes a few rounds.
        """
        delta = (candidate - normal) * footprint[..., None]  # nothing changes outside the footprint
        scale = 1.0
        for _ in range(FIT_STEPS):
            out, mask, change = self._masked(normal, delta, scale, footprint, floor)
            if not mask.any():
                if not delta.any():
                    break
                scale = min(scale * 2.0, 16.0)  # too faint to pass the floor anywhere yet
                continue
            mean = float(change[mask].mean())
            want = float(np.clip(mean, *target))
            if abs(mean - want) <= 0.05 * want:
                break
            scale = float(np.clip(scale * want / mean, 0.05, 16.0))
        out, mask, change = self._masked(normal, delta, scale, footprint, floor)
        # changes that passed the floor but were dropped (tiny pieces) are undone: the bound holds
        undo = ~mask & (change >= floor)
        out[undo] = normal[undo]
        return out, mask

    @staticmethod
    def _masked(normal, delta, scale, footprint, floor):
        out = np.clip(normal + scale * delta, 0, 1).astype(np.float32)
        change = np.linalg.norm(out - normal, axis=2)
        return out, drop_small(footprint & (change >= floor)), change

    # --- shapes ------------------------------------------------------------------------------
    def _draw_area(self) -> float:
        """A defect area in pixels: the call's area_px, else log-uniform over area_range (small
        defects are the common ones)."""
        if self._area_target is not None:
            return self._area_target
        lo, hi = self._area_px()
        return float(np.exp(self.rng.uniform(np.log(lo), np.log(hi))))

    def _blob(self, area_px: float, margin: int) -> np.ndarray:
        """One irregular compact blob of about `area_px` pixels, up to 2:1 elongated, placed at random."""
        size = self.config.size
        aspect = np.exp(self.rng.uniform(-0.7, 0.7))
        window = area_px / 0.45  # about 45% of the window survives the threshold below
        limit = size - 2 * margin
        h = int(np.clip(round(np.sqrt(window * aspect)), 6, limit))
        w = int(np.clip(round(np.sqrt(window / aspect)), 6, limit))
        noise = cv2.GaussianBlur(self.rng.random((h, w)).astype(np.float32), (0, 0), min(h, w) / 6)
        noise = (noise - noise.mean()) / max(float(noise.std()), 1e-6)
        yy, xx = np.mgrid[:h, :w]
        bump = 1 - ((yy - (h - 1) / 2) / (h / 2)) ** 2 - ((xx - (w - 1) / 2) / (w / 2)) ** 2
        field = noise + 1.5 * bump  # the noise makes the outline irregular, the bump keeps it whole
        shape = largest_component(field > np.quantile(field, 0.55))
        y = self.rng.integers(margin, size - margin - h + 1)
        x = self.rng.integers(margin, size - margin - w + 1)
        mask = np.zeros((size, size), bool)
        mask[y : y + h, x : x + w] = shape
        return mask

    @staticmethod
    def _soften(shape: np.ndarray, ramp: float) -> np.ndarray:
        """Alpha 1 inside, 0 outside, ramping linearly over `ramp` pixels centred on the outline."""
        inside = cv2.distanceTransform(shape.astype(np.uint8), cv2.DIST_L2, 3)
        outside = cv2.distanceTransform((~shape).astype(np.uint8), cv2.DIST_L2, 3)
        signed = np.where(shape, inside - 0.5, 0.5 - outside)  # the outline sits at 0
        return np.clip(0.5 + signed / ramp, 0, 1).astype(np.float32)

    def _smooth_noise(self, sigma: float) -> np.ndarray:
        """Full-image smooth noise, mean 0, std 1 (clipped to +-2)."""
        size = self.config.size
        noise = cv2.GaussianBlur(self.rng.random((size, size)).astype(np.float32), (0, 0), sigma)
        return np.clip((noise - noise.mean()) / max(float(noise.std()), 1e-6), -2, 2)

    def _perlin_noise(self, cells: int) -> np.ndarray:
        """Gradient (Perlin) noise over the image with `cells` lattice cells per side."""
        size = self.config.size
        angles = self.rng.uniform(0, 2 * np.pi, (cells + 1, cells + 1))
        gy, gx = np.sin(angles), np.cos(angles)
        t = np.arange(size) * cells / size
        i, f = t.astype(int), (t - t.astype(int)).astype(np.float32)

        def corner(dy: int, dx: int) -> np.ndarray:
            # dot product of a lattice corner's gradient with the offset from that corner
            iy, ix = i[:, None] + dy, i[None, :] + dx
            return gy[iy, ix] * (f[:, None] - dy) + gx[iy, ix] * (f[None, :] - dx)

        fade = f * f * f * (f * (f * 6 - 15) + 10)  # smooth at the cell borders
        uy, ux = fade[:, None], fade[None, :]
        top = corner(0, 0) + ux * (corner(0, 1) - corner(0, 0))
        bottom = corner(1, 0) + ux * (corner(1, 1) - corner(1, 0))
        return top + uy * (bottom - top)

    # --- colours and textures ----------------------------------------------------------------
    def _shift(self, under: np.ndarray, contrast: float, tint: float) -> np.ndarray:
        """An RGB shift of length `contrast`: darker or lighter, optionally tinted."""
        # bright surfaces mostly darken and dark ones lighten, so clipping does not eat the change
        sign = -1.0 if self.rng.random() < np.clip(float(under.mean()), 0.15, 0.85) else 1.0
        direction = sign * GREY + tint * self.rng.normal(0, 1, 3).astype(np.float32)
        return contrast * direction / max(float(np.linalg.norm(direction)), 1e-6)

    def _moved(self, image: np.ndarray, centre, offset, angle: float = 0.0, flip: bool = False):
        """`image` resampled so the pixel at `centre` comes from centre + offset, rotated/mirrored.

        Borders reflect, so the copied region is always real texture of the same part.
        """
        a = np.deg2rad(angle)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ np.diag([-1.0 if flip else 1.0, 1.0])
        c = np.asarray(centre, float)  # (x, y)
        matrix = np.hstack([rot, (c + np.asarray(offset, float) - rot @ c)[:, None]])
        size = self.config.size
        return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REFLECT_101)

    def _far_offset(self, shape: np.ndarray) -> np.ndarray:
        """An (x, y) offset at least about the shape's extent away: texture from elsewhere."""
        ys, xs = np.nonzero(shape)
        extent = max(np.ptp(ys), np.ptp(xs)) + 1
        near = extent * 0.75
        reach = self.rng.uniform(near, max(near, self.config.size / 2))
        a = self.rng.uniform(0, 2 * np.pi)
        return reach * np.array([np.cos(a), np.sin(a)])

    def _foreign(self, normal, others, shape, turn: bool) -> np.ndarray:
        """Texture for the shape's place: another normal image nearby, or this one from elsewhere."""
        ys, xs = np.nonzero(shape)
        centre = (xs.mean(), ys.mean())
        angle = float(self.rng.uniform(0, 360)) if turn else 0.0
        flip = bool(turn and self.rng.random() < 0.5)
        if others:
            other = others[self.rng.integers(len(others))]
            # a small shift: the same part's texture, but not the piece that belongs here
            offset = self.rng.uniform(-1, 1, 2) * self.config.size / 8
            return self._moved(other, centre, offset, angle, flip)
        return self._moved(normal, centre, self._far_offset(shape), angle, flip)

    # --- the kinds: each returns (candidate image, footprint, contrast target) ----------------
    def _stain(self, normal, others, contrast):
        """A smooth irregular blob, shifted darker/lighter (maybe tinted), soft edge; texture shows."""
        shape = self._blob(self._draw_area(), margin=4)
        alpha = self._soften(shape, self.rng.uniform(1, 3))
        tint = self.rng.uniform(0, 0.8) if self.rng.random() < 0.5 else 0.0
        shift = self._shift(normal[shape], contrast, tint)
        # real stains are uneven: let the strength wander around its mean
        strength = alpha * (1 + 0.3 * self._smooth_noise(self.config.size / 16))
        return normal + strength[..., None] * shift, alpha > 0, (contrast, contrast)

    def _scratch(self, normal, others, contrast):
        """A thin curved scratch or a jagged, maybe branching crack, 1-4 px wide."""
        size = self.config.size
        crack = self.rng.random() < 0.5
        width = int(self.rng.integers(1, 5))
        length = min(self._draw_area() / width, 0.8 * size)  # thin: area is about width * length
        start = size / 2 + self.rng.uniform(-0.1, 0.1, 2) * size
        heading = self.rng.uniform(0, 2 * np.pi)
        trunk = self._walk(start, heading, length, crack, centred=True)
        alpha = self._line(trunk, width)
        if crack and self.rng.random() < 0.6:  # cracks fork
            root = trunk[self.rng.integers(len(trunk))]
            turn = self.rng.choice([-1, 1]) * self.rng.uniform(0.4, 1.2)
            branch = self._walk(root, heading + turn, length * self.rng.uniform(0.2, 0.5), True, centred=False)
            alpha = np.maximum(alpha, self._line(branch, max(1, width - 1)))
        # scratches and cracks change brightness, not hue; cracks are mostly dark shadowed gaps
        dark = self.rng.random() < (0.85 if crack else 0.5)
        shift = (-contrast if dark else contrast) * GREY
        return normal + alpha[..., None] * shift, alpha > 0, (contrast, contrast)

    def _walk(self, start, heading, length, jagged, centred):
        """(n, 2) points (x, y) of a path of `length` px; folded back at the borders."""
        size = self.config.size
        step = 3.0 if jagged else 2.0  # px per segment: cracks are made of longer straight bits
        n = max(2, int(length / step))
        bend = self.rng.normal(0, 0.01) * np.arange(n)  # a steady curve
        drift = np.cumsum(self.rng.normal(0, 0.03, n))  # and a slow wander
        jitter = self.rng.normal(0, 0.4, n) if jagged else 0.0  # cracks zigzag about their heading
        angles = heading + bend + drift + jitter
        path = np.cumsum(step * np.stack([np.cos(angles), np.sin(angles)], axis=1), axis=0)
        path -= path[n // 2] if centred else path[0]
        return _fold(path + np.asarray(start), 2.0, size - 3.0)

    def _line(self, points: np.ndarray, width: int) -> np.ndarray:
        """Alpha of a polyline `width` px wide, with a half-pixel soft edge each side.

        OpenCV's thick anti-aliased lines come out ~1.5x too wide, so the width comes from the
        distance to a 1 px centreline instead.
        """
        size = self.config.size
        centre = np.full((size, size), 255, np.uint8)
        cv2.polylines(centre, [np.round(points).astype(np.int32).reshape(-1, 1, 2)], False, 0, thickness=1)
        distance = cv2.distanceTransform(centre, cv2.DIST_L2, 5)  # 0 on the centreline
        return np.clip(width / 2 + 0.5 - distance, 0, 1).astype(np.float32)

    def _patch(self, normal, others, contrast):
        """A foreign region Poisson-blended in (seamlessClone); made stronger if too faint."""
        shape = self._blob(self._draw_area(), margin=4)  # seamlessClone needs room around the mask
        source = self._foreign(normal, others, shape, turn=self.rng.random() < 0.3)
        # the Poisson solution equals the destination on the mask's outline: grow the mask by a
        # pixel so the whole shape can change
        grown = cv2.dilate(shape.astype(np.uint8), np.ones((3, 3), np.uint8)) * 255
        x, y, w, h = cv2.boundingRect(grown)
        flag = cv2.NORMAL_CLONE if self.rng.random() < 0.5 else cv2.MIXED_CLONE
        dst = to_u8(normal)
        # OpenCV writes into the mask it is given (a temporary here) and centres its bounding box
        # on the point given
        blended = cv2.seamlessClone(to_u8(source), dst, grown, (x + w // 2, y + h // 2), flag)
        # the change against the 8-bit copy: pixels the clone left alone stay exactly as they were
        delta = (blended.astype(np.float32) - dst.astype(np.float32)) / 255
        footprint = cv2.dilate(shape.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        return normal + delta, footprint, self.config.contrast_range

    def _displaced(self, normal, others, contrast):
        """Texture cut from elsewhere on the same part, maybe rotated/mirrored, pasted with a soft edge."""
        shape = self._blob(self._draw_area(), margin=2)
        alpha = self._soften(shape, self.rng.uniform(1, 3))[..., None]
        ys, xs = np.nonzero(shape)
        turn = self.rng.random() < 0.5
        angle = float(self.rng.choice([90, 180, 270]) + self.rng.uniform(-20, 20)) if turn else 0.0
        source = self._moved(normal, (xs.mean(), ys.mean()), self._far_offset(shape), angle,
                             bool(self.rng.random() < 0.3))
        return normal * (1 - alpha) + source * alpha, alpha[..., 0] > 0, self.config.contrast_range

    def _perlin(self, normal, others, contrast):
        """A Perlin-noise shaped region blended (opacity 0.3-0.9) with foreign texture or a colour shift."""
        cells = int(2 ** self.rng.integers(1, 4))  # 2, 4 or 8 lattice cells across
        noise = self._perlin_noise(cells) + 0.5 * self._perlin_noise(2 * cells)  # two octaves
        share = self._draw_area() / self.config.size**2
        shape = drop_small(noise > np.quantile(noise, 1 - share))
        if not shape.any():
            shape = noise >= noise.max()  # (a tiny area) the peak stays; the attempt loop judges it
        opacity = self.rng.uniform(0.3, 0.9)
        alpha = self._soften(shape, self.rng.uniform(1, 3)) * opacity
        if others or self.rng.random() < 0.5:
            foreign = self._foreign(normal, others, shape, turn=True)
        else:  # a shift that, at this opacity, gives about the drawn contrast
            foreign = normal + self._shift(normal[shape], min(contrast / opacity, MAX_CONTRAST), 0.5)
        a = alpha[..., None]
        return normal * (1 - a) + foreign * a, alpha > 0, self.config.contrast_range


def floor_for(contrast: float) -> float:
    """The least RGB change that counts as defect: half the contrast, at most FLOOR_CAP."""
    return min(0.5 * contrast, FLOOR_CAP)


def drop_small(mask: np.ndarray, least: int = MIN_COMPONENT) -> np.ndarray:
    """`mask` without its 8-connected pieces of fewer than `least` pixels."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= least
    keep[0] = False  # the background
    return keep[labels]


def to_u8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _fold(points: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Mirror coordinates back into [lo, hi]: a path that would leave the image bounces off the border."""
    period = 2 * (hi - lo)
    t = np.mod(points - lo, period)
    return lo + np.where(t > hi - lo, period - t, t)
