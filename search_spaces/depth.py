"""Depth-adaptive Transformer (mechanism ``depth_adaptive``): exit layers, halting rule
(predicted depth or a per-sequence exit policy) and its knobs, training scheme, learning rate.

Needs ``backbone.kind: transformer``; each stage is ``depth`` encoder layers.
"""
from __future__ import annotations

from typing import Any

from dynsearch.search_spaces.exit_policies import DEFAULTS as EXIT_DEFAULTS
from dynsearch.search_spaces.exit_policies import THRESHOLD_POLICIES, define_exit_rule
from dynsearch.spaces import num_stages as stage_count
from dynsearch.spaces import require_backbone_kind, suggest_backbone, suggest_exit_stages, trial_config

MAX_STAGES = 8  # the recipe allows at most 8 widths

DEFAULTS: dict[str, Any] = {
    **{f"exit_after_layer_{i}": True for i in range(MAX_STAGES - 1)},
    **{k: v for k, v in EXIT_DEFAULTS.items() if not k.startswith("exit_after_stage")},
    "exit_policy": "predicted",
    "exit_head_width": 0,
    "exit_loss_weight": 1.0,
    "depth_penalty": 0.1,
    "lr": 0.003,
}


def check_recipe(recipe) -> None:
    require_backbone_kind(recipe, "depth", "transformer")


def define(trial, recipe, data) -> dict[str, Any]:
    """Ask ``trial`` for a Transformer backbone, then its depth-adaptive machinery; return its trial config."""
    backbone = suggest_backbone(trial, recipe)
    num_stages = stage_count(backbone)
    exit_stages = suggest_exit_stages(trial, num_stages - 1, prefix="exit_after_layer")
    rule = define_exit_rule(trial, num_stages - 1, policies=("predicted", *THRESHOLD_POLICIES))
    if rule["policy"] == "predicted":
        rule["depth_penalty"] = trial.suggest_float("depth_penalty", 0.0, 0.5)
    exits = {"stages": exit_stages, "head_width": trial.suggest_categorical("exit_head_width", [0, 32]), **rule}
    return trial_config(trial, recipe, data, "depth_adaptive", {"exits": exits}, lr_range=(1e-3, 1e-2),
                        backbone=backbone)
