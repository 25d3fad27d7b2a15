"""Training-time augmentation of image batches (recipe field ``augment``), seeded per trial.

- ``hflip``: each image mirrored left-right with probability 1/2.
- ``crop``: each image shifted by up to ``CROP_PAD`` pixels each way (zero-padded, then cropped
  back to its size), the offsets drawn per image.

Applied to training batches only; validation, test, the sweep and exports see the images as
they are. Inputs must be image batches ``[N, C, H, W]`` (``check_augment`` refuses others).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dynsearch.recipe import AUGMENTATIONS

CROP_PAD = 2


def augment_batch(x: torch.Tensor, names, generator: torch.Generator) -> torch.Tensor:
    """``x`` with each augmentation in ``names`` applied, randomness drawn from ``generator`` (CPU)."""
    unknown = sorted(set(names) - set(AUGMENTATIONS))
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r}; use any of {', '.join(AUGMENTATIONS)}")
    if not names:
        return x
    if x.dim() != 4:
        raise ValueError(f"augment needs image batches [N, C, H, W], got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    if "hflip" in names:
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device).view(n, 1, 1, 1)
        x = torch.where(flip, x.flip(3), x)
    if "crop" in names:
        padded = F.pad(x, (CROP_PAD, CROP_PAD, CROP_PAD, CROP_PAD))
        offsets = torch.randint(0, 2 * CROP_PAD + 1, (n, 2), generator=generator)
        out = torch.empty_like(x)
        for dy, dx in torch.unique(offsets, dim=0).tolist():
            rows = ((offsets[:, 0] == dy) & (offsets[:, 1] == dx)).nonzero().flatten().to(x.device)
            out[rows] = padded[rows, :, dy:dy + h, dx:dx + w]
        x = out
    return x
