"""Gated ResNets: hand-counted MACs, the paper losses by hand, SkipNet's stages, statistics, the space."""
import pytest
import torch

from dynsearch.dynamic import Trace, build_model
from dynsearch.dynamic.gates import AIGNet, SkipNet


def _aig(**gates):
    config = AIGNet.tiny_configs()[0]
    config["gates"].update(gates)
    return build_model(config)


def test_component_macs_match_hand_counts():
    macs = _aig().component_macs()
    assert macs == {
        "stem": 9 * 1 * 4 * 64,  # 3x3 conv 1 -> 4 channels at 8x8
        "gate0": 4 * 8 + 8 * 2,  # pooled 4 -> FC 8 -> FC 2 (ConvNet-AIG gate)
        "block0": 2 * 9 * 4 * 4 * 64,  # residual branch only: two 3x3 convs 4 -> 4 at 8x8
        "gate1": 4 * 8 + 8 * 2,
        "block1": 2 * 9 * 4 * 4 * 64,
        "block2": 9 * 4 * 8 * 16 + 9 * 8 * 8 * 16 + 4 * 8 * 16,  # down-sampling block, 1x1 projection, never gated
        "gate3": 8 * 8 + 8 * 2,
        "block3": 2 * 9 * 8 * 8 * 16,
        "classifier": 8 * 10,
    }
    skip = build_model(SkipNet.tiny_configs()[0]).component_macs()
    assert skip["gate0"] == 9 * 4 * 8 * 16 + 8 * 2  # SkipNet gate: 3x3 stride-2 conv 4 -> 8 at 4x4, FC 8 -> 2


def test_only_blocks_with_matching_shapes_are_gated():
    model = _aig(blocks=[0, 1, 2, 3])
    assert model.gated == [0, 1, 3]  # block 2 halves the resolution
    assert model.decision_components() == ["gate0", "gate1", "gate3"]


def _trace(values):
    values = torch.tensor(values)
    return Trace({}, {"gate_values": values, "gates": values > 0.5})


def test_target_rate_loss_is_convnet_aig():
    model = _aig(objective="target_rate", target_rate=[0.3, 0.5, 0.7], loss_weight=2.0)
    # batch rates 1.0, 0.5, 0.5 against targets 0.3, 0.5, 0.7
    loss = model.aux_loss(_trace([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]))
    assert float(loss) == pytest.approx(2.0 * (0.7**2 + 0.0 + 0.2**2) / 3)


def test_budget_loss_is_dynamic_routing():
    model = _aig(objective="budget", budget=0.5, loss_weight=2.0)
    macs = model.component_macs()
    gated = macs["block0"] + macs["block1"] + macs["block3"]
    static = sum(macs.values()) - gated
    expected = static + 2 * macs["block0"]  # both samples run two of the three gated blocks (equal costs)
    loss = model.aux_loss(_trace([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]))
    assert float(loss) == pytest.approx(2.0 * (expected / (static + gated) - 0.5) ** 2)


def test_eval_gates_are_hard_noise_free_and_counted():
    model = _aig().eval()
    x = torch.rand(8, 1, 8, 8)
    first, second = model(x), model(x)
    assert torch.equal(first.trace.records["gates"], second.trace.records["gates"])  # no noise at eval
    for j, k in enumerate(model.gated):
        assert torch.equal(first.trace.counts[f"block{k}"], first.trace.records["gates"][:, j].float())
    stats = model.trace_stats(first.trace)
    assert stats["gate_blocks"] == [0, 1, 3]
    assert stats["gate_rates"] == pytest.approx(first.trace.records["gates"].float().mean(0).tolist())


def test_a_training_batch_of_one_sample_works():
    model = _aig().train()
    out = model(torch.rand(1, 1, 8, 8))
    model.training_loss(out, torch.tensor([3])).backward()
    assert model.training  # every batch-norm layer back in training mode
    assert all(m.training for m in model.modules())


def test_training_gates_are_straight_through_gumbel():
    model = _aig(temperature=1.0).train()
    values = model(torch.rand(64, 1, 8, 8)).trace.records["gate_values"]
    assert set(values.detach().unique().tolist()) <= {0.0, 1.0}  # hard in the forward pass
    assert values.requires_grad  # soft in the backward pass


def test_skipnet_rl_stage_samples_and_reinforces_gates():
    torch.manual_seed(0)
    model = build_model(SkipNet.tiny_configs()[1]).train()
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    model.set_training_progress(0.2)  # supervised stage: hard straight-through gates, task loss only
    out = model(x)
    assert "gate_log_probs" not in out.trace.records and float(model.aux_loss(out.trace)) == 0.0
    model.set_training_progress(0.6)  # hybrid RL stage
    out = model(x)
    log_probs = out.trace.records["gate_log_probs"]
    assert log_probs.shape == (32, 3) and (log_probs <= 0).all()
    assert not out.trace.records["gate_values"].requires_grad  # sampled actions: no straight-through path
    model.zero_grad()
    model.training_loss(out, y).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.gates["0"].layers[-1].parameters())


def test_gates_space_default_point_builds(digits):
    from dynsearch.recipe import load_recipe
    from dynsearch.spaces import default_config
    from dynsearch.search_spaces.gates import gateable_blocks

    recipe = load_recipe("digits-gates")
    assert gateable_blocks(recipe.backbone) == [0, 1, 2, 4, 5, 7, 8]
    config = default_config(recipe, digits)
    model = build_model(config)
    assert config["mechanism"] == "aig" and model.gated == [0, 1, 2, 4, 5, 7, 8]
    skip = default_config(recipe.with_overrides(defaults={"gate_kind": "skipnet", "skipnet_objective": "rl"}), digits)
    assert skip["mechanism"] == "skipnet" and skip["gates"]["objective"] == "rl"
