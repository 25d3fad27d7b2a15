"""``build_backbone(config)``: the ``(stem, [stage, ...])`` of a trial config's ``backbone`` section.

Mechanisms put their machinery (exit heads, gates, experts) between or around the stages.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from dynsearch.models.backbones import build_cnn, build_mlp, build_resnet, build_transformer
from dynsearch.models.user import user_stages


def build_backbone(config: dict[str, Any]) -> tuple[nn.Module, list[nn.Module]]:
    backbone = config["backbone"]
    if backbone["kind"] == "user":  # the user's stages as given; no stem (see user_code.py)
        return nn.Identity(), user_stages(backbone)
    shape, widths, depth = config["input_shape"], backbone["widths"], backbone["depth"]
    if backbone["kind"] == "transformer":
        return build_transformer(shape, widths, depth, int(backbone.get("heads", 2)), backbone.get("ffn_width"))
    if backbone["kind"] == "recurrent":
        raise ValueError("backbone kind 'recurrent' is the halting mechanisms' cell (space: halting); "
                         "use cnn, mlp, resnet or transformer here")
    if backbone["kind"] == "mlp":
        return build_mlp(shape, widths, depth, float(backbone.get("dropout", 0.0)))
    builders = {"cnn": build_cnn, "resnet": build_resnet}
    return builders[backbone["kind"]](shape, widths, depth, int(backbone.get("kernel", 3)))
