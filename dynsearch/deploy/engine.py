"""The engine a model is served with, chosen by measurement at export and returned by ``dynsearch.load``.

Candidates: ``eager`` (the served PyTorch form, ``measure.latency.serving_form``), always;
``channels_last`` (the same form with its convolution weights and each input batch in channels-last
layout, ``ChannelsLastEngine``) for models with a 2-D convolution; ``onnx`` (the staged graphs under
onnxruntime, ``onnx_runtime.StagedRuntime.run_batch``) when the export wrote them. ``dynsearch export`` times each against eager on the validation inputs, at batch 1 and
at a serving batch (``BATCH_SIZES``), in alternation (``measure.latency.paired_speedup``), and
chooses per batch size: the candidate with the largest median speed-up over eager whose 95%
interval lies wholly above 1, else eager (the simplest). Before timing, each candidate runs the same
batches as eager: one whose logits differ from eager's by more than ``SERVED_TOLERANCE`` (what ``load``
promises) or that predicts another class anywhere is left out (the card's ``left_out`` says by how much),
not timed. The card's ``engine`` section holds the figures and the choice; ``dynsearch.load(path)`` serves it.

``torch.compile`` is not a candidate: on the tiniest exit model here its first call took 17 s at
batch 1 (a graph break at every exit decision) and 2.5 s more at batch 128, far from the few
seconds an export can spend per model (docs/deployment.md).
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch

from dynsearch.errors import UserError
from dynsearch.run.files import CONFIG_FILE

ENGINES = ("eager", "channels_last", "onnx")
BATCH_SIZES = (1, 128)  # batch 1 and a serving batch
BATCHES_TIMED = {1: 16}  # batches timed per pass at each size (the validation inputs in order); others: 1
SERVED_TOLERANCE = 1e-5  # max abs logit difference from eager a served engine may have (the export's
# per-graph parity check allows 1e-4: onnx_export.PARITY_TOLERANCE)
REPEATS, WARMUP = 11, 1  # 6 paired repeats are the fewest with a 95% interval; 11 give a narrower one
LEFT_OUT = {"compiled": "torch.compile: first call 17 s at batch 1 and 2.5 s more at batch 128 on the tiniest "
                        "exit model (a graph break at every decision); too slow to build at export or load"}


class EngineOutput(NamedTuple):
    """What a non-eager engine returns for a batch: ``logits`` [N, K] (a torch tensor, as the eager
    model's ``DynamicOutput.logits``) and the per-sample ``decisions`` it took (``onnx_runtime.Decision``)."""

    logits: torch.Tensor
    decisions: list


def check_input(x, shape: tuple[int, ...] | None) -> None:
    """A batch whose sample shape is not ``shape`` raises a ValueError naming the shape expected."""
    got = tuple(getattr(x, "shape", ()))
    if shape is not None and x is not None and got[1:] != shape:
        wanted = "[N, " + ", ".join(map(str, shape)) + "]"
        raise ValueError(f"input of shape {list(got)}: this model takes a batch of shape {wanted} "
                         f"({CONFIG_FILE} input_shape {list(shape)}); add the batch dimension "
                         "(x.unsqueeze(0)) or reshape the input")


class OnnxEngine:
    """The staged ONNX graphs of a model folder under onnxruntime, called like the model on a batch
    tensor [N, ...]: returns ``EngineOutput`` (logits as a torch tensor, the runtime's decisions).

    ``model`` is the eager served form it was measured against (config, runtime policy, components)."""

    engine = "onnx"

    def __init__(self, folder: Path, card: dict[str, Any], model, threads: int = 1,
                 input_shape: tuple[int, ...] | None = None):
        from dynsearch.deploy.onnx_runtime import StagedRuntime

        for graph in card["onnx"]["graphs"]:  # the card is not checksummed: graphs only from inside the folder
            if Path(graph["file"]).is_absolute() or ".." in Path(graph["file"]).parts:
                raise UserError(f"{folder}/card.json: graph file {graph['file']!r} is outside the model folder; "
                                "export it again with 'dynsearch export'")
        # The decision rule from config.json (checksummed), not from the card.
        self.runtime = StagedRuntime(folder, threads=threads,
                                     card={**card, "runtime_policy": model.runtime_policy()})
        self.model, self.threads, self.input_shape = model, threads, input_shape

    def __call__(self, x: torch.Tensor) -> EngineOutput:
        check_input(x, self.input_shape)
        if len(x) == 0:  # as eager answers an empty batch: logits [0, K] (eager is cheap on nothing)
            with torch.no_grad():
                return EngineOutput(self.model(x).logits, [])
        decisions = self.runtime.run_batch(x.detach().cpu().numpy(), batch_size=len(x))
        import numpy as np

        return EngineOutput(torch.from_numpy(np.stack([d.logits for d in decisions])), decisions)


class ChannelsLastEngine:
    """The eager served form in channels-last layout: a copy whose 4-D weights are channels-last, called
    on each 4-D input batch made channels-last, so the convolutions run on NHWC data (at batch 128 with
    1 thread 0.89-1.71x the default layout's speed, 1.2x or more on 13 of 16 models; at batch 1 often
    slower: ``benchmarks/channels_last_serving.py``). Its logits differ from eager's by float round-off
    (up to about 1.5e-5 on Fashion-MNIST models, whose logits reach 24): the export chooses it only
    where they are within ``SERVED_TOLERANCE``; ``load(engine="channels_last")`` does not check.
    Returns what the eager model returns (``DynamicOutput``: logits and trace)."""

    engine = "channels_last"

    def __init__(self, model, input_shape: tuple[int, ...] | None = None):
        import copy

        self.model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        self.input_shape = input_shape

    def __call__(self, x: torch.Tensor):
        check_input(x, self.input_shape)
        return self.model(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x)


def has_conv2d(model) -> bool:
    """Does ``model`` hold a 2-D convolution (where the channels-last layout can matter)?"""
    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


class ByBatchSize:
    """Each batch run by the engine the card chose at the measured batch size nearest its own (on a
    log scale: with sizes 1 and 128, batches of up to 11 take batch 1's choice)."""

    engine = "by-batch-size"

    def __init__(self, engines: dict[str, Callable], chosen: dict[int, str]):
        self.engines, self.chosen = engines, dict(sorted(chosen.items()))

    def engine_for(self, batch: int) -> str:
        nearest = min(self.chosen, key=lambda size: abs(math.log(max(batch, 1)) - math.log(size)))
        return self.chosen[nearest]

    def __call__(self, x: torch.Tensor):
        return self.engines[self.engine_for(len(x))](x)


def choose(figures: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """``(engine, why)`` at one batch size from each candidate's figures against eager's."""
    clear = {name: f for name, f in figures.items()
             if name != "eager" and f["interval"] is not None and f["interval"][0] > 1}
    if clear:
        name = max(clear, key=lambda n: clear[n]["speedup_over_eager"])
        low, high = clear[name]["interval"]
        return name, (f"{name} {clear[name]['speedup_over_eager']:.2f}x eager's speed (95% interval "
                      f"{low:.2f}-{high:.2f}, wholly above 1)")
    others = [f"{name} {f['speedup_over_eager']:.2f}x" + (f" (95% interval {f['interval'][0]:.2f}-"
                                                          f"{f['interval'][1]:.2f})" if f["interval"] else
                                                          " (too few repeats for an interval)")
              for name, f in figures.items() if name != "eager"]
    if not others:
        return "eager", ("the only candidate timed (the others are left out: see left_out; without ONNX graphs, "
                         "export with --format onnx to time onnxruntime too)")
    return "eager", ("no candidate clearly faster than eager: " + ", ".join(others)
                     + "; eager, the simplest, is kept")


def wrapping_batches(x: torch.Tensor, size: int, count: int) -> list[torch.Tensor]:
    """``count`` batches of ``size`` inputs of ``x`` in order, wrapping round ``x`` when it holds fewer
    (a throughput figure needs full batches)."""
    index = torch.arange(size * count) % len(x)
    return list(x[index].split(size))


def served_gap(engine: Callable, eager: Callable, batches: list[torch.Tensor]) -> tuple[float, int]:
    """``(max abs logit difference, differing predictions)`` of ``engine`` against ``eager`` on ``batches``."""
    gaps, differ = [], 0
    with torch.no_grad():
        for x in batches:
            got, want = engine(x).logits, eager(x).logits
            gaps.append((got - want).abs().max())
            differ += int((got.argmax(dim=1) != want.argmax(dim=1)).sum())
    return float(torch.stack(gaps).max()), differ  # torch's max keeps a NaN: such an engine is left out


def measure_engines(engines: dict[str, Callable], inputs: torch.Tensor, threads: int = 1,
                    batch_sizes: tuple[int, ...] = BATCH_SIZES, repeats: int = REPEATS,
                    warmup: int = WARMUP) -> dict[str, Any]:
    """The card's ``engine`` section: each candidate of ``engines`` (``eager`` first) timed against
    eager at each batch size on ``inputs`` (in order, wrapping round), and the choice at each. A candidate
    whose outputs on those batches differ from eager's (``served_gap``) is left out instead."""
    from dynsearch.measure.device import pinned_threads
    from dynsearch.measure.latency import paired_speedup

    def kept(timed: dict[str, Any]) -> dict[str, Any]:
        return {k: timed[k] for k in ("latency_ms", "latency_ms_p90", "throughput")}

    start = time.perf_counter()
    left_out = dict(LEFT_OUT)
    timed_batches = {size: wrapping_batches(inputs, size, BATCHES_TIMED.get(size, 1)) for size in batch_sizes}
    with pinned_threads(threads):  # as timed and as served
        for name in [n for n in engines if n != "eager"]:
            try:
                gap, differ = served_gap(engines[name], engines["eager"],
                                         [b for batches in timed_batches.values() for b in batches])
            except Exception as exc:  # e.g. a user layer that views a channels-last tensor: not a candidate
                left_out[name] = f"fails on the timing batches ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
                continue
            if not gap <= SERVED_TOLERANCE or differ:
                left_out[name] = (f"differs from eager on the timing batches: logits by up to {gap:.3g} "
                                  f"(at most {SERVED_TOLERANCE:g} allowed), {differ} prediction(s) differ")
    engines = {name: engine for name, engine in engines.items() if name not in left_out}
    per_size = []
    for size, batches in timed_batches.items():
        figures: dict[str, dict[str, Any]] = {}
        if len(engines) == 1:  # eager alone: nothing to pair it with (a no-op costs nothing)
            figures["eager"] = kept(paired_speedup(engines["eager"], lambda x: None, batches, warmup=warmup,
                                                   repeats=repeats, threads=threads)["dynamic"])
        for name, engine in engines.items():
            if name == "eager":
                continue
            paired = paired_speedup(engine, engines["eager"], batches, warmup=warmup, repeats=repeats,
                                    threads=threads)
            figures.setdefault("eager", kept(paired["static"]))
            figures[name] = {**kept(paired["dynamic"]), "speedup_over_eager": paired["speedup"],
                             "interval": paired["interval"]}
        chosen, why = choose(figures)
        per_size.append({"batch_size": size, "batches": len(batches), "figures": figures,
                         "chosen": chosen, "why": why})
    return {"candidates": list(engines), "left_out": left_out, "threads": threads, "repeats": repeats,
            "warmup": warmup, "order": "each candidate against eager in alternation (paired ratios, "
            "eager time over candidate time)", "batch_sizes": per_size,
            "chosen": {str(s["batch_size"]): s["chosen"] for s in per_size},
            "load_average": [round(v, 2) for v in os.getloadavg()],
            "seconds": round(time.perf_counter() - start, 2)}


def chosen_engines(card: Any) -> dict[str, str]:
    """The card's ``engine.chosen`` (batch size as a string -> engine), as ``load`` reads it: eager at
    batch 1 when the card records none (an older export) or not one this version reads."""
    section = card.get("engine") if isinstance(card, dict) else None
    chosen = section.get("chosen") if isinstance(section, dict) else None
    if not isinstance(chosen, dict) or not chosen or not all(isinstance(name, str) for name in chosen.values()) \
            or not set(chosen.values()) <= set(ENGINES) \
            or not all(str(size).isdigit() and int(size) > 0 for size in chosen):
        return {"1": "eager"}
    return {str(int(size)): name for size, name in chosen.items()}


def serve(model, folder: Path, card: dict[str, Any] | None, engine: str,
          input_shape: tuple[int, ...] | None) -> Any:
    """What ``load`` returns for ``engine``: the eager served ``model`` itself, an ``OnnxEngine``, or
    for ``auto`` the card's choice (eager without one; ``ByBatchSize`` when it differs by batch size)."""
    section = card.get("engine") if isinstance(card, dict) else None
    section = section if isinstance(section, dict) else {}
    threads = section.get("threads") if isinstance(section.get("threads"), int) and section["threads"] > 0 else 1
    if engine == "auto":
        by_size = {int(size): name for size, name in chosen_engines(card).items()}
        names = set(by_size.values())
        engines = {name: _one(name, model, folder, card, threads, input_shape, auto=True) for name in names}
        if len(engines) == 1:
            return next(iter(engines.values()))
        return ByBatchSize(engines, by_size)
    return _one(engine, model, folder, card, threads, input_shape, auto=False)


def _one(name: str, model, folder: Path, card: dict[str, Any] | None, threads: int,
         input_shape: tuple[int, ...] | None, auto: bool):
    if name == "eager":
        model.engine = "eager"
        return model
    if name == "channels_last":
        return ChannelsLastEngine(model, input_shape)
    if not isinstance(card, dict) or not card.get("onnx") or not (folder / "onnx").is_dir():
        why = "its card.json chose engine 'onnx'" if auto else "engine='onnx'"
        raise UserError(f"{folder}: {why} but the folder has no ONNX graphs; export it with "
                        "'dynsearch export ... --format onnx', or load it with engine='eager'")
    return OnnxEngine(folder, card, model, threads, input_shape)
