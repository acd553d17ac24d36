"""The deployed inspection chain: one Inspector that the daemon, the demo, eval and benches call."""

from inspectd.deploy.inspector import DEFECT, MIN_DEFECT_AREA_PX, OK, ChainSettings, Inspection, Inspector, \
    coarse_threshold, judge

__all__ = ["DEFECT", "MIN_DEFECT_AREA_PX", "OK", "ChainSettings", "Inspection", "Inspector", "coarse_threshold", "judge"]
