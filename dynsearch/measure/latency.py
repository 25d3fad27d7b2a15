"""Latency measured on the target device, with real dynamic execution.

Models are timed as ``dynsearch.load`` serves them (``serving_form``): eval mode,
batch norm folded into the convolutions before it, adaptive pools of a known size
made fixed (both for the dynamic model and its static path).
Each input is run alone (batch size 1 by default), so a sample
that leaves early really skips the rest; per input the median of ``repeats``
timed runs (after ``warmup`` untimed ones) is kept, and the distribution over
inputs is reported (mean, p50, p90). Threads are fixed for the measurement;
on CUDA every timed run is synchronised.

The per-component latency table (LUT) times each component alone once, and
predicts a model's latency from its traces: sum over components of
(times it ran) x (its latency).
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch
from torch.nn import functional as F

from dynsearch.dynamic.cost import dry_run_input_shapes
from dynsearch.measure.device import pinned_threads, resolve_device


def fold_batch_norm(model, inplace: bool = False):
    """A copy of ``model`` (``model`` itself when ``inplace``) for inference, in eval mode, with each
    Conv2d -> BatchNorm2d pair of a Sequential folded into one convolution (same outputs up to
    round-off, fewer ops). The folded model cannot be trained further: its batch norms are gone."""
    import copy

    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = (model if inplace else copy.deepcopy(model)).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = module._modules[first], module._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module._modules[first] = fuse_conv_bn_eval(conv, bn)
                module._modules[second] = nn.Identity()
    return folded


# Batches of at least this many rows pool the way measured faster on CPU (``ServedAvgPool2d``); a small
# map's pool takes a channels-last copy only from this many rows x channels (the copy's fixed cost).
BATCHED_POOL_ROWS = 32
CHANNELS_LAST_POOL_PLANES = 1024


class ServedAvgPool2d(torch.nn.AvgPool2d):
    """``AvgPool2d(kernel)`` (stride = kernel, no padding) of a known input size, computed on batches of at
    least ``BATCHED_POOL_ROWS`` rows the way that measured faster on CPU (``python benchmarks/pooling.py``,
    1 thread, each pool followed by its head's Flatten): a pool over a whole map of more than 16 positions
    as a mean over height and width (at batch 128: [64, 7, 7] 2.6x, [32, 14, 14] 2.7x faster), a pool of a map
    of at most 16 positions to a smaller one on a channels-last copy from ``CHANNELS_LAST_POOL_PLANES`` rows x
    channels ([128, 34, 4, 4] to 2x2: 1.6x; [32, 17, 4, 4]: 0.95x, so not there). Smaller batches and other
    devices use the plain kernel (at batch 1 it is the fastest); other maps get a plain ``nn.AvgPool2d``
    (``served_pool``). The same averages up to float round-off."""

    def __init__(self, kernel: tuple[int, int], input_shape: tuple[int, int, int]):
        super().__init__(kernel)
        channels, height, width = input_shape
        whole, small = (height, width) == tuple(kernel), height * width <= 16
        self.whole_map = whole and not small
        self.small_map = small and not whole

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] < BATCHED_POOL_ROWS or x.device.type != "cpu" or x.dim() != 4:
            return F.avg_pool2d(x, self.kernel_size)
        if self.whole_map:
            return x.mean((2, 3), keepdim=True)
        if self.small_map and x.shape[0] * x.shape[1] >= CHANNELS_LAST_POOL_PLANES:
            return F.avg_pool2d(x.contiguous(memory_format=torch.channels_last), self.kernel_size)
        return F.avg_pool2d(x, self.kernel_size)


def served_pool(kernel: tuple[int, int], input_shape: tuple[int, ...]) -> torch.nn.Module:
    """The served average pool (kernel = stride) of inputs of ``input_shape`` (no batch dim): a
    ``ServedAvgPool2d`` where it has a faster way at large batches, else the plain ``nn.AvgPool2d``
    (the served module's check would only cost time)."""
    if len(input_shape) == 3:
        served = ServedAvgPool2d(kernel, input_shape)
        if served.whole_map or served.small_map:
            return served
    return torch.nn.AvgPool2d(kernel)


@torch.no_grad()
def fixed_pools(model):
    """``model`` with each ``AdaptiveAvgPool2d`` whose input size its output size divides replaced by
    the ``AvgPool2d`` that computes the same (kernel = stride = input / output): the same averages,
    and on CPU the fixed kernel is faster (to 2x2, timed in alternation: [128, 34, 4, 4] 0.16 against
    0.23 ms, [1, 34, 4, 4] 2.7 against 4.1 us), and at larger batches ``ServedAvgPool2d`` picks a faster
    way still. The sizes come from a training-mode dry run of a copy (every path runs)."""

    from torch import nn

    names = {module: name for name, module in model.named_modules() if isinstance(module, nn.AdaptiveAvgPool2d)}
    if not names:
        return model
    wanted = set(names.values())
    shapes = {name: tuple(shape[1:]) for name, shape in dry_run_input_shapes(
        model, lambda probe: {name: m for name, m in probe.named_modules() if name in wanted}).items()}
    sizes = {name: shape[-2:] for name, shape in shapes.items()}
    for module, name in names.items():
        if name not in sizes:
            continue
        out = module.output_size if isinstance(module.output_size, tuple) else (module.output_size,) * 2
        if None in out or any(size % o for size, o in zip(sizes[name], out)):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        kernel = tuple(size // o for size, o in zip(sizes[name], out))
        setattr(parent, child, served_pool(kernel, shapes[name]))
    return model


def serving_form(model, inplace: bool = False):
    """The form a model is served and timed in (``dynsearch.load``, ``bench``, the latency objective):
    eval mode, batch norm folded (``fold_batch_norm``), fixed-size average pools (``fixed_pools``).
    Outputs equal the trained form's up to float round-off; it can no longer be trained."""
    return fixed_pools(fold_batch_norm(model, inplace))


def _time_call(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _distribution(per_input_ms: list[float]) -> dict[str, float]:
    ordered = sorted(per_input_ms)

    def quantile(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

    return {
        "latency_ms": quantile(0.5),
        "latency_ms_mean": statistics.fmean(ordered),
        "latency_ms_p90": quantile(0.9),
        "latency_inputs": len(ordered),
    }


@torch.inference_mode()
def measure_latency(
    model,
    inputs: torch.Tensor,
    *,
    device: str = "cpu",
    batch_size: int = 1,
    warmup: int = 3,
    repeats: int = 15,
    threads: int | None = 1,
    static: bool = False,
    against_static: bool = False,
) -> dict[str, float]:
    """Latency distribution of ``model`` (or its static full-depth path) over ``inputs``.

    Returns ``latency_ms`` (p50), ``latency_ms_mean``, ``latency_ms_p90`` and
    ``latency_inputs`` (how many batches were timed). ``against_static`` (the latency objective):
    the dynamic and static paths timed in alternation over the same batches (``paired_speedup``), the
    dynamic path's distribution as above plus ``latency_static_ms`` (the static path's p50),
    ``latency_speedup`` (median of the paired ratios), its 95% ``latency_speedup_interval`` and
    ``latency_speedup_wide`` (the interval is wider than +-5%, or there were too few repeats for one).
    """
    if static and against_static:
        raise ValueError("measure_latency: static=True times the static path alone; against_static=True times "
                         "both paths in alternation; pass one of them")
    target = resolve_device(device)
    model = serving_form(model).to(target)
    forward = model.forward_static if static else model
    batches = [inputs[i : i + batch_size].to(target) for i in range(0, len(inputs), batch_size)]
    if against_static:
        paired = paired_speedup(model, model.forward_static, batches, device=device, warmup=warmup,
                                repeats=repeats, threads=threads)
        dynamic = {k: v for k, v in paired["dynamic"].items() if k.startswith("latency_")}
        return {**dynamic, "latency_static_ms": paired["static"]["latency_ms"],
                "latency_speedup": paired["speedup"], "latency_speedup_interval": paired["interval"],
                "latency_speedup_wide": paired["interval_wide"]}
    with pinned_threads(threads):
        per_input = [_time_call(lambda x=x: forward(x), target, warmup, repeats) for x in batches]
    return _distribution(per_input)


@torch.inference_mode()
def component_latency_table(model, *, device: str = "cpu", threads: int | None = 1,
                            warmup: int = 5, repeats: int = 30) -> dict[str, float]:
    """Milliseconds of each component run alone at batch 1 (decision included, see ``timed_components``)."""
    target = resolve_device(device)
    model = serving_form(model).to(target)
    with pinned_threads(threads):
        return {name: _time_call(fn, target, warmup, repeats) for name, fn in model.timed_components(target).items()}


def predict_latency_ms(model, inputs: torch.Tensor, table: dict[str, float]) -> float:
    """Mean predicted batch-1 latency over ``inputs`` from their traces and the table."""
    model.eval()
    with torch.inference_mode():
        trace = model(inputs).trace
    per_sample = sum(trace.counts[name].double() * table[name] for name in trace.counts)
    return float(per_sample.mean())


WIDE_INTERVAL = 0.05  # a speed-up whose 95% interval reaches further than +-5% of it says so


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float | None, float | None]:
    """A distribution-free ``confidence`` interval for the median of ``values`` (order statistics,
    ``scipy.stats.quantile_test``); ``(None, None)`` when there are too few values for one."""
    import math

    from scipy.stats import quantile_test

    if len(values) < 2:
        return None, None
    interval = quantile_test(values, p=0.5).confidence_interval(confidence)
    low, high = float(interval.low), float(interval.high)
    return (low, high) if math.isfinite(low) and math.isfinite(high) else (None, None)


@torch.inference_mode()
def paired_speedup(
    dynamic: Callable[[torch.Tensor], Any],
    static: Callable[[torch.Tensor], Any],
    batches: list[torch.Tensor],
    *,
    device: str = "cpu",
    warmup: int = 3,
    repeats: int = 15,
    threads: int | None = 1,
) -> dict[str, Any]:
    """The speed-up of ``dynamic`` over ``static`` on the same ``batches``, timed in alternation.

    Each repeat times one pass of each over every batch, back to back, the order swapped every
    repeat, so drift in the machine's load falls on both alike; its ratio (static time over dynamic
    time) is one paired measurement. ``speedup`` is the median of those ratios, with a 95%
    distribution-free interval (``median_interval``); ``interval_halfwidth`` is the interval's larger
    distance from the median as a fraction of it, and ``interval_wide`` says it exceeds +-5% (or that
    there were too few repeats for an interval). Per path: the per-batch latency distribution
    (each batch's median over the repeats: p50, mean, p90, as ``measure_latency``) and the median
    throughput in samples per second. Threads are pinned for the whole measurement.
    """
    target = resolve_device(device)
    sync = torch.cuda.synchronize if target.type == "cuda" else (lambda: None)
    batches = [x.to(target) for x in batches]
    samples = sum(len(x) for x in batches)
    paths = {"dynamic": dynamic, "static": static}
    per_batch: dict[str, list[list[float]]] = {name: [[] for _ in batches] for name in paths}
    totals: dict[str, list[float]] = {name: [] for name in paths}

    def one_pass(name: str, record: bool) -> None:
        forward, total = paths[name], 0.0
        for i, x in enumerate(batches):
            start = time.perf_counter()
            forward(x)
            sync()
            seconds = time.perf_counter() - start
            total += seconds
            if record:
                per_batch[name][i].append(seconds * 1e3)
        if record:
            totals[name].append(total)

    with pinned_threads(threads):
        for _ in range(warmup):
            one_pass("dynamic", False)
            one_pass("static", False)
        for r in range(repeats):
            for name in ("dynamic", "static") if r % 2 == 0 else ("static", "dynamic"):
                one_pass(name, True)
    ratios = [s / d for s, d in zip(totals["static"], totals["dynamic"])]
    speedup = statistics.median(ratios)
    low, high = median_interval(ratios)
    halfwidth = None if low is None else max(high - speedup, speedup - low) / speedup
    result: dict[str, Any] = {
        "speedup": speedup, "interval": None if low is None else [low, high],
        "interval_halfwidth": halfwidth, "interval_wide": halfwidth is None or halfwidth > WIDE_INTERVAL,
        "repeats": repeats, "batches": len(batches), "samples": samples,
    }
    for name in paths:
        result[name] = {**_distribution([statistics.median(times) for times in per_batch[name]]),
                        "throughput": samples / statistics.median(totals[name])}
    return result


def interval_text(result: dict[str, Any]) -> str:
    """'1.23x (95% interval 1.20-1.26, +-2.4%)', and what a wide or missing interval means."""
    speedup = result["speedup"]
    if result["interval"] is None:
        return f"{speedup:.2f}x (too few repeats for a 95% interval: not a figure to trust)"
    low, high = result["interval"]
    text = f"{speedup:.2f}x (95% interval {low:.2f}-{high:.2f}, +-{result['interval_halfwidth']:.1%})"
    if result["interval_wide"]:
        text += f"; wider than +-{WIDE_INTERVAL:.0%}: too noisy to tell a gap this size from noise"
    return text
