"""A model bundle's life in one place: fit, calibration, pixel prior, reference images, ONNX export.

    fit_bundle(method, data, out)   fit on normal images, calibrate every threshold and F2PAD
                                    setting of the inspection chain, save (inspectd fit)
    load_calibration(bundle)        what the chain uses: thresholds, F2PAD settings, min area
    load_prior / load_references    F2PAD's pixel prior and its inpaint=nearest images
    load_normal_scores(bundle)      held-out normal scores: the reference of the drift monitor
    export_to_bundle(method, dir)   the ONNX screening graph (inspectd export)
    fit_demo_bundle(...)            the demo line's model, fitted on texture parts

service/, deploy/ and eval/ load bundles through here; nothing here imports them.
"""

from inspectd.bundle.assets import load_calibration, load_normal_scores, load_prior, load_references, load_tile
from inspectd.bundle.fit import fit_bundle
from inspectd.methods.export import export_to_bundle

__all__ = ["export_to_bundle", "fit_bundle", "load_calibration", "load_normal_scores", "load_prior",
           "load_references", "load_tile"]
