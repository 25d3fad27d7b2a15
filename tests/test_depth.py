"""Depth-adaptive Transformer: attention MACs counted, predicted depth really skips, the sequence data."""
import numpy as np
import pytest
import torch

from dynsearch.dynamic.cost import count_macs
from dynsearch.dynamic import build_model
from dynsearch.dynamic.depth import DepthAdaptiveTransformer


def _model(policy="predicted"):
    config = next(c for c in DepthAdaptiveTransformer.tiny_configs() if c["exits"]["policy"] == policy)
    return build_model(config)


def test_encoder_macs_include_attention_matmuls():
    macs = _model().component_macs()
    length, width, heads, ffn = 6, 8, 2, 16
    attention = 2 * heads * length * length * (width // heads)  # q @ k^T and scores @ v
    layer = length * width * 3 * width + attention + length * width * width + 2 * length * width * ffn
    assert macs["stage0"] == macs["stage1"] == macs["stage2"] == layer
    assert macs["stem"] == length * 8 * width
    assert macs["halting"] == width * 3 and macs["exit0"] == width * 4  # mean-pooled linear heads
    block = _model().stages[0][0]
    with torch.no_grad():  # eval under no_grad: no fused kernel that FlopCounterMode would miss
        assert count_macs(lambda: block.eval()(torch.zeros(1, length, width))) == layer


def test_predicted_depth_runs_only_the_chosen_exit():
    model = _model().eval()
    with torch.no_grad():
        model.halting[1].weight.zero_()
        model.halting[1].bias.copy_(torch.tensor([0.0, 5.0, 0.0]))  # always choose the exit after layer 1
    ran = []
    for name, module in model.components().items():
        module.register_forward_hook(lambda *_args, name=name: ran.append(name))
    out = model(torch.rand(1, 6, 8))
    assert ran == ["stem", "halting", "stage0", "stage1", "exit1"]
    assert int(out.trace.records["exit_index"]) == 1


def test_halting_learns_towards_the_oracle_depth():
    model = _model().train()
    x, y = torch.rand(4, 6, 8), torch.randint(0, 4, (4,))
    out = model(x)
    losses = torch.stack([torch.nn.functional.cross_entropy(h, y, reduction="none") for h in out.head_logits], 1)
    oracle = (losses + model.depth_penalty * torch.arange(3)).argmin(1)
    halting = torch.nn.functional.cross_entropy(out.trace.records["halting_logits"], oracle)
    base = super(DepthAdaptiveTransformer, model).task_loss(out, y)
    assert float(model.task_loss(out, y).detach()) == pytest.approx(float((base + halting).detach()), rel=1e-6)


def test_marked_majority_is_seeded_and_labelled_by_the_tokens_after_the_marker():
    from dynsearch.data import MARKER_TOKEN, marked_majority_arrays

    x, y = marked_majority_arrays(count=300)
    again, _ = marked_majority_arrays(count=300)
    assert np.array_equal(x, again) and x.shape == (300, 16, 8)
    tokens = x.argmax(-1)
    for row, label in zip(tokens, y):
        (marker,) = np.flatnonzero(row == MARKER_TOKEN)
        after = row[marker + 1 :]
        votes = np.bincount(after[after < 4], minlength=4)
        assert votes.argmax() == label and (votes == votes.max()).sum() == 1
    other, _ = marked_majority_arrays(count=300, seed=1)
    assert not np.array_equal(x, other)


def test_depth_space_default_point_builds():
    from dynsearch.data import load_splits
    from dynsearch.recipe import load_recipe
    from dynsearch.spaces import default_config

    recipe = load_recipe("seq-exits")
    splits = load_splits("marked-majority", 0)
    config = default_config(recipe, splits)
    assert config["mechanism"] == "depth_adaptive" and config["exits"]["policy"] == "predicted"
    assert build_model(config).exit_stages == [0, 1, 2]
