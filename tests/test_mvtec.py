import numpy as np
import pytest

from conftest import paste_square, texture_crops
from inspectd.data.images import write_image
from inspectd.data.mvtec import load_test, load_train
from inspectd.errors import BadImageError, InspectdError


def make_mvtec(root, n_train=6, size=64, grey_train=False):
    """A tiny MVTec-layout folder with mixed formats: PNG, JPEG, grey, one defect type."""
    normals = texture_crops(n=n_train + 3, size=size, seed=3)
    for i in range(n_train):
        img = normals[i].mean(axis=2) if grey_train and i == 0 else normals[i]
        write_image(root / "train" / "good" / f"{i:03d}{'.jpg' if i % 2 else '.png'}", img)
    write_image(root / "test" / "good" / "000.png", normals[n_train])
    for j in range(2):
        img, mask = paste_square(normals[n_train + 1 + j], 10 + 10 * j, 20, 12)
        write_image(root / "test" / "scratch" / f"{j:03d}.png", img)
        write_image(root / "ground_truth" / "scratch" / f"{j:03d}_mask.png", mask)
    return root


def test_reads_layout_with_any_format_and_channel_count(tmp_path):
    root = make_mvtec(tmp_path / "set", grey_train=True)
    train = load_train(root, 32, progress=False)
    assert train.shape == (6, 32, 32, 3) and train.dtype == np.float32
    test = load_test(root, 32, progress=False)
    assert len(test) == 3 and test.defect_types == ["good", "scratch", "scratch"]
    assert test.labels.tolist() == [False, True, True]
    assert not test.masks[0].any() and test.masks[1].sum() == 36  # 12x12 at half size


def test_missing_folders_and_empty_train(tmp_path):
    with pytest.raises(InspectdError, match="train/good"):
        load_train(tmp_path / "nothing", 32)
    (tmp_path / "empty" / "train" / "good").mkdir(parents=True)
    with pytest.raises(InspectdError, match="empty training set"):
        load_train(tmp_path / "empty", 32)


def test_corrupt_image_is_named(tmp_path):
    root = make_mvtec(tmp_path / "set")
    (root / "train" / "good" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(BadImageError, match="bad.png"):
        load_train(root, 32, progress=False)


def test_mask_of_another_size_is_refused(tmp_path):
    root = make_mvtec(tmp_path / "set")
    write_image(root / "ground_truth" / "scratch" / "001_mask.png", np.zeros((10, 10), bool))
    with pytest.raises(BadImageError, match="001_mask.png: mask size 10x10 differs"):
        load_test(root, 32, progress=False)


def test_missing_mask_is_named(tmp_path):
    root = make_mvtec(tmp_path / "set")
    (root / "ground_truth" / "scratch" / "000_mask.png").unlink()
    with pytest.raises(InspectdError, match="000.png: no ground-truth mask"):
        load_test(root, 32, progress=False)
