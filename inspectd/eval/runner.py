"""`inspectd eval`: score a bundle on an MVTec-layout test set and report every metric."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from inspectd.data.mvtec import load_test
from inspectd.eval import metrics
from inspectd.methods import load_method


def evaluate_bundle(model: str | Path, data: str | Path, out: str | Path | None = None,
                    threshold: str = "f1", progress: bool = True) -> dict:
    method = load_method(model)
    test = load_test(data, method.config.image_size, progress=progress)
    started = time.perf_counter()
    maps, scores = method.predict(test.images, progress=progress)
    per_image = (time.perf_counter() - started) / len(test)
    thr = method.thresholds.get("pixel") if threshold == "bundle" else None
    result = metrics.evaluate(test.labels, scores, test.masks, maps, test.defect_types, threshold=thr)
    result.update(model=str(model), data=str(data), method=method.name, seconds_per_image=round(per_image, 4),
                  threshold_source="bundle (calibrated on synthetic defects)" if thr is not None else "F1-optimal on this data",
                  machine=f"{platform.node()} {platform.processor() or platform.machine()}")
    print(metrics.format_table(result))
    print(f"seconds per test image: {per_image:.3f}  (threshold: {result['threshold_source']})")
    out = Path(out) if out else Path("runs") / f"eval-{Path(model).name}-{Path(data).name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float))
    print(f"written: {out}")
    return result
