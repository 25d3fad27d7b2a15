"""Operating points from one pass (measure/points.py): on models trained on digits, the replayed sweep gives the
points of the per-value real sweep, runs the model once per split, and the test split is measured only where asked
(the conformance suite checks replay against real passes batch by batch on every mechanism's tiny configs:
check_replay_matches_real_eval_at_each_knob_value)."""
import pytest
import torch

from conftest import exits_config
from dynsearch.dynamic import build_model
from dynsearch.dynamic.gates import SkipNet
from dynsearch.measure.points import (
    current_knobs, figures_on_test_split, knob_grid, remeasure, remeasured_points, sweep,
)

HALTING = {"input_shape": [1, 8, 8], "num_classes": 10, "backbone": {"kind": "recurrent", "widths": [32], "depth": 1}}
CONFIGS = {
    "confidence": exits_config(stages=(0, 1), threshold=0.6, widths=(4, 8, 8), head_width=16),
    "patience": {**exits_config(stages=(0, 1), widths=(4, 8, 8), head_width=16),
                 "exits": {"stages": [0, 1], "head_width": 16, "policy": "patience", "patience": 1}},
    "entropy": {**exits_config(stages=(0, 1), widths=(4, 8, 8), head_width=16),
                "exits": {"stages": [0, 1], "head_width": 16, "policy": "entropy", "threshold": 1.0}},
    "act": {"mechanism": "act", **HALTING, "halting": {"max_steps": 4, "tau": 0.05, "bias_init": 1.0}},
    "pondernet": {"mechanism": "pondernet", **HALTING, "halting": {"max_steps": 4, "bias_init": -1.0}},
    "skipnet": SkipNet.tiny_configs()[0],  # gates: no replay, one real pass per value
}


def _trained(name, digits):
    """The model of ``CONFIGS[name]`` after one seeded epoch on digits (batch 32), in eval mode."""
    torch.manual_seed(0)
    model = build_model(CONFIGS[name])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(digits.train_x), generator=generator)
    for step, start in enumerate(range(0, len(order), 32)):
        model.set_training_progress(start / len(order))
        batch = order[start : start + 32]
        optimizer.zero_grad()
        model.training_loss(model(digits.train_x[batch]), digits.train_y[batch]).backward()
        optimizer.step()
    return model.eval()


def _figures(point):
    return {k: v for k, v in point.items() if k != "measured_by"}


# 7: many batches whose later stages run on a single sample, where a replay could part from the real
# pass. SkipNet has no replay (both sweeps are real passes), so it is checked at one batch size.
@pytest.mark.parametrize("name, batch_size", [(name, batch_size) for name in sorted(CONFIGS) for batch_size in (256, 7)
                                              if (name, batch_size) != ("skipnet", 7)])
def test_replayed_sweep_gives_the_points_of_the_real_sweep(name, batch_size, digits):
    model = _trained(name, digits)
    before = model.runtime_policy()
    replayed = sweep(model, digits, batch_size)
    real = sweep(model, digits, batch_size, replay=False)
    assert model.runtime_policy() == before, "the sweep did not restore the knobs"
    expected = "real" if name == "skipnet" else "replay"
    assert {p["measured_by"] for p in replayed} == {expected} and {p["measured_by"] for p in real} == {"real"}
    # Accuracy, MACs (sums of whole component counts: exact), stats and test figures: equal, point by point.
    assert [_figures(p) for p in replayed] == [_figures(p) for p in real]
    assert len({p["macs"] for p in real}) > 1, "the knob changes nothing: the comparison would prove nothing"


@pytest.mark.parametrize("name", ["confidence", "act"])
def test_one_record_pass_per_split(name, digits):
    """The replayed sweep runs the model's first component once per sample and split; the real sweep
    once per sample, split and knob value."""
    model = _trained(name, digits)
    first = model.cell if name == "act" else model.stem
    model.component_macs()  # measured once, before the count (it runs each component at batch 1)
    rows = []
    hook = first.register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
    try:
        sweep(model, digits, 256)
        replayed_rows = sum(rows)
        rows.clear()
        sweep(model, digits, 256, replay=False)
    finally:
        hook.remove()
    samples = len(digits.val_x) + len(digits.test_x)
    if name == "act":  # the record runs every ponder step of every sample; a real pass 1 to max_steps of them
        assert replayed_rows == model.max_steps * samples < sum(rows)
    else:
        assert (replayed_rows, sum(rows)) == (samples, len(knob_grid(model)) * samples)


def test_validation_only_sweep_then_test_figures_and_real_remeasure_for_chosen_points(digits):
    model = _trained("confidence", digits)
    full = sweep(model, digits, 256)
    val_only = sweep(model, digits, 256, test=False)
    assert not any({"test_accuracy", "test_macs"} & set(p) for p in val_only)
    assert [{k: p[k] for k in val_only[0]} for p in full] == val_only
    chosen = [p for p in val_only if p["trained"]] + val_only[::4]
    knobs_list = [p["knobs"] for p in chosen]
    test = figures_on_test_split(model, digits, knobs_list, 256)
    for point, figures in zip(chosen, test):
        assert figures == {"test_accuracy": full[point["point"]]["test_accuracy"],
                           "test_macs": full[point["point"]]["test_macs"], "measured_by": "replay"}
    before = current_knobs(model)
    again = remeasure(model, digits, knobs_list, 256)
    assert current_knobs(model) == before
    figure_keys = ("accuracy", "macs", "stats", "test_accuracy", "test_macs")
    for point, figures in zip(chosen, again):  # real passes agree with the replayed points here
        assert figures == {**{k: full[point["point"]][k] for k in figure_keys}, "measured_by": "real"}
    val_only_again = remeasure(model, digits, knobs_list, 256, test=False)  # the figures a front is chosen on
    assert val_only_again == [{k: f[k] for k in ("accuracy", "macs", "stats", "measured_by")} for f in again]
    assert figures_on_test_split(model, digits, [], 256) == [] == remeasure(model, digits, [], 256)


@pytest.mark.parametrize("real_test", [False, True])
def test_remeasured_points_settle_the_chosen_points_only(real_test, digits):
    model = _trained("patience", digits)
    full = sweep(model, digits, 256)
    val_only = sweep(model, digits, 256, test=False)
    trained = next(p["point"] for p in val_only if p["trained"])
    indices = [trained, 0, trained]  # a point named twice is measured once
    settled = remeasured_points(model, digits, val_only, indices, 256, real_test=real_test)
    assert len(settled) == len(val_only)
    for k, point in enumerate(settled):
        if k not in indices:
            assert point == val_only[k]
            continue
        assert point == {**full[k], "measured_by": "real", "test_measured_by": "real" if real_test else "replay"}


@pytest.mark.parametrize("name", ["confidence", "entropy"])
def test_thresholds_exactly_on_recorded_scores_decide_as_the_real_pass(name, digits):
    """A threshold equal to a sample's score at an exit (a tie: confidence leaves at >=, entropy stays
    at <) is decided alike by replay and by the real pass: both compare the same float32 score."""
    from dynsearch.measure.evaluate import measure
    from dynsearch.measure.points import record_split, replay_split

    model = _trained(name, digits)
    records = record_split(model, digits.val_x, 256)
    scores = torch.cat([r["scores"] for r in records])  # [N, exits]
    ties = 0
    for exit_position in range(scores.shape[1]):
        for sample in (0, 17, 123, 300):
            threshold = float(scores[sample, exit_position])  # float32 -> float: exact
            model.set_runtime_knobs({"threshold": threshold})
            real, replayed = measure(model, digits.val_x, digits.val_y, 256), replay_split(model, records, digits.val_y)
            assert replayed["per_sample_macs"] == real["per_sample_macs"], (exit_position, sample)
            assert (replayed["accuracy"], replayed["stats"]) == (real["accuracy"], real["stats"])
            if exit_position == 0:  # the tied sample itself: confidence leaves (>=), entropy stays (<)
                batch, row = divmod(sample, 256)
                with torch.no_grad():
                    exit_index = model.replay(records[batch]).trace.records["exit_index"][row]
                assert bool(exit_index == model.exit_stages[0]) == (name == "confidence")
            ties += 1
    assert ties == 4 * scores.shape[1]
