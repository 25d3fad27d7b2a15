import json

import pytest
import torch

from conftest import exits_config
from dynsearch.dynamic.cost import count_macs
from dynsearch.measure.evaluate import measure
from dynsearch.dynamic import build_model


def _confidence_split_threshold(model, x):
    """A threshold that makes some samples leave at the first head and others not."""
    with torch.no_grad():
        h = model.stages[0](model.stem(x))
        confidence = model.heads["0"](h).softmax(1).amax(1)
    return float(confidence.median())


def _head_confidence_quantiles(model, x):
    """Thresholds at quantiles of every head's confidence: together they make samples leave at each head."""
    thresholds = []
    with torch.no_grad():
        h = model.stem(x)
        for i, stage in enumerate(model.stages):
            h = stage(h)
            if str(i) in model.heads:
                confidence = model.heads[str(i)](h).softmax(1).amax(1)
                thresholds += torch.quantile(confidence, torch.tensor([0.1, 0.5, 0.9])).tolist()
    return thresholds


def _sharpen_later_heads(model):
    """Make later heads more confident than earlier ones, as training does, so every exit gets taken."""
    with torch.no_grad():
        for rank, key in enumerate(sorted(model.heads, key=int)):
            model.heads[key][-1].weight.mul_(4.0**rank)


def test_component_macs_match_hand_counts():
    model = build_model(exits_config())
    macs = model.component_macs()
    assert macs == {
        "stem": 9 * 1 * 8 * 8 * 8,  # 3x3 conv, 1 -> 8 channels, 8x8 output
        "stage0": 9 * 8 * 8 * 8 * 8,  # 8 -> 8, 8x8
        "stage1": 9 * 8 * 32 * 4 * 4,  # 8 -> 32, stride 2 -> 4x4
        "stage2": 9 * 32 * 64 * 2 * 2,  # 32 -> 64, stride 2 -> 2x2
        "exit0": 8 * 4 * 32 + 32 * 10,  # pool to 2x2, 32 -> 32 hidden -> 10
        "exit1": 32 * 4 * 32 + 32 * 10,
        "classifier": 64 * 10,
    }
    assert model.macs_full() == macs["stem"] + macs["stage0"] + macs["stage1"] + macs["stage2"] + macs["classifier"]


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_shapes_in_training_and_eval(kind):
    model = build_model(exits_config(kind=kind))
    x = torch.rand(5, 1, 8, 8)
    model.train()
    out = model(x)
    assert out.logits.shape == (5, 10)
    assert len(out.head_logits) == 3 and all(h.shape == (5, 10) for h in out.head_logits)
    assert all(bool((c == 1).all()) for c in out.trace.counts.values())  # every path runs in training
    loss = model.training_loss(out, torch.randint(0, 10, (5,)))
    loss.backward()
    assert all(p.grad is not None for p in model.heads.parameters())  # joint loss reaches every head
    model.eval()
    out = model(x)
    assert out.logits.shape == (5, 10) and out.head_logits is None
    assert out.trace.records["exit_index"].shape == (5,)
    assert not torch.isnan(out.logits).any()


def test_heads_exist_only_where_configured():
    model = build_model(exits_config(stages=[1]))
    assert list(model.heads.keys()) == ["1"]
    assert set(model.components()) == {"stem", "stage0", "stage1", "stage2", "exit1", "classifier"}
    static = build_model(exits_config(stages=[]))
    assert len(static.heads) == 0


def test_batch_decisions_equal_batch_one_decisions(digits):
    model = build_model(exits_config()).eval()
    x = digits.val_x[:64]
    model.threshold = _confidence_split_threshold(model, x)
    batch = model(x)
    singles = [model(x[i : i + 1]) for i in range(len(x))]
    single_exits = torch.cat([o.trace.records["exit_index"] for o in singles])
    single_logits = torch.cat([o.logits for o in singles])
    batch_exits = batch.trace.records["exit_index"]
    assert len(set(batch_exits.tolist())) > 1  # the test exercises real, mixed decisions
    differing = (batch_exits != single_exits).nonzero().flatten().tolist()
    # Round-off between batch sizes may flip a sample sitting exactly on the threshold.
    for i in differing:
        confidence = model.heads["0"](model.stages[0](model.stem(x[i : i + 1]))).softmax(1).amax()
        assert abs(float(confidence) - model.threshold) < 1e-5
    same = batch_exits == single_exits
    assert torch.allclose(batch.logits[same], single_logits[same], atol=1e-5)
    assert (batch.logits.argmax(1)[same] == single_logits.argmax(1)[same]).all()


def test_batch_with_samples_leaving_at_every_head_equals_batch_one(digits):
    """The batched forward's index bookkeeping (the first head lending its logits as the output, later
    heads and the final classifier writing their rows into it) gives each sample its batch-1 answer.
    A model trained for 150 steps: its heads' confidences spread so that one threshold sends samples
    to both exits and the final classifier."""
    torch.manual_seed(0)
    model = build_model(exits_config(stages=[0, 1], widths=(8, 16, 16), head_width=0)).train()
    optimiser = torch.optim.Adam(model.parameters(), 0.01)
    for _ in range(150):
        i = torch.randint(0, len(digits.train_x), (64,))
        loss = model.task_loss(model(digits.train_x[i]), digits.train_y[i])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    x = digits.val_x[:96]
    mixed = 0
    for threshold in (0.4, 0.5, 0.6, 0.7):
        model.threshold = threshold
        with torch.no_grad():
            batch = model(x)
            singles = [model(x[i : i + 1]) for i in range(len(x))]
        single_exits = torch.cat([o.trace.records["exit_index"] for o in singles])
        same = batch.trace.records["exit_index"] == single_exits
        assert same.float().mean() >= 0.98  # only samples on a threshold may flip with round-off
        assert torch.allclose(batch.logits[same], torch.cat([o.logits for o in singles])[same], atol=1e-5)
        mixed += len(set(batch.trace.records["exit_index"].tolist())) == 3
    assert mixed  # some threshold sent samples to both exits and the final classifier in one batch


@pytest.mark.parametrize("size", [1, 7])
def test_exit_free_model_serves_its_static_path(digits, size):
    model = build_model(exits_config(stages=[])).eval()
    x = digits.val_x[:size]
    with torch.no_grad():
        out = model(x)
        assert torch.equal(out.logits, model.forward_static(x))
    assert out.trace.records["exit_index"].tolist() == [2] * size
    assert {name: counts.tolist() for name, counts in out.trace.counts.items()} == {
        name: [1.0] * size for name in ("stem", "stage0", "stage1", "stage2", "classifier")}


def test_later_stages_never_run_after_an_exit_at_batch_one():
    model = build_model(exits_config(threshold=0.0)).eval()  # every sample leaves at the first head
    ran = []
    for name, module in model.components().items():
        module.register_forward_hook(lambda *_args, name=name: ran.append(name))
    out = model(torch.rand(1, 1, 8, 8))
    assert int(out.trace.records["exit_index"]) == 0
    assert ran == ["stem", "stage0", "exit0"]
    ran.clear()
    model.threshold = 1.01  # no head is ever confident enough
    model(torch.rand(1, 1, 8, 8))
    assert ran == ["stem", "stage0", "exit0", "stage1", "exit1", "stage2", "classifier"]


def test_batch_skips_work_for_samples_that_left(digits):
    model = build_model(exits_config()).eval()
    x = digits.val_x[:32]
    model.threshold = _confidence_split_threshold(model, x)
    seen = {}

    def record(_module, args, _output):
        seen["stage1"] = args[0].shape[0]

    model.stages[1].register_forward_hook(record)
    out = model(x)
    left_early = int((out.trace.records["exit_index"] == 0).sum())
    assert left_early > 0
    assert seen["stage1"] == len(x) - left_early  # stage 1 ran only on the samples still in


def traced_macs_match_flop_counter_at_batch_one(model, x) -> set[int]:
    """Sweep thresholds that send samples to every exit; at batch 1 each sample's traced MACs must
    equal FlopCounterMode / 2 of the whole forward. Returns the exit indices taken."""
    component_macs = model.component_macs()
    exits_seen = set()
    for threshold in [0.0, 1.01, *_head_confidence_quantiles(model, x)]:
        model.threshold = threshold
        for i in range(len(x)):
            sample = x[i : i + 1]
            with torch.no_grad():
                out = model(sample)
                counted = count_macs(lambda: model(sample))  # whole model, real exits, FLOPs / 2
            traced = out.trace.macs_per_sample(component_macs)
            assert float(traced[0]) == counted
            exits_seen.add(int(out.trace.records["exit_index"]))
    return exits_seen


@pytest.mark.parametrize("stages", [[0, 1], [0], [1], []])
@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_traced_macs_equal_flop_counter_at_batch_one(digits, stages, kind):
    model = build_model(exits_config(stages=stages, kind=kind)).eval()
    _sharpen_later_heads(model)
    exits_seen = traced_macs_match_flop_counter_at_batch_one(model, digits.val_x[:40])
    assert len(exits_seen) == (len(stages) + 1)  # every exit, and the full path, was exercised


def test_measure_averages_traced_macs(digits):
    model = build_model(exits_config()).eval()
    model.threshold = _confidence_split_threshold(model, digits.val_x)
    result = measure(model, digits.val_x, digits.val_y, batch_size=50)
    per_sample = [
        float(model(digits.val_x[i : i + 1]).trace.macs_per_sample(model.component_macs())[0])
        for i in range(len(digits.val_x))
    ]
    assert result["macs"] == pytest.approx(sum(per_sample) / len(per_sample), rel=1e-3)
    assert result["macs"] < result["macs_full"] + model.component_macs()["exit0"] + model.component_macs()["exit1"]
    stats = result["stats"]
    assert stats["exit_stages"] == [0, 1, 2] and sum(stats["exit_histogram"]) == pytest.approx(1.0)
    exits = torch.cat([model(digits.val_x[i : i + 1]).trace.records["exit_index"] for i in range(len(digits.val_x))])
    assert stats["exit_histogram"][0] == pytest.approx(float((exits == 0).float().mean()), abs=0.01)


def test_config_json_rebuilds_the_same_model():
    model = build_model(exits_config())
    again = build_model(json.loads(json.dumps(model.config)))
    again.load_state_dict(model.state_dict())
    x = torch.rand(3, 1, 8, 8)
    model.eval(), again.eval()
    assert torch.equal(model(x).logits, again(x).logits)


def test_digits_splits_are_deterministic_and_disjoint(digits):
    from dynsearch.data import load_splits

    again = load_splits("digits", 0)
    assert torch.equal(again.test_x, digits.test_x)
    other = load_splits("digits", 1)
    assert not torch.equal(other.test_x, digits.test_x)
    assert len(digits.train_x) + len(digits.val_x) + len(digits.test_x) == 1797
