"""The three splits of a dataset as tensors, and the stratified, seeded split that makes them."""
from __future__ import annotations

from dataclasses import dataclass

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


def split_arrays(x, y, split_seed: int, val_fraction: float, test_fraction: float):
    """``(train_x, train_y, val_x, val_y, test_x, test_y)``: stratified, fixed by ``split_seed``."""
    from sklearn.model_selection import train_test_split

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
    return train_x, train_y, val_x, val_y, test_x, test_y


def train_subset_of(x, y, size: int, split_seed: int, where: str):
    """``size`` of the training samples ``(x, y)`` (numpy arrays), stratified and fixed by ``split_seed``,
    in their original order. A size the split cannot give is a one-line UserError."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    from dynsearch.errors import UserError

    classes = len(np.unique(y))
    if size >= len(y) or size < classes:
        raise UserError(f"{where}: data.train_subset {size} must be at least the number of classes ({classes}) "
                        f"and less than the {len(y):,} training samples; change it or leave it out")
    keep, _ = train_test_split(np.arange(len(y)), train_size=size, random_state=split_seed, stratify=y)
    keep = np.sort(keep)
    return x[keep], y[keep]
