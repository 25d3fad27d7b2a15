"""Searched backbones (recipe ``backbone.search``): validation, the backbone asked first by every
space, each trial's own static cost, the report and CLI, and searches end to end (real Ray, Optuna,
Lightning) from search to front, export and load: built-in and user backbones."""
import json
import subprocess
import sys

import optuna
import pytest
import torch
import yaml

import dynsearch
from dynsearch import cli
from dynsearch.data import load_data
from dynsearch.dynamic import build_model
from dynsearch.errors import UserError
from dynsearch.models.kinds import describe_backbone
from dynsearch.recipe import builtin_recipes, load_recipe, parse_recipe
from dynsearch.run.report import RunSummary, TrialPoint
from dynsearch.spaces import backbone_defaults, check_space, default_config, get_space, num_stages

optuna.logging.set_verbosity(optuna.logging.WARNING)

CNN_SEARCH = {"stages": [2, 3], "width": {"int": [4, 32], "log": True}, "depth": [1, 2], "kernel": [3, 5]}


def _recipe(backbone, space="exits", **fields):
    return parse_recipe({"backbone": backbone, "space": space, "wandb": {"mode": "off"}, **fields})


def _sampled(recipe, count=12, seed=0):
    """``count`` trial configs of the recipe's space, from a random sampler (a real in-memory study)."""
    data = load_data(recipe.data)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=seed))
    configs = []
    for _ in range(count):
        trial = study.ask()
        configs.append((trial, get_space(recipe.space).define(trial, recipe, data)))
    return configs


# -- validation: one line naming the field, exit 2 ----------------------------------------------
BAD = [
    ({"kind": "cnn", "search": {"heads": [1, 2]}}, "backbone.search.heads: not a searchable dimension of kind cnn"),
    ({"kind": "cnn", "search": {"width": [64, 8]}}, "backbone.search.width: low 64 is above high 8"),
    ({"kind": "cnn", "search": {"width": [8, 16, 32]}}, "backbone.search.width: a list is a range [low, high]"),
    ({"kind": "cnn", "search": {"kernel": [2, 5]}}, "backbone.search.kernel: kernel sizes are odd"),
    ({"kind": "cnn", "search": {"kernel": {"choices": [3, 4]}}}, "backbone.search.kernel: kernel sizes must be odd"),
    ({"kind": "cnn", "search": {"stages": [1, 12]}}, "backbone.search.stages: values must lie in [1, 8]"),
    ({"kind": "cnn", "search": {"depth": {"float": [1, 2]}}}, "backbone.search.depth: takes integers"),
    ({"kind": "cnn", "search": {"width": {"int": [0, 8], "log": True}}}, "a log range needs low > 0"),
    ({"kind": "cnn", "search": {"width": {"int": [4, 8], "log": True, "step": 2}}}, "log and step cannot be combined"),
    ({"kind": "cnn", "search": {"width": "wide"}}, "backbone.search.width: use [low, high]"),
    ({"kind": "cnn", "search": {}}, "backbone.search: give at least one dimension"),
    ({"kind": "mlp", "search": {"dropout": [0.0, 1.5]}}, "backbone.search.dropout: values must lie in [0.0, 0.9]"),
    ({"kind": "transformer", "widths": [32, 32], "heads": 2, "search": {"heads": {"choices": [2, 4]},
                                                                         "width": {"choices": [16, 18]}}},
     "every transformer width must be divisible by every heads value"),
    ({"kind": "cnn", "kernel": 4}, "field 'backbone.kernel'"),
    ({"kind": "cnn", "search": {"width": {"choices": [8, 8]}}}, "distinct values"),
]


@pytest.mark.parametrize("backbone, expected", BAD, ids=[e for _, e in BAD])
def test_a_bad_search_section_is_one_line_naming_the_field(tmp_path, capsys, backbone, expected):
    data = yaml.safe_load(builtin_recipes()["digits-exits"].read_text())
    data["backbone"] = backbone
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert cli.main(["train", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert expected in err, err
    assert not (tmp_path / "out").exists()


def test_a_user_search_names_keyword_arguments(tmp_path):
    (tmp_path / "net.py").write_text("from torch import nn\ndef net(width=8):\n"
                                     "    return nn.ModuleList([nn.Linear(64, width), nn.Linear(width, 10)])\n")
    with pytest.raises(UserError, match=r"backbone.search.width.choices: give a non-empty list"):
        parse_recipe({"backbone": {"kind": "user", "callable": "net:net", "search": {"width": {"choices": []}}}},
                     base_dir=tmp_path)
    with pytest.raises(UserError, match=r"'not-a-name' is not a keyword argument name"):
        parse_recipe({"backbone": {"kind": "user", "callable": "net:net", "search": {"not-a-name": [1, 2]}}},
                     base_dir=tmp_path)
    recipe = parse_recipe({"backbone": {"kind": "user", "callable": "net:net",
                                        "search": {"width": {"int": [4, 16]}, "p": {"float": [0.0, 0.5]},
                                                   "act": {"choices": ["relu", "gelu"]}}}}, base_dir=tmp_path)
    assert recipe.backbone.search == {"width": {"int": [4, 16], "step": 1, "log": False},
                                      "p": {"float": [0.0, 0.5], "step": None, "log": False},
                                      "act": {"choices": ["relu", "gelu"]}}


def test_the_canonical_form_reparses_to_itself_and_the_shorthands_mean_what_the_readme_says():
    recipe = _recipe({"kind": "cnn", "search": CNN_SEARCH})
    assert recipe.backbone.search["kernel"] == {"int": [3, 5], "step": 2, "log": False}  # 3 or 5
    again = parse_recipe(recipe.model_dump())
    assert again.backbone.search == recipe.backbone.search
    transformer = _recipe({"kind": "transformer", "widths": [32] * 3, "heads": 2,
                           "search": {"heads": {"choices": [2, 4]}, "width": [16, 64]}}, space="depth")
    assert transformer.backbone.search["width"] == {"int": [16, 64], "step": 4, "log": False}


# -- the backbone asked first; every space over the backbone it sampled -----------------------------
def test_without_a_search_section_nothing_more_is_asked_and_configs_are_as_before(digits):
    recipe = _recipe({"kind": "cnn", "widths": [8, 32, 64], "depth": 1})
    assert backbone_defaults(recipe) == {}
    for trial, config in _sampled(recipe, count=3):
        assert not any(name.startswith("backbone_") for name in trial.params)
        assert config["backbone"] == {"kind": "cnn", "widths": [8, 32, 64], "depth": 1, "heads": 2}


def test_exits_are_placed_over_the_stages_the_sampled_backbone_has():
    recipe = _recipe({"kind": "cnn", "widths": [8, 16, 32], "search": {**CNN_SEARCH, "stages": [2, 4]}})
    seen_stages, seen_kernels = set(), set()
    for trial, config in _sampled(recipe, count=16):
        backbone, stages = config["backbone"], trial.params["backbone_stages"]
        assert len(backbone["widths"]) == stages == num_stages(backbone)
        assert backbone["widths"] == [trial.params[f"backbone_width_{i}"] for i in range(stages)]
        assert not any(f"backbone_width_{i}" in trial.params for i in range(stages, 8))  # conditional, stable names
        assert {f"exit_after_stage_{i}" for i in range(stages - 1)} <= set(trial.params)
        assert f"exit_after_stage_{stages - 1}" not in trial.params
        assert all(0 <= s < stages - 1 for s in config["exits"]["stages"])
        assert list(trial.params)[:2] == ["backbone_stages", "backbone_width_0"]  # the backbone first
        seen_stages.add(stages)
        seen_kernels.add(backbone.get("kernel", 3))
        build_model(config)  # every sampled point builds
    assert seen_stages == {2, 3, 4} and seen_kernels == {3, 5}


@pytest.mark.parametrize("backbone, space, check", [
    ({"kind": "resnet", "widths": [8, 16], "depth": 2, "search": {"stages": [2, 3], "depth": [1, 3],
                                                               "width": {"choices": [8, 16]}, "kernel": [3, 5]}},
     "gates", "gates"),
    ({"kind": "resnet", "widths": [8, 16], "depth": 2, "search": {"stages": [2, 3], "depth": [1, 2]}},
     "cross_family", "any"),
    ({"kind": "cnn", "widths": [8, 16], "search": {"stages": [2, 3], "depth": [1, 2], "kernel": [3, 5]}},
     "experts", "condconv"),
    ({"kind": "mlp", "widths": [32, 32], "search": {"stages": [1, 3], "width": [8, 64], "dropout": [0.0, 0.3]}},
     "experts", "moe"),
    ({"kind": "cnn", "widths": [8, 16, 32], "search": {"stages": [2, 4], "width": [4, 16]}}, "exit_policies", "exits"),
    ({"kind": "cnn", "widths": [8, 16, 32], "search": {"stages": [1, 3], "width": [4, 16], "kernel": [3, 5]}},
     "static", "static"),
])
def test_every_mechanism_space_composes_with_the_backbone_space(backbone, space, check):
    recipe = _recipe(backbone, space=space)
    from dynsearch.search_spaces.gates import gateable_blocks

    backbones = set()
    for trial, config in _sampled(recipe, count=10):
        bb = config["backbone"]
        backbones.add(json.dumps(bb, sort_keys=True))
        blocks = len(bb["widths"]) * bb["depth"]
        if config["mechanism"] in ("aig", "skipnet"):
            assert set(config["gates"]["blocks"]) <= set(gateable_blocks(bb))
            assert all(f"gate_block_{k}" in trial.params for k in gateable_blocks(bb))
        elif config["mechanism"] == "condconv":
            assert all(0 <= k < blocks for k in config["condconv"]["layers"])
            assert {f"condconv_block_{k}" for k in range(blocks)} <= set(trial.params)
        elif config["mechanism"] == "moe":
            assert {f"expert_layer_{k}" for k in range(blocks)} <= set(trial.params)
            assert f"expert_layer_{blocks}" not in trial.params
        elif check == "static":
            assert config["exits"]["stages"] == []
        model = build_model(config)
        if check == "static":
            assert model.macs_full() == sum(model.component_macs()[c] for c in model.static_components())
    assert len(backbones) > 3  # the backbone really is searched


def test_transformer_and_recurrent_backbones_are_searched(digits):
    seq = _recipe({"kind": "transformer", "widths": [16] * 3, "heads": 2,
                   "search": {"stages": [2, 4], "width": [8, 32], "heads": {"choices": [1, 2, 4]},
                              "ffn_width": {"choices": [16, 64]}}}, space="depth", data={"name": "marked-majority"})
    for trial, config in _sampled(seq, count=8):
        bb = config["backbone"]
        assert len(set(bb["widths"])) == 1 and bb["widths"][0] % bb["heads"] == 0
        assert bb["ffn_width"] == trial.params["backbone_ffn_width"]
        model = build_model(config)
        assert model.stages[0][0].ffn[0].out_features == bb["ffn_width"]
    halting = _recipe({"kind": "recurrent", "widths": [64], "search": {"width": {"choices": [16, 48]}}},
                      space="halting", data={"name": "parity"})
    for trial, config in _sampled(halting, count=6):
        assert "hidden_width" not in trial.params  # the backbone's width, not the space's old parameter
        assert config["backbone"]["widths"] == [trial.params["backbone_width"]]
        assert build_model(config).hidden == trial.params["backbone_width"]


def test_the_default_point_is_the_fixed_backbone_moved_into_the_ranges(digits):
    recipe = _recipe({"kind": "cnn", "widths": [8, 32, 64], "depth": 1, "kernel": 3,
                      "search": {"stages": [2, 3], "width": [16, 48], "depth": [2, 3], "kernel": [5, 7]}})
    config = default_config(recipe, digits)
    assert config["backbone"] == {"kind": "cnn", "widths": [16, 32, 48], "depth": 2, "heads": 2, "kernel": 5}
    shifted = recipe.with_overrides(defaults={"backbone_stages": 2, "backbone_width_1": 20})
    assert default_config(shifted, digits)["backbone"]["widths"] == [16, 20]
    with pytest.raises(UserError, match="defaults.backbone_width_0"):
        default_config(recipe.with_overrides(defaults={"backbone_width_0": 99}), digits)


def test_a_config_written_before_kernel_dropout_and_ffn_width_builds_the_same_model():
    from conftest import exits_config

    old = exits_config()
    new = {**old, "backbone": {**old["backbone"], "kernel": 3}}
    a, b = build_model(old), build_model(new)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert [t.shape for t in a.state_dict().values()] == [t.shape for t in b.state_dict().values()]
    mlp = {**old, "input_shape": [64], "backbone": {"kind": "mlp", "widths": [16, 16], "depth": 1}}
    dropped = {**mlp, "backbone": {**mlp["backbone"], "dropout": 0.2}}
    assert build_model(mlp).state_dict().keys() == build_model(dropped).state_dict().keys()
    assert any(isinstance(m, torch.nn.Dropout) for m in build_model(dropped).modules())


def test_macs_full_is_each_trials_own_backbones_static_path():
    recipe = _recipe({"kind": "cnn", "widths": [8, 16, 32], "search": CNN_SEARCH})
    costs = {}
    for _, config in _sampled(recipe, count=8):
        model = build_model(config)
        key = json.dumps(config["backbone"], sort_keys=True)
        static = {**config, "exits": {**config["exits"], "stages": []}}
        assert model.macs_full() == build_model(static).macs_full()  # the heads are not the static path
        costs[key] = model.macs_full()
    assert len(set(costs.values())) == len(costs) > 3  # different backbones, different static costs


def test_a_space_with_only_backbone_parameters_is_searchable(digits):
    recipe = _recipe({"kind": "cnn", "widths": [8, 16], "search": {"width": [4, 8]}}, space="static")
    check_space(recipe, digits)  # asks backbone_width_0/1 and lr: something to search


# -- report and CLI --------------------------------------------------------------------------------
def test_the_backbone_column_and_the_static_front_beside_the_dynamic_one(tmp_path):
    assert describe_backbone({"kind": "cnn", "widths": [16, 32], "depth": 1, "heads": 2}) == "cnn 16-32 d1 k3"
    assert describe_backbone({"kind": "mlp", "widths": [128, 64], "depth": 2, "dropout": 0.1}) == "mlp 128-64 d2 p0.1"
    assert describe_backbone({"kind": "transformer", "widths": [32] * 4, "depth": 1, "heads": 2}) == \
        "transformer 32x4 d1 h2 f64"
    assert describe_backbone({"kind": "user", "callable": "m:net", "kwargs": {"hidden": 8}}) == "net hidden=8"

    def point(number, accuracy, macs, macs_full):
        return TrialPoint(number, "COMPLETE", {"accuracy": accuracy, "macs": macs, "macs_full": macs_full})

    run = RunSummary(tmp_path, ["accuracy", "macs"], [
        point(0, 0.90, 100, 100), point(1, 0.95, 300, 300), point(2, 0.93, 400, 400),  # static; 2 is dominated
        point(3, 0.94, 150, 300), point(4, 0.80, 50, 100), point(5, 0.70, 200, 250),   # dynamic; 5 dominated
    ])
    assert [t.number for t in run.sub_front(True)] == [0, 1]
    assert [t.number for t in run.sub_front(False)] == [4, 3]
    assert run.full_costs() == []  # four backbones' costs: no single macs_full line
    assert RunSummary(tmp_path, ["accuracy", "macs"], run.trials[:1] + run.trials[4:5]).full_costs() == [100]


# -- end to end: real Ray, Optuna, Lightning ------------------------------------------------------
def _cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "dynsearch.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


SEARCHED_RECIPE = """\
name: tiny-searched
data: {name: digits, split_seed: 0}
backbone:
  kind: cnn
  widths: [4, 8]
  depth: 1
  search: {stages: [2, 3], width: {int: [4, 12]}, depth: [1, 2], kernel: [3, 5]}
space: exits
trials: 4
epochs: 1
sampler: {name: random}
cpus_per_trial: 1
concurrent_trials: 2
wandb: {mode: "off"}
"""


@pytest.mark.slow
def test_a_searched_backbone_recipe_end_to_end(tmp_path):
    recipe_path, run, out = tmp_path / "searched.yaml", tmp_path / "run", tmp_path / "models"
    recipe_path.write_text(SEARCHED_RECIPE)
    proc = _cli("search", str(recipe_path), "--out", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "backbone" in proc.stdout and "cnn " in proc.stdout  # the table's backbone column

    from dynsearch.run.study import open_existing

    trials = [t for t in open_existing(run).trials if t.state.name == "COMPLETE"]
    assert len(trials) == 4
    backbones = {}
    for t in trials:
        config = json.loads((run / "trials" / str(t.number) / "config.json").read_text())
        metrics = json.loads((run / "trials" / str(t.number) / "metrics.json").read_text())
        assert len(config["backbone"]["widths"]) == t.params["backbone_stages"]
        assert metrics["macs_full"] == build_model(config).macs_full()  # its own backbone's static path
        backbones[json.dumps(config["backbone"], sort_keys=True)] = metrics["macs_full"]
    assert len(backbones) > 1 and len(set(backbones.values())) == len(backbones)

    proc = _cli("export", str(run), "--trials", ",".join(str(t.number) for t in trials), "--out", str(out),
                "--format", "onnx")
    assert proc.returncode == 0, proc.stderr[-3000:]
    from test_bundle import assert_staged_onnx_matches_pytorch, onnx_parity, reproduce_in_fresh_process

    folders = [out / f"trial-{t.number}" for t in trials]
    for folder, result in zip(folders, reproduce_in_fresh_process(folders)):
        assert result["matches"], folder  # rebuilt from config.json alone, in a process without Ray or Optuna
    from dynsearch.data import load_splits

    splits = load_splits("digits", 0, 0.2, 0.2)
    for t, folder in zip(trials, folders):
        model = dynsearch.load(folder, engine="eager")
        trial_config = json.loads((run / "trials" / str(t.number) / "config.json").read_text())
        assert model.config["backbone"] == trial_config["backbone"]
        assert onnx_parity(folder, splits) <= 1e-4
        assert_staged_onnx_matches_pytorch(folder, splits, count=20)
    front = dynsearch.pareto(run)
    assert all("backbone" in item["config"] for item in front)
    assert dynsearch.pareto(run, operating_points=True)  # the knob sweep of searched backbones
    assert (run / "pareto.png").is_file() and (run / "pareto.html").is_file()

    # Resume refuses a changed backbone search space, like any recipe change.
    recipe_path.write_text(SEARCHED_RECIPE.replace("depth: [1, 2]", "depth: [1, 3]"))
    proc = _cli("search", str(recipe_path), "--out", str(run))
    assert proc.returncode == 2
    assert "changed: backbone" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


USER_MODULE = '''
from torch import nn


def mlp(width=16, stages=3, act="relu"):
    """``stages`` stages of one Linear each on digits' 8x8 images (flattened by the first)."""
    make = {"relu": nn.ReLU, "tanh": nn.Tanh}[act]
    first = nn.Sequential(nn.Flatten(), nn.Linear(64, width), make())
    return nn.ModuleList([first] + [nn.Sequential(nn.Linear(width, width), make()) for _ in range(stages - 1)])
'''


@pytest.mark.slow
def test_a_user_backbone_with_searched_keyword_arguments_end_to_end(tmp_path):
    (tmp_path / "my_mlp.py").write_text(USER_MODULE)
    recipe = {
        "name": "user-searched", "data": {"name": "digits"},
        "backbone": {"kind": "user", "callable": "my_mlp:mlp", "kwargs": {"width": 16},
                     "search": {"width": {"int": [4, 32], "log": True}, "stages": {"choices": [2, 3, 4]},
                                "act": {"choices": ["relu", "tanh"]}}},
        "space": "exits", "trials": 4, "epochs": 1, "sampler": {"name": "random"}, "concurrent_trials": 2,
        "wandb": {"mode": "off"},
    }
    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert load_recipe(path).backbone.search["act"] == {"choices": ["relu", "tanh"]}
    run = tmp_path / "run"
    proc = _cli("search", str(path), "--out", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    front = dynsearch.pareto(run)
    seen = set()
    for trial_dir in sorted((run / "trials").iterdir()):
        config = json.loads((trial_dir / "config.json").read_text())
        kwargs = config["backbone"]["kwargs"]
        assert set(kwargs) == {"width", "stages", "act"}
        assert all(0 <= s < kwargs["stages"] - 1 for s in config["exits"]["stages"])  # exits over its stages
        seen.add(json.dumps(kwargs, sort_keys=True))
    assert len(seen) > 1
    folders = dynsearch.export(run, tmp_path / "models")
    assert len(folders) == len(front)
    for item, folder in zip(front, folders):
        model = dynsearch.load(folder)
        assert model.config["backbone"]["kwargs"] == item["config"]["backbone"]["kwargs"]
        assert len(model.stages) == item["config"]["backbone"]["kwargs"]["stages"]


@pytest.mark.parametrize("name", sorted(builtin_recipes()))
def test_every_shipped_recipe_states_its_backbone_ranges_and_its_points_build(name):
    path = builtin_recipes()[name]
    recipe = load_recipe(path)
    if recipe.backbone.search is None:
        assert "Backbone fixed" in path.read_text()  # said so, with the reason, in the recipe
        return
    if recipe.data.name == "fashion-mnist":
        pytest.skip("fashion-mnist's files are read only by its own tests")
    for trial, config in _sampled(recipe, count=4, seed=1):
        assert next(iter(trial.params)).startswith("backbone_")  # the backbone is asked first
        build_model(config)
