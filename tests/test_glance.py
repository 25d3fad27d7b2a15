"""Glance and focus (GFNet): crop positions, hand-counted MACs, exits that really stop, the two training
stages, the space and recipe, export -> load in a fresh process and the ONNX refusal. The conformance
suite (test_conformance.py) runs the contract on the mechanism's tiny configs."""
import json
from pathlib import Path

import optuna
import pytest
import torch

from dynsearch import cli
import dynsearch
from dynsearch.dynamic import build_model
from dynsearch.dynamic.glance import GlanceFocusNet, fixed_scan, grid_positions
from dynsearch.errors import UserError
from dynsearch.recipe import load_recipe

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def digits_config(crop_policy="learned", threshold=0.9, max_steps=3):
    """A glance model on 8x8 digits: a 4x4 glance, 4x4 crops on a 3x3 grid."""
    return {"mechanism": "glance", "input_shape": [1, 8, 8], "num_classes": 10,
            "backbone": {"kind": "cnn", "widths": [4, 8], "depth": 1},
            "glance": {"glance_size": 4, "patch_size": 4, "glance_widths": [4, 8], "hidden": 16,
                       "max_steps": max_steps, "threshold": threshold, "crop_policy": crop_policy, "grid": 3},
            "train": {"lr": 0.01, "epochs": 2, "batch_size": 64, "seed": 0}, "trial": 0}


def test_grid_positions_and_the_fixed_scan_start_at_the_centre():
    positions = grid_positions(28, 28, 12, 3)
    assert positions == [(0, 0), (0, 8), (0, 16), (8, 0), (8, 8), (8, 16), (16, 0), (16, 8), (16, 16)]
    scan = fixed_scan(positions, 28, 28, 12)
    assert positions[scan[0]] == (8, 8)  # the centre crop first
    assert [positions[i] for i in scan[1:5]] == [(0, 8), (8, 0), (8, 16), (16, 8)]  # then the edge centres
    assert sorted(scan) == list(range(9))


def test_component_macs_are_the_hand_counted_ones():
    model = build_model(GlanceFocusNet.tiny_configs()[0])  # 12x12 image, G 6, P 6, widths 4-8, hidden 16, 4 classes
    # Each network: 3x3 stem 1->4 and stage 0 4->4 at 6x6, stage 1 4->8 at 3x3 (stride 2), linear 8*2*2 -> 16.
    net = 36 * 9 * 1 * 4 + 36 * 9 * 4 * 4 + 9 * 9 * 4 * 8 + 32 * 16
    assert model.component_macs() == {"glance_net": net, "local_net": net, "cell": 3 * 16 * (16 + 16),
                                      "classifier": 16 * 4, "policy": 16 * 9}
    steps = model.max_steps
    assert model.macs_full() == net * steps + 16 * 9 * (steps - 1) + 3 * 16 * 32 * steps + 16 * 4


def _ran(model, x):
    """Per component, the rows it processed in an eval pass (forward pre-hooks)."""
    rows = {}
    hooks = [module.register_forward_pre_hook(
        lambda _m, args, name=name: rows.__setitem__(name, rows.get(name, 0) + args[0].shape[0]))
        for name, module in model.components().items()]
    with torch.no_grad():
        out = model.eval()(x)
    for hook in hooks:
        hook.remove()
    return out, rows


@pytest.mark.parametrize("crop_policy", ["learned", "fixed"])
def test_a_sample_that_exits_is_not_computed_further(crop_policy):
    torch.manual_seed(0)
    x = torch.randn(6, 1, 8, 8)
    model = build_model(digits_config(crop_policy, threshold=0.01))  # every sample leaves at the glance
    out, rows = _ran(model, x)
    assert out.trace.records["glance_steps"].tolist() == [1] * 6
    assert out.trace.records["crops"].tolist() == [[-1, -1]] * 6
    assert rows == {"glance_net": 6, "cell": 6, "classifier": 6}  # no crop, no local network, no policy
    model.set_runtime_knobs({"threshold": 1.0})  # no sample is ever sure enough: every step runs
    out, rows = _ran(model, x)
    assert out.trace.records["glance_steps"].tolist() == [3] * 6
    assert rows["local_net"] == 12 and rows["cell"] == 18 and rows.get("policy", 0) == (12 if crop_policy == "learned" else 0)
    macs = model.component_macs()
    assert out.trace.macs_per_sample(macs).tolist() == [float(model.macs_full() + 2 * macs["classifier"])] * 6
    if crop_policy == "fixed":  # centre, then the first edge centre
        assert out.trace.records["crops"].tolist() == [[4, 1]] * 6


def test_stage_one_crops_at_random_and_stage_two_trains_the_policy_by_reinforce():
    torch.manual_seed(0)
    model = build_model(digits_config("learned")).train()
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    model.set_training_progress(0.2)
    out = model(x)
    assert "log_probs" not in out.trace.records and float(model.policy_loss(out, y)) == 0.0
    model.training_loss(out, y).backward()
    assert model.policy.weight.grad is None  # stage 1: the policy is not trained
    assert len(out.head_logits) == model.max_steps  # every step's classifier output is in the loss
    model.zero_grad()
    model.set_training_progress(0.6)
    out = model(x)
    assert out.trace.records["log_probs"].shape == (32, model.max_steps - 1)
    model.policy_loss(out, y).backward()
    assert model.policy.weight.grad.abs().sum() > 0
    assert model.local_net.project.weight.grad is None  # the policy reads the state detached


def test_space_defines_a_buildable_config():
    from dynsearch.spaces import get_space

    space = get_space("glance")
    recipe = load_recipe("fmnist-glance")
    data = type("Data", (), {"input_shape": (1, 28, 28), "num_classes": 10})()
    study = optuna.create_study()
    for _ in range(3):
        trial = study.ask()
        config = space.define(trial, recipe, data)
        assert {"glance_size", "patch_size", "max_steps", "glance_threshold", "glance_width", "local_width",
                "hidden_width", "crop_policy", "lr"} <= set(trial.params)
        model = build_model(config)
        assert model.example_input(2).shape == (2, 1, 28, 28)
    flat = type("Data", (), {"input_shape": (64,), "num_classes": 10})()
    with pytest.raises(ValueError, match="image data"):
        space.define(study.ask(), recipe, flat)


@pytest.mark.skipif(not FMNIST.is_file(), reason="apt-get install dataset-fashion-mnist (.ci/run does)")
def test_fmnist_glance_default_point_builds():
    from dynsearch.spaces import default_config

    recipe = load_recipe("fmnist-glance")
    data = type("Data", (), {"input_shape": (1, 28, 28), "num_classes": 10})()
    config = default_config(recipe, data)
    assert config["mechanism"] == "glance" and config["glance"]["crop_policy"] == "fixed"
    assert build_model(config).macs_full() > 0


def test_export_loads_in_a_fresh_process_and_onnx_is_refused_in_one_line(tmp_path, digits, capsys):
    from test_bundle import make_run, reproduce_in_fresh_process

    run = make_run(tmp_path / "run", digits, [digits_config("learned", threshold=0.15)])
    with pytest.raises(UserError, match="ONNX not supported for mechanism 'glance'"):
        dynsearch.export(run, tmp_path / "models", onnx=True)
    code = cli.main(["export", str(run), "--out", str(tmp_path / "onnx-models"), "--format", "onnx"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "onnx-models").exists()
    [folder] = dynsearch.export(run, tmp_path / "models")
    card = json.loads((folder / "card.json").read_text())
    assert card["forms"]["onnx"] == "ONNX not supported for 'glance'"
    assert card["runtime_policy"]["kind"] == "glance"
    [result] = reproduce_in_fresh_process([folder])
    recorded = json.loads((run / "trials" / "0" / "metrics.json").read_text())
    assert result["matches"] and (result["accuracy"], result["macs"]) == (recorded["accuracy"], recorded["macs"])
    assert recorded["stats"]["mean_steps"] < 3  # some samples stopped before the last step


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.is_file(), reason="apt-get install dataset-fashion-mnist (.ci/run does)")
def test_fmnist_glance_search_then_pareto_with_step_statistics(tmp_path):
    out = tmp_path / "run"
    recipe = load_recipe("fmnist-glance").with_overrides(data={"train_subset": 1000})
    result = dynsearch.search(recipe, out=out, trials=2, epochs=1, wandb={"mode": "off"})
    assert result.complete == 2
    for item in dynsearch.pareto(out):
        steps = item["config"]["glance"]["max_steps"]
        assert item["stats"]["steps"] == list(range(1, steps + 1))
        assert sum(item["stats"]["step_histogram"]) == pytest.approx(1.0)
        assert 1 <= item["stats"]["mean_steps"] <= steps and 0 < item["macs"]
