"""What the oracle-analysis scripts (pick_vs_real.py, peak_ratio_vs_real.py) share: their
command line and the fit's own calibration inputs rebuilt from a bundle, beside the real
defects of the test set. Reads test labels: for analysis only, never a calibration input."""
import argparse
from dataclasses import dataclass

import numpy as np

from inspectd.bundle import calibration as cal
from inspectd.bundle.fit import split_holdout
from inspectd.data.mvtec import load_test, load_train
from inspectd.deploy.inspector import Inspector


def parse_args(doc: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("data")
    parser.add_argument("--out")
    parser.add_argument("--holdout", type=float, default=0.2, help="the fit's --holdout")
    parser.add_argument("--seed", type=int, default=0, help="the fit's --seed")
    return parser.parse_args()


@dataclass
class OracleInputs:
    inspector: Inspector
    config: cal.CalibrationConfig
    holdout: np.ndarray  # the fit's held-out normal images
    synthetic: tuple[np.ndarray, np.ndarray]  # the fit's synthetic calibration set (images, truths)
    real: tuple[np.ndarray, np.ndarray]  # every defective test image (images, truths)


def oracle_inputs(args: argparse.Namespace) -> OracleInputs:
    """The bundle's chain, and the synthetic set exactly as `inspectd fit` built it from its holdout."""
    inspector = Inspector.from_bundle(args.bundle, device="cpu")
    method = inspector.method
    c = cal.CalibrationConfig(seed=args.seed)
    train = load_train(args.data, method.config.image_size, progress=False)
    holdout = train[split_holdout(len(train), args.holdout, args.seed)[1]]
    images, truths, _ = cal.visible_synthetic_set(method, holdout, c.synthetic_images, c.seed,
                                                  inspector.settings.screen_threshold)
    test = load_test(args.data, method.config.image_size, progress=False)
    defective = np.nonzero(test.labels)[0]
    return OracleInputs(inspector, c, holdout, (images, truths), (test.images[defective], test.masks[defective]))
