"""Glance and focus (mechanism ``glance``, GFNet): glance size G, crop size P, maximum steps, exit
threshold, the widths of the glance and local networks, the GRU width, the crop policy (``learned``
or ``fixed``) and the learning rate.

Needs image data [C, H, W] and ``backbone.kind: cnn`` (the recipe's ``depth`` and ``kernel`` shape
both networks; the widths are asked here). G and P are asked as sizes scaled to the image height
(28-pixel images: G in 8, 12, 14; P in 8, 12, 16). Each network is two stages, [w, 2w] wide, its maps pooled to 4 x 4 before its linear layer. The
exit threshold trains as asked and is also a runtime knob that the operating-point sweep varies.
"""
from __future__ import annotations

from typing import Any

from dynsearch.spaces import require_backbone_kind, suggest_backbone, trial_config

DEFAULTS: dict[str, Any] = {
    "glance_size": 14,
    "patch_size": 12,
    "max_steps": 4,
    "glance_threshold": 0.9,
    "glance_width": 16,
    "local_width": 16,
    "hidden_width": 64,
    "crop_policy": "fixed",  # the fixed scan measured 0.29 points above the learned policy (gfnet_fidelity.json)
    "lr": 0.003,
}

GLANCE_SHARES = (2 / 7, 3 / 7, 1 / 2)  # of the image height: 8, 12, 14 for 28 pixels
PATCH_SHARES = (2 / 7, 3 / 7, 4 / 7)  # 8, 12, 16 for 28 pixels


def check_recipe(recipe) -> None:
    require_backbone_kind(recipe, "glance", "cnn")


def sizes(height: int, shares: tuple[float, ...]) -> list[int]:
    """Sizes ``round(height * share)``, at least 2 and at most ``height``, without repeats."""
    return sorted({min(height, max(2, round(height * share))) for share in shares})


def define(trial, recipe, data) -> dict[str, Any]:
    """Ask ``trial`` for a glance-and-focus network; return its trial config."""
    shape = list(data.input_shape)
    if len(shape) != 3:
        raise ValueError(f"space 'glance' needs image data [C, H, W] (got input shape {shape})")
    backbone = suggest_backbone(trial, recipe)
    height = int(shape[1])
    glance_width = trial.suggest_categorical("glance_width", [8, 16, 32])
    local_width = trial.suggest_categorical("local_width", [8, 16, 32])
    glance = {
        "glance_size": trial.suggest_categorical("glance_size", sizes(height, GLANCE_SHARES)),
        "patch_size": trial.suggest_categorical("patch_size", sizes(height, PATCH_SHARES)),
        "max_steps": trial.suggest_int("max_steps", 2, 5),
        "threshold": trial.suggest_float("glance_threshold", 0.6, 0.99),
        "glance_widths": [glance_width, 2 * glance_width],
        "hidden": trial.suggest_categorical("hidden_width", [32, 64, 128]),
        "crop_policy": trial.suggest_categorical("crop_policy", ["learned", "fixed"]),
        "grid": 3,
        "policy_start": 0.5,
        "feature_pool": 4,  # 4x4 cells into the linear layer: +2.5 points over 2x2 on fmnist-glance's default point
    }
    config = trial_config(trial, recipe, data, "glance", {"glance": glance}, backbone=backbone)
    config["backbone"]["widths"] = [local_width, 2 * local_width]
    return config
