"""The static baseline: a backbone with its final classifier only (no exits, gates, experts or
halting). With a recipe's ``backbone.search`` this is a static architecture search (the backbone's
dimensions and the learning rate); with a fixed backbone only the learning rate is searched.

Its models are ``exits`` networks with no exit heads, which run exactly the
static path (``macs == macs_full`` for every sample). The benchmark suite
(``benchmarks/run.py``) compares searches of this space with dynamic ones at
the same trial budget.
"""
from __future__ import annotations

from typing import Any

from dynsearch.spaces import suggest_backbone, trial_config

DEFAULTS: dict[str, Any] = {"lr": 0.005}


def define(trial, recipe, data) -> dict[str, Any]:
    """Ask ``trial`` for a backbone and a learning rate; return the static network's trial config."""
    backbone = suggest_backbone(trial, recipe)
    exits = {"stages": [], "head_width": 0, "policy": "confidence", "threshold": 1.0}
    return trial_config(trial, recipe, data, "exits", {"exits": exits}, backbone=backbone)
