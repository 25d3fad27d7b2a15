"""Measurement: accuracy and traced MACs over a split, latency on the target device, operating-point sweeps (no Ray)."""
