"""Export / load of model folders: reproduction in a fresh process, ONNX parity, bad input.

Most tests build a small run directory without Ray (real Optuna journal study,
real Lightning training, the trial folders ``save_trial`` writes); the slow
test runs a real search through the CLI.
"""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml

from dynsearch import cli
import dynsearch
from conftest import exits_config
from dynsearch.data import load_data, load_splits
from dynsearch.deploy.export import reproduce
from dynsearch.deploy.load import FORMAT
from dynsearch.dynamic import MECHANISMS, build_model, register_mechanism
from dynsearch.dynamic.exits import EarlyExitNet
from dynsearch.dynamic.gates import SkipNet
from dynsearch.dynamic.halting import PonderNet
from dynsearch.errors import UserError
from dynsearch.recipe import builtin_recipes, load_recipe, recipe_dict
from dynsearch.spaces import default_config
from dynsearch.run.study import make_sampler, open_study
from dynsearch.training.trial import evaluate, save_trial, train_model

DEPLOYMENT_PAGE = Path(__file__).resolve().parent.parent / "docs" / "deployment.md"

# Models exported in tests besides each built-in recipe's default point (low thresholds: some samples exit early).
TINY_CONFIGS = [exits_config(stages=(0, 1), threshold=0.6, widths=(4, 8, 8), head_width=16),
                exits_config(stages=(1,), threshold=0.6, widths=(16, 16, 16), head_width=0, kind="mlp"),
                SkipNet.tiny_configs()[0],
                {**PonderNet.tiny_configs()[0], "input_shape": [1, 8, 8], "num_classes": 10}]


def _first_recipe_per_mechanism() -> list[str]:
    by_mechanism = {}
    for name in sorted(builtin_recipes()):
        by_mechanism.setdefault(_recipe_default(name)[2]["mechanism"], name)
    return sorted(by_mechanism.values())

# Checks the loaded model in a process of its own: no Ray, no Optuna, figures reproduced exactly.
FRESH_PROCESS = """
import json, sys
import dynsearch
from dynsearch.deploy.export import reproduce
results = [reproduce(path) for path in sys.argv[1:]]
results.append(sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "optuna")))
print(json.dumps(results))
"""


def reproduce_in_fresh_process(paths):
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, *map(str, paths)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    *results, imported = json.loads(proc.stdout)
    assert imported == [], f"load imported {imported}"
    return results


def make_run(run_dir, splits, configs, failed=0, recipe=None):
    """A run directory as a search leaves it: recipe.yaml, the journal study, trials/<N>/ folders."""
    recipe = (recipe or load_recipe(None)).with_overrides(trials=len(configs) + failed, epochs=1)
    if set(recipe.metric_names) - {"accuracy", "macs", "params"}:  # latency is timed under Ray: not here
        recipe = recipe.with_overrides(objectives=[{"name": "accuracy"}, {"name": "macs"}])
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe_dict(recipe)))
    study = open_study(run_dir, recipe, make_sampler(recipe))
    for number, config in enumerate(configs):
        config = {**config, "trial": number, "train": {**config["train"], "epochs": 1}}
        model = train_model(config, splits)
        metrics = {**evaluate(model, splits), "status": "COMPLETE"}
        save_trial(run_dir / "trials" / str(number), config, model, metrics)
        study.add_trial(optuna.trial.create_trial(values=[metrics[name] for name in recipe.metric_names]))
    for number in range(len(configs), len(configs) + failed):
        folder = run_dir / "trials" / str(number)
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"status": "FAIL", "reason": "NonFiniteError: loss nan"}))
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL,
                                                  user_attrs={"fail_reason": "NonFiniteError: loss nan"}))
    return run_dir


@pytest.fixture(scope="module")
def one_good_one_failed(tmp_path_factory, digits):
    return make_run(tmp_path_factory.mktemp("run") / "run", digits, [TINY_CONFIGS[0]], failed=1)


def onnx_parity(folder, splits):
    """Max abs difference of every ONNX graph against the loaded PyTorch model's parts, on the validation split."""
    from dynsearch.deploy.onnx_export import graph_parity

    model = dynsearch.load(folder, engine="eager")  # the DynamicModel: its parts are compared
    card = json.loads((folder / "card.json").read_text())
    form = model.onnx_form()
    assert [f"onnx/{p.name}.onnx" for p in form.parts] == [g["file"] for g in card["onnx"]["graphs"]]
    return max(graph_parity(model, folder / "onnx", splits.val_x))


def assert_staged_onnx_matches_pytorch(folder, splits, count=None):
    """onnxruntime's staged runtime, graph by graph at batch 1, takes the decisions (exits, gates, depth)
    and predictions PyTorch's model takes, and pays the same MACs."""
    from dynsearch.deploy.onnx_runtime import StagedRuntime
    from dynsearch.testing.conformance import staged_decision

    model = dynsearch.load(folder, engine="eager")
    staged = StagedRuntime(folder).run(splits.val_x[:count].numpy())
    with torch.no_grad():
        for x, got in zip(splits.val_x[:count], staged):
            assert (got.prediction, got.exit_stage, got.gates, got.macs) == staged_decision(model, x)
    return staged


def _assert_engine_section_and_served_logits(folder, card, supports_onnx, splits):
    """The card's engine section times eager (the channels-last copy for a convolutional model, and onnx
    when exported, unless their outputs differ from eager's) at batch 1 and 128 and chooses by its rule;
    ``load`` serves that choice. The onnx and channels-last engines, whatever the card chose, give the
    eager form's logits within 1e-5 at batch 1 and 32."""
    from dynsearch.deploy.engine import choose

    engine = card["engine"]
    eager = dynsearch.load(folder, engine="eager")
    convolutional = any(isinstance(m, torch.nn.Conv2d) for m in eager.modules())
    candidates = ["eager", *(["channels_last"] if convolutional else []), *(["onnx"] if supports_onnx else [])]
    assert [n for n in candidates if n not in engine["left_out"]] == engine["candidates"]
    assert set(candidates) - set(engine["candidates"]) <= set(engine["left_out"])
    assert [s["batch_size"] for s in engine["batch_sizes"]] == [1, 128] and engine["repeats"] >= 6
    for sized in engine["batch_sizes"]:
        assert sorted(sized["figures"]) == sorted(engine["candidates"])  # card.json keys are written sorted
        assert all(f["latency_ms"] > 0 and f["throughput"] > 0 for f in sized["figures"].values())
        assert (sized["chosen"], sized["why"]) == choose(sized["figures"])
        assert engine["chosen"][str(sized["batch_size"])] == sized["chosen"]
    assert "## Serving engine" in (folder / "card.md").read_text()
    served = dynsearch.load(folder)
    assert served.engine == (engine["chosen"]["1"] if len(set(engine["chosen"].values())) == 1 else "by-batch-size")
    others = [name for name in ("channels_last", "onnx") if name in candidates]
    x = splits.val_x[:64]
    for name in others:
        other = dynsearch.load(folder, engine=name)
        assert other.engine == name
        with torch.no_grad():
            for size in (1, 32):
                for start in range(0, 64, size):
                    assert float((other(x[start : start + size]).logits - eager(x[start : start + size]).logits)
                                 .abs().max()) <= 1e-5, name


def _recipe_default(name):
    """A built-in recipe, its data splits and its default point's trial config (one epoch; on
    Fashion-MNIST over 2,000 training images: the tests export and reload the model, its accuracy
    does not matter, and a full epoch of 54,000 images took most of this file's time)."""
    recipe = load_recipe(name).with_overrides(epochs=1)
    if recipe.data.name == "fashion-mnist":
        recipe = recipe.with_overrides(data={"train_subset": 2000})
    splits = load_data(recipe.data)  # root and train_subset too (fashion-mnist)
    return recipe, splits, default_config(recipe, splits)


def test_every_registered_mechanism_is_exported_in_these_tests():
    covered = {_recipe_default(name)[2]["mechanism"] for name in RECIPES}
    covered |= {config["mechanism"] for config in TINY_CONFIGS}
    assert set(MECHANISMS) <= covered, "ship a recipe for each mechanism (or add a config to TINY_CONFIGS)"


RECIPES = _first_recipe_per_mechanism()  # one built-in recipe's default point per mechanism
CASES = [*(f"recipe-{name}" for name in RECIPES), *(f"tiny-{i}" for i in range(len(TINY_CONFIGS)))]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, digits):
    """Each case trained in a run directory of its own and exported (with ONNX where supported)."""
    cases = {}
    for case in CASES:
        kind, _, key = case.partition("-")
        recipe, splits, config = _recipe_default(key) if kind == "recipe" else (None, digits, TINY_CONFIGS[int(key)])
        root = tmp_path_factory.mktemp(case)
        run = make_run(root / "run", splits, [config], recipe=recipe)
        supports_onnx = build_model(config).onnx_form() is not None
        [folder] = dynsearch.export(run, root / "models", trials=[0], onnx=supports_onnx)
        cases[case] = dict(run=run, folder=folder, config=config, recipe=recipe or load_recipe(None),
                           splits=splits, supports_onnx=supports_onnx)
    return cases


def test_every_case_reloads_in_a_fresh_process_without_ray_or_optuna_and_reproduces(exported):
    results = reproduce_in_fresh_process([case["folder"] for case in exported.values()])
    for case, result in zip(exported.values(), results):
        recorded = json.loads((case["run"] / "trials" / "0" / "metrics.json").read_text())
        assert result["matches"] and (result["accuracy"], result["macs"]) == (recorded["accuracy"], recorded["macs"])


@pytest.mark.parametrize("name", CASES)
def test_each_mechanism_exports_a_complete_folder_with_card_and_onnx(exported, name):
    """One model per mechanism (each built-in recipe's default point) and the tiny configs."""
    case = exported[name]
    folder, config, recipe, splits = case["folder"], case["config"], case["recipe"], case["splits"]
    assert folder.name == "trial-0"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "card.md", "card.json"} <= names
    assert ("onnx" in names) == case["supports_onnx"]
    assert not [p for p in folder.rglob("*") if p.suffix in (".pt", ".pth", ".pkl", ".bin", ".ckpt")]
    recorded = json.loads((case["run"] / "trials" / "0" / "metrics.json").read_text())
    bundle = json.loads((folder / "config.json").read_text())
    assert bundle["export"]["format"] == FORMAT
    assert {k: v for k, v in bundle.items() if k not in ("export", "runtime_policy")} == config
    assert bundle["runtime_policy"] == build_model(config).runtime_policy()
    card = json.loads((folder / "card.json").read_text())
    assert card["objectives"] == {"accuracy": recorded["accuracy"], "macs": recorded["macs"]}
    assert card["data"]["name"] == recipe.data.name and card["recipe"]["name"] == recipe.name
    assert card["versions"]["torch"] == torch.__version__
    assert f"Mechanism `{config['mechanism']}`" in (folder / "card.md").read_text()
    shift = card["shift"]  # cost under shifted inputs: 4 corruptions x 3 severities beside the clean figures
    assert len(shift["shifted"]) == 12 and shift["clean"]["accuracy"] == recorded["accuracy"]
    assert "## Cost under shifted inputs" in (folder / "card.md").read_text()
    _assert_engine_section_and_served_logits(folder, card, case["supports_onnx"], splits)
    if case["supports_onnx"]:
        assert card["versions"]["onnxruntime"] and card["onnx"]["parity"]["max_abs_diff"] <= 1e-4
        assert onnx_parity(folder, splits) <= 1e-4
    if case["supports_onnx"]:
        staged = assert_staged_onnx_matches_pytorch(folder, splits)
        assert np.mean([d.macs for d in staged]) == pytest.approx(card["objectives"]["macs"], rel=1e-12)
        if "exit_histogram" in card["measured"]["stats"]:
            histogram = card["measured"]["stats"]["exit_histogram"]
            assert len({d.exit_stage for d in staged}) == sum(1 for share in histogram if share > 0)


def test_pareto_is_the_default_and_failed_trials_are_not_on_it(tmp_path, one_good_one_failed):
    paths = dynsearch.export(one_good_one_failed, tmp_path / "models")
    assert [p.name for p in paths] == ["trial-0"]
    assert not (paths[0] / "onnx").exists()
    assert json.loads((paths[0] / "card.json").read_text())["onnx"] is None


@pytest.fixture
def no_onnx_mechanism():
    """A real early-exit model whose mechanism declares no ONNX form."""

    @register_mechanism("test-exits-no-onnx", family="early-exit", paper="test only")
    class NoOnnx(EarlyExitNet):
        def onnx_form(self):
            return None

    yield "test-exits-no-onnx"
    MECHANISMS.pop("test-exits-no-onnx")


def test_a_mechanism_without_onnx_says_so_in_the_card_and_refuses_format_onnx(tmp_path, digits, no_onnx_mechanism):
    config = {**TINY_CONFIGS[0], "mechanism": no_onnx_mechanism}
    run = make_run(tmp_path / "run", digits, [config])
    with pytest.raises(UserError, match="ONNX not supported for mechanism 'test-exits-no-onnx'"):
        dynsearch.export(run, tmp_path / "models", onnx=True)
    assert not (tmp_path / "models").exists()
    [folder] = dynsearch.export(run, tmp_path / "models")
    card = json.loads((folder / "card.json").read_text())
    assert card["forms"]["onnx"] == "ONNX not supported for 'test-exits-no-onnx'"
    assert "ONNX not supported" in (folder / "card.md").read_text()
    assert reproduce(folder)["matches"]  # in this process: the test mechanism is registered only here


def _export_error(capsys, *args):
    code = cli.main(["export", *map(str, args)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def _damage(weights, how):
    data = weights.read_bytes()
    if how == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif how == "tampered":  # one weight's lowest byte changed: still a valid safetensors file
        weights.write_bytes(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])
    elif how == "pickle":
        torch.save(build_model(TINY_CONFIGS[0]).state_dict(), weights)


@pytest.mark.parametrize("how, message", [("truncated", "safetensors"), ("tampered", "sha256"),
                                          ("pickle", "pickle")])
def test_damaged_weights_in_the_run_are_refused_and_nothing_is_written(tmp_path, one_good_one_failed, capsys,
                                                                       how, message):
    run = tmp_path / "run"
    shutil.copytree(one_good_one_failed, run)
    _damage(run / "trials" / "0" / "model.safetensors", how)
    out = tmp_path / "models"
    err = _export_error(capsys, run, "--out", out, "--format", "onnx")
    assert message in err and "model.safetensors" in err
    assert not out.exists()


def test_unknown_failed_and_missing_are_one_line_usage_errors(tmp_path, one_good_one_failed, capsys):
    out = tmp_path / "models"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    assert "no trial 7 (trials: 0-1)" in _export_error(capsys, one_good_one_failed, "--trials", "7", "--out", out)
    err = _export_error(capsys, one_good_one_failed, "--trials", "0,1", "--out", out)
    assert "trial 1: is FAIL (NonFiniteError: loss nan)" in err
    assert "not found" in _export_error(capsys, tmp_path / "nothing", "--out", out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # nothing half-written, no staging left
    assert cli.main(["export", str(one_good_one_failed), "--trials", "0", "--out", str(out)]) == 0
    assert "already exists" in _export_error(capsys, one_good_one_failed, "--trials", "0", "--out", out)
    # argparse errors: also one line, exit 2
    for args in (["--trials", "3,x", "--out", "o"], ["--trials", "1", "--pareto", "--out", "o"],
                 ["--format", "tflite", "--out", "o"], []):
        with pytest.raises(SystemExit) as exited:
            cli.main(["export", str(one_good_one_failed), *args])
        assert exited.value.code == 2


@pytest.mark.parametrize("how, message", [("truncated", "safetensors"), ("tampered", "sha256"), ("pickle", "pickle")])
def test_load_refuses_damaged_model_folders(tmp_path, one_good_one_failed, how, message):
    [folder] = dynsearch.export(one_good_one_failed, tmp_path / "models", trials=[0])
    assert isinstance(dynsearch.load(folder, engine="eager"), EarlyExitNet)
    _damage(folder / "model.safetensors", how)
    with pytest.raises(UserError, match=message) as raised:
        dynsearch.load(folder)
    assert "\n" not in str(raised.value)


def test_load_of_a_missing_or_foreign_folder_is_a_user_error(tmp_path, one_good_one_failed):
    with pytest.raises(UserError, match="not found"):
        dynsearch.load(tmp_path / "nothing")
    with pytest.raises(UserError, match="not a dynsearch-model/1 model config"):
        dynsearch.load(one_good_one_failed / "trials" / "0")  # a trial folder, not an export


@pytest.mark.parametrize("out_exists", [False, True])
def test_a_failure_while_writing_leaves_nothing_behind(tmp_path, one_good_one_failed, monkeypatch, out_exists):
    """An ONNX graph that does not match PyTorch (a broken onnx_form) is an internal error: no folder remains."""
    from torch import nn

    from dynsearch.dynamic.base import OnnxForm, OnnxPart

    class Noisy(nn.Module):  # random output: onnxruntime cannot match it
        def forward(self, x):
            return (x.flatten(1) + torch.rand_like(x.flatten(1)),)

    monkeypatch.setattr(EarlyExitNet, "onnx_form", lambda self: OnnxForm("broken", [OnnxPart("p", Noisy(), ("y",))]))
    out = tmp_path / "models"
    if out_exists:
        out.mkdir()
        (out / "keep.txt").write_text("user file")
    with pytest.raises(RuntimeError, match="onnxruntime differs from PyTorch"):
        dynsearch.export(one_good_one_failed, out, onnx=True)
    if out_exists:  # the staging folder is gone, the user's file kept
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    else:
        assert not out.exists()


def _docs_onnx_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DEPLOYMENT_PAGE.read_text(), flags=re.S)
    [block] = [b for b in blocks if "StagedRuntime" in b]
    return block


@pytest.mark.slow
def test_search_export_pareto_onnx_reload_and_docs_example(tmp_path, tiny_recipe, capsys):
    run, out = tmp_path / "run", tmp_path / "models"
    search = subprocess.run([sys.executable, "-m", "dynsearch.cli", "search", str(tiny_recipe), "--trials", "3",
                             "--epochs", "2", "--out", str(run)], capture_output=True, text=True, timeout=600)
    assert search.returncode == 0, search.stderr[-3000:]
    export = subprocess.run([sys.executable, "-m", "dynsearch.cli", "export", str(run), "--pareto", "--out", str(out),
                             "--format", "onnx"], capture_output=True, text=True, timeout=600)
    assert export.returncode == 0, export.stderr[-3000:]
    front = dynsearch.pareto(run)
    folders = [out / f"trial-{item['trial']}" for item in front]
    assert sorted(p.name for p in out.iterdir()) == sorted(f.name for f in folders)
    for item, result in zip(front, reproduce_in_fresh_process(folders)):
        assert result["matches"] and (result["accuracy"], result["macs"]) == (item["accuracy"], item["macs"])
    splits = load_splits("digits", 0, 0.2, 0.2)
    for folder in folders:
        assert onnx_parity(folder, splits) <= 1e-4
        assert_staged_onnx_matches_pytorch(folder, splits, count=50)

    # dynsearch bench reads an exported folder like a trial folder (config.json is the trial config plus policy)
    assert cli.main(["bench", str(folders[0]), "--inputs", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dynamic"]["macs"] > 0

    # The docs' staged early-exit example (docs/deployment.md) runs as written beside the exported
    # models/ folder and takes PyTorch's exits; it reads the first folder by name.
    example = _docs_onnx_example()
    assert 'Path("models")' in example and out == tmp_path / "models"
    proc = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = [tuple(map(int, line.split())) for line in proc.stdout.split("\n") if line.strip()]
    from sklearn.datasets import load_digits

    digits = load_digits()
    model = dynsearch.load(sorted(out.glob("trial-*"))[0], engine="eager")  # its trace: the exit taken
    assert len(printed) == 5
    with torch.no_grad():
        for (label, predicted, stage), image, target in zip(printed, digits.images, digits.target):
            outputs = model(torch.from_numpy((image / 16.0).astype(np.float32))[None, None])
            assert (label, predicted, stage) == (target, int(outputs.logits.argmax()),
                                                 int(outputs.trace.records["exit_index"][0]))


def test_int8_export_records_float_and_int8_figures_measured_with_onnxruntime(tmp_path, one_good_one_failed, digits):
    [folder] = dynsearch.export(one_good_one_failed, tmp_path / "models", trials=[0], quantize="int8")
    card = json.loads((folder / "card.json").read_text())
    int8, float_ = card["int8"], card["int8"]["float"]
    assert card["onnx"] and len(int8["files"]) == len(card["onnx"]["graphs"])
    assert all((folder / f).is_file() for f in int8["files"])
    # The float staged graphs at batch 1 reproduce the trial's recorded validation figures...
    assert (float_["val_accuracy"], float_["val_macs"]) == pytest.approx((card["objectives"]["accuracy"],
                                                                          card["objectives"]["macs"]), rel=1e-12)
    # ...and the int8 graphs hold real int8 weights and cost what their own decisions ran.
    import onnx

    graph = onnx.load(str(folder / int8["files"][0])).graph
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)
    stage_macs = {g["macs"] for g in card["onnx"]["graphs"]}
    assert min(stage_macs) <= int8["int8"]["val_macs"] <= sum(stage_macs)
    # Tolerance: 3 points = 11 of the 360 test images; a 1-epoch tiny net has low margins, so int8
    # rounding may flip a few of them (the 1-point target is the benchmark's, on a trained model).
    assert abs(int8["int8"]["test_accuracy"] - float_["test_accuracy"]) <= 0.03
    assert int8["int8"]["latency_ms"] > 0 and float_["latency_ms"] > 0
    # Batched as well (where int8 may pay): both throughputs, their ratio, and the sizes where int8 was faster.
    batched = int8["batched"]
    assert batched["batch_size"] == 128 and batched["inputs"] == 256
    assert batched["int8_over_float"] == pytest.approx(
        batched["throughput"]["int8"] / batched["throughput"]["float"], rel=1e-3)
    assert set(int8["pays_at_batch_sizes"]) <= {1, 128} and int8["pays_undetermined_at"] == []  # 7 passes
    for size, figures in ((1, int8["batch1"]), (128, batched)):
        low, high = figures["int8_speedup_interval"]
        assert low <= figures["int8_speedup"] <= high
        assert (size in int8["pays_at_batch_sizes"]) == (low > 1)  # pays only where the interval is above 1
    text = (folder / "card.md").read_text()
    assert "## int8 (onnxruntime)" in text and "| int8 |" in text and "| float |" in text
    assert "Batched (128 inputs per graph call" in text and "int8 pays (95% interval of its speed-up wholly above 1)" in text


def test_a_bad_quantize_value_is_a_one_line_usage_error(tmp_path, one_good_one_failed, capsys):
    out = tmp_path / "models"
    with pytest.raises(SystemExit) as exited:
        cli.main(["export", str(one_good_one_failed), "--out", str(out), "--quantize", "int4"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and len(err.strip().splitlines()) == 1 and "--quantize" in err, err
    with pytest.raises(UserError, match="quantize 'fp16': unknown; use one of") as raised:
        dynsearch.export(one_good_one_failed, out, quantize="fp16")
    assert "\n" not in str(raised.value) and not out.exists()
