import subprocess
import sys

import pytest
import torch
import yaml

from dynsearch import cli
from dynsearch.errors import UserError
from dynsearch.recipe import builtin_recipes, load_recipe, parse_recipe

BASE = yaml.safe_load(open(builtin_recipes()["digits-exits"]).read())


def test_builtin_default_recipe_is_valid():
    recipe = load_recipe(None)
    assert recipe.name == "digits-exits"
    assert recipe.metric_names == ["accuracy", "macs"]
    assert recipe.metric_modes == ["max", "min"]
    assert recipe.sampler.name == "nsga2"
    # NSGA-II population scaled to the budget: at most a third of the trials.
    assert recipe.population_size() <= recipe.trials // 3


def test_objective_direction_defaults_to_its_natural_one():
    recipe = parse_recipe({**BASE, "objectives": [{"name": "accuracy"}, {"name": "params"}]})
    assert recipe.metric_modes == ["max", "min"]


def test_overrides_are_validated_and_keep_nested_settings():
    recipe = load_recipe(None).with_overrides(trials=9, sampler={"name": "tpe"})
    assert recipe.trials == 9 and recipe.sampler.name == "tpe"
    with pytest.raises(UserError, match="trials"):
        load_recipe(None).with_overrides(trials=0)


def _with(**changes):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        target = data
        for key in parents:
            target = target[key]
        if value is _DELETE:
            del target[leaf]
        else:
            target[leaf] = value
    return data


_DELETE = object()

INVALID = [
    (_with(colour="blue"), "unknown field 'colour'"),
    (_with(data__name="cifar"), "field 'data.name'"),
    (_with(data__shuffle=True), "unknown field 'data.shuffle'"),
    (_with(backbone__kind="vit"), "field 'backbone.kind'"),
    (_with(backbone__widths=[]), "field 'backbone.widths'"),
    (_with(backbone__widths=[8, -1]), "field 'backbone.widths'"),
    (_with(backbone__depth=0), "field 'backbone.depth'"),
    (_with(space="nope"), "field 'space'"),
    (_with(objectives=[{"name": "latency"}]), "field 'objectives.0.name'"),
    (_with(objectives=[{"name": "accuracy", "direction": "min"}]), "field 'objectives.0'"),
    (_with(objectives=[{"name": "macs"}, {"name": "macs"}]), "field 'objectives'"),
    (_with(objectives=[]), "field 'objectives'"),
    (_with(trials=0), "field 'trials'"),
    (_with(trials="many"), "field 'trials'"),
    (_with(epochs=-3), "field 'epochs'"),
    (_with(lr_schedule="step"), "field 'lr_schedule'"),
    (_with(augment=["rotate"]), "field 'augment.0'"),
    (_with(channels_last="sometimes"), "field 'channels_last'"),
    (_with(backbone__classifier="attention"), "field 'backbone.classifier'"),
    (_with(backbone__kind="mlp", backbone__classifier="flatten"), "backbone.classifier: flatten is for kind cnn or resnet"),
    (_with(sampler__name="grid"), "field 'sampler.name'"),
    (_with(sampler__population_size=50), "population_size"),
    (_with(cpus_per_trial=0), "field 'cpus_per_trial'"),
    (_with(concurrent_trials=0), "field 'concurrent_trials'"),
]


@pytest.mark.parametrize("data, expected", INVALID, ids=[e for _, e in INVALID])
def test_invalid_recipe_gives_one_line_naming_the_field(tmp_path, capsys, data, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    out_dir = tmp_path / "out"
    code = cli.main(["train", str(path), "--out", str(out_dir)])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert expected in lines[0]
    assert "Traceback" not in captured.err
    assert not out_dir.exists()  # nothing written


@pytest.mark.parametrize(
    "text, expected",
    [
        ("trials: [1, 2\n", "not valid YAML at line"),
        ("- just\n- a list\n", "must be a YAML mapping"),
        ("", "must be a YAML mapping"),
        ("defaults: {no_such_knob: 1}\n", "unknown parameter(s) ['no_such_knob']"),
        ("defaults: {exit_threshold: 7.0}\n", "field 'defaults.exit_threshold'"),
    ],
)
def test_malformed_recipe_files(tmp_path, capsys, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert cli.main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and expected in err


def test_missing_recipe_file(capsys):
    assert cli.main(["train", "/no/such/recipe.yaml"]) == 2
    err = capsys.readouterr().err
    assert "no such file or built-in recipe" in err and "digits-exits" in err


def test_cli_exit_code_and_no_traceback_in_a_real_process(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trials: 0\n")
    proc = subprocess.run([sys.executable, "-m", "dynsearch.cli", "train", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "field 'trials'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_lr_schedule_reaches_the_optimizer(digits, schedule):
    import pytorch_lightning as pl

    from conftest import exits_config
    from dynsearch.training.trial import train_model

    seen = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, *_):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    config = exits_config()
    config["train"] = {**config["train"], "epochs": 2, "lr_schedule": schedule}
    train_model(config, digits, callbacks=[Record()])
    steps = 2 * -(-len(digits.train_y) // 64)
    assert len(seen) == steps
    if schedule == "constant":
        assert seen == [0.005] * steps
    else:  # annealed each step from 0.005 towards 0: strictly falling, near 0 at the end
        assert all(a > b for a, b in zip(seen, seen[1:]))
        assert seen[0] < 0.005 and seen[-1] < 0.005 * 1e-3


def test_recipe_lr_schedule_is_in_each_trial_config():
    import optuna

    from dynsearch.spaces import get_space

    recipe = parse_recipe({**BASE, "lr_schedule": "cosine"}, source="test")
    data = type("Data", (), {"input_shape": (1, 8, 8), "num_classes": 10})()
    study = optuna.create_study(directions=["maximize", "minimize"])
    config = get_space(recipe.space).define(study.ask(), recipe, data)
    assert config["train"]["lr_schedule"] == "cosine"


@pytest.mark.parametrize("channels_last", [False, True])
def test_channels_last_trains_in_that_layout_and_stores_contiguous(digits, channels_last):
    import pytorch_lightning as pl

    from conftest import exits_config
    from dynsearch.training.trial import train_model

    layouts = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, *_):
            weight = module.model.stages[1][0][0].weight  # 32x8x3x3: the two layouts differ
            layouts.append((weight.is_contiguous(), weight.is_contiguous(memory_format=torch.channels_last)))

    config = exits_config()
    config["train"] = {**config["train"], "channels_last": channels_last}
    model = train_model(config, digits, callbacks=[Record()])
    assert layouts and set(layouts) == {(not channels_last, channels_last)}
    assert all(t.is_contiguous() for t in model.state_dict().values())  # safetensors needs it


def test_recipe_channels_last_is_in_each_trial_config():
    import optuna

    from dynsearch.spaces import get_space

    data = type("Data", (), {"input_shape": (1, 8, 8), "num_classes": 10})()
    for value in (False, True):
        recipe = parse_recipe({**BASE, "channels_last": value}, source="test")
        config = get_space(recipe.space).define(optuna.create_study(directions=["maximize", "minimize"]).ask(),
                                                recipe, data)
        assert config["train"]["channels_last"] is value
    with pytest.raises(Exception, match="channels_last"):
        parse_recipe({**BASE, "channels_last": "sometimes"}, source="test")


@pytest.mark.parametrize("space,kind", [("exits", "cnn"), ("gates", "resnet"), ("experts", "cnn")])
def test_backbone_classifier_reaches_each_trial_config_and_builds_that_head(space, kind):
    import optuna

    from dynsearch.dynamic import build_model
    from dynsearch.models.kinds import describe_backbone
    from dynsearch.spaces import get_space

    data = type("Data", (), {"input_shape": (1, 8, 8), "num_classes": 10})()
    built = {}
    for classifier, search in (("pool", None), ("flatten", None), ("flatten", {"depth": [1, 2]})):
        backbone = {"kind": kind, "widths": [4, 8], "classifier": classifier, **({"search": search} if search else {})}
        recipe = parse_recipe({**BASE, "space": space, "backbone": backbone}, source="test")
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
        config = get_space(recipe.space).define(study.ask(), recipe, data)
        # The default is not written, so configs made before the field existed build the same models.
        assert config["backbone"].get("classifier") == (None if classifier == "pool" else "flatten")
        assert (" flatten" in describe_backbone(config["backbone"])) is (classifier == "flatten")
        model = build_model(config)
        # The last stage's map is 8 channels at 4x4: flatten has a weight per channel and position, pool per channel.
        assert model.classifier[-1].in_features == (8 * 4 * 4 if classifier == "flatten" else 8)
        built[(classifier, bool(search))] = model.macs_full()
    # The flattened head's larger linear layer is counted in the static path's MACs.
    assert built[("flatten", False)] - built[("pool", False)] == 10 * 8 * (16 - 1)


def test_augment_flips_and_shifts_training_batches_seeded():
    from dynsearch.training.augment import CROP_PAD, augment_batch

    x = torch.rand(256, 1, 8, 8) + 1.0  # no zero pixels: a shift brings zeros in
    flipped = augment_batch(x, ["hflip"], torch.Generator().manual_seed(0))
    mirrored = (flipped == x.flip(3)).flatten(1).all(1)
    kept = (flipped == x).flatten(1).all(1)
    assert bool((mirrored | kept).all()) and 0.3 < float(mirrored.float().mean()) < 0.7
    again = augment_batch(x, ["hflip"], torch.Generator().manual_seed(0))
    assert torch.equal(flipped, again)
    shifted = augment_batch(x, ["crop"], torch.Generator().manual_seed(1))
    assert shifted.shape == x.shape
    zeros = (shifted == 0).flatten(1).sum(1)
    assert int(zeros.max()) > 0 and int(zeros.max()) <= 8 * 8 - (8 - CROP_PAD) ** 2
    # each unshifted image is unchanged; each shifted one is x moved (its pixels are x's)
    assert all(set(shifted[i][shifted[i] != 0].tolist()) <= set(x[i].flatten().tolist()) for i in range(8))
    with pytest.raises(ValueError, match="image batches"):
        augment_batch(torch.rand(4, 8), ["hflip"], torch.Generator())


def test_recipe_augment_reaches_training_and_is_refused_for_non_image_data(digits):
    import optuna

    from dynsearch.spaces import check_augment, get_space

    recipe = parse_recipe({**BASE, "augment": ["hflip", "crop"]}, source="test")
    data = type("Data", (), {"input_shape": (1, 8, 8), "num_classes": 10})()
    config = get_space(recipe.space).define(optuna.create_study(directions=["maximize", "minimize"]).ask(),
                                            recipe, data)
    assert config["train"]["augment"] == ["hflip", "crop"]
    check_augment(recipe, (1, 8, 8))
    with pytest.raises(UserError, match="recipe field 'augment'.*remove 'augment'"):
        check_augment(recipe, (40,))
    with pytest.raises(Exception, match="augment"):
        parse_recipe({**BASE, "augment": ["rotate"]}, source="test")


def test_augment_changes_training_only(digits):
    from conftest import exits_config
    from dynsearch.measure.evaluate import measure
    from dynsearch.training.trial import train_model

    weights = {}
    for augment in ([], ["hflip"]):
        config = exits_config()
        config["train"] = {**config["train"], "augment": augment}
        model = train_model(config, digits)
        weights[tuple(augment)] = model.state_dict()["stages.1.0.0.weight"].clone()
        assert measure(model, digits.val_x, digits.val_y)["accuracy"] > 0.5
    assert not torch.equal(weights[()], weights[("hflip",)])


def test_augment_on_non_image_data_exits_2_before_training(tmp_path, capsys):
    data = yaml.safe_load(open(builtin_recipes()["mnist1d-moe"]).read())
    path = tmp_path / "seq.yaml"
    path.write_text(yaml.safe_dump({**data, "augment": ["hflip"]}))
    code = cli.main(["train", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "recipe field 'augment'" in err, err
    assert not (tmp_path / "out").exists()
