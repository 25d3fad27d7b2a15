"""Early exits (BranchyNet): which stages carry an exit, head width, threshold, loss weight, learning rate."""
from __future__ import annotations

from typing import Any

DEFAULTS: dict[str, Any] = {
    "exit_after_stage_0": True,
    "exit_after_stage_1": True,
    "exit_head_width": 32,
    "exit_threshold": 0.9,
    "exit_loss_weight": 0.5,
    "lr": 0.005,
}


def define(trial, recipe, data) -> dict[str, Any]:
    """Ask ``trial`` for an early-exit network and return its trial config."""
    num_stages = len(recipe.backbone.widths)
    exit_stages = [
        i
        for i in range(num_stages - 1)
        if trial.suggest_categorical(f"exit_after_stage_{i}", [True, False])
    ]
    return {
        "mechanism": "exits",
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "backbone": recipe.backbone.model_dump(),
        "exits": {
            "stages": exit_stages,
            "head_width": trial.suggest_categorical("exit_head_width", [0, 16, 32, 64]),
            "threshold": trial.suggest_float("exit_threshold", 0.5, 0.99),
            "loss_weight": trial.suggest_float("exit_loss_weight", 0.1, 1.0),
        },
        "train": {
            "lr": trial.suggest_float("lr", 1e-3, 2e-2, log=True),
            "epochs": recipe.epochs,
            "batch_size": recipe.batch_size,
            "seed": recipe.seed + trial.number,
        },
        "trial": trial.number,
    }
