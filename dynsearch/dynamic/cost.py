"""Static per-component MACs of a DynamicModel: each component counted once, alone, at batch 1.

Convention (DESIGN.md): MACs of convolutions, linear layers and matrix
products, i.e. ``torch.utils.flop_counter.FlopCounterMode`` FLOPs / 2 (bias,
normalisation, activations and pooling not counted). A sample's MACs are the
sum over the components its Trace says ran (``Trace.macs_per_sample``).
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_macs(fn: Callable[[], Any]) -> int:
    """MACs of whatever ``fn()`` computes, counted by FlopCounterMode (FLOPs / 2)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2


@torch.no_grad()
def dry_run_input_shapes(model, modules_of: Callable[[Any], dict[str, torch.nn.Module]]) -> dict[str, torch.Size]:
    """The input shape (batch dim included) of each module ``modules_of(copy)`` names, from a batch-2 dry run
    of a copy of ``model`` in training mode, where every path runs; modules that did not run are absent."""
    probe = copy.deepcopy(model)
    shapes: dict[str, torch.Size] = {}

    def recorder(name):
        def hook(_module, args):  # a pre-hook that returns something replaces the input: this returns None
            shapes.setdefault(name, args[0].shape)

        return hook

    hooks = [module.register_forward_pre_hook(recorder(name)) for name, module in modules_of(probe).items()]
    probe.train()
    probe(probe.example_input(batch_size=2))
    for hook in hooks:
        hook.remove()
    return shapes


@torch.no_grad()
def component_input_shapes(model) -> dict[str, tuple[int, ...]]:
    """Input shape (no batch dim) of each component, from a dry run of a copy in
    training mode, where every path runs. Cached on the model."""
    cached = getattr(model, "_component_input_shapes", None)
    if cached is not None:
        return cached
    shapes = {name: tuple(shape[1:]) for name, shape in dry_run_input_shapes(model, lambda m: m.components()).items()}
    missing = sorted(set(model.components()) - set(shapes))
    if missing:
        raise RuntimeError(f"components {missing} did not run in the training-mode dry run")
    model._component_input_shapes = shapes
    return shapes


@torch.no_grad()
def measure_component_macs(model) -> dict[str, int]:
    """Per-sample MACs of each component of a DynamicModel, each counted alone at batch 1."""
    shapes = component_input_shapes(model)
    macs = {}
    for name, module in model.components().items():
        was_training = module.training
        module.eval()
        x = torch.zeros(1, *shapes[name])
        macs[name] = count_macs(lambda: module(x))
        module.train(was_training)
    return macs
