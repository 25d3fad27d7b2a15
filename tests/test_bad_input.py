"""Bad input to `dynsearch search`: exit code 2, one line naming the problem, no traceback, nothing written.

(tests/test_recipe.py covers recipe fields through `dynsearch train`.)
"""
import subprocess
import sys

import pytest
import yaml

from dynsearch import cli
from conftest import TINY_RECIPE

BASE = yaml.safe_load(TINY_RECIPE)


class EmptySpace:
    """A search space that asks for no parameters."""

    DEFAULTS = {}

    @staticmethod
    def define(trial, recipe, data):
        from dynsearch.search_spaces import exits
        from dynsearch.spaces import backbone_defaults

        params = {**backbone_defaults(recipe), **exits.DEFAULTS}  # the default point, the backbone's included
        return exits.define(__import__("optuna").trial.FixedTrial(params), recipe, data)


def _recipe(**changes):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        target = data
        for key in parents:
            target = target[key]
        target[leaf] = value
    return yaml.safe_dump(data)


# (recipe text or None for the valid tiny recipe, extra CLI arguments, expected text in the one line)
CASES = {
    "wrong type: trials": (_recipe(trials="many"), [], "field 'trials'"),
    "wrong type: widths": (_recipe(backbone__widths="wide"), [], "field 'backbone.widths'"),
    "wrong type: epochs": (_recipe(epochs=1.5), [], "field 'epochs'"),
    "wrong type: data": (_recipe(data="digits"), [], "field 'data'"),
    "unknown key": (_recipe(colour="blue"), [], "unknown field 'colour'"),
    "unknown nested key": (_recipe(sampler__temperature=3), [], "unknown field 'sampler.temperature'"),
    "empty search space": (_recipe(space="empty"), [], "asks for no parameters"),
    "empty space name": (_recipe(space=""), [], "unknown search space ''"),
    "non-existent space": (_recipe(space="nope"), [], "unknown search space 'nope'"),
    "duplicate objectives": (_recipe(objectives=[{"name": "macs"}, {"name": "macs"}]), [], "repeat a name"),
    "unknown objective": (_recipe(objectives=[{"name": "latency"}]), [], "field 'objectives.0.name'"),
    "no objectives": (_recipe(objectives=[]), [], "field 'objectives'"),
    "zero trials in recipe": (_recipe(trials=0), [], "field 'trials'"),
    "negative trials in recipe": (_recipe(trials=-4), [], "field 'trials'"),
    "zero trials": (None, ["--trials", "0"], "'0' must be at least 1"),
    "negative trials": (None, ["--trials", "-2"], "'-2' must be at least 1"),
    "trials not a number": (None, ["--trials", "ten"], "'ten' is not a whole number"),
    "zero epochs": (None, ["--epochs", "0"], "must be at least 1"),
    "zero concurrent": (None, ["--concurrent", "0"], "must be at least 1"),
    "unknown sampler": (None, ["--sampler", "grid"], "invalid choice: 'grid'"),
    "unknown option": (None, ["--frobnicate"], "unrecognized arguments: --frobnicate"),
    "unknown dataset": (_recipe(data__name="cifar"), [], "unknown dataset 'cifar'"),
    "missing data file": (_recipe(data={"file": "absent.npz"}), [], "data.file 'absent.npz': no such file or folder"),
    "missing data directory": (_recipe(data={"image_folder": "no/such/dir"}), [],
                               "data.image_folder 'no/such/dir': no such file or folder"),
    "missing torchvision root": (_recipe(data={"torchvision": "MNIST", "root": "absent"}), [],
                                 "data.root 'absent': no such file or folder"),
    "user data and a built-in name": (_recipe(data={"name": "digits", "callable": "json:loads"}), [],
                                      "field 'data.name': 'digits' is a built-in dataset"),
    "split fraction": (_recipe(data__val_fraction=0.7), [], "field 'data.val_fraction'"),
    "population too big": (_recipe(sampler__population_size=50), [], "population_size=50"),
    "wrong direction": (_recipe(objectives=[{"name": "accuracy", "direction": "min"}]), [], "can only be maximised"),
    "not a mapping": ("- a\n- list\n", [], "must be a YAML mapping"),
    "YAML syntax": ("trials: [1, 2\n", [], "not valid YAML at line"),
    "YAML python tag": ("trials: !!python/object/apply:os.getpid []\n", [], "YAML tag '!!python/object/apply:os.getpid' is not allowed"),
}


def _call(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    return code, capsys.readouterr()


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _assert_one_line_error(code, captured, expected):
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in captured.err and captured.out == ""


@pytest.mark.parametrize("name", CASES)
def test_bad_search_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, name):
    from dynsearch.spaces import register_space

    register_space("empty", EmptySpace)
    text, extra, expected = CASES[name]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(TINY_RECIPE if text is None else text)
    before = _tree(tmp_path)
    code, captured = _call(["search", str(recipe), "--out", str(tmp_path / "run"), *extra], capsys)
    _assert_one_line_error(code, captured, expected)
    assert _tree(tmp_path) == before  # nothing written


def test_out_whose_parent_is_a_regular_file(tmp_path, tiny_recipe, capsys):
    (tmp_path / "afile").write_text("")
    before = _tree(tmp_path)
    code, captured = _call(["search", str(tiny_recipe), "--out", str(tmp_path / "afile" / "run")], capsys)
    _assert_one_line_error(code, captured, "cannot create the run directory (Not a directory)")
    assert _tree(tmp_path) == before


def test_out_that_is_a_regular_file(tmp_path, tiny_recipe, capsys):
    (tmp_path / "afile").write_text("keep")
    code, captured = _call(["search", str(tiny_recipe), "--out", str(tmp_path / "afile")], capsys)
    _assert_one_line_error(code, captured, "exists and is not a directory")
    assert (tmp_path / "afile").read_text() == "keep"


@pytest.mark.parametrize("kind", ["directory", "missing"])
def test_recipe_path_that_is_a_directory_or_missing(tmp_path, capsys, kind):
    path = tmp_path / "recipes"
    if kind == "directory":
        path.mkdir()
    before = _tree(tmp_path)
    code, captured = _call(["search", str(path), "--out", str(tmp_path / "run")], capsys)
    expected = "is not a file" if kind == "directory" else "no such file or built-in recipe"
    _assert_one_line_error(code, captured, expected)
    assert _tree(tmp_path) == before


def test_bad_input_in_a_real_process(tmp_path):
    """The same contract seen from the shell: exit status 2, one line on stderr."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(_recipe(space="nope"))
    (tmp_path / "afile").write_text("")
    for args in ([str(recipe)], [str(tmp_path)], ["--trials", "-1"]):
        proc = subprocess.run([sys.executable, "-m", "dynsearch.cli", "search", *args, "--out", str(tmp_path / "afile" / "x")],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "recipe.yaml"]
