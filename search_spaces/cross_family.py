"""One space across families: the mechanism is itself a searched choice (``mechanism_family``:
``static``, ``exits``, ``gates`` (ConvNet-AIG or SkipNet), ``condconv``), and only the chosen
family's parameters are asked, by that family's own space (``exits``, ``gates``, ``experts``).

Needs ``backbone.kind: resnet`` (the one backbone every family here runs on). The backbone's
searched dimensions (``backbone.search``) are asked first, so every family, ``static`` included,
competes on searched backbones. ``static`` is the plain backbone: an early-exit network without exits.
"""
from __future__ import annotations

from typing import Any

from dynsearch.search_spaces import exits, experts, gates
from dynsearch.spaces import require_backbone_kind, suggest_backbone, trial_config

FAMILIES = {"exits": exits.define, "gates": gates.define, "condconv": experts.define}

DEFAULTS: dict[str, Any] = {
    **exits.DEFAULTS, **gates.DEFAULTS, **experts.DEFAULTS,
    "mechanism_family": "condconv",
}


def check_recipe(recipe) -> None:
    require_backbone_kind(recipe, "cross_family", "resnet")
    gates.check_recipe(recipe)


def define(trial, recipe, data) -> dict[str, Any]:
    """Ask ``trial`` for a backbone, a mechanism family, then that family's parameters; return the trial config.

    The family spaces ask the backbone again and get the same values (a trial keeps its parameters).
    """
    backbone = suggest_backbone(trial, recipe)
    family = trial.suggest_categorical("mechanism_family", ["static", *FAMILIES])
    if family == "static":
        return trial_config(trial, recipe, data, "exits", {"exits": {"stages": [], "head_width": 0}},
                            backbone=backbone)
    return FAMILIES[family](trial, recipe, data)
