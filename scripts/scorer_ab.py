"""Issue 11: A/B in one process, interleaved image by image: F2PAD's per-iteration scorers written
as plain autograd expressions (before commit a9f6ac6) vs inspectd.methods.distances (hand-written
backward passes, index_select for the scored cells). Every 4th defective test image of DATA.
Usage: python scripts/scorer_ab.py DATA BUNDLE [BUNDLE ...]
"""
import sys

import numpy as np
import torch

import inspectd.methods.cfa as cfa
import inspectd.methods.padim as padim
import inspectd.methods.patchcore as patchcore
from inspectd.data.mvtec import load_test
from inspectd.deploy.native import NativeChain

PLAIN = {"quadratic_form": lambda d, s: (torch.bmm(d[:, None], s)[:, 0] * d).sum(-1),
         "squared_distances": lambda q, c: ((q[:, None, :] - c) ** 2).sum(-1),
         "cell_features": lambda f, c: f.flatten(2)[0][:, c].T}
HAND_WRITTEN = {"quadratic_form": padim.quadratic_form, "squared_distances": patchcore.squared_distances,
                "cell_features": patchcore.cell_features}


def use(functions: dict) -> None:
    for module in (padim, cfa, patchcore):
        for name, fn in functions.items():
            if hasattr(module, name):
                setattr(module, name, fn)


data, bundles = sys.argv[1], sys.argv[2:]
test = load_test(data, None, progress=False)
images = [i for i, label in enumerate(test.labels) if label][::4]
for bundle in bundles:
    refiner = NativeChain.from_bundles(bundle, None, device="cpu", whole_frame="upsample").refiner
    rows = {"plain": [], "hand-written": []}
    for n, i in enumerate(images):
        order = [("plain", PLAIN), ("hand-written", HAND_WRITTEN)]
        for name, functions in (order if n % 2 == 0 else order[::-1]):
            use(functions)
            r = refiner.inspect(test.images[i])
            rows[name].append((r.refine_seconds, (r.stats or {}).get("iterations", 0)))
    before, after = np.array(rows["plain"]), np.array(rows["hand-written"])
    solved = (before[:, 1] > 0) & (after[:, 1] > 0)
    per_iteration = np.median((after[solved, 0] / after[solved, 1]) / (before[solved, 0] / before[solved, 1]))
    print(f"{bundle}: {len(images)} images; median s plain {np.median(before[:, 0]):.2f}, hand-written "
          f"{np.median(after[:, 0]):.2f} ({np.median(after[:, 0]) / np.median(before[:, 0]):.3f}x); "
          f"s per iteration {per_iteration:.3f}x; iterations {int(before[:, 1].sum())} vs {int(after[:, 1].sum())}")
