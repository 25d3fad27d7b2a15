"""Staged ONNX forms of every registered mechanism's tiny variants: parity with PyTorch through
``onnx_export.graph_parity``, and ``onnx_runtime.StagedRuntime`` taking PyTorch's batch-1 decisions."""
import json

import pytest
import torch

from dynsearch.dynamic import MECHANISMS, build_model
from dynsearch.deploy.onnx_export import PARITY_TOLERANCE, export_onnx, graph_parity
from dynsearch.deploy.onnx_runtime import StagedRuntime

# Mechanisms without a staged ONNX form (their cards say "ONNX not supported"; test_bundle.py checks
# that): halting loops a cell a data-dependent number of times; CondConv's per-example grouped
# convolution bakes the batch size into the graph; MoE routes tokens to experts by index.
NO_ONNX_FORM = {"act", "pondernet", "moe", "condconv"}
ALL_TINY = [(name, i) for name, info in sorted(MECHANISMS.items()) for i in range(len(info.cls.tiny_configs()))]
TINY = [(name, i) for name, i in ALL_TINY if name not in NO_ONNX_FORM]


@pytest.mark.parametrize("mechanism, index", [(n, i) for n, i in ALL_TINY if n in NO_ONNX_FORM])
def test_the_mechanisms_listed_without_a_form_really_have_none(mechanism, index):
    assert build_model(MECHANISMS[mechanism].cls.tiny_configs()[index]).onnx_form() is None, (
        f"{mechanism} has an ONNX form now: remove it from NO_ONNX_FORM so the parity tests cover it")


def pytorch_decision(model, x):
    """(prediction, exit stage or None, gate decisions, MACs) of the PyTorch model at batch size 1."""
    out = model(x[None])
    records = out.trace.records
    exit_stage = int(records["exit_index"][0]) if "exit_index" in records else None
    gates = [bool(g) for g in records["gates"][0]] if "gates" in records else []
    macs = int(out.trace.macs_per_sample(model.component_macs())[0])
    return int(out.logits.argmax()), exit_stage, gates, macs


@pytest.mark.parametrize("mechanism, index", TINY)
def test_staged_onnx_form_matches_pytorch_graph_by_graph_and_in_its_decisions(tmp_path, mechanism, index):
    torch.manual_seed(index)
    model = build_model(MECHANISMS[mechanism].cls.tiny_configs()[index]).eval()
    form = model.onnx_form()
    assert form is not None, f"{mechanism} has no staged ONNX form"
    inputs = torch.randn(64, *model.config["input_shape"])
    manifest = export_onnx(model, tmp_path / "onnx", inputs)
    if "threshold" in model.runtime_policy():  # a threshold that splits the inputs: a wrong exit would show
        with torch.no_grad():  # halfway between the two middle scores: no input sits on it
            middle = form.parts[0].module.eval()(inputs)[2].sort().values[31:33]
            model.threshold = float(middle.mean())
    assert max(graph_parity(model, tmp_path / "onnx", inputs)) <= PARITY_TOLERANCE
    card = {"runtime_policy": model.runtime_policy(), "onnx": manifest}
    (tmp_path / "card.json").write_text(json.dumps(card))
    runtime = StagedRuntime(tmp_path)
    seen_exits, seen_gates = set(), set()
    with torch.no_grad():
        for x in inputs:
            expected = pytorch_decision(model, x)
            got = runtime(x.numpy())
            assert (got.prediction, got.exit_stage, got.gates, got.macs) == expected
            seen_exits.add(got.exit_stage)
            seen_gates.update(enumerate(got.gates))
    # The decisions are really taken: some inputs leave early / some gated blocks are skipped.
    roles = {g["role"] for g in manifest["graphs"]}
    if "gate" in roles:
        assert any(not on for _, on in seen_gates) and any(on for _, on in seen_gates)
    elif model.runtime_policy()["policy"] != "patience" or mechanism == "depth_adaptive":
        # (the untrained tiny PABEE CNN's heads never agree: every input runs to the end;
        # depth_adaptive's PABEE variant and the trained models in test_bundle.py do split)
        assert len(seen_exits) > 1, f"every input left at {seen_exits}: the check would not see a wrong exit"


@pytest.mark.parametrize("mechanism, index", TINY)
def test_staged_runtime_follows_the_operating_point_knobs(tmp_path, mechanism, index):
    """A model exported at another operating point (gate bias, depth shift, threshold,
    patience) runs the same graphs; the runtime must apply the knob exactly as PyTorch does."""
    torch.manual_seed(index)
    model = build_model(MECHANISMS[mechanism].cls.tiny_configs()[index]).eval()
    knobs = model.runtime_knobs()
    if not knobs or model.onnx_form() is None:
        pytest.skip(f"{mechanism} #{index} has no runtime knob or no ONNX form")
    inputs = torch.randn(32, *model.config["input_shape"])
    manifest = export_onnx(model, tmp_path / "onnx", inputs)
    changed_decisions = False
    for name, grid in knobs.items():
        trained = model.runtime_policy()[name]
        for value in grid[::2]:
            model.set_runtime_knobs({name: value})
            (tmp_path / "card.json").write_text(json.dumps({"runtime_policy": model.runtime_policy(), "onnx": manifest}))
            runtime = StagedRuntime(tmp_path)
            with torch.no_grad():
                decisions = [runtime(x.numpy()) for x in inputs]
                expected = [pytorch_decision(model, x) for x in inputs]
                got = [(d.prediction, d.exit_stage, d.gates, d.macs) for d in decisions]
                assert got == expected, f"{name}={value}: the runtime decided otherwise than PyTorch"
                model.set_runtime_knobs({name: trained})
                baseline = [pytorch_decision(model, x) for x in inputs]
            changed_decisions |= baseline != expected
    if set(knobs) & {"gate_bias", "depth_shift"}:  # (untrained exit heads' scores rarely split at the grid's
        # values: the threshold rule is checked at a splitting value by the test above)
        assert changed_decisions, "no knob value changed any decision: the check could not see a knob ignored"
