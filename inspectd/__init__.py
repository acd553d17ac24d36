"""inspectd: unsupervised visual anomaly detection with pixel-accurate defect masks."""

import os

# torch's OpenMP threads busy-wait for each other between parallel regions by default. Where
# the cores are shared (capture and refiner on one box, other jobs), a spinning thread holds a
# core while the thread it waits for is descheduled: on 2 shared cores one F2PAD
# forward+backward pass took 0.6-4.8 s with 2 threads instead of 0.05 s. Passive waiting
# sleeps instead (the capture's ONNX Runtime session already disables spinning). OpenMP reads
# this once, when torch is imported, so it is set here, first; a value in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
