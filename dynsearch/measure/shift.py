"""Cost under shifted inputs: seeded, generated corruptions of an evaluation split, and a model's
accuracy, expected MACs and decision statistics on each, beside the clean figures.

A dynamic model's cost depends on its inputs: on noisy, blurred or low-contrast data fewer
samples are confident, so the expected MACs a search reported can grow where the model is
served. The corruptions follow ImageNet-C / Fashion-MNIST-C in kind (Hendrycks & Dietterich,
ICLR 2019), generated here at three severities with a fixed seed, on the split's own tensors
(any scaling the dataset applied stays): per sample they use its own spread and range.

- ``noise``: additive Gaussian noise, sigma = 0.2 / 0.5 / 1.0 times the sample's standard deviation;
- ``blur``: a Gaussian blur over the spatial axes, sigma 0.5 / 1 / 1.5 pixels;
- ``contrast``: each sample pulled towards its mean, keeping 0.6 / 0.4 / 0.2 of its contrast;
- ``occlude``: a square (a segment for 1-D inputs) of 1/4, 3/8, 1/2 of the side set to the
  sample's minimum (its background), at a seeded random place per sample.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch.nn import functional as F

from dynsearch.errors import UserError
from dynsearch.measure.evaluate import measure

SEVERITIES = (1, 2, 3)
NOISE_SIGMA = (0.2, 0.5, 1.0)  # times the sample's standard deviation
BLUR_SIGMA = (0.5, 1.0, 1.5)  # pixels
CONTRAST_KEPT = (0.6, 0.4, 0.2)
OCCLUDED_SIDE = (0.25, 0.375, 0.5)
COST_RISE_FLAG = 0.20  # expected MACs more than 20% above the clean figure is flagged


def _per_sample(x: torch.Tensor, reduce) -> torch.Tensor:
    return reduce(x.flatten(1), dim=1).view(-1, *[1] * (x.dim() - 1))


def _noise(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    std = _per_sample(x, torch.std)
    return x + NOISE_SIGMA[severity - 1] * std * torch.randn(x.shape, generator=generator)


def _blur(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    sigma = BLUR_SIGMA[severity - 1]
    radius = max(1, math.ceil(2 * sigma))
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=x.dtype) / sigma) ** 2)
    taps = taps / taps.sum()
    out = x
    for axis in range(2, x.dim()):  # separable: one 1-D pass per spatial axis, borders replicated
        moved = out.movedim(axis, -1)
        shape = moved.shape
        flat = moved.reshape(-1, 1, shape[-1])
        flat = F.conv1d(F.pad(flat, (radius, radius), mode="replicate"), taps.view(1, 1, -1))
        out = flat.reshape(shape).movedim(-1, axis)
    return out


def _contrast(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    mean = _per_sample(x, torch.mean)
    return mean + CONTRAST_KEPT[severity - 1] * (x - mean)


def _occlude(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    out = x.clone()
    background = _per_sample(x, lambda t, dim: t.amin(dim=dim))
    spatial = x.shape[2:]
    sides = [max(1, round(OCCLUDED_SIDE[severity - 1] * n)) for n in spatial]
    mask = torch.zeros(x.shape[0], 1, *spatial, dtype=torch.bool)
    for i in range(x.shape[0]):
        corner = [int(torch.randint(0, n - s + 1, (1,), generator=generator)) for n, s in zip(spatial, sides)]
        mask[(i, 0, *[slice(c, c + s) for c, s in zip(corner, sides)])] = True
    return torch.where(mask, background.expand_as(out), out)


CORRUPTIONS = {"noise": _noise, "blur": _blur, "contrast": _contrast, "occlude": _occlude}


def corrupt(x: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """``x`` [N, C, ...] under corruption ``name`` at ``severity`` (1-3), the same for the same seed."""
    generator = torch.Generator().manual_seed(seed * 1000 + severity * 10 + list(CORRUPTIONS).index(name))
    flat = x.dim() == 2  # [N, features]: one channel along one axis
    out = CORRUPTIONS[name](x.float().unsqueeze(1) if flat else x.float(), severity, generator)
    return out.squeeze(1) if flat else out


def parse_shifts(text: str) -> list[tuple[str, int]]:
    """``noise,blur:2`` -> [(noise, 1), (noise, 2), (noise, 3), (blur, 2)]: a name alone means its
    three severities. A bad name or severity is a UserError naming the choices."""
    shifts: list[tuple[str, int]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, severity = item.partition(":")
        if name not in CORRUPTIONS:
            raise UserError(f"--shift {item}: unknown corruption {name!r}; use one or more of "
                            f"{','.join(CORRUPTIONS)} (NAME or NAME:SEVERITY, severity 1-3)")
        if not severity:
            shifts += [(name, s) for s in SEVERITIES]
            continue
        if severity not in {str(s) for s in SEVERITIES}:
            raise UserError(f"--shift {item}: severity {severity!r} is not one of 1, 2, 3; "
                            f"write {name} (all three) or {name}:N")
        shifts.append((name, int(severity)))
    if not shifts:
        raise UserError(f"--shift {text!r}: no corruption named; use one or more of {','.join(CORRUPTIONS)}")
    return list(dict.fromkeys(shifts))


def shifted_figures(model, x: torch.Tensor, y: torch.Tensor, shifts: list[tuple[str, int]], seed: int = 0,
                    batch_size: int = 256) -> dict[str, Any]:
    """Accuracy, expected MACs and the mechanism's statistics (exit histogram, gate rates) on the
    clean split and under each (corruption, severity); each shifted entry says how its expected
    MACs compare with the clean figure (``macs_change``) and flags a rise above 20%."""
    def figures(inputs: torch.Tensor) -> dict[str, Any]:
        result = measure(model, inputs, y, batch_size=batch_size)
        return {k: result[k] for k in ("accuracy", "macs", "stats")}

    clean = figures(x)
    shifted = []
    for name, severity in shifts:
        result = figures(corrupt(x, name, severity, seed))
        change = result["macs"] / clean["macs"] - 1
        shifted.append({"corruption": name, "severity": severity, **result, "macs_change": change,
                        "cost_rise_flag": change > COST_RISE_FLAG})
    return {"clean": clean, "shifted": shifted, "seed": seed, "samples": len(x),
            "flagged": [f"{s['corruption']}:{s['severity']}" for s in shifted if s["cost_rise_flag"]]}


def shifted_cost(model, x: torch.Tensor, y: torch.Tensor, corruptions: list[str], severity: int, seed: int = 0,
                 batch_size: int = 256) -> dict[str, Any]:
    """The ``macs_shifted`` objective: expected MACs of what ran (eval mode, real skipping) on ``x`` under each
    corruption at ``severity``, and their mean over the corruptions (``macs``; every corrupted copy holds the
    same samples, so it is also the mean over all of them). Returns ``macs``, ``accuracy`` (the mean accuracy
    under the corruptions) and ``per_corruption`` (name -> ``accuracy``, ``macs``)."""
    per_corruption = {}
    for name in corruptions:
        result = measure(model, corrupt(x, name, severity, seed), y, batch_size=batch_size)
        per_corruption[name] = {"accuracy": result["accuracy"], "macs": result["macs"]}
    return {"macs": sum(r["macs"] for r in per_corruption.values()) / len(per_corruption),
            "accuracy": sum(r["accuracy"] for r in per_corruption.values()) / len(per_corruption),
            "per_corruption": per_corruption}


def shifted_metrics(model, splits, corruptions: list[str], severity: int, seed: int = 0,
                    batch_size: int = 256) -> dict[str, Any]:
    """What a trial with a ``macs_shifted`` objective records: ``macs_shifted`` and ``test_macs_shifted``
    (``shifted_cost`` on the validation and test splits) and their detail under ``shift``."""
    settings = {"corruptions": list(corruptions), "severity": int(severity), "seed": int(seed)}
    val = shifted_cost(model, splits.val_x, splits.val_y, batch_size=batch_size, **settings)
    test = shifted_cost(model, splits.test_x, splits.test_y, batch_size=batch_size, **settings)
    return {"macs_shifted": val["macs"], "test_macs_shifted": test["macs"],
            "shift": {**settings, "accuracy": val["accuracy"], "test_accuracy": test["accuracy"],
                      "per_corruption": val["per_corruption"], "test_per_corruption": test["per_corruption"]}}
