"""The DynamicModel conformance suite: the checks every registered mechanism must pass.

``tests/test_conformance.py`` runs every check on every tiny config of every
registered mechanism, built-in or from a plugin (``cases()``), so registering a
mechanism is what gets it tested. The checks cover the contract end to end:
shapes, finite outputs, batch-N decisions equal batch-1 ones, traced MACs equal
FlopCounterMode's, real skipping, gradients to the decision units, the aux
loss, the config rebuilding the model, every runtime knob value reproducing a
model rebuilt with it, replayed operating points matching real passes (where a
mechanism records), the export/load round trip, and (with an ONNX form)
graph parity and the staged runtime's decisions, also at other knob values.
A mechanism author can run it alone:

    from dynsearch.testing.conformance import CHECKS
    for check in CHECKS: check(config)

Each check builds the model from ``config`` with a fixed seed and raises
``AssertionError`` on a violation of the contract (dynamic/base.py), or
``NotApplicable`` (a ``unittest.SkipTest``, which pytest reports as a skip) with
the reason when the part of the contract it checks does not apply to the model
(no ONNX form, no runtime knob, no replay).
"""
from __future__ import annotations

import functools
import hashlib
import json
import tempfile
import unittest
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import numpy as np
import torch

from dynsearch.dynamic.cost import count_macs
from dynsearch.dynamic import DynamicModel, build_model, mechanisms

BATCH = 16
TRAIN_STEPS = 20


class NotApplicable(unittest.SkipTest):
    """A check's part of the contract does not apply to this model (e.g. it has no ONNX form)."""


def cases() -> Iterator[tuple[str, dict[str, Any]]]:
    """``(id, config)`` for every tiny config of every registered mechanism."""
    for name, info in sorted(mechanisms().items()):
        for i, config in enumerate(info.cls.tiny_configs()):
            assert config["mechanism"] == name, f"{name}: tiny config {i} builds {config['mechanism']!r}"
            yield f"{name}[{i}]", config


@functools.lru_cache(maxsize=None)
def _trained_state(config_json: str) -> dict[str, torch.Tensor]:
    """Weights after a short seeded training run (through every training stage), so that
    decisions are those of a model that learned something rather than of a random one."""
    config = json.loads(config_json)
    model, x, y = _fresh(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for step in range(TRAIN_STEPS):
        model.set_training_progress(step / TRAIN_STEPS)
        optimizer.zero_grad()
        model.training_loss(model(x), y).backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _fresh(config: dict[str, Any]) -> tuple[DynamicModel, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(config)
    generator = torch.Generator().manual_seed(1)
    shape = (BATCH, *[1] * len(config["input_shape"]))
    # Per-sample scale and shift, so that pooled features (what gates read) differ between samples.
    scale = 0.2 + 3.0 * torch.rand(shape, generator=generator)
    shift = 2.0 * torch.randn(shape, generator=generator)
    x = shift + scale * torch.randn(BATCH, *config["input_shape"], generator=generator)
    projection = torch.randn(x[0].numel(), config["num_classes"], generator=generator)
    y = (x.flatten(1) @ projection).argmax(dim=1)  # learnable labels
    return model, x, y


def _model(config: dict[str, Any]) -> tuple[DynamicModel, torch.Tensor, torch.Tensor]:
    """The model of ``config`` after a short training run, with the suite's inputs and labels."""
    model, x, y = _fresh(config)
    model.load_state_dict(_trained_state(json.dumps(config, sort_keys=True)))
    model.set_training_progress(0.0)
    return model, x, y


def _decisions(trace, i: int) -> dict[str, float]:
    return {name: float(count[i]) for name, count in trace.counts.items()}


@torch.no_grad()
def _eval(model: DynamicModel, x: torch.Tensor):
    model.eval()
    return model(x)


def check_output_shapes(config: dict[str, Any]) -> None:
    """Logits are [B, K]; every component has a per-sample count [B]; records lead with B."""
    model, x, _ = _model(config)
    names = set(model.components())
    for mode in ("train", "eval"):
        model.train(mode == "train")
        with torch.set_grad_enabled(mode == "train"):
            out = model(x)
        assert out.logits.shape == (BATCH, config["num_classes"]), f"{mode}: logits {tuple(out.logits.shape)}"
        assert set(out.trace.counts) == names, f"{mode}: trace counts {sorted(out.trace.counts)} != components"
        for name, count in out.trace.counts.items():
            assert count.shape == (BATCH,), f"{mode}: count of {name} has shape {tuple(count.shape)}"
        for name, record in out.trace.records.items():
            assert record.shape[0] == BATCH, f"{mode}: record {name} has shape {tuple(record.shape)}"
    assert set(model.static_components()) <= names
    assert set(model.decision_components()) <= names
    assert model.family and model.paper, "register the mechanism with a family and a paper"


def check_no_nan(config: dict[str, Any]) -> None:
    """Logits and per-sample MACs are finite in training and in eval."""
    model, x, _ = _model(config)
    model.train()
    assert torch.isfinite(model(x).logits).all(), "train: non-finite logits"
    out = _eval(model, x)
    assert torch.isfinite(out.logits).all(), "eval: non-finite logits"
    assert torch.isfinite(out.trace.macs_per_sample(model.component_macs())).all()


def check_batch_matches_batch_one(config: dict[str, Any]) -> None:
    """Eval decisions (what ran, per sample) and logits at batch N equal those at batch 1."""
    model, x, _ = _model(config)
    batch = _eval(model, x)
    if model.skips_work:
        patterns = {tuple(sorted(_decisions(batch.trace, i).items())) for i in range(BATCH)}
        assert len(patterns) > 1, "the tiny config must make mixed decisions (else this check proves nothing)"
    else:  # the decisions are routing weights: they must differ between samples
        routing = batch.trace.records["routing"]
        assert (routing - routing[:1]).abs().max() > 1e-3, "every sample got the same routing weights"
    for i in range(BATCH):
        single = _eval(model, x[i : i + 1])
        if not model.skips_work:
            routing = single.trace.records["routing"][0]
            assert torch.allclose(routing, batch.trace.records["routing"][i], atol=1e-5), f"sample {i}: routing differs"
        # Same threads and seed: a flip would need a sample within round-off (~1e-7) of a threshold.
        assert _decisions(single.trace, 0) == _decisions(batch.trace, i), f"sample {i}: decisions differ"
        for name, record in single.trace.records.items():
            if not record.is_floating_point():
                assert torch.equal(record[0], batch.trace.records[name][i]), f"sample {i}: record {name} differs"
        assert torch.allclose(single.logits[0], batch.logits[i], atol=1e-5), f"sample {i}: logits differ"


def check_traced_macs_match_flop_counter(config: dict[str, Any]) -> None:
    """At batch 1, MACs from the trace equal FlopCounterMode's total / 2 of the whole forward."""
    model, x, _ = _model(config)
    model.eval()
    component_macs = model.component_macs()
    assert model.macs_full() > 0
    with torch.no_grad():
        for i in range(BATCH):
            sample = x[i : i + 1]
            traced = float(model(sample).trace.macs_per_sample(component_macs)[0])
            counted = count_macs(lambda: model(sample))
            assert traced == counted, f"sample {i}: traced {traced} MACs, FlopCounterMode {counted}"


def check_real_skipping(config: dict[str, Any]) -> None:
    """Forward hooks see exactly the work the trace records: a skipped component never runs
    at batch 1, and in a batch each component processes only the samples the trace counts.
    Some sample must save work: skip a component, or run a repeated one (a halting loop's
    cell) fewer times than the static counterpart does."""
    model, x, _ = _model(config)
    static_runs = Counter(model.static_components())
    rows: dict[str, int] = defaultdict(int)
    hooks = [
        module.register_forward_pre_hook(lambda _m, args, name=name: rows.__setitem__(name, rows[name] + args[0].shape[0]))
        for name, module in model.components().items()
    ]
    try:
        skipped_somewhere = False
        for i in range(BATCH):
            rows.clear()
            out = _eval(model, x[i : i + 1])
            for name, count in out.trace.counts.items():
                assert rows[name] == int(count[0]), f"sample {i}: {name} ran {rows[name]}x, trace says {int(count[0])}"
                skipped_somewhere |= int(count[0]) == 0 or int(count[0]) < static_runs[name]
        if model.skips_work:
            assert skipped_somewhere, "no component was ever skipped: the tiny config shows no dynamic saving"
        else:  # it declares that every component runs for every sample: hold it to that
            assert not skipped_somewhere, "a mechanism with skips_work = False skipped a component"
        rows.clear()
        out = _eval(model, x)
        for name, count in out.trace.counts.items():
            assert rows[name] == int(count.sum()), f"batch: {name} processed {rows[name]} rows, trace says {int(count.sum())}"
    finally:
        for hook in hooks:
            hook.remove()


def _training_losses(model: DynamicModel, x: torch.Tensor, y: torch.Tensor) -> Iterator[tuple[float, torch.Tensor]]:
    """(progress, aux loss) at the start and late in training (multi-stage schemes switch at half way)."""
    model.train()
    for progress in (0.0, 0.75):
        model.set_training_progress(progress)
        model.zero_grad(set_to_none=True)
        out = model(x)
        aux = model.aux_loss(out.trace)
        loss = model.training_loss(out, y)
        assert loss.ndim == 0 and torch.isfinite(loss), f"progress {progress}: training loss {loss}"
        loss.backward()
        yield progress, aux


def check_gradients_reach_decisions(config: dict[str, Any]) -> None:
    """Over training, every parameter gets a finite gradient and every decision unit
    (gate, halting unit, exit head) a non-zero one."""
    model, x, y = _model(config)
    reached: set[str] = set()
    nonzero: set[str] = set()
    for progress, _ in _training_losses(model, x, y):
        for name, param in model.named_parameters():
            if param.grad is not None:
                assert torch.isfinite(param.grad).all(), f"progress {progress}: non-finite gradient of {name}"
                reached.add(name)
                if param.grad.abs().sum() > 0:
                    nonzero.add(name)
    missing = [name for name, p in model.named_parameters() if p.requires_grad and name not in reached]
    assert not missing, f"parameters never receive a gradient: {missing[:5]}"
    components = model.components()
    assert model.decision_components(), "a dynamic model names the components that make its decisions"
    for name in model.decision_components():
        ids = {id(p) for p in components[name].parameters()}
        names = {n for n, p in model.named_parameters() if id(p) in ids}
        assert names & nonzero, f"decision unit {name} never receives a non-zero gradient"


def check_aux_loss_finite(config: dict[str, Any]) -> None:
    """The mechanism's auxiliary loss is a finite scalar throughout training."""
    model, x, y = _model(config)
    for progress, aux in _training_losses(model, x, y):
        assert aux.ndim == 0 and torch.isfinite(aux), f"progress {progress}: aux loss {aux}"


def check_config_rebuilds_model(config: dict[str, Any]) -> None:
    """The model's config survives JSON, and with its safetensors weights rebuilds the same model."""
    from safetensors.torch import load, save

    model, x, _ = _model(config)
    model.train()
    model(x)  # move batch-norm statistics away from their initial values
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    again = build_model(json.loads(json.dumps(model.config)))
    again.load_state_dict(load(save(state)), strict=True)
    first, second = _eval(model, x), _eval(again, x)
    assert torch.equal(first.logits, second.logits), "rebuilt model gives other logits"
    for name, count in first.trace.counts.items():
        assert torch.equal(count, second.trace.counts[name]), f"rebuilt model decides {name} otherwise"


def staged_decision(model: DynamicModel, x: torch.Tensor) -> tuple[int, int | None, list[bool], int]:
    """(prediction, exit stage or None, gate decisions, MACs) of the PyTorch model on one input
    (no batch axis) at batch size 1: what ``onnx_runtime.Decision`` reports for it."""
    with torch.no_grad():
        out = model.eval()(x[None])
    records = out.trace.records
    exit_stage = int(records["exit_index"][0]) if "exit_index" in records else None
    gates = [bool(g) for g in records["gates"][0]] if "gates" in records else []
    macs = int(out.trace.macs_per_sample(model.component_macs())[0])
    return int(out.logits.argmax()), exit_stage, gates, macs


def _runtime_decisions(runtime, x: torch.Tensor) -> list[tuple[int, int | None, list[bool], int]]:
    return [(d.prediction, d.exit_stage, d.gates, d.macs) for d in runtime.run(x.numpy())]


def _onnx_model(config: dict[str, Any]) -> tuple[DynamicModel, torch.Tensor]:
    model, x, _ = _model(config)
    model.eval()
    if model.onnx_form() is None:
        raise NotApplicable(f"mechanism {config['mechanism']!r} has no staged ONNX form (onnx_form() is None)")
    return model, x


def check_onnx_graph_parity_and_staged_decisions(config: dict[str, Any]) -> None:
    """Every graph of the staged ONNX form matches PyTorch within ``PARITY_TOLERANCE``, and
    ``StagedRuntime`` over them takes PyTorch's batch-1 decisions (class, exit, gates, MACs)
    on every input, with some inputs leaving early or some gated blocks skipped."""
    from dynsearch.deploy.onnx_export import PARITY_TOLERANCE, export_onnx, graph_parity
    from dynsearch.deploy.onnx_runtime import StagedRuntime

    model, x = _onnx_model(config)
    form = model.onnx_form()
    if "threshold" in model.runtime_knobs():  # a threshold that splits the inputs: a wrong exit would show
        with torch.no_grad():  # halfway between the two middle scores of the first exit: no input sits on it
            middle = form.parts[0].module.eval()(x)[2].sort().values[BATCH // 2 - 1 : BATCH // 2 + 1]
        model.set_runtime_knobs({"threshold": float(middle.mean())})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = export_onnx(model, folder / "onnx", x)
        diffs = graph_parity(model, folder / "onnx", x)
        assert max(diffs) <= PARITY_TOLERANCE, f"onnxruntime differs from PyTorch by {max(diffs):.3g}"
        runtime = StagedRuntime(folder, card={"runtime_policy": model.runtime_policy(), "onnx": manifest})
        got = _runtime_decisions(runtime, x)
        batched = {size: runtime.run_batch(x.numpy(), batch_size=size) for size in (5, BATCH)}
    expected = [staged_decision(model, sample) for sample in x]
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"sample {i}: the staged runtime decided {g}, PyTorch {e} (class, exit, gates, MACs)"
    _check_batched_runtime(model, x, batched, got)
    # The decisions are really taken: some inputs leave early / some gated blocks are skipped.
    if any(g["role"] == "gate" for g in manifest["graphs"]):
        gates = {on for _, _, decided, _ in got for on in decided}
        assert gates == {True, False}, f"every gated block decided {gates}: a wrong gate would not show"
    else:
        exits = {stage for _, stage, _, _ in got}
        assert len(exits) > 1, f"every input left at {exits}: the check would not see a wrong exit"


def _check_batched_runtime(model: DynamicModel, x: torch.Tensor, batched: dict, one_at_a_time: list) -> None:
    """The batched staged runtime (``run_batch``) decides as it does one input at a time, and its
    logits match the served PyTorch form's (``load``: batch norm folded) at the same batch size."""
    from dynsearch.deploy.onnx_export import PARITY_TOLERANCE
    from dynsearch.measure.latency import serving_form

    served = serving_form(model)
    for size, decisions in batched.items():
        got = [(d.prediction, d.exit_stage, d.gates, d.macs) for d in decisions]
        assert got == one_at_a_time, f"batch {size}: the batched staged runtime decided otherwise than one at a time"
        with torch.no_grad():
            want = torch.cat([served(x[start : start + size]).logits for start in range(0, len(x), size)])
        gap = float((torch.from_numpy(np.stack([d.logits for d in decisions])) - want).abs().max())
        assert gap <= PARITY_TOLERANCE, f"batch {size}: batched staged logits differ from the served model's by {gap:.3g}"


def check_staged_runtime_follows_runtime_knobs(config: dict[str, Any]) -> None:
    """A model exported at another operating point (gate bias, depth shift, threshold, patience)
    runs the same graphs: at every other value of each knob's grid the staged runtime decides
    as PyTorch does with that value set."""
    from dynsearch.deploy.onnx_export import export_onnx
    from dynsearch.deploy.onnx_runtime import StagedRuntime
    from dynsearch.measure.points import current_knobs

    model, x = _onnx_model(config)
    knobs = model.runtime_knobs()
    if not knobs:
        raise NotApplicable(f"mechanism {config['mechanism']!r}: this config has no runtime knob")
    baseline = [staged_decision(model, sample) for sample in x]
    trained = current_knobs(model)
    changed_decisions = False
    with tempfile.TemporaryDirectory() as tmp:
        manifest = export_onnx(model, Path(tmp) / "onnx", x)
        for name, grid in knobs.items():
            for value in grid[::2]:
                model.set_runtime_knobs({name: value})
                runtime = StagedRuntime(tmp, card={"runtime_policy": model.runtime_policy(), "onnx": manifest})
                expected = [staged_decision(model, sample) for sample in x]
                assert _runtime_decisions(runtime, x) == expected, \
                    f"{name}={value}: the staged runtime decided otherwise than PyTorch"
                changed_decisions |= expected != baseline
            model.set_runtime_knobs(trained)
    if set(knobs) & {"gate_bias", "depth_shift"}:  # (exit heads' scores rarely split at the grid's values:
        # the threshold rule is checked at a splitting value by check_onnx_graph_parity_and_staged_decisions)
        assert changed_decisions, "no knob value changed any decision: the check could not see a knob ignored"


def check_sweep_matches_rebuilt_model_at_each_knob_value(config: dict[str, Any]) -> None:
    """The operating-point sweep at each knob value gives the figures of a model rebuilt from the
    config written with those knob values, measured by its own eval forward; knobs are restored."""
    from dynsearch.measure.evaluate import measure
    from dynsearch.measure.points import current_knobs, sweep

    model, x, y = _model(config)
    model.eval()
    if not model.runtime_knobs():
        raise NotApplicable(f"mechanism {config['mechanism']!r}: this config has no runtime knob")
    before = model.runtime_policy()
    splits = SimpleNamespace(val_x=x, val_y=y, test_x=x[:7], test_y=y[:7])
    points = sweep(model, splits, batch_size=5)  # 16 = 5 + 5 + 5 + 1: the batch-1 path runs too
    assert model.runtime_policy() == before, "the sweep did not restore the knobs"
    assert [p["point"] for p in points] == list(range(len(points)))
    assert sum(p["trained"] for p in points) == 1, "exactly one point is the model as trained"
    state = model.state_dict()
    for p in points:
        probe = build_model(config)
        probe.load_state_dict(state)
        probe.set_runtime_knobs(p["knobs"])
        again = build_model(json.loads(json.dumps(probe.config)))  # the knob values written in the config
        again.load_state_dict(state)
        assert current_knobs(again) == p["knobs"], "the config does not carry the knob values"
        val = measure(again, x, y, batch_size=5)
        test = measure(again, x[:7], y[:7], batch_size=5)
        assert (p["accuracy"], p["macs"], p["stats"]) == (val["accuracy"], val["macs"], val["stats"]), p["knobs"]
        assert (p["test_accuracy"], p["test_macs"]) == (test["accuracy"], test["macs"]), p["knobs"]
    trained = next(p for p in points if p["trained"])
    assert trained["macs"] == measure(model, x, y, batch_size=5)["macs"]
    assert len({p["macs"] for p in points}) > 1, "the knob changes nothing"


def _same_batch_output(replayed, real, where: str) -> None:
    """A replayed batch against the real eval forward's: the same decisions (every trace count, every
    integer record), the same predictions, and logits and float records within round-off (the real
    pass runs later stages on the samples still running, down to one: PITFALLS.md)."""
    assert set(replayed.trace.counts) == set(real.trace.counts), f"{where}: replay counts other components"
    for name, count in real.trace.counts.items():
        assert torch.equal(replayed.trace.counts[name], count), f"{where}: replay decides {name} otherwise"
    assert set(replayed.trace.records) == set(real.trace.records), f"{where}: replay records other keys"
    for name, record in real.trace.records.items():
        other = replayed.trace.records[name]
        same = torch.allclose(other, record, atol=1e-5) if record.is_floating_point() else torch.equal(other, record)
        assert same, f"{where}: replay records {name} otherwise"
    assert torch.equal(replayed.logits.argmax(dim=1), real.logits.argmax(dim=1)), f"{where}: replay predicts otherwise"
    assert torch.allclose(replayed.logits, real.logits, atol=1e-5), f"{where}: replayed logits differ"


def check_replay_matches_real_eval_at_each_knob_value(config: dict[str, Any]) -> None:
    """A mechanism that records its outputs once (``record`` not None) replays every value of its knob
    grid as its eval forward runs it, from one record made at the trained values: batch by batch
    (16 = 5 + 5 + 5 + 1: the batch-1 path too), the decisions, predictions and logits of the real
    forward (``_same_batch_output``); over the split, the same accuracy, per-sample MACs, mean MACs
    and statistics as ``measure``. The knobs are restored after."""
    from dynsearch.measure.evaluate import measure
    from dynsearch.measure.points import current_knobs, knob_grid, record_split, replay_split

    model, x, y = _model(config)
    model.eval()
    records = record_split(model, x, batch_size=5)
    if records is None:
        raise NotApplicable(f"mechanism {config['mechanism']!r} does not replay its knobs (record() is None)")
    trained = current_knobs(model)
    try:
        for values in knob_grid(model):
            model.set_runtime_knobs(values)
            for start, record in zip(range(0, BATCH, 5), records):
                with torch.no_grad():
                    real, replayed = model(x[start : start + 5]), model.replay(record)
                _same_batch_output(replayed, real, f"knobs {values}, batch at {start}")
            real, replayed = measure(model, x, y, batch_size=5), replay_split(model, records, y)
            assert replayed["per_sample_macs"] == real["per_sample_macs"], f"knobs {values}: per-sample MACs differ"
            for key in ("accuracy", "macs", "macs_full", "stats"):
                assert replayed[key] == real[key], f"knobs {values}: replayed {key} {replayed[key]} != {real[key]}"
    finally:
        model.set_runtime_knobs(trained)
    assert current_knobs(model) == trained


def check_export_load_round_trip(config: dict[str, Any]) -> None:
    """The files an export writes (``export.write_model_files``: config.json with the runtime policy
    and the weights' sha256, model.safetensors), loaded back with ``load``, give the same
    logits, decisions and runtime policy."""
    from safetensors.torch import save

    from dynsearch.deploy.export import write_model_files
    from dynsearch.deploy.load import load
    from dynsearch.run.rundir import CONFIG_FILE

    model, x, _ = _model(config)
    weights = save({k: v.detach().contiguous() for k, v in model.state_dict().items()})
    with tempfile.TemporaryDirectory() as tmp:
        write_model_files(Path(tmp), json.loads(json.dumps(model.config)), model, weights)
        written = json.loads((Path(tmp) / CONFIG_FILE).read_text(encoding="utf-8"))
        loaded = load(tmp, raw=True)
    assert written["export"]["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert not loaded.training, "load returns the model in eval mode"
    assert loaded.runtime_policy() == written["runtime_policy"] == model.runtime_policy(), "runtime policy differs"
    first, second = _eval(model, x), _eval(loaded, x)
    assert torch.equal(first.logits, second.logits), "the loaded model gives other logits"
    assert set(first.trace.counts) == set(second.trace.counts)
    for name, count in first.trace.counts.items():
        assert torch.equal(count, second.trace.counts[name]), f"the loaded model decides {name} otherwise"
    for name, record in first.trace.records.items():
        assert torch.equal(record, second.trace.records[name]), f"the loaded model records {name} otherwise"


SERVED_TOLERANCE = 1e-5


def check_served_form_matches_trained_form(config: dict[str, Any]) -> None:
    """``load`` returns the served form (batch norm folded, as latency is measured): at batch 1 and at
    batch 32 its logits are within 1e-5 of the trained form's (``load(raw=True)``) and it decides alike."""
    from safetensors.torch import save

    from dynsearch.deploy.export import write_model_files
    from dynsearch.deploy.load import load

    model, x, _ = _model(config)
    weights = save({k: v.detach().contiguous() for k, v in model.state_dict().items()})
    with tempfile.TemporaryDirectory() as tmp:
        write_model_files(Path(tmp), json.loads(json.dumps(model.config)), model, weights)
        trained, served = load(tmp, raw=True), load(tmp, engine="eager")
    assert not served.training
    x32 = torch.cat([x, 0.7 * x.flip(0) + 0.1])  # 32 inputs: the suite's 16 and 16 more
    for batch_size in (1, 32):
        for start in range(0, len(x32), batch_size):
            batch = x32[start : start + batch_size]
            want, got = _eval(trained, batch), _eval(served, batch)
            where = f"batch {batch_size} at {start}"
            for name, count in want.trace.counts.items():
                assert torch.equal(count, got.trace.counts[name]), f"{where}: the served form decides {name} otherwise"
            gap = float((want.logits - got.logits).abs().max())
            assert gap <= SERVED_TOLERANCE, f"{where}: served logits differ from the trained form's by {gap:.2e}"


CHECKS: list[Callable[[dict[str, Any]], None]] = [
    check_output_shapes,
    check_no_nan,
    check_batch_matches_batch_one,
    check_traced_macs_match_flop_counter,
    check_real_skipping,
    check_gradients_reach_decisions,
    check_aux_loss_finite,
    check_config_rebuilds_model,
    check_sweep_matches_rebuilt_model_at_each_knob_value,
    check_replay_matches_real_eval_at_each_knob_value,
    check_export_load_round_trip,
    check_served_form_matches_trained_form,
    check_onnx_graph_parity_and_staged_decisions,
    check_staged_runtime_follows_runtime_knobs,
]
