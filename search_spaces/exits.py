"""Early exits (BranchyNet): which stages carry an exit, head width, threshold, loss weight, learning rate.

The backbone's searched dimensions (recipe ``backbone.search``) are asked first; the exits are
then placed over the stages that backbone has.
"""
from __future__ import annotations

from typing import Any

from dynsearch.spaces import num_stages, suggest_backbone, suggest_exit_stages, trial_config

DEFAULTS: dict[str, Any] = {
    "exit_after_stage_0": True,
    "exit_after_stage_1": True,
    **{f"exit_after_stage_{i}": False for i in range(2, 7)},  # for backbones searched deeper
    "exit_head_width": 32,
    "exit_threshold": 0.9,
    "exit_loss_weight": 0.5,
    "lr": 0.005,
}


def define(trial, recipe, data) -> dict[str, Any]:
    """Ask ``trial`` for a backbone, then an early-exit network on it; return its trial config."""
    backbone = suggest_backbone(trial, recipe)
    exits = {
        "stages": suggest_exit_stages(trial, num_stages(backbone) - 1),
        "head_width": trial.suggest_categorical("exit_head_width", [0, 16, 32, 64]),
        "threshold": trial.suggest_float("exit_threshold", 0.5, 0.99),
        "loss_weight": trial.suggest_float("exit_loss_weight", 0.1, 1.0),
    }
    return trial_config(trial, recipe, data, "exits", {"exits": exits}, backbone=backbone)
