"""Early exits with every exit rule of the seed papers (mechanism ``exits``): exit locations,
head width, exit policy (confidence, entropy, FastBERT, PABEE) and its threshold or patience,
training scheme (joint or two-stage) and loss weights, learning rate.

The ``exits`` space is the confidence-only subset that the default recipe searches.
"""
from __future__ import annotations

from typing import Any

from dynsearch.spaces import num_stages, suggest_backbone, suggest_exit_stages, trial_config

DEFAULTS: dict[str, Any] = {
    **{f"exit_after_stage_{i}": True for i in range(7)},  # a recipe has at most 8 stages
    "exit_head_width": 32,
    "exit_policy": "confidence",
    "exit_threshold": 0.9,
    "entropy_threshold": 0.3,
    "fastbert_speed": 0.3,
    "patience": 1,
    "exit_training": "joint",
    "exit_loss_weights": "constant",
    "exit_loss_weight": 0.5,
    "lr": 0.005,
}

THRESHOLD_POLICIES = ("confidence", "entropy", "fastbert", "patience")


def define_exit_rule(trial, num_exits: int, policies=THRESHOLD_POLICIES) -> dict[str, Any]:
    """Ask for an exit policy, its knob, the training scheme and the loss weights.

    Ranges follow the papers (PAPERS.md): DeeBERT's entropy threshold 0-0.7
    nats, FastBERT's speed 0-1, PABEE's patience 1-6 (capped so that it can
    trigger: at most ``num_exits - 1`` agreements between exit heads).
    """
    policy = trial.suggest_categorical("exit_policy", list(policies))
    rule: dict[str, Any] = {"policy": policy}
    if policy == "confidence":
        rule["threshold"] = trial.suggest_float("exit_threshold", 0.5, 0.99)
    elif policy == "entropy":
        rule["threshold"] = trial.suggest_float("entropy_threshold", 0.0, 0.7)
    elif policy == "fastbert":
        rule["threshold"] = trial.suggest_float("fastbert_speed", 0.0, 1.0)
    elif policy == "patience":
        rule["patience"] = trial.suggest_int("patience", 1, max(1, min(6, num_exits - 1)))
    rule["training"] = trial.suggest_categorical("exit_training", ["joint", "two_stage"])
    if rule["training"] == "joint":
        rule["loss_weights"] = trial.suggest_categorical("exit_loss_weights", ["constant", "linear"])
        if rule["loss_weights"] == "constant":
            rule["loss_weight"] = trial.suggest_float("exit_loss_weight", 0.1, 1.0)
    return rule


def define(trial, recipe, data) -> dict[str, Any]:
    """Ask ``trial`` for a backbone, then an early-exit network on it; return its trial config."""
    backbone = suggest_backbone(trial, recipe)
    stages = num_stages(backbone)
    exits = {
        "stages": suggest_exit_stages(trial, stages - 1),
        "head_width": trial.suggest_categorical("exit_head_width", [0, 16, 32, 64]),
        **define_exit_rule(trial, stages - 1),
    }
    return trial_config(trial, recipe, data, "exits", {"exits": exits}, backbone=backbone)
