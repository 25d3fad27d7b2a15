"""Exit policies and training schemes of the seed papers, checked by hand."""
import math

import pytest
import torch
from torch.nn import functional as F

from conftest import exits_config
from dynsearch.dynamic import build_model
from dynsearch.dynamic.exits import confident, entropy_nats


def test_entropy_and_normalised_entropy_rules():
    logits = torch.tensor([[0.7, 0.1, 0.1, 0.1]]).log()
    entropy = -(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1))
    assert float(entropy_nats(logits)) == pytest.approx(entropy)
    assert bool(confident("entropy", logits, entropy + 1e-3)) and not bool(confident("entropy", logits, entropy - 1e-3))
    speed = entropy / math.log(4)  # FastBERT: entropy / log K
    assert bool(confident("fastbert", logits, speed + 1e-3)) and not bool(confident("fastbert", logits, speed - 1e-3))
    assert bool(confident("confidence", logits, 0.7)) and not bool(confident("confidence", logits, 0.71))


def _always_say(head, label):
    """Make an exit head answer ``label`` whatever its input."""
    with torch.no_grad():
        head[-1].weight.zero_()
        head[-1].bias.copy_(F.one_hot(torch.tensor(label), 10).float() * 5)


@pytest.mark.parametrize(
    "labels, patience, leaves_at",
    [((1, 1, 1), 1, 1), ((1, 2, 2), 1, 2), ((1, 2, 3), 1, 3), ((4, 4, 4), 2, 2), ((4, 4, 5), 2, 3)],
)
def test_pabee_leaves_once_the_prediction_held_for_patience_heads(labels, patience, leaves_at):
    config = exits_config(stages=[0, 1, 2], widths=(4, 4, 4, 4), kind="mlp")
    config["exits"].update(policy="patience", patience=patience)
    model = build_model(config).eval()
    for i, label in enumerate(labels):
        _always_say(model.heads[str(i)], label)
    out = model(torch.rand(1, 1, 8, 8))
    assert int(out.trace.records["exit_index"]) == leaves_at  # stage 3 is the final classifier
    batch = model(torch.rand(5, 1, 8, 8))
    assert batch.trace.records["exit_index"].tolist() == [leaves_at] * 5


def _head_logits(model, x):
    model.train()
    return model(x)


def test_pabee_linear_loss_weights():
    config = exits_config()
    config["exits"]["loss_weights"] = "linear"
    model = build_model(config)
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    out = _head_logits(model, x)
    ce = [F.cross_entropy(h, y) for h in out.head_logits]
    assert float(model.task_loss(out, y).detach()) == pytest.approx(float(((1 * ce[0] + 2 * ce[1] + 3 * ce[2]) / 6).detach()), rel=1e-6)


def test_fastbert_heads_distil_from_the_final_classifier():
    config = exits_config()
    config["exits"].update(policy="fastbert", threshold=0.5, loss_weight=1.0)
    model = build_model(config)
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    out = _head_logits(model, x)
    final = out.head_logits[-1].softmax(1)
    kl = [float((final * (final.log() - h.log_softmax(1))).sum(1).mean().detach()) for h in out.head_logits[:-1]]
    assert float(model.task_loss(out, y).detach()) == pytest.approx(float(F.cross_entropy(out.head_logits[-1], y).detach()) + sum(kl), rel=1e-5)


def test_two_stage_trains_backbone_first_then_only_the_heads():
    config = exits_config()
    config["exits"]["training"] = "two_stage"
    model = build_model(config)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    model.train()
    model.set_training_progress(0.1)  # DeeBERT stage 1: backbone and final classifier
    model.training_loss(model(x), y).backward()
    assert all(p.grad is not None for p in model.classifier.parameters())
    assert all(p.grad is None for p in model.heads.parameters())
    model.zero_grad(set_to_none=True)
    model.set_training_progress(0.6)  # stage 2: exit heads only, backbone frozen
    bn = model.stem[1]
    assert not bn.training  # frozen batch-norm statistics
    before = bn.running_mean.clone()
    model.training_loss(model(x * 3 + 1), y).backward()
    assert torch.equal(bn.running_mean, before)
    assert all(p.grad is None for p in [*model.stem.parameters(), *model.stages.parameters(), *model.classifier.parameters()])
    assert all(p.grad is not None for p in model.heads.parameters())
    model.set_training_progress(0.1)
    assert bn.training  # back in stage 1 (e.g. a new fit): the backbone trains again


def test_two_stage_without_exit_heads_trains_the_backbone_throughout():
    config = exits_config(stages=[])
    config["exits"]["training"] = "two_stage"
    model = build_model(config).train()
    model.set_training_progress(0.9)
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    model.training_loss(model(x), y).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_exits_space_asks_the_policy_knobs(digits):
    import optuna

    from dynsearch.recipe import load_recipe
    from dynsearch.search_spaces import exit_policies as space
    from dynsearch.spaces import backbone_defaults

    recipe = load_recipe("digits-exit-policies")
    for policy, knob in [("confidence", "threshold"), ("entropy", "threshold"), ("fastbert", "threshold"), ("patience", "patience")]:
        params = {**backbone_defaults(recipe), **space.DEFAULTS, "exit_policy": policy}
        config = space.define(optuna.trial.FixedTrial(params), recipe, digits)
        assert config["exits"]["policy"] == policy and knob in config["exits"]
        build_model(config)
