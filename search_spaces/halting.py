"""Halting on a recurrent cell (mechanisms ``act`` and ``pondernet``): the mechanism, maximum
steps, halting-bias init, hidden width, then ACT's ponder cost tau (log scale) or PonderNet's
prior lambda_p and KL weight beta, and the learning rate.

Needs ``backbone.kind: recurrent``. The hidden width is the backbone's: searched as
``backbone_width`` when the recipe has ``backbone.search: {width: ...}``; else (recipes written
before backbone search) asked here as ``hidden_width`` from 32, 64, 128, replacing ``backbone.widths``.
ACT's epsilon stays at Graves's 0.01 and PonderNet's inference threshold at 0.5: both are
runtime knobs (``halting_threshold``) that an operating-point sweep varies after training.
"""
from __future__ import annotations

from typing import Any

from dynsearch.spaces import require_backbone_kind, suggest_backbone, trial_config

DEFAULTS: dict[str, Any] = {
    "halting_mechanism": "act",
    "max_steps": 6,
    "halting_bias_init": -1.0,
    "hidden_width": 128,
    "act_tau": 1e-3,
    "pondernet_lambda_p": 0.2,
    "pondernet_beta": 0.01,
    "lr": 0.003,
}


def check_recipe(recipe) -> None:
    require_backbone_kind(recipe, "halting", "recurrent")


def define(trial, recipe, data) -> dict[str, Any]:
    """Ask ``trial`` for a recurrent cell, then its halting mechanism; return its trial config."""
    backbone = suggest_backbone(trial, recipe)
    searched = "width" in (recipe.backbone.search or {})
    mechanism = trial.suggest_categorical("halting_mechanism", ["act", "pondernet"])
    halting: dict[str, Any] = {
        "max_steps": trial.suggest_int("max_steps", 2, 12),
        "bias_init": trial.suggest_float("halting_bias_init", -2.0, 2.0),
    }
    hidden = backbone["widths"][0] if searched else trial.suggest_categorical("hidden_width", [32, 64, 128])
    if mechanism == "act":
        halting["tau"] = trial.suggest_float("act_tau", 1e-4, 1e-1, log=True)
    else:
        halting["lambda_p"] = trial.suggest_float("pondernet_lambda_p", 0.1, 0.5)
        halting["beta"] = trial.suggest_float("pondernet_beta", 1e-3, 1.0, log=True)
    config = trial_config(trial, recipe, data, mechanism, {"halting": halting}, backbone=backbone)
    config["backbone"]["widths"] = [hidden]
    return config
