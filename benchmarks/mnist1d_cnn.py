"""A small 1-D convolutional backbone for MNIST-1D (signals of 40), as a dynsearch user backbone.

MLPs stay near 65-70 % on MNIST-1D while small CNNs reach about 90 % (Greydanus 2020), so
section 1 of the benchmark suite compares the static and exits spaces on this backbone
(``MNIST1D_RECIPE`` in suite_searches.py names ``mnist1d_cnn:mnist1d_cnn``).

Stages pass channels-last features ``[B, L, C]`` between them, so an exit head after a
conv stage averages over the positions (backbones.make_head); the last stage flattens and
ends in a hidden layer, which the final classifier reads. Each conv stage halves the
length and widens the channels, so the stages cost about the same MACs and an exit after
an early stage skips a real share of the network.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn


class ChannelsFirst(nn.Module):
    """``[B, L]`` signals -> ``[B, 1, L]``, ``[B, L, C]`` features -> ``[B, C, L]``."""

    def forward(self, x):
        return x.unsqueeze(1) if x.dim() == 2 else x.transpose(1, 2)


class ChannelsLast(nn.Module):
    """``[B, C, L]`` -> ``[B, L, C]`` (what exit heads average over L)."""

    def forward(self, x):
        return x.transpose(1, 2)


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int) -> list[nn.Module]:
    return [nn.Conv1d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2), nn.ReLU()]


def mnist1d_cnn(channels: Sequence[int] = (16, 32, 64, 64), hidden: int = 64, length: int = 40) -> nn.ModuleList:
    """Stages of a 1-D CNN for MNIST-1D: ``len(channels)`` conv stages and a dense stage.

    Stage 0 lifts the signal to ``channels[0]`` (kernel 5, full length), then halves
    the length (kernel 3, stride 2); every later conv stage halves it again while
    widening to its channels; the last stage flattens and maps to ``hidden`` with a
    ReLU. With the defaults the lengths are 20, 10, 5, 3.
    """
    stages = []
    first = channels[0]
    stages.append(nn.Sequential(ChannelsFirst(), *_conv(1, first, 5, 1), *_conv(first, first, 3, 2), ChannelsLast()))
    size = (length + 1) // 2
    for previous, width in zip(channels, channels[1:]):
        stages.append(nn.Sequential(ChannelsFirst(), *_conv(previous, width, 3, 2), ChannelsLast()))
        size = (size + 1) // 2
    stages.append(nn.Sequential(nn.Flatten(), nn.Linear(size * channels[-1], hidden), nn.ReLU()))
    return nn.ModuleList(stages)
