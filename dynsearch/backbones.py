"""Small backbones split into a stem and stages, plus classifier heads.

A backbone is ``(stem, [stage, ...])``; mechanisms put their machinery
(exit heads, gates, experts) between or around stages. Head input widths come
from a dry run, so any stage list works.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

BACKBONE_KINDS = ("cnn", "mlp")


def conv_block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def build_cnn(input_shape: Sequence[int], widths: Sequence[int], depth: int):
    """A plain CNN: a 3x3 stem, then one stage per width (the first keeps the
    resolution, the others halve it), each of ``depth`` conv-BN-ReLU blocks."""
    in_channels = input_shape[0]
    stem = conv_block(in_channels, widths[0], 1)
    stages, channels = [], widths[0]
    for i, width in enumerate(widths):
        blocks = [conv_block(channels, width, 1 if i == 0 else 2)]
        blocks += [conv_block(width, width, 1) for _ in range(depth - 1)]
        stages.append(nn.Sequential(*blocks))
        channels = width
    return stem, stages


def build_mlp(input_shape: Sequence[int], widths: Sequence[int], depth: int):
    """An MLP: flatten + linear stem, then one stage per width of ``depth`` layers."""
    in_features = 1
    for size in input_shape:
        in_features *= size
    stem = nn.Sequential(nn.Flatten(), nn.Linear(in_features, widths[0]), nn.ReLU())
    stages, features = [], widths[0]
    for width in widths:
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(features, width), nn.ReLU()]
            features = width
        stages.append(nn.Sequential(*layers))
    return stem, stages


def build_backbone(config: dict[str, Any]) -> tuple[nn.Module, list[nn.Module]]:
    backbone = config["backbone"]
    builders = {"cnn": build_cnn, "mlp": build_mlp}
    return builders[backbone["kind"]](config["input_shape"], backbone["widths"], backbone["depth"])


def make_head(feature_shape: Sequence[int], num_classes: int, hidden: int | None = None) -> nn.Module:
    """A classifier on features of shape ``feature_shape`` (no batch dim).

    Image features are average-pooled (to 2x2 with a hidden layer, to 1x1
    without) and flattened; ``hidden`` adds one ReLU layer of that width.
    """
    layers: list[nn.Module] = []
    if len(feature_shape) == 3:
        side = 2 if hidden else 1
        side = min(side, feature_shape[1], feature_shape[2])
        layers += [nn.AdaptiveAvgPool2d(side), nn.Flatten()]
        in_features = feature_shape[0] * side * side
    else:
        layers.append(nn.Flatten())
        in_features = 1
        for size in feature_shape:
            in_features *= size
    if hidden:
        layers += [nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)]
    else:
        layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


@torch.no_grad()
def stage_output_shapes(stem: nn.Module, stages: Sequence[nn.Module], input_shape: Sequence[int]):
    """Feature shapes after each stage (no batch dim), from a dry run in eval mode."""
    modules = [stem, *stages]
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    h = stem(torch.zeros(1, *input_shape))
    shapes = []
    for stage in stages:
        h = stage(h)
        shapes.append(tuple(h.shape[1:]))
    for m, mode in zip(modules, was_training):
        m.train(mode)
    return shapes
