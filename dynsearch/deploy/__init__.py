"""Deployment: model folders (export, load), model cards, staged ONNX, int8, benchmarking a folder."""
