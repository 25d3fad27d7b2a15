"""dynamic/rules.py: each decision rule written once, the same function in PyTorch and in the staged ONNX runtime."""
import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dynsearch.deploy.onnx_export import export_onnx
from dynsearch.deploy.onnx_runtime import StagedRuntime
from dynsearch.dynamic import MECHANISMS, build_model, rules

# 0.1 in float32 is 0.100000001490116...; this float64 is above it but rounds to it in float32.
ROUNDS_TO_F32_POINT_ONE = 0.100000002


def _imports(path) -> set[str]:
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    return imported | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}


def test_the_rules_module_imports_neither_torch_nor_numpy():
    imported = {name.split(".")[0] for name in _imports(rules.__file__)}
    assert not imported & {"torch", "numpy", "dynsearch"}, imported


def test_the_staged_runtime_imports_no_torch_and_takes_its_rules_from_the_rules_module():
    import dynsearch.deploy.onnx_runtime as runtime

    imported = _imports(runtime.__file__)
    assert not {name for name in imported if name.split(".")[0] == "torch"}, imported
    assert {name for name in imported if name.startswith("dynsearch")} == {"dynsearch.dynamic.rules"}


@pytest.mark.parametrize("make", [lambda v: torch.tensor([v], dtype=torch.float32),
                                  lambda v: np.array([v], dtype=np.float32)], ids=["torch", "numpy"])
def test_a_threshold_compares_in_float32_on_torch_and_numpy(make):
    score = make(0.1)
    # In float64 the score is below the threshold; in float32 (the rule's contract) it equals it.
    assert bool(rules.exit_leaves("confidence", score, ROUNDS_TO_F32_POINT_ONE)[0])
    assert not bool(rules.exit_leaves("entropy", score, ROUNDS_TO_F32_POINT_ONE)[0])
    assert bool(rules.exit_leaves("fastbert", score, 0.2)[0])
    assert bool(rules.exit_leaves("confidence", score, np.float32(ROUNDS_TO_F32_POINT_ONE))[0])


def test_the_rules_on_python_numbers():
    assert rules.exit_leaves("confidence", 0.9, 0.9) and not rules.exit_leaves("entropy", 0.9, 0.9)
    assert rules.gate_on(1.0, 1.5, 0.5) is False and rules.gate_on(1.0, 1.5, 0.75) is True
    assert rules.halts(0.99, 0.99) and not rules.halts(0.5, 0.99)
    with pytest.raises(ValueError, match="patience"):
        rules.exit_leaves("patience", 0.5, 0.5)


def test_pabee_streak_on_python_ints_and_on_a_batch():
    predictions = [3, 3, 1, 1, 1]
    streak, previous, streaks = 0, None, []
    for p in predictions:
        streak = rules.patience_streak(streak, p, previous)
        previous = p
        streaks.append(streak)
    assert streaks == [0, 1, 0, 1, 2]
    assert [bool(rules.patience_leaves(s, 2)) for s in streaks] == [False, False, False, False, True]
    batch = torch.tensor([[3, 3, 1], [1, 1, 1]])  # [heads, samples]: each column a sample
    streak, previous = torch.zeros(3, dtype=torch.long), None
    for row in batch:
        streak = rules.patience_streak(streak, row, previous)
        previous = row
    assert streak.tolist() == [0, 0, 1] and streak.dtype == torch.long


def test_predicted_depth_on_torch_and_numpy():
    logits = [[1.0, 1.2, 1.3]]
    for shift, expected in ((0.0, 2), (0.15, 1), (0.3, 0), (-1.0, 2)):
        t = rules.predicted_depth(torch.tensor(logits), shift, torch.arange(3, dtype=torch.float32))
        n = rules.predicted_depth(np.array(logits, np.float32)[0], np.float32(shift), np.arange(3, dtype=np.float32))
        assert int(t[0]) == int(n) == expected


def test_unknown_staged_role_is_a_clear_error():
    with pytest.raises(ValueError, match="role 'loop' is unknown"):
        rules.staged_role("loop")


def test_every_staged_form_uses_registered_roles():
    for name, info in sorted(MECHANISMS.items()):
        for config in info.cls.tiny_configs():
            form = build_model(config).onnx_form()
            for part in form.parts if form else []:
                assert rules.staged_role(part.info["role"]).role == part.info["role"], (name, part.name)


def _exported(tmp_path, model, inputs):
    manifest = export_onnx(model, tmp_path / "onnx", inputs)
    (tmp_path / "card.json").write_text(json.dumps({"runtime_policy": model.runtime_policy(), "onnx": manifest}))
    return StagedRuntime(tmp_path)


def _decisions(model, runtime, inputs):
    with torch.no_grad():
        batch = model(inputs).trace.records
        one = [model(x[None]).trace.records for x in inputs]
    return batch, one, runtime.run(inputs.numpy())


def test_monkeypatching_the_exit_rule_changes_pytorch_and_the_runtime(tmp_path, monkeypatch):
    model = build_model(MECHANISMS["exits"].cls.tiny_configs()[0]).eval()
    model.threshold = 2.0  # no head reaches it: every input runs to the final classifier
    inputs = torch.randn(8, *model.config["input_shape"])
    runtime = _exported(tmp_path, model, inputs)
    batch, one, staged = _decisions(model, runtime, inputs)
    final = len(model.stages) - 1
    assert batch["exit_index"].tolist() == [final] * 8 and {d.exit_stage for d in staged} == {final}
    monkeypatch.setattr(rules, "exit_leaves", lambda policy, score, threshold: score > -1.0)  # always leave
    batch, one, staged = _decisions(model, runtime, inputs)
    first = model.exit_stages[0]
    assert batch["exit_index"].tolist() == [first] * 8
    assert [int(r["exit_index"][0]) for r in one] == [first] * 8
    assert [d.exit_stage for d in staged] == [first] * 8
    assert model.timed_components(torch.device("cpu"))[f"exit{first}"]() is True


def test_monkeypatching_the_pabee_rule_changes_pytorch_and_the_runtime(tmp_path, monkeypatch):
    model = build_model(MECHANISMS["exits"].cls.tiny_configs()[3]).eval()
    model.patience = 5  # more than the heads: only the final classifier answers
    inputs = torch.randn(8, *model.config["input_shape"])
    runtime = _exported(tmp_path, model, inputs)
    monkeypatch.setattr(rules, "patience_leaves", lambda streak, patience: streak >= 0)
    batch, one, staged = _decisions(model, runtime, inputs)
    first = model.exit_stages[0]
    assert batch["exit_index"].tolist() == [int(r["exit_index"][0]) for r in one] == [first] * 8
    assert [d.exit_stage for d in staged] == [first] * 8


def test_monkeypatching_the_gate_rule_changes_pytorch_and_the_runtime(tmp_path, monkeypatch):
    model = build_model(MECHANISMS["aig"].cls.tiny_configs()[0]).eval()
    inputs = torch.randn(8, *model.config["input_shape"])
    runtime = _exported(tmp_path, model, inputs)
    monkeypatch.setattr(rules, "gate_on", lambda on, off, bias: on - on > 0)  # every gate off
    batch, one, staged = _decisions(model, runtime, inputs)
    assert not batch["gates"].any() and not any(bool(r["gates"].any()) for r in one)
    assert not any(any(d.gates) for d in staged) and all(len(d.gates) == len(model.gated) for d in staged)
    assert model.timed_components(torch.device("cpu"))[f"gate{model.gated[0]}"]() is False


def test_monkeypatching_the_depth_rule_changes_pytorch_and_the_runtime(tmp_path, monkeypatch):
    model = build_model(MECHANISMS["depth_adaptive"].cls.tiny_configs()[0]).eval()
    inputs = torch.randn(8, *model.config["input_shape"])
    runtime = _exported(tmp_path, model, inputs)
    monkeypatch.setattr(rules, "predicted_depth", lambda scores, shift, index: (scores * 0).argmax(-1))  # depth 0
    batch, one, staged = _decisions(model, runtime, inputs)
    first = model.depths[0]
    assert batch["exit_index"].tolist() == [int(r["exit_index"][0]) for r in one] == [first] * 8
    assert [d.exit_stage for d in staged] == [first] * 8


def test_monkeypatching_the_halting_rule_changes_the_eval_loop(monkeypatch):
    model = build_model(MECHANISMS["act"].cls.tiny_configs()[0]).eval()
    inputs = torch.randn(8, *model.config["input_shape"])
    monkeypatch.setattr(rules, "halts", lambda cumulative, threshold: cumulative > -1.0)  # halt at once
    with torch.no_grad():
        assert model(inputs).trace.records["ponder_steps"].tolist() == [1] * 8


def test_export_refuses_a_form_with_a_role_the_runtime_does_not_know(tmp_path):
    model = build_model(MECHANISMS["exits"].cls.tiny_configs()[0]).eval()
    form = model.onnx_form()
    form.parts[0].info["role"] = "loop"
    model.onnx_form = lambda: form
    with pytest.raises(RuntimeError, match="role 'loop' is unknown"):
        export_onnx(model, tmp_path / "onnx", torch.randn(4, *model.config["input_shape"]))
