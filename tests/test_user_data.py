"""A user's own data: callables, .npz / .pt files, their accepted forms and their errors (exit 2, nothing written)."""
import numpy as np
import pytest
import torch
import yaml

from conftest import TINY_RECIPE
from dynsearch.data import load_data
from dynsearch.errors import UserError
from dynsearch.recipe import parse_recipe
from test_bad_input import _assert_one_line_error, _call, _tree

USER_MODULE = '''
import numpy as np
import torch


def whole():
    rng = np.random.default_rng(0)
    return rng.normal(size=(60, 5)).astype(np.float32), np.arange(60) % 3


def splits():
    x, y = whole()
    return {"train": (x[:40], y[:40]), "val": (torch.tensor(x[40:50]), torch.tensor(y[40:50])),
            "test": torch.utils.data.TensorDataset(torch.tensor(x[50:]), torch.tensor(y[50:]))}


def float_labels():
    x, y = whole()
    return x, y + 0.5


def short_labels():
    x, y = whole()
    return x, y[:-1]


def one_dim_inputs():
    x, y = whole()
    return x[:, 0], y


def a_string():
    return "data"


def raises():
    raise RuntimeError("the database is down")
'''


def _data(tmp_path, **data):
    return parse_recipe({"data": data}, base_dir=tmp_path).data


@pytest.fixture
def user_dir(tmp_path):
    (tmp_path / "my_data.py").write_text(USER_MODULE)
    return tmp_path


def test_callable_whole_dataset_is_split_stratified_and_seeded(user_dir):
    data = _data(user_dir, callable="my_data:whole", split_seed=3)
    assert data.module_path == str(user_dir) and data.name == "user"
    splits, again = load_data(data), load_data(data)
    assert (len(splits.train_y), len(splits.val_y), len(splits.test_y)) == (36, 12, 12)
    assert splits.input_shape == (5,) and splits.num_classes == 3
    assert torch.equal(splits.val_x, again.val_x) and splits.train_x.dtype == torch.float32
    assert torch.bincount(splits.test_y).tolist() == [4, 4, 4]  # stratified
    rows = {tuple(r.tolist()) for part in (splits.train_x, splits.val_x, splits.test_x) for r in part}
    assert len(rows) == 60  # disjoint and complete


def test_callable_given_splits_with_a_dataset(user_dir):
    splits = load_data(_data(user_dir, callable="my_data:splits"))
    assert (len(splits.train_x), len(splits.val_x), len(splits.test_x)) == (40, 10, 10)
    assert splits.test_y.dtype == torch.int64 and splits.num_classes == 3


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_tensor_files(tmp_path, suffix):
    x, y = np.random.default_rng(0).normal(size=(30, 2, 3)).astype(np.float32), np.arange(30) % 2
    arrays = {"train_x": x[:20], "train_y": y[:20], "val_x": x[20:25], "val_y": y[20:25],
              "test_x": x[25:], "test_y": y[25:]}
    if suffix == ".npz":
        np.savez(tmp_path / "d.npz", **arrays)
    else:
        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, tmp_path / "d.pt")
    splits = load_data(_data(tmp_path, file="d" + suffix))  # relative to the recipe's folder
    assert splits.input_shape == (2, 3) and len(splits.train_x) == 20 and torch.equal(splits.test_x, torch.from_numpy(x[25:]))


class NotATensor:
    pass


def test_pt_file_holding_a_pickled_object_is_refused(tmp_path):
    torch.save({"x": torch.zeros(4, 2), "y": NotATensor()}, tmp_path / "d.pt")
    with pytest.raises(UserError, match="weights_only=True"):
        load_data(_data(tmp_path, file="d.pt"))


# (callable or file contents, expected text in the one line)
MALFORMED = {
    "module absent": ("nope:whole", "module 'nope' not found"),
    "function absent": ("my_data:nothing", "has no function 'nothing'"),
    "not module:function": ("my_data.whole", "is not 'package.module:function'"),
    "non-integer labels": ("my_data:float_labels", "not integer class labels"),
    "mismatched lengths": ("my_data:short_labels", "60 inputs but 59 labels"),
    "wrong shape": ("my_data:one_dim_inputs", "give inputs [N, features...]"),
    "wrong type": ("my_data:a_string", "gave str"),
    "function raises": ("my_data:raises", "raised RuntimeError: the database is down"),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_bad_user_data_is_one_line_exit_2_and_writes_nothing(user_dir, capsys, name):
    spec, expected = MALFORMED[name]
    recipe = yaml.safe_load(TINY_RECIPE)
    recipe["data"] = {"callable": spec}
    (user_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    before = _tree(user_dir)
    code, captured = _call(["search", str(user_dir / "recipe.yaml"), "--out", str(user_dir / "run")], capsys)
    _assert_one_line_error(code, captured, expected)
    assert _tree(user_dir) == before


@pytest.mark.parametrize("data, expected", [
    ({"file": "d.csv"}, "not an .npz or .pt file"),
    ({"callable": "my_data:whole", "file": "d.npz"}, "give one source"),
    ({"torchvision": "MNIST"}, "needs data.root"),
])
def test_bad_data_fields(user_dir, data, expected):
    with pytest.raises(UserError, match=expected):
        _data(user_dir, **data)


def test_torchvision_absent_is_a_clear_error(tmp_path):
    """torchvision is an optional extra (it does not import beside this machine's CPU torch)."""
    try:
        import torchvision  # noqa: F401
        pytest.skip("torchvision is installed here: the absent case cannot be seen")
    except Exception:
        pass
    data = _data(tmp_path, torchvision="MNIST", root=".")
    with pytest.raises(UserError, match=r"needs torchvision.*pip install 'dynsearch\[vision\]'"):
        load_data(data)
