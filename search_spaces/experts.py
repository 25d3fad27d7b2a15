"""Mixtures of experts: top-k MoE layers (mechanism ``moe``) on MLP and Transformer backbones, CondConv
(mechanism ``condconv``) on CNN and ResNet backbones; the backbone kind picks which.

MoE: which layers become expert layers, expert count, k, the load-balance
weight alpha (log scale around Switch's 1e-2) and the capacity factor.
CondConv: which blocks get CondConv convolutions and their expert count
(1-8, the paper's range). Layers and blocks are counted over all stages.
"""
from __future__ import annotations

from typing import Any

from dynsearch.spaces import backbone_upper_bounds, num_blocks, suggest_backbone, trial_config

MAX_LAYERS = 32  # expert_layer_<i> / condconv_block_<i> exist for i < MAX_LAYERS
MOE_KINDS = ("mlp", "transformer")

DEFAULTS: dict[str, Any] = {
    **{f"expert_layer_{i}": True for i in range(MAX_LAYERS)},
    "expert_count": 4,
    "expert_top_k": 1,
    "expert_balance_weight": 0.01,
    "expert_capacity_factor": 1.25,
    **{f"condconv_block_{i}": True for i in range(MAX_LAYERS)},
    "condconv_experts": 4,
    "lr": 0.005,
}


def check_recipe(recipe) -> None:
    if recipe.backbone.kind not in (*MOE_KINDS, "cnn", "resnet"):
        raise ValueError(f"space 'experts' needs backbone.kind mlp or transformer (MoE), cnn or resnet (CondConv) "
                         f"(got {recipe.backbone.kind}); set one")
    stages, depth = backbone_upper_bounds(recipe)
    if stages * depth > MAX_LAYERS:
        raise ValueError(f"space 'experts' handles at most {MAX_LAYERS} layers; use fewer widths or a smaller depth")


def define_moe(trial, backbone: dict[str, Any]) -> dict[str, Any]:
    """Ask for the ``experts`` part of an MoE config on the trial's ``backbone``."""
    layers = num_blocks(backbone)
    chosen = [i for i in range(layers) if trial.suggest_categorical(f"expert_layer_{i}", [True, False])]
    return {"experts": {
        "layers": chosen,
        "count": trial.suggest_categorical("expert_count", [2, 4, 8]),
        "top_k": trial.suggest_int("expert_top_k", 1, 2),
        "balance_weight": trial.suggest_float("expert_balance_weight", 1e-3, 1e-1, log=True),
        "capacity_factor": trial.suggest_float("expert_capacity_factor", 1.0, 2.0),
    }}


def define_condconv(trial, backbone: dict[str, Any]) -> dict[str, Any]:
    """Ask for the ``condconv`` part of a CondConv config on the trial's ``backbone``."""
    blocks = num_blocks(backbone)
    chosen = [i for i in range(blocks) if trial.suggest_categorical(f"condconv_block_{i}", [True, False])]
    return {"condconv": {"layers": chosen, "experts": trial.suggest_int("condconv_experts", 1, 8)}}


def define(trial, recipe, data) -> dict[str, Any]:
    """Ask ``trial`` for an MoE (MLP, Transformer) or CondConv (CNN, ResNet) network and return its trial config."""
    backbone = suggest_backbone(trial, recipe)
    if recipe.backbone.kind in MOE_KINDS:
        return trial_config(trial, recipe, data, "moe", define_moe(trial, backbone), backbone=backbone)
    return trial_config(trial, recipe, data, "condconv", define_condconv(trial, backbone), backbone=backbone)
