"""thop's MAC count (the ``ultralytics-thop`` distribution, imported as ``thop``), recorded beside ours.

Ours (dynamic/cost.py, DESIGN.md) counts convolutions, linear layers and matrix products only
(FlopCounterMode FLOPs / 2). thop counts per module, from forward hooks on the module types it
knows: batch-norm, pooling and activations too, and nothing computed by a functional call or a
module type it has no rule for (``F.conv2d`` with per-sample kernels, a bare ``torch.matmul``).
``macs_thop`` is thop's count of a model's static full-depth path (``forward_static``) on one
input, for comparison with papers that quote thop; it is never an objective.
"""
from __future__ import annotations

import contextlib
import copy
import io
import warnings

import torch


class _Static(torch.nn.Module):
    """The model's static path as a module, so that thop hooks every sub-module it holds."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_static(x)


def thop_macs(module: torch.nn.Module, x: torch.Tensor) -> int:
    """thop's MACs of ``module(x)`` on a copy (thop adds buffers to modules), in eval mode, silenced."""
    import thop

    probe = copy.deepcopy(module).eval()  # fresh modules: thop's "already has a .total_ops" warning cannot fire
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        macs, _params = thop.profile(probe, inputs=(x,), verbose=False)  # verbose prints [INFO] lines
    return int(macs)


def thop_macs_full(model) -> int | None:
    """thop's MACs of ``model.forward_static`` on one (zero) input; None where thop cannot count it
    (a model without a static path, or a thop failure) — recorded as null, never guessed."""
    try:
        macs = thop_macs(_Static(model), model.example_input(batch_size=1))
    except Exception:  # noqa: BLE001 - a comparison figure must never fail a trial
        return None
    return macs if macs > 0 else None
