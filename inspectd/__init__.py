"""inspectd: unsupervised visual anomaly detection with pixel-accurate defect masks."""

__version__ = "0.1.0"
