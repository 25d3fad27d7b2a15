"""One-shot search: the supernet's slicing, its training and evaluation-only search, and everything downstream.

Real Ray (a local instance), Lightning and Optuna storage, at tiny sizes (digits, 4-8 channel backbones).
"""
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import optuna
import pytest
import torch
import yaml

from dynsearch import api
from dynsearch.dynamic.supernet import calibrated_subnet, check_supported, recalibrate, slice_to
from dynsearch.errors import UserError
from dynsearch.recipe import load_recipe, parse_recipe
from dynsearch.run.rundir import RunDir
from dynsearch.testing.conformance import CHECKS, NotApplicable, count_macs
from dynsearch.training.supernet import OneShotSpace

TINY = {
    "name": "tiny-oneshot",
    "data": {"name": "digits", "split_seed": 0},
    "backbone": {"kind": "cnn", "widths": [4, 8, 8], "depth": 1,
                 "search": {"stages": [2, 3], "width": {"int": [2, 8]}, "depth": [1, 2], "kernel": [3, 5]}},
    "space": "exits",
    "strategy": "one-shot",
    "supernet": {"epochs": 2, "sandwich": 1, "calibration_images": 128, "cpus": 1},
    "evaluations": 12,
    "batch_size": 128,
    "seed": 0,
    "wandb": {"mode": "off"},
}


def tiny(**changes):
    recipe = json.loads(json.dumps(TINY))
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key].update(value)
        else:
            recipe[key] = value
    return recipe


def cli(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "dynsearch.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def _space(recipe_data, shape=((1, 8, 8), 10)):
    recipe = parse_recipe(recipe_data)
    return OneShotSpace(recipe, SimpleNamespace(input_shape=shape[0], num_classes=shape[1]))


def _random_configs(space, count, seed=0):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [space.define(study.ask()) for _ in range(count)]


# -- slicing ---------------------------------------------------------------------------------------------
def test_slice_takes_first_entries_and_kernel_centre():
    weight = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    sliced = slice_to(weight, (1, 2, 3, 3))
    assert torch.equal(sliced, weight[:1, :2, 1:4, 1:4])
    with pytest.raises(ValueError, match="larger than the supernet"):
        slice_to(weight, (3, 3, 5, 5))


BACKBONES = [
    {"kind": "cnn", "widths": [4, 8, 8], "depth": 1,
     "search": {"stages": [2, 3], "width": {"int": [2, 8]}, "depth": [1, 2], "kernel": [3, 5]}},
    {"kind": "resnet", "widths": [4, 8, 8], "depth": 1, "classifier": "flatten",
     "search": {"stages": [2, 3], "width": {"int": [2, 8]}, "depth": [1, 2], "kernel": [3, 5]}},
    {"kind": "mlp", "widths": [16, 16], "depth": 1, "search": {"stages": [1, 3], "width": {"choices": [4, 8, 16]}, "depth": [1, 2]}},
]


@pytest.mark.parametrize("backbone", BACKBONES, ids=lambda b: b["kind"])
def test_sliced_subnet_is_the_subnetwork_inside_the_supernet(backbone):
    """A standalone sub-network gives the outputs (<= 1e-5) of the same sub-network run inside the
    supernet with the same recomputed batch-norm statistics; its traced MACs are FlopCounterMode's."""
    space = _space(tiny(backbone=backbone))
    torch.manual_seed(0)
    supernet = space.build()
    for p in supernet.parameters():  # weights unlike their initialisation, so every slice matters
        p.data.add_(0.1 * torch.randn_like(p))
    calibration = torch.randn(64, 1, 8, 8)
    x = torch.randn(16, 1, 8, 8)
    for config in [supernet.largest, supernet.smallest, *_random_configs(space, 6)]:
        model = calibrated_subnet(supernet, config, calibration, batch_size=32)
        statistics = {k: v for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
        supernet.eval()
        with torch.no_grad():
            inside = supernet.run(config, x, buffers=statistics)
            alone = model(x)
        assert torch.allclose(inside.logits, alone.logits, atol=1e-5, rtol=0), config["backbone"]
        assert torch.equal(inside.trace.records["exit_index"], alone.trace.records["exit_index"])
        with torch.no_grad():
            for i in range(3):
                sample = x[i:i + 1]
                traced = float(model(sample).trace.macs_per_sample(model.component_macs())[0])
                assert traced == count_macs(lambda: model(sample)), config["backbone"]


def test_gradients_of_a_subnetwork_reach_only_its_slices():
    space = _space(tiny())
    supernet = space.build().train()
    config = supernet.training_config(supernet.smallest)
    out = supernet.run(config, torch.randn(8, 1, 8, 8))
    sum(logits.sum() for logits in out.head_logits).backward()
    stem = supernet.stem[0].weight
    width = config["backbone"]["widths"][0]
    assert stem.grad[:width].abs().sum() > 0
    assert stem.grad[width:].abs().sum() == 0  # channels the sub-network does not have get nothing


def test_extremes_bound_the_space():
    space = _space(tiny())
    largest, smallest = space.bound(True), space.bound(False)
    assert largest["backbone"]["widths"] == [8, 8, 8] and largest["backbone"]["depth"] == 2
    assert largest["backbone"]["kernel"] == 5 and largest["exits"]["head_width"] == 64
    assert smallest["backbone"]["widths"] == [2, 2] and smallest["backbone"]["depth"] == 1
    assert "kernel" not in smallest["backbone"]  # 3, the default, is not written
    for config in _random_configs(space, 20):  # the training settings are the supernet's, never asked
        assert config["train"]["lr"] == TINY.get("supernet", {}).get("lr", 0.005)
        assert config["exits"]["loss_weight"] == 0.5


def test_batch_norm_recalibration_is_a_cumulative_average():
    bn = torch.nn.Sequential(torch.nn.BatchNorm1d(3))
    inputs = torch.randn(40, 3) * 2 + 1
    recalibrate(bn, inputs, batch_size=10)
    assert torch.allclose(bn[0].running_mean, inputs.mean(0), atol=1e-5)
    assert bn[0].momentum == 0.1 and not bn.training


# -- bad input ---------------------------------------------------------------------------------------------
def test_unsupported_combination_is_refused_before_anything_is_written(tmp_path):
    recipe = tiny(space="gates", backbone={"kind": "resnet", "widths": [8, 8], "depth": 2, "search": None})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = cli("search", str(path), "--out", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "one-shot does not support space 'gates'" in lines[0], result.stderr
    assert "space exits with backbone.kind cnn / resnet / mlp" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("changes, words", [
    ({"backbone": {"kind": "transformer", "widths": [8, 8], "depth": 1, "search": None}, "data": {"name": "marked-majority"}},
     "backbone.kind 'transformer'"),
    ({"objectives": [{"name": "accuracy"}, {"name": "latency_ms"}]}, "latency objectives"),
    ({"backbone": {"kind": "mlp", "widths": [8, 8], "depth": 1, "search": {"dropout": [0.0, 0.5]}}},
     "backbone.search.dropout"),
])
def test_unsupported_combinations_name_what_is_supported(changes, words):
    with pytest.raises(UserError, match="one-shot does not support") as caught:
        check_supported(parse_recipe(tiny(**changes)))
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_one_shot_fields_need_the_strategy():
    data = tiny()
    data.pop("strategy")
    with pytest.raises(UserError, match="for strategy: one-shot only"):
        parse_recipe(data)


def test_check_supported_accepts_the_shipped_recipes():
    for name in ("digits-exits-oneshot", "fmnist-exits-oneshot"):
        recipe = load_recipe(name)
        assert recipe.one_shot
        check_supported(recipe)


# -- the whole loop ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def oneshot_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("oneshot") / "run"
    result = api.search(tiny(wandb={"mode": "offline", "project": "dynsearch-test"}), out=out)
    return out, result


def test_search_pareto_export_load(oneshot_run, tmp_path):
    out, result = oneshot_run
    run = RunDir(out)
    assert result.counts.get("COMPLETE") == TINY["evaluations"]
    assert (run.supernet_dir / "supernet.safetensors").is_file()
    assert not any(run.weights_path(n).exists() for n in run.trial_numbers())  # no weights per evaluation
    front = api.pareto(out)
    assert front and all("test_accuracy" in item for item in front)
    for item in front:  # the front was measured again by real passes: replay had it exactly
        metrics = run.read_metrics(item["trial"])
        assert metrics["measured_by"] == "real"
        assert metrics["replayed"] == {"accuracy": metrics["accuracy"], "macs": metrics["macs"]}
    points = api.pareto(out, operating_points=True)
    assert points and all("test_accuracy" in p and p["measured_by"] == "real" for p in points)
    assert all(p["replayed"] == {"accuracy": p["accuracy"], "macs": p["macs"]} for p in points)
    # off the front the test split was never read
    off = [n for n in run.trial_numbers() if n not in {item["trial"] for item in front} | {p["trial"] for p in points}]
    assert off and all("test_accuracy" not in run.read_metrics(n) for n in off)

    trial = front[0]["trial"]
    [folder] = api.export(out, tmp_path / "models", trials=[trial])
    code = ("import json, sys, torch, dynsearch\n"
            "m = dynsearch.load(sys.argv[1], raw=True)\n"
            "assert 'supernet' not in ' '.join(sys.modules), 'loading imported supernet code'\n"
            "x = torch.load(sys.argv[2], weights_only=True)\n"
            "with torch.no_grad():\n"
            "    print(json.dumps(m(x).logits.tolist()))\n")
    x = torch.randn(6, 1, 8, 8)
    torch.save(x, tmp_path / "x.pt")
    loaded = subprocess.run([sys.executable, "-c", code, str(folder), str(tmp_path / "x.pt")],
                            capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    logits = torch.tensor(json.loads(loaded.stdout))

    # the same sub-network inside the supernet, after the same batch-norm recalibration
    from dynsearch.data import load_data
    from dynsearch.dynamic.supernet import calibration_images
    from dynsearch.run.supernet import load_supernet

    recipe = run.read_recipe()
    supernet, _ = load_supernet(run.supernet_dir)
    config = run.read_config(trial)
    calibration = calibration_images(load_data(recipe.data).train_x, recipe.supernet.calibration_images, recipe.seed)
    torch.set_num_threads(1)
    model = calibrated_subnet(supernet, config, calibration)
    statistics = {k: v for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    with torch.no_grad():
        inside = supernet.run(config, x, buffers=statistics).logits
    assert torch.allclose(logits, inside, atol=1e-5, rtol=0)
    card = json.loads((folder / "card.json").read_text())
    assert card["reproduced_at_export"]["matches_recorded"] is True  # sliced again, the same figures
    assert card["weights"]["supernet_sha256"] == run.read_metrics(trial)["supernet_sha256"]


def test_wandb_summary_run_follows_the_supernet_and_the_evaluations(oneshot_run):
    from wandb_records import offline_runs

    out, _ = oneshot_run
    runs = {run["run"]["name"]: run for _, run in offline_runs(out)}
    assert set(runs) == {"search"}  # no run per evaluation: thousands of them
    history = runs["search"]["history"]
    epochs = [row["supernet/epoch"] for row in history if "supernet/epoch" in row]
    assert epochs == list(range(1, TINY["supernet"]["epochs"] + 1))
    assert max(row.get("evaluations", 0) for row in history) == TINY["evaluations"]
    assert runs["search"]["exit_code"] == 0


def test_exported_subnetwork_passes_the_conformance_suite(oneshot_run):
    """The exported architecture (its config, with a threshold at which the suite's inputs mix early and
    late exits: several checks prove nothing otherwise) passes every check of the conformance suite."""
    from dynsearch.testing.conformance import _decisions, _eval, _model

    out, _ = oneshot_run
    run = RunDir(out)
    config = next(run.read_config(item["trial"]) for item in api.pareto(out)
                  if run.read_config(item["trial"])["exits"]["stages"])
    for threshold in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.3, 0.2):
        config["exits"]["threshold"] = threshold
        model, x, _ = _model(config)
        trace = _eval(model, x).trace
        if len({tuple(sorted(_decisions(trace, i).items())) for i in range(len(x))}) > 1:
            break
    else:
        pytest.fail("no threshold mixes the suite's decisions for this architecture")
    ran = 0
    for check in CHECKS:
        try:
            check(json.loads(json.dumps(config)))
            ran += 1
        except NotApplicable:
            pass
    assert ran == len(CHECKS)


def test_resume_adds_evaluations_without_training_again(oneshot_run):
    out, _ = oneshot_run
    before = (RunDir(out).supernet_dir / "supernet.safetensors").stat().st_mtime_ns
    result = api.search(tiny(evaluations=TINY["evaluations"] + 3), out=out)
    assert result.counts.get("COMPLETE") == TINY["evaluations"] + 3
    assert (RunDir(out).supernet_dir / "supernet.safetensors").stat().st_mtime_ns == before


def _wait_for(path_check, process, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path_check():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.2)
    return False


@pytest.mark.slow  # resume itself is in the quick tier (test_resume_adds_evaluations_without_training_again)
def test_killed_search_resumes(tmp_path):
    """SIGKILL after the first supernet epoch, then again during the evaluations: each re-run carries on
    (from the checkpoint, then from the study) and the run ends with every evaluation COMPLETE, once."""
    recipe = tiny(supernet={"epochs": 3}, evaluations=30)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "dynsearch.cli", "search", str(path), "--out", str(out)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        assert _wait_for(lambda: (out / "supernet" / "checkpoint.json").is_file(), process)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert not (out / "supernet" / "supernet.json").exists()

    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True,
                               text=True)
    try:
        assert _wait_for(lambda: len(list((out / "trials").glob("*/metrics.json"))) >= 5, process)
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert "resuming after epoch 1/3" in stderr or "resuming after epoch 2/3" in stderr, stderr

    result = cli("search", str(path), "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    assert "supernet: trained already" in result.stderr
    states = {}
    for trial in optuna.load_study(study_name=None, storage=_storage(out)).get_trials(deepcopy=False):
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    assert states["COMPLETE"] == 30
    configs = [json.dumps(RunDir(out).read_config(n)["backbone"]) for n in RunDir(out).trial_numbers()
               if RunDir(out).read_metrics(n).get("status") == "COMPLETE"]
    assert len(configs) == 30


def _storage(out):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(out / "study.journal")))


def test_export_finetune_records_before_and_after(oneshot_run, tmp_path):
    from dynsearch.data import load_data
    from dynsearch.measure.evaluate import measure

    out, _ = oneshot_run
    trial = api.pareto(out)[0]["trial"]
    [folder] = api.export(out, tmp_path / "tuned", trials=[trial], finetune=1)
    card = json.loads((folder / "card.json").read_text())
    tuned = card["finetune"]
    assert tuned["epochs"] == 1 and tuned["before"]["accuracy"] == RunDir(out).read_metrics(trial)["accuracy"]
    splits = load_data(RunDir(out).read_recipe().data)
    torch.set_num_threads(card["measured_with"]["threads"])
    again = measure(api.load(folder, raw=True), splits.val_x, splits.val_y, batch_size=card["measured_with"]["batch_size"])
    assert again["accuracy"] == tuned["after"]["accuracy"] == card["objectives"]["accuracy"]
    assert "Fine-tuning" in (folder / "card.md").read_text()
