"""The DynamicModel conformance suite: the checks every registered mechanism must pass.

``tests/test_conformance.py`` runs every check on every tiny config of every
entry of ``MECHANISMS`` (``cases()``), so registering a mechanism is what gets
it tested. A mechanism author can run it alone:

    from dynsearch.testing.conformance import CHECKS
    for check in CHECKS: check(config)

Each check builds the model from ``config`` with a fixed seed and raises
``AssertionError`` on a violation of the contract (dynamic/base.py).
"""
from __future__ import annotations

import functools
import json
from collections import Counter, defaultdict
from typing import Any, Callable, Iterator

import torch

from dynsearch.dynamic.cost import count_macs
from dynsearch.dynamic import DynamicModel, build_model, mechanisms

BATCH = 16
TRAIN_STEPS = 20


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


CHECKS: list[Callable[[dict[str, Any]], None]] = [
    check_output_shapes,
    check_no_nan,
    check_batch_matches_batch_one,
    check_traced_macs_match_flop_counter,
    check_real_skipping,
    check_gradients_reach_decisions,
    check_aux_loss_finite,
    check_config_rebuilds_model,
]
