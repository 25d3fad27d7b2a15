"""Fashion-MNIST read from the Debian package's IDX files (dataset-fashion-mnist; .ci/run installs it).

The parsed files are cached per process, so after the first load (about 2 s) each test takes well under
a second; training, where a test needs it, runs on a small ``train_subset``.
"""
import gzip
import json

import numpy as np
import pytest
import torch

from dynsearch.data import DATASETS, cached_splits, load_data, load_splits
from dynsearch.data import fashion_mnist as fm
from dynsearch.errors import UserError
from dynsearch.recipe import parse_recipe

FOLDER = fm.DEBIAN_FOLDER
pytestmark = pytest.mark.skipif(not all((FOLDER / f"{stem}.gz").is_file() for stem in fm.FILES.values()),
                                reason="apt-get install dataset-fashion-mnist (.ci/run does)")


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(fm.ENV_VAR, raising=False)


@pytest.fixture(scope="module")
def full():
    return load_splits("fashion-mnist", 0)


def _folder_of_links(folder, gzipped=("train_images", "train_labels", "test_images", "test_labels")):
    """A folder holding the four files: gzipped ones as links to the package's, the rest uncompressed."""
    folder.mkdir()
    for key, stem in fm.FILES.items():
        if key in gzipped:
            (folder / f"{stem}.gz").symlink_to(FOLDER / f"{stem}.gz")
        else:
            (folder / stem).write_bytes(gzip.decompress((FOLDER / f"{stem}.gz").read_bytes()))
    return folder


def test_official_test_split_and_validation_from_the_training_images(full):
    info = DATASETS["fashion-mnist"]
    assert full.input_shape == info.input_shape == (1, 28, 28) and full.num_classes == 10
    assert (len(full.train_y), len(full.val_y), len(full.test_y)) == (48000, 12000, 10000)
    for x in (full.train_x, full.val_x, full.test_x):
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 28, 28)
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    # Stratified: every class keeps its share (6,000 training and 1,000 test images per class).
    assert full.train_y.bincount().tolist() == [4800] * 10 and full.val_y.bincount().tolist() == [1200] * 10
    assert full.test_y.bincount().tolist() == [1000] * 10
    # The test split is the t10k file, in its order, preprocessed by the one definition.
    raw = fm.read_idx(FOLDER / "t10k-images-idx3-ubyte.gz")
    assert torch.equal(full.test_x, torch.from_numpy(raw.astype(np.float32)[:, None] / 255.0))
    assert full.test_y[:10].tolist() == fm.read_idx(FOLDER / "t10k-labels-idx1-ubyte.gz")[:10].tolist()
    assert "/ 255" in info.preprocessing and "[N, 1, 28, 28]" in info.preprocessing


def test_splits_are_fixed_by_the_seed_and_val_fraction(full):
    again = load_splits("fashion-mnist", 0)
    assert torch.equal(full.val_x, again.val_x) and torch.equal(full.train_y, again.train_y)
    other = load_splits("fashion-mnist", 1, val_fraction=0.1)
    assert (len(other.train_y), len(other.val_y), len(other.test_y)) == (54000, 6000, 10000)
    assert torch.equal(other.test_x, full.test_x)  # the test split never moves
    assert not torch.equal(other.val_y[:200], full.val_y[:200])


def test_train_subset_is_stratified_seeded_and_leaves_val_and_test(full):
    recipe = parse_recipe({"data": {"name": "fashion-mnist", "train_subset": 300}})
    small, again = load_data(recipe.data), load_data(recipe.data.model_dump())
    assert small.train_x.shape == (300, 1, 28, 28) and small.train_y.bincount().tolist() == [30] * 10
    assert torch.equal(small.train_x, again.train_x)
    assert torch.equal(small.val_x, full.val_x) and torch.equal(small.test_y, full.test_y)
    # Every subset image is one of the split's training images.
    rows = {bytes(row) for row in full.train_x.flatten(1).numpy()}
    assert all(bytes(row) in rows for row in small.train_x.flatten(1).numpy())
    other = load_data({**recipe.data.model_dump(), "split_seed": 1})
    assert not torch.equal(other.train_y, small.train_y)
    assert cached_splits(recipe.data.model_dump()).train_x.shape[0] == 300  # the cache keys on the subset
    with pytest.raises(UserError, match="train_subset 5 must be at least the number of classes"):
        load_data({**recipe.data.model_dump(), "train_subset": 5})


def test_root_relative_to_the_recipe_file_and_uncompressed_files(tmp_path, full):
    _folder_of_links(tmp_path / "fm", gzipped=("train_images", "train_labels"))  # t10k files uncompressed
    recipe_dir = tmp_path / "recipes"
    recipe_dir.mkdir()
    recipe = parse_recipe({"data": {"name": "fashion-mnist", "root": "../fm", "train_subset": 100}},
                          base_dir=recipe_dir)
    assert recipe.data.root == str((tmp_path / "fm").resolve())
    splits = load_data(recipe.data)
    assert torch.equal(splits.test_x, full.test_x) and torch.equal(splits.val_y, full.val_y)


def test_environment_variable_names_the_folder(tmp_path, monkeypatch, full):
    monkeypatch.setenv(fm.ENV_VAR, str(_folder_of_links(tmp_path / "env")))
    assert fm.data_folder() == (tmp_path / "env").resolve()
    splits = load_splits("fashion-mnist", 0, train_subset=50)
    assert torch.equal(splits.test_x, full.test_x)
    assert fm.data_folder(str(FOLDER)) == FOLDER  # data.root wins over the variable


def test_root_is_refused_for_a_dataset_that_reads_no_files():
    with pytest.raises(UserError, match="data.root is not read by dataset 'digits'"):
        parse_recipe({"data": {"name": "digits", "root": "."}})
    with pytest.raises(UserError, match="train_subset"):
        parse_recipe({"data": {"name": "fashion-mnist", "train_subset": 0}})
    assert parse_recipe({}).data.name == "digits" and parse_recipe({}).data.train_subset is None


@pytest.mark.parametrize("command", ["train", "search"])
def test_missing_files_exit_2_with_one_line_before_anything_is_written(tmp_path, command, capsys, monkeypatch):
    """The command in this process (a shell's view of exit 2 and one line: test_bad_input.py)."""
    from dynsearch import cli

    (tmp_path / "empty").mkdir()
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {name: fashion-mnist, root: empty}\ntrials: 1\nepochs: 1\nwandb: {mode: \"off\"}\n")
    out = tmp_path / "run"
    args = ["--out", str(out)] if command == "search" else []
    monkeypatch.chdir(tmp_path)
    assert cli.main([command, str(recipe), *args]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "apt-get install dataset-fashion-mnist" in lines[0] and "data.root" in lines[0]
    assert str(tmp_path / "empty") in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "r.yaml"] and not any((tmp_path / "empty").iterdir())


def _idx(magic: bytes, dims: tuple[int, ...], payload: bytes) -> bytes:
    return magic + b"".join(int(d).to_bytes(4, "big") for d in dims) + payload


@pytest.mark.parametrize("raw, message", [
    (b"", "bad magic number empty"),
    (_idx(b"\x00\x00\x08\x03", (2, 2, 2), bytes(7)), r"23 bytes where its header \(2, 2, 2\) says 24"),  # short
    (_idx(b"\x00\x00\x08\x03", (2, 2, 2), bytes(9)), "25 bytes where"),  # trailing bytes
    (_idx(b"\x01\x02\x08\x01", (4,), bytes(4)), "bad magic number 01020801"),
    (_idx(b"\x00\x00\x07\x01", (4,), bytes(4)), "bad magic number"),                # unknown type code
    (b"\x00\x00\x08\x03\x00\x00", "header cut short"),
], ids=["empty", "short", "trailing", "magic", "type", "header"])
def test_read_idx_refuses_a_corrupt_file_in_one_line(tmp_path, raw, message):
    path = tmp_path / "f-idx3-ubyte"
    path.write_bytes(raw)
    with pytest.raises(UserError, match=message) as caught:
        fm.read_idx(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_read_idx_reads_both_forms(tmp_path):
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = _idx(b"\x00\x00\x08\x03", data.shape, data.tobytes())
    (tmp_path / "a").write_bytes(raw)
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw))
    assert np.array_equal(fm.read_idx(tmp_path / "a"), data) and np.array_equal(fm.read_idx(tmp_path / "a.gz"), data)
    ints = np.array([1, -2, 70000], dtype=">i4")
    (tmp_path / "i").write_bytes(_idx(b"\x00\x00\x0c\x01", (3,), ints.tobytes()))
    assert fm.read_idx(tmp_path / "i").tolist() == [1, -2, 70000]


def test_a_corrupt_or_cut_package_file_is_a_user_error(tmp_path):
    folder = _folder_of_links(tmp_path / "cut", gzipped=("train_images", "test_images", "test_labels"))
    labels = folder / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-10])  # cut short
    with pytest.raises(UserError, match="not a valid IDX file") as caught:
        load_splits("fashion-mnist", 0, root=str(folder))
    assert str(labels) in str(caught.value) and "\n" not in str(caught.value)
    bad_gzip = tmp_path / "badgz"
    _folder_of_links(bad_gzip, gzipped=("train_images", "train_labels", "test_images"))
    (bad_gzip / "t10k-labels-idx1-ubyte").unlink()
    (bad_gzip / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="cannot be read"):
        load_splits("fashion-mnist", 0, root=str(bad_gzip))


def test_card_records_preprocessing_and_front_items_macs_thop(tmp_path):
    """A one-trial run on a small subset, exported: the card says how inputs were made; pareto has macs_thop."""
    import optuna
    import yaml

    import dynsearch
    from dynsearch.recipe import recipe_dict
    from dynsearch.run.study import make_sampler, open_study
    from dynsearch.spaces import default_config
    from dynsearch.training.trial import evaluate, save_trial, train_model

    recipe = parse_recipe({"data": {"name": "fashion-mnist", "train_subset": 200}, "backbone": {"widths": [4, 8, 8]},
                           "trials": 1, "epochs": 1, "wandb": {"mode": "off"}})
    splits = load_data(recipe.data)
    splits.val_x, splits.val_y = splits.val_x[:300], splits.val_y[:300]  # measured here only; export re-measures
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe_dict(recipe)))
    study = open_study(run, recipe, make_sampler(recipe))
    config = default_config(recipe, splits)
    model = train_model(config, splits)
    metrics = {**evaluate(model, splits), "status": "COMPLETE"}
    assert isinstance(metrics["macs_thop"], int) and metrics["macs_thop"] > metrics["macs_full"] > 0
    save_trial(run / "trials" / "0", config, model, metrics)
    study.add_trial(optuna.trial.create_trial(values=[metrics[name] for name in recipe.metric_names]))
    [item] = dynsearch.pareto(run)
    assert item["macs_thop"] == metrics["macs_thop"]
    [folder] = dynsearch.export(run, tmp_path / "models", trials=[0], onnx=False)
    card = json.loads((folder / "card.json").read_text())
    assert card["data"]["preprocessing"] == fm.PREPROCESSING and card["data"]["train_subset"] == 200
    assert card["measured"]["macs_thop"] == metrics["macs_thop"]
    text = (folder / "card.md").read_text()
    assert fm.PREPROCESSING in text and "| macs_thop |" in text


@pytest.mark.slow
def test_the_shipped_recipe_searches_end_to_end_on_a_subset(tmp_path):
    """fmnist-exits as shipped (its backbone, space and objectives) with real Ray, Optuna and Lightning,
    cut to 2 one-epoch trials on 1,000 training images: the front is read and exported."""
    import dynsearch
    from dynsearch.recipe import load_recipe

    recipe = load_recipe("fmnist-exits")
    data = {**recipe.data.model_dump(), "train_subset": 1000}
    result = dynsearch.search("fmnist-exits", out=tmp_path / "run", trials=2, epochs=1, data=data,
                              wandb={"mode": "off"})
    assert result.complete == 2 and result.front
    assert all(item["config"]["input_shape"] == [1, 28, 28] and item["macs_thop"] > 0 for item in result.front)
    [folder] = dynsearch.export(result.run_dir, tmp_path / "models", trials=[result.front[0]["trial"]])
    assert json.loads((folder / "card.json").read_text())["data"]["preprocessing"] == fm.PREPROCESSING


FMNIST_RECIPES = {"fmnist-exits": "exits", "fmnist-gates": "aig", "fmnist-condconv": "condconv",
                  "fmnist-moe": "moe", "fmnist-cross-family": "condconv", "fmnist-glance": "glance"}


def test_every_family_has_a_shipped_fashion_mnist_recipe():
    from dynsearch.recipe import builtin_recipes, load_recipe

    # One-shot variants (fmnist-exits-oneshot) search a family's space another way: test_oneshot.py runs them.
    multi_trial = {name for name in builtin_recipes() if name.startswith("fmnist-") and not load_recipe(name).one_shot}
    assert multi_trial == set(FMNIST_RECIPES)


@pytest.mark.parametrize("name", sorted(FMNIST_RECIPES))
def test_each_shipped_recipe_trains_its_default_point(name):
    """Each Fashion-MNIST recipe's default point (its backbone and mechanism as shipped) trains for one
    epoch on 300 images and is measured on the official test split (and 1,200 validation images),
    with thop's count beside ours."""
    import dynsearch
    from dynsearch.recipe import load_recipe

    recipe = load_recipe(name)
    assert recipe.data.name == "fashion-mnist" and recipe.trials == 12
    result = dynsearch.train(name, epochs=1, data={**recipe.data.model_dump(), "train_subset": 300, "val_fraction": 0.02})
    assert result["mechanism"] == FMNIST_RECIPES[name]
    assert 0.0 < result["macs"] <= result["macs_full"] * 1.1  # CondConv's routing may add a little
    assert result["macs_thop"] > 0 and 0.0 <= result["test_accuracy"] <= 1.0
