"""Halting mechanisms (ACT, PonderNet): costs a reader can check by hand, knobs, statistics, space, report."""
import optuna
import pytest
import torch

from dynsearch.dynamic import build_model
from dynsearch.dynamic.base import Trace
from dynsearch.dynamic.halting import _tiny
from dynsearch.recipe import load_recipe
from dynsearch.run.report import TrialPoint, stat_panels
from dynsearch.spaces import default_config, get_space

IN, HIDDEN, CLASSES, STEPS = 6, 8, 3, 4
CELL_MACS = 3 * HIDDEN * (IN + 1 + HIDDEN)  # GRU: three gates over [input, flag] and the state


def _eval(config, x):
    torch.manual_seed(0)
    model = build_model(config).eval()
    with torch.no_grad():
        return model, model(x)


@pytest.mark.parametrize("mechanism", ["act", "pondernet"])
def test_component_macs_by_hand_and_the_loop_stops(mechanism):
    x = torch.randn(5, IN)
    model, out = _eval(_tiny(mechanism, bias_init=10.0), x)  # h = sigmoid(~10): halts at the first step
    assert model.component_macs() == {"cell": CELL_MACS, "halting": HIDDEN, "classifier": HIDDEN * CLASSES}
    assert model.macs_full() == STEPS * CELL_MACS + HIDDEN * CLASSES
    assert out.trace.counts["cell"].tolist() == [1.0] * 5
    assert out.trace.macs_per_sample(model.component_macs()).tolist() == [CELL_MACS + HIDDEN + HIDDEN * CLASSES] * 5
    model, out = _eval(_tiny(mechanism, bias_init=-10.0), x)  # never halts: max steps, no halting unit at the last
    assert out.trace.counts["cell"].tolist() == [STEPS] * 5
    assert out.trace.counts["halting"].tolist() == [STEPS - 1] * 5
    stats = model.trace_stats(out.trace)
    assert stats == {"mean_ponder_steps": STEPS, "ponder_steps": [1, 2, 3, 4], "ponder_histogram": [0, 0, 0, 1.0]}


@pytest.mark.parametrize("mechanism, low, high", [("act", 0.5, 0.99), ("pondernet", 0.1, 0.9)])
def test_halting_threshold_is_a_runtime_knob(mechanism, low, high):
    model = build_model(_tiny(mechanism, bias_init=-1.0)).eval()
    assert set(model.runtime_knobs()) == {"halting_threshold"}
    x = torch.randn(64, IN)
    mean_steps = {}
    for threshold in (low, high):
        model.set_runtime_knobs({"halting_threshold": threshold})
        assert model.runtime_policy()["halting_threshold"] == threshold
        with torch.no_grad():
            mean_steps[threshold] = model.trace_stats(model(x).trace)["mean_ponder_steps"]
    assert mean_steps[low] < mean_steps[high]
    with pytest.raises(ValueError, match="no runtime knob"):
        model.set_runtime_knobs({"exit_threshold": 0.5})
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        model.set_runtime_knobs({"halting_threshold": 1.5})


def test_act_ponder_cost_and_weights():
    """Training: N + R per sample, R in (0, 1]; the aux loss is tau times its mean."""
    model = build_model(_tiny("act", tau=0.1, bias_init=0.0)).train()
    out = model(torch.randn(16, IN))
    steps, cost = out.trace.records["ponder_steps"].double(), out.trace.records["ponder_cost"].double()
    remainder = cost - steps
    assert ((remainder > 0) & (remainder <= 1)).all()
    assert torch.allclose(model.aux_loss(out.trace), 0.1 * out.trace.records["ponder_cost"].mean())
    model.aux_loss(out.trace).backward()
    assert model.halting.weight.grad.abs().sum() > 0  # the ponder cost trains the halting unit (through R)


def test_pondernet_halting_distribution_and_kl():
    model = build_model(_tiny("pondernet", lambda_p=0.3, beta=0.5, bias_init=0.0)).train()
    probs = model(torch.randn(16, IN)).trace.records["halting_probs"]
    assert probs.shape == (16, STEPS) and torch.allclose(probs.sum(dim=1), torch.ones(16))
    prior = 0.3 * 0.7 ** torch.arange(STEPS, dtype=torch.float32)
    at_prior = Trace(records={"halting_probs": (prior / prior.sum()).expand(16, STEPS)})
    assert float(model.aux_loss(at_prior)) == pytest.approx(0.0, abs=1e-6)
    assert float(model.aux_loss(model(torch.randn(16, IN)).trace).detach()) > 0


def test_space_asks_the_mechanism_and_its_own_knobs():
    recipe = load_recipe("parity-halting")
    from dynsearch.data import DATASETS

    data = DATASETS[recipe.data.name]
    config = default_config(recipe, data)
    assert config["mechanism"] == "act" and config["backbone"]["widths"] == [128]
    assert set(config["halting"]) == {"max_steps", "bias_init", "tau"}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        config = get_space("halting").define(trial, recipe, data)
        build_model(config)
        keys = {"tau"} if config["mechanism"] == "act" else {"lambda_p", "beta"}
        assert set(config["halting"]) == {"max_steps", "bias_init", *keys}
        seen.add(config["mechanism"])
    assert seen == {"act", "pondernet"}


def test_report_draws_the_ponder_panel():
    model, out = _eval(_tiny("act", bias_init=-1.0), torch.randn(32, IN))
    stats = model.trace_stats(out.trace)
    metrics = {"macs": 1.0, "macs_full": 2.0, "stats": stats, "stat_views": model.stat_views_record(stats)}
    points = [TrialPoint(number=0, state="COMPLETE", metrics=metrics)]
    [(key, view, labels, series)] = stat_panels(points)
    assert key == "ponder_histogram" and view.x_label == "ponder steps"
    assert labels == [1, 2, 3, 4] and sum(series[0].values()) == pytest.approx(1.0)
