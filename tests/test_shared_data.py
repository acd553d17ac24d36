"""Regression checks on the MVTec AD bottle data in ../shared/data (skipped when it is absent)."""

import numpy as np
import pytest

from conftest import SHARED_DATA

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]


@pytest.fixture(scope="module")
def bottle_padim():
    from inspectd.data.mvtec import load_test, load_train
    from inspectd.methods import create_method
    from inspectd.refine import PixelPrior

    train = load_train(SHARED_DATA, 256, progress=False)
    method = create_method("padim").fit(train[:180], progress=False)
    return method, load_test(SHARED_DATA, 256, progress=False), train[180:], PixelPrior.fit(train[:180])


def test_padim_on_bottle_reaches_the_anomalib_anchor(bottle_padim):
    from inspectd.eval import metrics

    method, test, _, _ = bottle_padim
    maps, scores = method.predict(test.images)
    assert metrics.image_auroc(test.labels, scores) >= 0.98
    assert metrics.pixel_auroc(test.masks, maps) >= 0.973  # anomalib 2.7 PaDiM, same weights


def test_f2pad_sharpens_padim_masks_on_cut_paste_bottles(bottle_padim):
    from inspectd.data.synth import DefectSynthesizer, SynthConfig, load_mask_sources
    from inspectd.eval import metrics
    from inspectd.refine import F2PADSettings, refine

    method, _, held_out, prior = bottle_padim
    synth = DefectSynthesizer(load_mask_sources(SHARED_DATA / "ground_truth", 256), SynthConfig(), seed=3)
    images, truths = zip(*(synth(img) for img in held_out[:6]))
    maps, _ = method.predict(np.stack(images))
    # threshold from the first three (validation), scores on the last three
    thr, _ = metrics.f1_optimal_threshold(np.stack(truths[:3]), maps[:3])
    coarse = metrics.segmentation_scores(np.stack(truths[3:]), maps[3:] > thr)["iou"]
    masks = [refine(images[i], method, maps[i], prior, F2PADSettings(threshold=thr)).mask for i in range(3, 6)]
    refined = metrics.segmentation_scores(np.stack(truths[3:]), np.stack(masks))["iou"]
    assert refined >= coarse + 10, (coarse, refined)
