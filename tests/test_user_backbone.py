"""A user backbone of 4 stages: exits where the search puts them, the conformance suite, and
traced MACs equal to FlopCounterMode / 2 at batch 1 (the cost test of test_exits_model.py)."""
import optuna
import pytest
import torch

from dynsearch.dynamic import build_model
from dynsearch.errors import UserError
from dynsearch.recipe import parse_recipe
from dynsearch.spaces import get_space
from dynsearch.testing.conformance import CHECKS
from test_exits_model import _sharpen_later_heads, traced_macs_match_flop_counter_at_batch_one

USER_MODULE = '''
from torch import nn


def four_stages(width=16, features=12):
    """An MLP of four stages; a conv stage would do as well (head widths come from a dry run)."""
    return nn.ModuleList([
        nn.Sequential(nn.Linear(features, width), nn.ReLU()),
        nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU()),
        nn.Sequential(nn.Linear(2 * width, width), nn.ReLU()),
        nn.Sequential(nn.Linear(width, width), nn.Tanh()),
    ])


def one_stage():
    return nn.ModuleList([nn.Linear(12, 4)])


def not_modules():
    return 42
'''
INPUT_SHAPE = [12]


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user_backbone")
    (folder / "my_net.py").write_text(USER_MODULE)
    return folder


def _recipe(user_dir, callable="my_net:four_stages", **backbone):
    return parse_recipe({"backbone": {"kind": "user", "callable": callable, **backbone}, "space": "exits"},
                        base_dir=user_dir)


def _config(user_dir, stages):
    recipe = _recipe(user_dir)
    return {
        "mechanism": "exits", "input_shape": INPUT_SHAPE, "num_classes": 4,
        "backbone": recipe.backbone.model_dump(),
        "exits": {"stages": list(stages), "head_width": 8, "threshold": 0.5, "loss_weight": 0.5},
        "train": {"lr": 0.005, "epochs": 1, "batch_size": 16, "seed": 0}, "trial": 0,
    }


def test_exit_heads_sit_where_the_search_put_them(user_dir):
    recipe = _recipe(user_dir)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        config = get_space("exits").define(trial, recipe, type("Data", (), {"input_shape": (12,), "num_classes": 4}))
        chosen = [i for i in range(3) if trial.params[f"exit_after_stage_{i}"]]
        assert "exit_after_stage_3" not in trial.params  # the last stage ends in the classifier
        model = build_model(config)
        assert len(model.stages) == 4 and model.exit_stages == chosen == config["exits"]["stages"]
        assert sorted(model.heads, key=int) == [str(i) for i in chosen]
        seen.add(tuple(chosen))
        study.tell(trial, 0.0)
    assert len(seen) >= 4  # the locations really vary with the search


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__.removeprefix("check_"))
def test_conformance_on_a_user_backbone(user_dir, check):
    check(_config(user_dir, [0, 1, 2]))


@pytest.mark.parametrize("stages", [[0, 1, 2], [1]])
def test_traced_macs_equal_flop_counter_at_batch_one(user_dir, stages):
    torch.manual_seed(1)  # untrained heads whose confidences let every exit be taken (asserted below)
    model = build_model(_config(user_dir, stages)).eval()
    _sharpen_later_heads(model)
    component_macs = model.component_macs()
    assert component_macs["stage1"] == 16 * 32 and component_macs["stem"] == 0  # by hand: Linear(16, 32)
    x = torch.randn(40, *INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    exits_seen = traced_macs_match_flop_counter_at_batch_one(model, x)
    assert len(exits_seen) == len(stages) + 1  # every exit, and the full path, was exercised


@pytest.mark.parametrize("backbone, expected", [
    ({"callable": "my_net:one_stage"}, "returned 1 stage(s)"),
    ({"callable": "my_net:not_modules"}, "returned int"),
    ({"callable": "my_net:four_stages", "kwargs": {"features": 7}}, "fail on inputs of shape (12,)"),
])
def test_bad_user_backbones(user_dir, backbone, expected):
    from dynsearch.models.user import check_user_backbone

    recipe = _recipe(user_dir, **backbone)
    with pytest.raises(UserError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        check_user_backbone(recipe.backbone.model_dump(), INPUT_SHAPE)


def test_user_kind_and_callable_go_together(user_dir):
    with pytest.raises(UserError, match="kind: user goes with backbone.callable"):
        parse_recipe({"backbone": {"kind": "user"}})
    with pytest.raises(UserError, match="module 'absent_net' not found"):
        _recipe(user_dir, callable="absent_net:build")
