"""MVTec-AD-layout datasets: train/good, test/<type>/, ground_truth/<type>/<name>_mask.<ext>."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from inspectd.data.images import IMAGE_SUFFIXES, list_images, read_image, read_mask, resize_image, resize_mask
from inspectd.errors import BadImageError, InspectdError

GOOD = "good"


@dataclass
class TestSet:
    images: np.ndarray  # (N,H,W,3) float32
    masks: np.ndarray  # (N,H,W) bool
    labels: np.ndarray  # (N,) bool, True = defective
    defect_types: list[str]
    paths: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx) -> "TestSet":
        idx = list(idx)
        return TestSet(self.images[idx], self.masks[idx], self.labels[idx],
                       [self.defect_types[i] for i in idx], [self.paths[i] for i in idx])


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise InspectdError(f"{path}: {what} folder not found")
    return path


def read_images(paths: list[Path], size: int, desc: str = "reading", progress: bool = True) -> np.ndarray:
    imgs = [read_image(p, size) for p in tqdm(paths, desc=desc, unit="img", disable=not progress, leave=False)]
    return np.stack(imgs) if imgs else np.zeros((0, size, size, 3), np.float32)


def load_train(root: str | Path, size: int, progress: bool = True) -> np.ndarray:
    """All normal training images of an MVTec-layout folder, resized to (size, size)."""
    folder = _require_dir(Path(root) / "train" / GOOD, "training (train/good)")
    paths = list_images(folder)
    if not paths:
        raise InspectdError(f"{folder}: empty training set (no images with suffix {sorted(IMAGE_SUFFIXES)})")
    return read_images(paths, size, "train images", progress)


def find_mask(gt_dir: Path, image_path: Path) -> Path | None:
    for candidate in sorted(gt_dir.glob(image_path.stem + "_mask.*")) + sorted(gt_dir.glob(image_path.stem + ".*")):
        if candidate.suffix.lower() in IMAGE_SUFFIXES:
            return candidate
    return None


def load_test(root: str | Path, size: int | None, progress: bool = True) -> TestSet:
    """Every test image with its truth mask (all-False for good images), resized to (size, size);
    size None keeps the images' own resolution (they must all have the same size)."""
    root = Path(root)
    test_dir = _require_dir(root / "test", "test")
    types = sorted(p.name for p in test_dir.iterdir() if p.is_dir())
    if not types:
        raise InspectdError(f"{test_dir}: no defect-type folders")
    images, masks, labels, kinds, paths = [], [], [], [], []
    for kind in types:
        for path in tqdm(list_images(test_dir / kind), desc=f"test/{kind}", unit="img", disable=not progress, leave=False):
            img = read_image(path)
            mask = np.zeros(img.shape[:2], bool)
            if kind != GOOD:
                mask_path = find_mask(root / "ground_truth" / kind, path)
                if mask_path is None:
                    raise InspectdError(f"{path}: no ground-truth mask in {root / 'ground_truth' / kind}")
                mask = read_mask(mask_path)
                if mask.shape != img.shape[:2]:
                    raise BadImageError(
                        f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its image "
                        f"{img.shape[1]}x{img.shape[0]} ({path})"
                    )
            images.append(resize_image(img, size) if size else img)
            masks.append(resize_mask(mask, size) if size else mask)
            labels.append(kind != GOOD)
            kinds.append(kind)
            paths.append(path)
    if not images:
        raise InspectdError(f"{test_dir}: no test images")
    if len({i.shape for i in images}) > 1:
        raise InspectdError(f"{test_dir}: test images of several sizes {sorted({i.shape[:2] for i in images})}")
    return TestSet(np.stack(images), np.stack(masks), np.array(labels), kinds, paths)


def load_defects(root: str | Path, size: int, n: int, seed: int = 0) -> TestSet:
    """`n` labelled real defects (a seeded pick among the defective test images of an
    MVTec-layout folder): the few-shot defects a line may have for calibration."""
    test = load_test(root, size, progress=False)
    defective = np.nonzero(test.labels)[0]
    if n > len(defective):
        raise InspectdError(f"{root}: asked for {n} labelled defects, the folder has {len(defective)}")
    pick = np.sort(np.random.default_rng(seed).permutation(defective)[:n])
    return test.subset(pick)


def cut_tiles(images, tile: int, per_image: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`per_image` seeded random tile x tile crops of each image (an iterable, so images can be
    read one at a time). Returns (crops, index of the image each crop came from)."""
    rng = np.random.default_rng(seed)
    crops, owners = [], []
    for i, image in enumerate(images):
        h, w = image.shape[:2]
        if min(h, w) < tile:
            raise InspectdError(f"training image {i} is {w}x{h}, smaller than --tile {tile}")
        for _ in range(per_image):
            y, x = int(rng.integers(0, h - tile + 1)), int(rng.integers(0, w - tile + 1))
            crops.append(np.ascontiguousarray(image[y:y + tile, x:x + tile]))
            owners.append(i)
    return np.stack(crops), np.asarray(owners)


def train_paths(root: str | Path) -> list[Path]:
    """The normal training images of an MVTec-layout folder, in the order fits index them."""
    folder = _require_dir(Path(root) / "train" / GOOD, "training (train/good)")
    paths = list_images(folder)
    if not paths:
        raise InspectdError(f"{folder}: empty training set (no images with suffix {sorted(IMAGE_SUFFIXES)})")
    return paths


def load_train_tiles(root: str | Path, tile: int, per_image: int, seed: int = 0,
                     progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Tiles of each normal training image at its own (native) resolution, cut as each image is
    read so a folder of megapixel images never sits in memory whole."""
    paths = train_paths(root)
    images = (read_image(p) for p in tqdm(paths, desc="train tiles", unit="img", disable=not progress, leave=False))
    return cut_tiles(images, tile, per_image, seed)
