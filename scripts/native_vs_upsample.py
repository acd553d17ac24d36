"""(a) upsample vs (b) native on the `eval --deployed --stride 8` sample of mvtec_bottle_900, one
image at a time (both modes on the same image, same bundle), printing as it goes: the machine was
too loaded (load average 14 on 2 cores) for the two whole evals to finish before the deadline.
Same chain (NativeChain.inspect), same metrics (geometry.iou, area error as eval.deployed).
Usage: python scripts/native_vs_upsample.py BUNDLE OUT_DIR DATA (MVTec layout at its own resolution)
"""
import json, sys, time
from pathlib import Path
import numpy as np, torch
from inspectd.data.mvtec import load_test
from inspectd.deploy.native import NativeChain
from inspectd.eval.deployed import outlined
from inspectd.data.images import write_image
from inspectd.geometry import iou

torch.set_num_threads(1)
bundle, out = sys.argv[1], Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
test = load_test(sys.argv[3], None, progress=False)
keep = list(range(len(test.paths)))[::8]
by_type = {}
for i in keep:
    by_type.setdefault(test.defect_types[i], []).append(i)
order = [i for group in zip(*[by_type[k] for k in sorted(by_type, key=lambda k: k == "good")]) for i in group]
order += [i for i in keep if i not in order]
chains = {m: NativeChain.from_bundles(bundle, device="cpu", whole_frame=m) for m in ("upsample", "native")}
log = open(out / "per_image.jsonl", "a")
for i in order:
    img, truth = test.images[i], np.asarray(test.masks[i], bool)
    row = {"index": i, "type": test.defect_types[i], "path": str(test.paths[i]), "truth_area": int(truth.sum())}
    panels = [outlined(img, truth, (0, 1, 0))]
    for mode, chain in chains.items():
        t0 = time.perf_counter()
        run = chain.inspect(img)
        mask = run.full_mask()
        area = sum(d["area_px"] for d in run.defects)
        row[mode] = {"decision": run.decision, "iou": 100 * iou(mask, truth) if truth.any() else None,
                     "area": int(area), "area_err": abs(area - truth.sum()) / max(1, truth.sum()) if truth.any() else None,
                     "tp": int((mask & truth).sum()), "pred": int(mask.sum()), "seconds": time.perf_counter() - t0}
        panels.append(outlined(img, mask, (1, 0, 0)))
    write_image(out / f"{row['type']}_{i:03d}.png", np.concatenate(panels, axis=1))
    print(json.dumps(row), flush=True)
    log.write(json.dumps(row) + "\n"); log.flush()
