"""The staged ONNX form of a dynamic model, checked against onnxruntime.

A mechanism describes its pieces with ``DynamicModel.onnx_form()`` (early exits:
one graph per exit segment, so a runtime can stop after any exit; gated blocks:
a gate graph and a block graph per gated block; predicted depth: a halting graph,
then segment and head graphs); this module exports each piece as its own graph
with a dynamic batch axis, records each graph's role and MACs in the manifest,
and checks onnxruntime's outputs against PyTorch's on real inputs.
``onnx_runtime.StagedRuntime`` runs the graphs as a deployment would.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from dynsearch.dynamic.rules import staged_role

OPSET = 17
PARITY_TOLERANCE = 1e-4  # max abs difference allowed between onnxruntime and PyTorch outputs
INPUT_NAME = "input"


@torch.no_grad()
def chain_outputs(form, sample: torch.Tensor) -> dict[str, tuple[torch.Tensor, tuple]]:
    """Per part (by name): its PyTorch input and outputs, each part fed what the parts before it computed."""
    values: dict[str, torch.Tensor] = {INPUT_NAME: sample}
    chain = {}
    for part in form.parts:
        x = values[part.source]
        outputs = part.module.eval()(x.clone())  # a clone: an in-place first op must not alter the input
        chain[part.name] = (x, outputs)
        values.update({f"{part.name}/{name}": value for name, value in zip(part.outputs, outputs)})
    return chain


def onnx_support(model) -> str:
    """One line for the card: the ONNX form a model's mechanism supports, or that it has none."""
    form = model.onnx_form()
    if form is None:
        return f"ONNX not supported for {model.config.get('mechanism')!r}"
    return form.description


@torch.no_grad()
def graph_parity(model, folder: Path, inputs: torch.Tensor, form=None, chain=None) -> list[float]:
    """Max abs difference between onnxruntime and PyTorch for each part of ``model.onnx_form()``
    whose graph is ``folder/<part>.onnx``; each part is fed what the parts before it computed in PyTorch."""
    import numpy as np
    import onnxruntime

    model.eval()
    form = form or model.onnx_form()
    chain = chain or chain_outputs(form, inputs)
    diffs = []
    for part in form.parts:
        x, expected = chain[part.name]
        session = onnxruntime.InferenceSession(str(folder / f"{part.name}.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(list(part.outputs), {INPUT_NAME: x.numpy()})
        diffs.append(max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected)))
    return diffs


def export_onnx(model, folder: Path, sample: torch.Tensor) -> dict[str, Any]:
    """Write each part of ``model.onnx_form()`` to ``folder/<part>.onnx`` and check it with onnxruntime.

    ``sample`` is a batch of real inputs; each part is fed what the parts before
    it computed in PyTorch, and onnxruntime must match PyTorch's outputs within
    ``PARITY_TOLERANCE``. Returns the manifest written to the card.
    """
    import onnx

    form = model.onnx_form()
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    chain = chain_outputs(form, sample)
    for part in form.parts:
        # A part is a fresh wrapper module (training mode by default); torch.onnx.export
        # restores the wrapper's mode on exit, which would put the shared stages in training mode.
        module = part.module.eval()
        x = chain[part.name][0]
        path = folder / f"{part.name}.onnx"
        names = [INPUT_NAME, *part.outputs]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
            torch.onnx.export(
                module, (x,), str(path), dynamo=False, opset_version=OPSET,
                input_names=[INPUT_NAME], output_names=list(part.outputs),
                dynamic_axes={name: {0: "batch"} for name in names},
            )
        model.eval()
        onnx.checker.check_model(str(path))
    component_macs = model.component_macs()
    graphs = []
    for part, diff in zip(form.parts, graph_parity(model, folder, sample, form, chain)):
        if not diff <= PARITY_TOLERANCE:
            raise RuntimeError(f"ONNX graph {part.name}: onnxruntime differs from PyTorch by {diff:.3g} "
                               f"(> {PARITY_TOLERANCE}); this is a bug in the mechanism's onnx_form")
        try:  # the staged runtime must know the graph's role (rules.STAGED_ROLES)
            staged_role(part.info.get("role", ""))
        except ValueError as exc:
            raise RuntimeError(f"ONNX graph {part.name}: {exc}; this is a bug in the mechanism's onnx_form") from None
        path = folder / f"{part.name}.onnx"
        graphs.append({
            "file": f"{folder.name}/{path.name}",
            "input": INPUT_NAME,
            "source": part.source,
            "outputs": list(part.outputs),
            **part.info,
            "macs": int(sum(component_macs[name] for name in part.info.get("components", []))),
            "parity_max_abs_diff": diff,
        })
    return {
        "form": form.description,
        "opset": OPSET,
        "graphs": graphs,
        "parity": {"samples": int(sample.shape[0]), "tolerance": PARITY_TOLERANCE,
                   "max_abs_diff": max(g["parity_max_abs_diff"] for g in graphs)},
    }
