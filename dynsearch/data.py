"""Dataset registry. Every dataset is made or read locally: nothing is downloaded.

The embedded default is scikit-learn's bundled 8x8 digits (1,797 images).
Splits into train / validation / test are stratified and fixed by the seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass
class Splits:
    """Tensors of the three splits, with what a model needs to know about them."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    input_shape: tuple[int, ...]
    num_classes: int
    load_arrays: Callable[[], tuple[np.ndarray, np.ndarray]]


DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo) -> None:
    DATASETS[info.name] = info


def _digits_arrays():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # pixel values 0..16
    return images[:, None, :, :], bunch.target.astype(np.int64)


register_dataset(
    DatasetInfo(
        "digits",
        "scikit-learn's bundled 8x8 handwritten digits, 1,797 images, 10 classes",
        (1, 8, 8),
        10,
        _digits_arrays,
    )
)


def load_splits(name: str, split_seed: int, val_fraction: float = 0.2, test_fraction: float = 0.2) -> Splits:
    """Load dataset ``name`` and split it deterministically from ``split_seed``."""
    from sklearn.model_selection import train_test_split

    info = DATASETS[name]
    x, y = info.load_arrays()
    rest_x, test_x, rest_y, test_y = train_test_split(
        x, y, test_size=test_fraction, random_state=split_seed, stratify=y
    )
    train_x, val_x, train_y, val_y = train_test_split(
        rest_x,
        rest_y,
        test_size=val_fraction / (1.0 - test_fraction),
        random_state=split_seed,
        stratify=rest_y,
    )
    as_x, as_y = torch.from_numpy, torch.from_numpy
    return Splits(
        as_x(train_x), as_y(train_y), as_x(val_x), as_y(val_y), as_x(test_x), as_y(test_y),
        info.input_shape, info.num_classes,
    )
