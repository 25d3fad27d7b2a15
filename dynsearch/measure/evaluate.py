"""Accuracy and traced MACs of a model over an evaluation split.

MACs come from the traces of what actually ran (dynamic/cost.py holds each
component's static count; a sample pays the components its trace names).
"""
from __future__ import annotations

from typing import Any

import torch

from dynsearch.data import cached_splits
from dynsearch.dynamic.base import Trace
from dynsearch.measure.device import pinned_threads

MEASURE_BATCH_SIZE = 256  # the batch size a trial is measured at (recorded as measured_with)


def count_params(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


@torch.no_grad()
def measure(model, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int = 256) -> dict[str, Any]:
    """Accuracy and mean per-sample MACs of ``model`` in eval mode on a split.

    MACs come from the traces of what actually ran (the model really skips).
    Returns ``accuracy``, ``macs``, ``macs_full``, ``stats`` (the mechanism's
    per-point statistics, e.g. its exit histogram) and ``per_sample_macs``.
    """
    was_training = model.training
    model.eval()
    outputs = [model(inputs[start : start + batch_size]) for start in range(0, len(inputs), batch_size)]
    model.train(was_training)
    return split_figures(model, outputs, targets)


def split_figures(model, outputs: list, targets: torch.Tensor) -> dict[str, Any]:
    """``measure``'s figures from the eval outputs (``DynamicOutput``) of a split's batches, in order:
    a real pass and a replayed one (measure/points.py) are summed up by this one function."""
    predictions = torch.cat([out.logits.argmax(dim=1) for out in outputs])
    correct = int((predictions == targets).sum())
    trace = Trace.cat([out.trace for out in outputs])
    macs = trace.macs_per_sample(model.component_macs())
    return {
        "accuracy": correct / len(targets),
        "macs": float(macs.mean()),
        "macs_full": model.macs_full(),
        "stats": model.trace_stats(trace),
        "per_sample_macs": macs.tolist(),
    }


def measure_val(model, data: dict[str, Any], measured_with: dict[str, int]) -> dict[str, Any]:
    """Validation accuracy and macs at the batch size and thread count the trial was measured with."""
    splits = cached_splits(data)
    with pinned_threads(int(measured_with["threads"])):
        result = measure(model, splits.val_x, splits.val_y, batch_size=int(measured_with["batch_size"]))
    return {"accuracy": result["accuracy"], "macs": result["macs"], "measured_with": dict(measured_with)}


def same_figures(measured: dict[str, Any], recorded: dict[str, Any]) -> bool:
    """Whether a re-measurement gave exactly the recorded validation accuracy and macs."""
    return measured["accuracy"] == recorded.get("accuracy") and measured["macs"] == recorded.get("macs")
