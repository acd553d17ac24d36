"""Metrics, calibration and the benchmark runners."""
