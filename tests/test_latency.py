"""Latency as an objective: measurement, isolation, target device and target node."""
import json
import subprocess
import sys

import pytest
import ray
import yaml

from conftest import TINY_RECIPE, exits_config
from dynsearch.dynamic import build_model
from dynsearch.measure.latency import component_latency_table, measure_latency, predict_latency_ms

LATENCY = {"inputs": 20, "repeats": 6, "warmup": 1}  # 6: the fewest paired repeats with a 95% interval


def _latency_recipe(tmp_path, **latency):
    data = yaml.safe_load(TINY_RECIPE)
    data["objectives"] = [{"name": "accuracy"}, {"name": "latency_ms"}]
    data["latency"] = {**LATENCY, **latency}
    path = tmp_path / "latency.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_measure_latency_reports_a_distribution(digits):
    model = build_model(exits_config(threshold=0.0))  # every sample leaves at the first head
    dynamic = measure_latency(model, digits.val_x[:10], repeats=3)
    static = measure_latency(model, digits.val_x[:10], repeats=3, static=True)
    for result in (dynamic, static):
        assert result["latency_inputs"] == 10
        assert 0 < result["latency_ms"] <= result["latency_ms_p90"]
        assert result["latency_ms_mean"] > 0
    batched = measure_latency(model, digits.val_x[:10], repeats=2, batch_size=5)
    assert batched["latency_inputs"] == 2


def test_latency_against_static_times_both_paths_in_alternation(digits):
    """The latency objective's protocol: the dynamic path's distribution as before, plus the static path's
    p50 and the median paired speed-up with its interval; an exit-free model runs its static path."""
    model = build_model(exits_config(stages=[])).eval()
    result = measure_latency(model, digits.val_x[:6], repeats=7, warmup=1, against_static=True)
    assert result["latency_inputs"] == 6 and 0 < result["latency_ms"] <= result["latency_ms_p90"]
    low, high = result["latency_speedup_interval"]
    assert low <= result["latency_speedup"] <= high and result["latency_static_ms"] > 0
    assert isinstance(result["latency_speedup_wide"], bool) and "throughput" not in result


def test_static_path_is_the_backbone_with_its_final_classifier(digits):
    model = build_model(exits_config(threshold=1.01)).eval()  # nobody exits: same logits as static
    x = digits.val_x[:4]
    assert ray is not None
    import torch

    assert torch.allclose(model.forward_static(x), model(x).logits, atol=1e-6)


def test_latency_table_predicts_from_traces(digits):
    model = build_model(exits_config()).eval()
    table = component_latency_table(model, repeats=5)
    assert set(table) == set(model.components()) and all(v > 0 for v in table.values())
    model.threshold = 0.0  # everyone leaves at exit 0: stem + stage0 + exit0
    predicted = predict_latency_ms(model, digits.val_x[:8], table)
    assert predicted == pytest.approx(table["stem"] + table["stage0"] + table["exit0"])


def test_cuda_target_is_a_usage_error_where_absent(tmp_path, capsys):
    import torch

    from dynsearch import cli

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    recipe = _latency_recipe(tmp_path, device="cuda")
    for command in (["search", str(recipe), "--out", str(tmp_path / "run")], ["train", str(recipe)]):
        assert cli.main(command) == 2
        err = capsys.readouterr().err
        assert err.strip().count("\n") == 0 and "no CUDA device" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_gate_blocks_timing_while_training_and_training_while_timing():
    from dynsearch.compat import init_ray_on_loopback
    from dynsearch.training.timing import node_gate

    started = not ray.is_initialized()
    if started:
        init_ray_on_loopback(num_cpus=1, include_dashboard=False)
    try:
        gate = node_gate()
        ray.get(gate.enter_training.remote("a"))
        assert ray.get(gate.acquire_timing.remote(0.5)) is False  # "a" never paused: not isolated
        ray.get(gate.release_timing.remote())
        ray.get(gate.leave_training.remote("a"))
        assert ray.get(gate.acquire_timing.remote(5.0)) is True
        entering = gate.enter_training.remote("b")
        ready, _ = ray.wait([entering], timeout=0.5)
        assert not ready  # a new epoch waits while a model is timed
        ray.get(gate.release_timing.remote())
        ray.get(entering, timeout=10)
        ray.get(gate.leave_training.remote("b"))
    finally:
        if started:
            ray.shutdown()


@pytest.mark.slow
def test_latency_objective_end_to_end(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "dynsearch.cli", "search", str(_latency_recipe(tmp_path)), "--trials", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    front = json.loads((out / "pareto.json").read_text())
    assert front
    for item in front:
        assert 0 < item["latency_ms"] <= item["latency_ms_p90"]
    for folder in (out / "trials").iterdir():
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["latency_isolated"] is True and metrics["latency_device"] == "cpu"
        # the paired protocol: the static path timed in alternation, the speed-up with its 95% interval
        low, high = metrics["latency_speedup_interval"]
        assert 0 < low <= metrics["latency_speedup"] <= high and metrics["latency_static_ms"] > 0


@pytest.mark.slow
def test_latency_measured_on_the_node_with_the_target_resource(tmp_path, two_node_cluster):
    cluster, worker = two_node_cluster
    out = tmp_path / "run"
    recipe = _latency_recipe(tmp_path, resource="target")
    proc = subprocess.run(
        [sys.executable, "-m", "dynsearch.cli", "search", str(recipe), "--trials", "2", "--address", cluster.address,
         "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained_on, timed_on = set(), set()
    for folder in (out / "trials").iterdir():
        metrics = json.loads((folder / "metrics.json").read_text())
        trained_on.add(metrics["node_id"])
        timed_on.add(metrics["latency_node_id"])
    assert timed_on == {worker.node_id}  # only the worker carries the "target" resource
    assert cluster.head_node.node_id in trained_on  # training ran elsewhere too


def test_bench_cli_times_a_saved_model_and_its_static_path(tmp_path, capsys):
    """The command in this process (the exit status and one-line errors as a shell sees them are
    checked in real processes by test_bad_input.py and test_recipe.py)."""
    from dynsearch import cli

    out = tmp_path / "model"
    assert cli.main(["train", "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["bench", str(out), "--data", "digits", "--inputs", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["static"]["macs"] >= result["dynamic"]["macs"] * 0.5 and result["params"] > 0
    assert result["dynamic"]["latency_ms"] > 0 and result["static"]["latency_ms"] > 0
    assert result["realised_speedup"] > 0 and result["lut_predicted_ms"] > 0
    (out / "model.safetensors").write_bytes(b"not a safetensors file")
    assert cli.main(["bench", str(out), "--data", "digits"]) == 2
    err = capsys.readouterr().err
    # One loader for every model folder (deploy/load.py): the same one-line refusal as dynsearch.load's.
    assert err.strip().count("\n") == 0 and "not a valid safetensors file" in err and "Traceback" not in err


def test_folding_batch_norm_keeps_outputs_and_decisions(digits):
    import torch

    from dynsearch.measure.latency import fold_batch_norm

    model = build_model(exits_config(widths=(8, 16, 32), depth=2))
    model.train()
    model(digits.train_x[:64])  # non-trivial running statistics
    model.eval()
    folded = fold_batch_norm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = digits.val_x[:32]
    assert torch.allclose(folded.forward_static(x), model.forward_static(x), atol=1e-5)
    assert torch.allclose(folded(x).logits, model(x).logits, atol=1e-5)


@pytest.mark.parametrize("shape, kernel, batched_way", [
    ((64, 7, 7), (7, 7), "mean"),          # a whole map of > 16 positions: a mean over height and width
    ((34, 4, 4), (2, 2), "channels_last"),  # part of a map of <= 16 positions: on a channels-last copy
    ((32, 14, 14), (7, 7), "plain"),        # part of a larger map: the plain kernel
    ((16, 4, 4), (4, 4), "plain"),          # a whole map of <= 16 positions: the plain kernel
    ((17, 4, 4), (2, 2), "channels_last"),  # channels-last only from 1024 rows x channels: 128 rows, not 32
])
def test_served_pool_equals_the_pool_at_every_batch_size(shape, kernel, batched_way):
    import torch
    from torch.nn import functional as F

    from dynsearch.measure.latency import BATCHED_POOL_ROWS, CHANNELS_LAST_POOL_PLANES, ServedAvgPool2d, served_pool

    pool = ServedAvgPool2d(kernel, shape)
    assert (pool.whole_map, pool.small_map) == (batched_way == "mean", batched_way == "channels_last")
    for batch in (1, BATCHED_POOL_ROWS - 1, BATCHED_POOL_ROWS, 128):
        x = torch.randn(batch, *shape)
        out = pool(x)
        assert out.shape == F.avg_pool2d(x, kernel).shape
        assert torch.allclose(out, F.avg_pool2d(x, kernel), atol=1e-6)
        # the way taken: a channels-last result only from the channels-last copy, at a batched size
        copied = batch >= BATCHED_POOL_ROWS and batch * shape[0] >= CHANNELS_LAST_POOL_PLANES
        assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous() \
            if copied and batched_way == "channels_last" else out.is_contiguous()
    assert type(served_pool(kernel, shape)) is (ServedAvgPool2d if batched_way != "plain" else torch.nn.AvgPool2d)
