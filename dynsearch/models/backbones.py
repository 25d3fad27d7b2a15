"""Small backbones split into a stem and stages, plus classifier heads.

A backbone is ``(stem, [stage, ...])``; mechanisms put their machinery
(exit heads, gates, experts) between or around stages. Head input widths come
from a dry run, so any stage list works. Kinds: ``cnn``, ``mlp``, ``resnet``
(stages of ``ResidualBlock``), ``transformer`` (stages of ``EncoderLayer``
over sequences of feature vectors) and ``user`` (the stages a user's callable
returns, after an identity stem; models/user.py). Kind ``recurrent`` (a GRU cell that reads the
same input each step, ``widths[0]`` wide) belongs to the halting mechanisms
(dynamic/halting.py), which build it themselves.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn



def conv_block(in_channels: int, out_channels: int, stride: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _image_stages(block, input_shape: Sequence[int], widths: Sequence[int], depth: int, kernel: int = 3):
    """A 3x3 conv stem, then one stage per width of ``depth`` blocks ``block(in, out, stride, kernel)``;
    the first stage keeps the resolution, the others halve it in their first block."""
    if kernel % 2 == 0:
        raise ValueError(f"the kernel size must be odd (got {kernel})")
    stem = conv_block(input_shape[0], widths[0], 1)
    stages, channels = [], widths[0]
    for i, width in enumerate(widths):
        blocks = [block(channels, width, 1 if i == 0 else 2, kernel)]
        blocks += [block(width, width, 1, kernel) for _ in range(depth - 1)]
        stages.append(nn.Sequential(*blocks))
        channels = width
    return stem, stages


def build_cnn(input_shape: Sequence[int], widths: Sequence[int], depth: int, kernel: int = 3):
    """A plain CNN: stages of conv-BN-ReLU blocks (``kernel`` x ``kernel`` convolutions after the stem)."""
    return _image_stages(conv_block, input_shape, widths, depth, kernel)


def build_mlp(input_shape: Sequence[int], widths: Sequence[int], depth: int, dropout: float = 0.0):
    """An MLP: flatten + linear stem, then one stage per width of ``depth`` layers
    (Linear, ReLU, and Dropout(``dropout``) when it is above 0)."""
    in_features = 1
    for size in input_shape:
        in_features *= size
    stem = nn.Sequential(nn.Flatten(), nn.Linear(in_features, widths[0]), nn.ReLU())
    stages, features = [], widths[0]
    for width in widths:
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(features, width), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))  # parameter-free: no weights' names move
            features = width
        stages.append(nn.Sequential(*layers))
    return stem, stages


class ResidualBlock(nn.Module):
    """A basic residual block, out = relu(shortcut(x) + residual(x)) (He et al. 2016).

    ``residual`` is conv3x3-BN-ReLU-conv3x3-BN; ``shortcut`` is the identity
    when shapes match (``gateable``) and a 1x1 conv + BN projection otherwise.
    Gate mechanisms call ``shortcut`` and ``residual`` themselves.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, kernel: int = 3):
        super().__init__()
        pad = kernel // 2
        self.residual = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=pad, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel, padding=pad, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.gateable = in_channels == out_channels and stride == 1
        if self.gateable:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.shortcut(x) + self.residual(x))


def build_resnet(input_shape: Sequence[int], widths: Sequence[int], depth: int, kernel: int = 3):
    """A small ResNet: a 3x3 stem, then one stage per width of ``depth`` residual
    blocks (the first stage keeps the resolution, the others halve it in their
    first block, which therefore has a projection shortcut)."""
    return _image_stages(ResidualBlock, input_shape, widths, depth, kernel)


class SequenceStem(nn.Module):
    """Per-position linear embedding of ``[B, L, F]`` inputs plus a learned position embedding."""

    def __init__(self, length: int, in_features: int, width: int):
        super().__init__()
        self.embed = nn.Linear(in_features, width)
        self.position = nn.Parameter(torch.randn(length, width) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x) + self.position


class EncoderLayer(nn.Module):
    """A pre-norm Transformer encoder layer (Vaswani et al. 2017; pre-norm as in Xiong et al. 2020).

    Attention is written with explicit matrix products rather than
    ``nn.TransformerEncoderLayer``: in eval under no_grad that layer takes a
    fused fast path, and on CPU ``scaled_dot_product_attention`` dispatches to
    a kernel, that FlopCounterMode does not count (0 MACs measured), which
    would break the cost convention.
    """

    def __init__(self, width: int, heads: int, ffn_width: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"transformer width {width} is not divisible by heads={heads}")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ffn = nn.Sequential(nn.Linear(width, ffn_width), nn.GELU(), nn.Linear(ffn_width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self_attention(self, x)
        return x + self.ffn(self.norm2(x))


def self_attention(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The attention half of an encoder layer, x + proj(attention(norm1(x))), with the
    ``heads``, ``norm1``, ``qkv`` and ``proj`` of ``layer`` (an ``EncoderLayer`` or a
    mixture-of-experts layer that replaced its feed-forward block)."""
    batch, length, width = x.shape
    q, k, v = layer.qkv(layer.norm1(x)).view(batch, length, 3, layer.heads, -1).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    attended = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, length, width)
    return x + layer.proj(attended)


def build_transformer(input_shape: Sequence[int], widths: Sequence[int], depth: int, heads: int = 2,
                      ffn_width: int | None = None):
    """A Transformer encoder over ``[L, F]`` inputs: a sequence stem, then one
    stage per width of ``depth`` encoder layers (all widths must be equal;
    the feed-forward width is ``ffn_width``, by default twice the model width)."""
    if len(set(widths)) != 1:
        raise ValueError(f"transformer stages must all have the same width (got {list(widths)})")
    length, in_features = input_shape
    width = widths[0]
    stem = SequenceStem(length, in_features, width)
    ffn = int(ffn_width) if ffn_width else 2 * width
    stages = [nn.Sequential(*(EncoderLayer(width, heads, ffn) for _ in range(depth))) for _ in widths]
    return stem, stages


class SequenceMean(nn.Module):
    """Mean over the sequence dimension of ``[B, L, F]`` features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


def final_classifier(feature_shape: Sequence[int], config: dict) -> nn.Module:
    """The final classifier of a trial config's model: ``make_head`` on the last features, pooled or
    (backbone ``classifier: flatten``) linear on the whole feature map."""
    flatten = (config.get("backbone") or {}).get("classifier", "pool") == "flatten"
    return make_head(feature_shape, config["num_classes"], flatten=flatten)


def make_head(feature_shape: Sequence[int], num_classes: int, hidden: int | None = None,
              flatten: bool = False) -> nn.Module:
    """A classifier on features of shape ``feature_shape`` (no batch dim).

    Image features are average-pooled (to 2x2 with a hidden layer, to 1x1
    without) and flattened, or with ``flatten`` flattened whole (every
    position keeps its own weights); sequence features ``[L, F]`` are averaged
    over the sequence; ``hidden`` adds one ReLU layer of that width.
    """
    layers: list[nn.Module] = []
    if flatten and len(feature_shape) == 3:
        layers.append(nn.Flatten())
        in_features = feature_shape[0] * feature_shape[1] * feature_shape[2]
    elif len(feature_shape) == 2:
        layers.append(SequenceMean())
        in_features = feature_shape[1]
    elif len(feature_shape) == 3:
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
