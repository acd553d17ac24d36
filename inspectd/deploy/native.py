"""The inspection chain at the camera's own resolution.

Screening sees the frame downscaled to its bundle's size (cheap enough for every frame); the
coarse-mask rule turns its map into flagged regions, mapped to native pixels exactly
(geometry.box_to_native). Refinement then depends on the refiner bundle:

- a tile bundle (`inspectd fit --tile T`, fitted on T x T crops of native-resolution normal
  images) refines T x T windows of native pixels around each region, so its features have the
  scale they were fitted at; masks, areas and axes come out in native pixels;
- a whole-frame bundle either refines the downscaled frame and its mask is upsampled to the
  native size ("upsample", today's pipeline), or ("native") F2PAD solves for the native pixels of
  the flagged frame while the bundle's features are taken on X_N shrunk to the bundle's size
  (f2pad.refine_native): features at the scale they were fitted at, outlines at native pixels.

Nothing here allocates a full-frame feature map: features are computed on the downscaled frame
or on T x T windows, and masks travel as crops around their regions (geometry.CroppedMask).
A tile refiner reads only the pixels of its windows (pixels_read), so the capture can send just
those (geometry.FrameCrops, frame schema 4) instead of a 5-20 MP frame.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from inspectd.data.images import screening_input
from inspectd.deploy.inspector import DEFECT, OK, Inspector, coarse_threshold, judge
from inspectd.errors import InspectdError
from inspectd.geometry import Box, CroppedMask, FrameCrops, box_to_native, mask_box
from inspectd.refine.f2pad import refine_native

TILED_MAP_STEP = 4  # native pixels per pixel of a tiled screening's stitched map
WINDOW_OVERLAP = 0.25  # share of a window shared with its neighbour when a region needs several


@dataclass
class NativeInspection:
    """One native frame through the chain; masks are crops of the (height, width) frame."""

    height: int
    width: int
    score: float
    flagged: bool
    decision: str
    regions: list[Box] = field(default_factory=list)  # flagged regions, native pixels
    windows: list[Box] = field(default_factory=list)  # what was refined, native pixels
    coarse: CroppedMask | None = None
    mask: CroppedMask | None = None
    defects: list[dict] = field(default_factory=list)  # native pixels (and mm)
    refine_seconds: float | None = None
    screen_map: np.ndarray | None = None  # the screening map, at the screening bundle's size
    iterations: int = 0  # F2PAD iterations over all windows

    def full_mask(self) -> np.ndarray:
        return self.mask.full() if self.mask else np.zeros((self.height, self.width), bool)

    def full_coarse(self) -> np.ndarray:
        return self.coarse.full() if self.coarse else np.zeros((self.height, self.width), bool)


def downscale(frame: np.ndarray, size: int) -> np.ndarray:
    """The frame (8-bit or float RGB) at the bundle's size as float RGB (area averaging; an
    8-bit frame is shrunk before it becomes float)."""
    return screening_input(frame, size)


def flagged_regions(score_map: np.ndarray, threshold: float, native_hw: tuple[int, int]) -> list[Box]:
    """Connected regions of the screening map above the coarse-mask threshold, as native boxes,
    overlapping ones merged."""
    mask = (np.asarray(score_map) > threshold).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    boxes = [Box(int(x), int(y), int(w), int(h)) for x, y, w, h, _ in stats[1:n]]
    native = [box_to_native(b, native_hw, score_map.shape[:2]) for b in boxes]
    return merge_overlapping([b for b in native if b.area > 0])


def screening_windows(frame_hw: tuple[int, int], tile: int, overlap: int) -> list[Box]:
    """The T x T windows a tiled screening cuts (screening.tiles): they cover the frame, evenly
    spaced, neighbours sharing at least `overlap` px, the last flush with the frame's edge (a frame
    smaller than a tile is one window, reflected out to T x T by `cut`)."""
    checked_overlap(tile, overlap)
    h, w = frame_hw
    return [Box(x, y, tile, tile).clip(h, w) for y in window_starts(0, h, h, tile, overlap)
            for x in window_starts(0, w, w, tile, overlap)]


def checked_overlap(tile: int, overlap: int) -> int:
    if not 0 <= overlap < tile:
        raise InspectdError(f"screening tiles: the overlap ({overlap} px) must be at least 0 and less than the "
                            f"tile ({tile} px)")
    return overlap


def default_overlap(tile: int | None) -> int:
    """What neighbouring screening windows share unless the line says otherwise: the context a
    tile refiner adds around a region (an eighth of a tile), so a defect on one window's edge is
    well inside the next."""
    return (tile or 0) // 8


def screen_in_tiles(screen, frame: np.ndarray, tile: int, overlap: int,
                    map_step: int = TILED_MAP_STEP) -> tuple[np.ndarray, float]:
    """Screen a native frame window by window with a tile bundle (fitted on T x T native crops,
    so each window is seen at the scale it was fitted at): (score map, frame score). The map is
    the windows' maps stitched by maximum at 1/map_step of native resolution (a full-resolution
    float map of a 20 MP frame would be 80 MB; flagged_regions maps its boxes back to native
    pixels); the frame's score is its highest window's."""
    h, w = frame.shape[:2]
    stitched = np.full((math.ceil(h / map_step), math.ceil(w / map_step)), -np.inf, np.float32)
    score = -math.inf
    for box in screening_windows((h, w), tile, overlap):
        window_map, window_score = screen(cut(frame, box, tile))
        score = max(score, float(window_score))
        y0, x0 = box.y // map_step, box.x // map_step
        y1, x1 = math.ceil(box.y1 / map_step), math.ceil(box.x1 / map_step)
        part = cv2.resize(np.asarray(window_map, np.float32)[:box.h, :box.w], (x1 - x0, y1 - y0),
                          interpolation=cv2.INTER_AREA)
        np.maximum(stitched[y0:y1, x0:x1], part, out=stitched[y0:y1, x0:x1])
    return stitched, score


def merge_overlapping(boxes: list[Box]) -> list[Box]:
    """Boxes merged until none overlaps another, so each native pixel has one owner."""
    boxes = list(boxes)
    merged = True
    while merged:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                if boxes[i].overlaps(boxes[j]):
                    boxes[i] = Box.union([boxes[i], boxes[j]])
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return sorted(boxes, key=lambda b: (b.y, b.x))


def window_starts(start: int, length: int, frame: int, tile: int, overlap: int | None = None) -> list[int]:
    """Window origins (one axis) covering [start, start + length) with tile-sized windows inside
    the frame; evenly spaced with at least `overlap` px (default: WINDOW_OVERLAP of a tile)
    shared when several are needed."""
    if frame <= tile:
        return [0]
    if length <= tile:
        return [min(max(start + length // 2 - tile // 2, 0), frame - tile)]
    step = tile * (1 - WINDOW_OVERLAP) if overlap is None else tile - overlap
    n = 1 + math.ceil((length - tile) / step)
    last = min(start + length - tile, frame - tile)
    first = max(start, 0)
    return sorted({round(first + k * (last - first) / (n - 1)) for k in range(n)})


def windows_for(region: Box, frame_hw: tuple[int, int], tile: int) -> list[Box]:
    h, w = frame_hw
    xs = window_starts(region.x, region.w, w, tile)
    ys = window_starts(region.y, region.h, h, tile)
    return [Box(x, y, tile, tile).clip(h, w) for y in ys for x in xs]


def refinement_plan(regions: list[Box], frame_hw: tuple[int, int], tile: int) -> list[tuple[Box, list[Box]]]:
    """What a tile refiner refines: each flagged region padded with the context its features
    reach past it (an eighth of a tile), merged where they overlap, with the T x T windows that
    cover it."""
    h, w = frame_hw
    margin = tile // 8
    return [(region, windows_for(region, (h, w), tile))
            for region in merge_overlapping([r.pad(margin).clip(h, w) for r in regions])]


def pixels_read(regions: list[Box], frame_hw: tuple[int, int], tile: int) -> list[Box]:
    """The native boxes a tile refiner reads for these regions (the hulls of each region's
    windows, merged): all a flagged frame's message needs to carry (frame schema 4)."""
    return merge_overlapping([Box.union(windows) for _, windows in refinement_plan(regions, frame_hw, tile)])


def cut(frame: np.ndarray | FrameCrops, box: Box, tile: int) -> np.ndarray:
    """The window's pixels as float RGB in [0, 1] (an 8-bit frame is converted window by window,
    never whole), reflected out to tile x tile when the frame is smaller than a tile."""
    crop = frame[box.slices]
    pad_y, pad_x = tile - crop.shape[0], tile - crop.shape[1]
    if pad_y or pad_x:
        crop = cv2.copyMakeBorder(np.ascontiguousarray(crop), 0, pad_y, 0, pad_x, cv2.BORDER_REFLECT_101)
    if crop.dtype == np.uint8:
        return crop.astype(np.float32) / 255.0
    return np.ascontiguousarray(crop, dtype=np.float32)


WHOLE_FRAME_MODES = ("upsample", "native")


class NativeChain:
    """Screening on the downscaled frame + refinement in native pixels (tile bundle), or with a
    whole-frame bundle either on the downscaled frame with its mask upsampled ("upsample") or at
    native pixels with features taken at the bundle's scale ("native")."""

    def __init__(self, refiner: Inspector, screener: Inspector | None = None, tile: int | None = None,
                 whole_frame: str = "upsample", screen_tile: int | None = None, screen_overlap: int | None = None):
        if whole_frame not in WHOLE_FRAME_MODES:
            raise ValueError(f"whole_frame must be one of {WHOLE_FRAME_MODES}, got {whole_frame!r}")
        self.refiner, self.screener = refiner, screener or refiner
        self.tile = tile  # None: the refiner is a whole-frame bundle
        self.whole_frame = whole_frame
        # a tile screening bundle screens the native frame in overlapping windows of its tile
        self.screen_tile = screen_tile
        self.screen_overlap = default_overlap(screen_tile) if screen_overlap is None else screen_overlap

    @classmethod
    def from_bundles(cls, refiner_dir: str | Path, screening_dir: str | Path | None = None,
                     device: str = "auto", whole_frame: str = "upsample") -> "NativeChain":
        from inspectd.bundle import load_tile

        refiner = Inspector.from_bundle(refiner_dir, device=device)
        tile = load_tile(refiner_dir)
        if tile is not None and screening_dir is None:
            raise ValueError(f"{refiner_dir} is a tile bundle (fitted on {tile} px crops): it refines native "
                             "crops but cannot screen whole frames; give a screening bundle too")
        same = screening_dir is not None and Path(screening_dir).resolve() == Path(refiner_dir).resolve()
        screener = Inspector.from_bundle(screening_dir, device=device) if screening_dir and not same else None
        screen_tile = load_tile(screening_dir) if screening_dir else None
        return cls(refiner, screener, tile, whole_frame, screen_tile)

    def screen(self, frame: np.ndarray) -> tuple[float, bool, list[Box], np.ndarray]:
        """(image score, flagged, native regions, screening map) of one native frame."""
        if self.screen_tile:
            score_map, score = screen_in_tiles(self.screener.screen, frame, self.screen_tile, self.screen_overlap)
            flagged = score > self.screener.settings.frame_threshold(tiled=True)
        else:
            score_map, score = self.screener.screen(downscale(frame, self.screener.image_size))
            flagged = self.screener.flagged(score)
        regions = []
        if flagged:
            threshold = coarse_threshold(self.screener.settings, float(np.max(score_map)))
            regions = flagged_regions(score_map, threshold, frame.shape[:2])
        return score, flagged, regions, score_map

    def inspect(self, frame: np.ndarray, px_per_mm: float | None = None) -> NativeInspection:
        score, flagged, regions, screen_map = self.screen(frame)
        if not flagged:
            return NativeInspection(frame.shape[0], frame.shape[1], score, False, OK, screen_map=screen_map)
        result = self.refine(frame, regions, score, px_per_mm)
        result.screen_map = screen_map
        return result

    def refine(self, frame: np.ndarray, regions: list[Box] | None = None, score: float | None = None,
               px_per_mm: float | None = None) -> NativeInspection:
        """A flagged native frame; regions from the screening (None: screen it here); score None:
        the refiner's own peak."""
        if regions is None:
            score, _, regions, _ = self.screen(frame)
        started = time.perf_counter()
        if self.tile is None and isinstance(frame, FrameCrops):
            raise InspectdError("this frame carries crops (frame schema 4), but a whole-frame refiner bundle reads "
                                "the whole frame: refine with a tile bundle (`fit --tile`) or set "
                                "transport.frame_payload: frame")
        if self.tile is None and self.whole_frame == "native" and frame.shape[:2] != (self.refiner.image_size,) * 2:
            result = self.refine_native(frame, score, px_per_mm)
        elif self.tile is None:
            result = self.refine_whole(frame, score, px_per_mm)
        else:
            result = self.refine_windows(frame, regions, score, px_per_mm)
        result.regions = regions
        result.refine_seconds = time.perf_counter() - started
        return result

    def refine_whole(self, frame: np.ndarray, score: float | None, px_per_mm: float | None) -> NativeInspection:
        """Today's pipeline: refine the downscaled frame, upsample its mask to native pixels."""
        h, w = frame.shape[:2]
        run = self.refiner.refine(downscale(frame, self.refiner.image_size), score=score)
        score = run.score
        mask, coarse = upsample(run.mask, (h, w)), upsample(run.coarse_mask, (h, w))
        score_map = cv2.resize(run.coarse_map, (w, h), interpolation=cv2.INTER_LINEAR)
        decision, defects, mask = judge(mask, score_map, self.native_min_area(frame), px_per_mm)
        whole = Box(0, 0, w, h)
        return NativeInspection(h, w, score, True, decision, windows=[whole],
                                coarse=CroppedMask.around(coarse), mask=CroppedMask.around(mask), defects=defects,
                                iterations=int(run.stats.get("iterations", 0)))

    def refine_native(self, frame: np.ndarray, score: float | None, px_per_mm: float | None) -> NativeInspection:
        """A whole-frame bundle at native pixels: its coarse map from the frame shrunk to its size,
        then F2PAD solved on the native pixels with the features taken on X_N shrunk back to that
        size (f2pad.refine_native), so the mask's outline is drawn at native resolution."""
        h, w = frame.shape[:2]
        if frame.dtype == np.uint8:  # F2PAD's pixels are float in [0, 1]
            frame = frame.astype(np.float32) / 255.0
        inspector = self.refiner
        coarse_map, peak = inspector.screen(downscale(frame, inspector.image_size))
        threshold = coarse_threshold(inspector.settings, peak)
        run = refine_native(frame, inspector.method, coarse_map, inspector.prior,
                            inspector.settings.f2pad.replace(threshold=threshold), inspector.references)
        score_map = cv2.resize(coarse_map, (w, h), interpolation=cv2.INTER_LINEAR)
        decision, defects, mask = judge(run.mask, score_map, self.native_min_area(frame), px_per_mm)
        return NativeInspection(h, w, peak if score is None else score, True, decision, windows=[Box(0, 0, w, h)],
                                coarse=CroppedMask.around(run.coarse_mask), mask=CroppedMask.around(mask),
                                defects=defects, iterations=int(run.stats.get("iterations", 0)))

    def native_min_area(self, frame: np.ndarray) -> int:
        """The smallest defect, calibrated on the downscaled frame, in native pixels."""
        s = self.refiner.image_size
        return max(1, round(self.refiner.settings.min_defect_area_px * frame.shape[0] * frame.shape[1] / s**2))

    def refine_windows(self, frame: np.ndarray, regions: list[Box], score: float | None,
                       px_per_mm: float | None) -> NativeInspection:
        """Each region refined in native T x T windows; the region's mask is the union of what
        its windows found inside it (a window's context outside the region is not judged)."""
        h, w = frame.shape[:2]
        crops, coarse_crops, defects, windows, iterations = [], [], [], [], 0
        for region, region_windows in refinement_plan(regions, (h, w), self.tile):
            mask = np.zeros((region.h, region.w), bool)
            coarse = np.zeros_like(mask)
            score_map = np.zeros(mask.shape, np.float32)
            for window in region_windows:
                if isinstance(frame, FrameCrops) and not frame.covers(window):
                    raise InspectdError(f"the frame's crops do not hold window {window.as_list()} of this refiner's "
                                        f"{self.tile} px tiles (were they cut for another refiner bundle?)")
                run = self.refiner.refine(cut(frame, window, self.tile), score=score)
                iterations += int(run.stats.get("iterations", 0))
                inside = window.intersection(region)
                target, source = inside.relative_to(region).slices, inside.relative_to(window).slices
                mask[target] |= run.mask[source]
                coarse[target] |= run.coarse_mask[source]
                score_map[target] = np.maximum(score_map[target], run.coarse_map[source])
                windows.append(window)
            decision, found, mask = judge(mask, score_map, self.refiner.settings.min_defect_area_px, px_per_mm)
            defects += [offset_defect(d, region) for d in found]
            crops.append((region, mask))
            coarse_crops.append((region, coarse))
        defects.sort(key=lambda d: -d["area_px"])
        score = float("nan") if score is None else score  # the capture's score travels with the frame
        return NativeInspection(h, w, score, True, DEFECT if defects else OK, windows=windows,
                                coarse=CroppedMask(h, w, coarse_crops), mask=CroppedMask(h, w, crops),
                                defects=defects, iterations=iterations)


def offset_defect(defect: dict, region: Box) -> dict:
    """A defect measured inside a region crop, in the frame's coordinates."""
    x, y, bw, bh = defect["bbox"]
    cx, cy = defect["centroid"]
    return {**defect, "bbox": [x + region.x, y + region.y, bw, bh],
            "centroid": [round(cx + region.x, 2), round(cy + region.y, 2)]}


def upsample(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A low-resolution mask at native size: bilinear on 0/1, cut at one half (smooth outlines
    instead of the blocks of nearest-neighbour)."""
    h, w = hw
    if mask.shape == (h, w):
        return np.asarray(mask, bool)
    return cv2.resize(np.asarray(mask, np.float32), (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5


__all__ = ["NativeChain", "NativeInspection", "downscale", "flagged_regions", "mask_box", "pixels_read", "windows_for"]
