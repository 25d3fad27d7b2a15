"""Measurement: accuracy and traced MACs over a split, latency, operating-point sweeps, timing isolation."""
