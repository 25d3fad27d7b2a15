"""Experts family: MoE routing, capacity and load-balance loss, CondConv's mixing and cost, the
experts and cross-family spaces. Hand-computed numbers; the conformance suite covers the contract."""
import json

import optuna
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from dynsearch import cli
from dynsearch.dynamic.cost import count_macs
from dynsearch.dynamic import Trace, build_model
from dynsearch.dynamic.experts import CondConv2d, CondConvNet, MoENet, within_capacity
from dynsearch.recipe import load_recipe
from dynsearch.search_spaces import cross_family


def test_list_json_shows_the_experts_family(capsys):
    assert cli.main(["list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    by_name = {m["name"]: m for m in listing["mechanisms"]}
    assert by_name["moe"]["family"] == "experts" and "Shazeer" in by_name["moe"]["paper"]
    assert by_name["condconv"]["family"] == "experts" and "1904.04971" in by_name["condconv"]["paper"]
    assert {"experts", "cross_family"} <= set(listing["spaces"])
    assert {"mnist1d-moe", "digits-condconv", "digits-cross-family"} <= set(listing["recipes"])


def test_capacity_keeps_first_choices_first_then_token_order():
    chosen = torch.tensor([[[0, 1], [0, 2], [0, 1]]])  # 3 tokens, top-2 of 3 experts
    kept = within_capacity(chosen, num_experts=3, capacity=2)
    # Expert 0 is every token's first choice: the third token's first choice overflows.
    assert kept.tolist() == [[[True, True], [True, True], [False, True]]]


def test_moe_mlp_macs_by_hand_and_top_k():
    config = MoENet.tiny_configs()[0]  # input 12, widths [8, 8], both layers 4 experts, k=1
    model = build_model(config).eval()
    macs = model.component_macs()
    assert (macs["stem"], macs["router0"], macs["expert0_0"], macs["classifier"]) == (12 * 8, 8 * 4, 8 * 8, 8 * 4)
    assert model.macs_full() == 96 + 64 + 64 + 32  # the dense MLP: one expert per layer, no router
    x = torch.randn(5, 12)
    with torch.no_grad():
        per_sample = model(x).trace.macs_per_sample(macs)
    assert per_sample.tolist() == [96 + 2 * (32 + 64) + 32] * 5  # k=1: one expert per layer, plus the routers
    two = build_model({**config, "experts": {**config["experts"], "top_k": 2}}).eval()
    with torch.no_grad():
        assert two(x).trace.macs_per_sample(macs).tolist() == [96 + 2 * (32 + 2 * 64) + 32] * 5


def test_moe_transformer_counts_tokens_per_expert_and_only_chosen_experts_run():
    config = MoENet.tiny_configs()[2]  # 6 tokens, top-2 of 4 experts, capacity factor 1: 3 tokens per expert
    torch.manual_seed(0)
    model = build_model(config).eval()
    calls = []
    for e, expert in enumerate(model.layers[1].mixture.experts):
        expert.register_forward_pre_hook(lambda _m, args, e=e: calls.append((e, args[0].shape[0])))
    with torch.no_grad():
        out = model(torch.randn(1, 6, 8))
    processed = {e: int(out.trace.counts[f"expert1_{e}"][0]) for e in range(4)}
    assert dict(calls) == {e: n for e, n in processed.items() if n}  # an expert with no token is never called
    assert all(n <= 3 for n in processed.values()) and 6 <= sum(processed.values()) <= 12
    assert model.macs_full() == sum(model.component_macs()[n] for n in ("stem", "layer0", "attention1", "classifier")) \
        + 6 * model.component_macs()["expert1_0"]


def test_training_capacity_is_over_the_batch_and_drops_overflow():
    config = MoENet.tiny_configs()[0]
    config = {**config, "experts": {**config["experts"], "capacity_factor": 0.25}}  # 16 tokens, 4 experts: 1 each
    model = build_model(config).train()
    out = model(torch.randn(16, 12))
    for layer in (0, 1):
        assert sum(float(out.trace.counts[f"expert{layer}_{e}"].sum()) for e in range(4)) <= 4


def test_load_balance_loss_is_switch_formula():
    model = build_model(MoENet.tiny_configs()[1])  # 3 experts, alpha 0.01, one expert layer
    probs = torch.tensor([[[0.8, 0.2, 0.0]], [[0.6, 0.2, 0.2]]])
    dispatch = torch.tensor([[[1.0, 0.0, 0.0]], [[0.5, 0.5, 0.0]]])
    loss = model.aux_loss(Trace({}, {"router_probs": probs, "dispatch": dispatch}))
    f, p = torch.tensor([0.75, 0.25, 0.0]), torch.tensor([0.7, 0.2, 0.1])
    assert float(loss) == pytest.approx(0.01 * 3 * float((f * p).sum()))  # alpha * E * sum f_i P_i


def test_expert_load_is_the_share_of_tokens_per_layer():
    model, x = build_model(MoENet.tiny_configs()[0]).eval(), torch.randn(32, 12)
    with torch.no_grad():
        trace = model(x).trace
    stats = model.trace_stats(trace)
    assert stats["expert_ids"][:4] == ["L0e0", "L0e1", "L0e2", "L0e3"]
    assert sum(stats["expert_load"][:4]) == pytest.approx(1.0) and sum(stats["expert_load"][4:]) == pytest.approx(1.0)
    assert stats["expert_load"][1] == pytest.approx(float(trace.counts["expert0_1"].sum()) / 32)


def test_condconv_macs_by_hand_and_mixing_is_per_example():
    torch.manual_seed(0)
    for experts in (4, 8):
        layer = CondConv2d(nn.Conv2d(2, 3, 3, padding=1, bias=False), experts)
        conv, router, mixing = 3 * 2 * 9 * 25, 2 * experts, experts * 3 * 2 * 9
        assert count_macs(lambda: layer(torch.zeros(1, 2, 5, 5))) == conv + router + mixing
    x = torch.randn(3, 2, 5, 5)
    out = layer(x)
    for i in range(3):  # the grouped convolution equals one convolution per example with its mixed kernel
        r = torch.sigmoid(layer.router(x[i : i + 1]))[0]
        kernel = (r[:, None] * layer.weight).sum(dim=0).view(3, 2, 3, 3)
        assert torch.allclose(out[i], F.conv2d(x[i : i + 1], kernel, padding=1)[0], atol=1e-5)


def test_condconv_routers_learn():
    model = build_model(CondConvNet.tiny_configs()[0]).train()
    out = model(torch.randn(8, 1, 8, 8))
    F.cross_entropy(out.logits, torch.arange(8) % 4).backward()
    for conv in model.condconvs:
        assert conv.router[2].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("family", ["static", "exits", "gates", "condconv"])
def test_cross_family_asks_only_the_chosen_familys_parameters(family, digits):
    recipe = load_recipe("digits-cross-family")
    study = optuna.create_study()
    study.enqueue_trial({"mechanism_family": family})
    trial = study.ask()
    config = cross_family.define(trial, recipe, digits)
    asked = set(trial.distributions)
    mechanisms = {"static": {"exits"}, "exits": {"exits"}, "gates": {"aig", "skipnet"}, "condconv": {"condconv"}}
    assert config["mechanism"] in mechanisms[family]
    others = {"exits": "exit_threshold", "gates": "gate_kind", "condconv": "condconv_experts"}
    assert {name for fam, name in others.items() if fam != family} & asked == set()
    backbone = {name for name in asked if name.startswith("backbone_")}
    assert backbone == {"backbone_depth", *(f"backbone_width_{i}" for i in range(3))}  # the recipe's ranges, every family
    if family == "static":
        assert asked - backbone == {"mechanism_family", "lr"} and config["exits"]["stages"] == []
    else:
        assert others[family] in asked
    model = build_model(config)
    if family == "static":
        assert model.macs_full() == sum(model.component_macs().values())


def test_report_draws_expert_panels_with_their_labels():
    from dynsearch.run.report import TrialPoint, stat_panels

    moe_stats = {"expert_ids": ["L0e0", "L0e1"], "expert_load": [0.25, 0.75]}
    condconv_stats = {"expert_ids": ["L0e0"], "expert_routing": [0.5]}
    moe = TrialPoint(1, "COMPLETE", {"macs": 1.0, "macs_full": 1.0, "stats": moe_stats,
                                     "stat_views": MoENet.stat_views_record(moe_stats)})
    condconv = TrialPoint(2, "COMPLETE", {"macs": 1.0, "macs_full": 1.0, "stats": condconv_stats,
                                          "stat_views": CondConvNet.stat_views_record(condconv_stats)})
    panels = {key: (view.title, labels, series) for key, view, labels, series in stat_panels([moe, condconv])}
    assert panels["expert_load"] == ("expert load", ["L0e0", "L0e1"], {1: {"L0e0": 0.25, "L0e1": 0.75}})
    assert panels["expert_routing"] == ("CondConv routing weight", ["L0e0"], {2: {"L0e0": 0.5}})
