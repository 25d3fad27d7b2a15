"""Gated ResNets (mechanisms ``aig`` and ``skipnet``): gate kind, gate placement, objective
(target rate(s), budget mu or SkipNet's RL), lambda, gate width, temperature, learning rate.

Needs ``backbone.kind: resnet``. Blocks are counted over all stages; only
blocks with an identity shortcut (not the first block of a down-sampling
stage) can be gated.
"""
from __future__ import annotations

from typing import Any

from dynsearch.spaces import backbone_upper_bounds, require_backbone_kind, suggest_backbone, trial_config

MAX_BLOCKS = 32  # gate_block_<k> / gate_target_rate_<k> exist for k < MAX_BLOCKS

DEFAULTS: dict[str, Any] = {
    "gate_kind": "aig",
    "aig_objective": "target_rate",
    "skipnet_objective": "target_rate",
    **{f"gate_block_{k}": True for k in range(MAX_BLOCKS)},
    "gate_per_layer_targets": False,
    "gate_target_rate": 0.6,
    **{f"gate_target_rate_{k}": 0.6 for k in range(MAX_BLOCKS)},
    "gate_budget": 0.6,
    "gate_loss_weight": 2.0,
    "gate_width": 16,
    "gate_temperature": 1.0,
    "skipnet_rl_alpha": 0.1,
    "lr": 0.005,
}


def gateable_blocks(backbone) -> list[int]:
    """Indices of the blocks with an identity shortcut (see backbones.build_resnet); ``backbone``
    is a trial config's backbone dict or a recipe's (fixed) BackboneSpec."""
    backbone = backbone if isinstance(backbone, dict) else backbone.as_config()
    blocks, k = [], 0
    for stage in range(len(backbone["widths"])):
        for b in range(int(backbone["depth"])):
            if stage == 0 or b > 0:
                blocks.append(k)
            k += 1
    return blocks


def check_recipe(recipe) -> None:
    require_backbone_kind(recipe, "gates", "resnet")
    stages, depth = backbone_upper_bounds(recipe)
    if stages * depth > MAX_BLOCKS:
        raise ValueError(f"space 'gates' handles at most {MAX_BLOCKS} blocks; use fewer widths or a smaller depth")


def define(trial, recipe, data) -> dict[str, Any]:
    """Ask ``trial`` for a ResNet backbone, then gates on its blocks; return its trial config."""
    backbone = suggest_backbone(trial, recipe)
    kind = trial.suggest_categorical("gate_kind", ["aig", "skipnet"])
    choices = ["target_rate", "budget"] if kind == "aig" else ["target_rate", "budget", "rl"]
    objective = trial.suggest_categorical(f"{kind}_objective", choices)
    blocks = [k for k in gateable_blocks(backbone) if trial.suggest_categorical(f"gate_block_{k}", [True, False])]
    gates: dict[str, Any] = {
        "blocks": blocks,
        "objective": objective,
        "width": trial.suggest_categorical("gate_width", [8, 16, 32]),
    }
    if objective == "target_rate":
        if trial.suggest_categorical("gate_per_layer_targets", [False, True]):
            gates["target_rate"] = [trial.suggest_float(f"gate_target_rate_{k}", 0.3, 0.9) for k in blocks]
        else:
            gates["target_rate"] = trial.suggest_float("gate_target_rate", 0.3, 0.9)
    elif objective == "budget":
        gates["budget"] = trial.suggest_float("gate_budget", 0.2, 0.9)
    if objective == "rl":
        gates["rl_alpha"] = trial.suggest_float("skipnet_rl_alpha", 1e-3, 0.1, log=True)
    else:
        gates["loss_weight"] = trial.suggest_float("gate_loss_weight", 0.5, 10.0, log=True)
    if kind == "aig":
        gates["temperature"] = trial.suggest_float("gate_temperature", 0.3, 3.0, log=True)
    return trial_config(trial, recipe, data, kind, {"gates": gates}, backbone=backbone)
