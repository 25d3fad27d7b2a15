"""The conformance suite over every tiny config of every registered mechanism (registering is what gets tested)."""
import pytest

from dynsearch.dynamic import MECHANISMS, build_model
from dynsearch.testing.conformance import CHECKS, cases

CASES = list(cases())

# Mechanisms without a staged ONNX form (their cards say "ONNX not supported"; test_bundle.py checks
# that), for which the suite's ONNX checks skip: halting loops a cell a data-dependent number of times;
# CondConv's per-example grouped convolution bakes the batch size into the graph; MoE routes tokens to
# experts by index; glance crops the original image at a position chosen at run time and carries a GRU state.
NO_ONNX_FORM = {"act", "pondernet", "moe", "condconv", "glance"}
# Mechanisms whose knobs only decide where a sample stops, so their operating points are replayed from one
# recorded pass (measure/points.py); gates and experts change what runs downstream: one real pass per value.
REPLAYS = {"exits", "depth_adaptive", "act", "pondernet", "glance"}


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__.removeprefix("check_"))
@pytest.mark.parametrize("config", [c for _, c in CASES], ids=[i for i, _ in CASES])
def test_conformance(config, check):
    check(config)


def test_every_mechanism_is_covered():
    covered = {config["mechanism"] for _, config in CASES}
    assert covered == set(MECHANISMS)
    assert {"exits", "gates"} <= {m.family for m in MECHANISMS.values()}


def test_the_onnx_checks_skip_exactly_the_mechanisms_without_an_onnx_form():
    """A form that went missing would make the ONNX checks skip silently; one added must be covered."""
    without = {config["mechanism"] for _, config in CASES if build_model(config).onnx_form() is None}
    assert without == NO_ONNX_FORM, "update NO_ONNX_FORM (and the cards' ONNX line) to the mechanisms without a form"


def test_the_replay_check_skips_exactly_the_mechanisms_that_do_not_record():
    """A record() that went missing would make the sweep fall back to real passes silently (slow, not wrong);
    one added must be covered by check_replay_matches_real_eval_at_each_knob_value."""
    from dynsearch.measure.points import record_split

    recording = set()
    for _, config in CASES:
        model = build_model(config)
        if record_split(model, model.example_input(2), batch_size=2) is not None:
            recording.add(config["mechanism"])
    assert recording == REPLAYS, "update REPLAYS to the mechanisms whose record() returns their outputs"
