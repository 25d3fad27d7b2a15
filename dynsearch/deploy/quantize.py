"""int8 deployment: the staged ONNX graphs quantized with onnxruntime's tools, and measured again.

Static quantization (``onnxruntime.quantization.quantize_static`` after its
``quant_pre_process``; QDQ format, int8 per-channel weights, uint8 activations,
min-max calibration): each graph is calibrated on the inputs it sees on the
validation split (what the float graphs before it computed in PyTorch). Static
rather than dynamic: dynamic quantization recomputes activation scales at run
time (ConvInteger), which was the slowest variant at batch 1 here. Softmax and
the scores stay in float (they are not in ``QUANTIZED_OPS``), so the runtime
applies the same rule to slightly different numbers.

``compare`` measures the float and the int8 graphs side by side with
``onnx_runtime.StagedRuntime`` at batch size 1: accuracy and MACs (of the graphs
each input ran under that runtime's own decisions) on the validation and test
splits, and latency, alternating float and int8 passes at a fixed thread count.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dynsearch.deploy.onnx_export import chain_outputs
from dynsearch.deploy.onnx_runtime import StagedRuntime
from dynsearch.errors import UserError
QUANTIZE_CHOICES = ("int8",)
INT8_DIR = "onnx_int8"
QUANTIZED_OPS = ["Conv", "MatMul", "Gemm", "Relu", "Add", "GlobalAveragePool", "MaxPool", "AveragePool", "Flatten"]
METHOD = ("onnxruntime.quantization.quantize_static after quant_pre_process: QDQ, int8 per-channel weights, "
          "uint8 activations, min-max calibration on the validation split; ops " + ", ".join(QUANTIZED_OPS))


def check_quantize(value: str | None) -> None:
    if value is not None and value not in QUANTIZE_CHOICES:
        raise UserError(f"quantize {value!r}: unknown; use one of {list(QUANTIZE_CHOICES)} (or leave it out)")


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over one graph's validation inputs."""

    def __init__(self, inputs: np.ndarray, batch_size: int = 64):
        self._batches = iter([{"input": inputs[i:i + batch_size]} for i in range(0, len(inputs), batch_size)])

    def get_next(self):
        return next(self._batches, None)


def quantize_graphs(model, folder: Path, calibration) -> list[str]:
    """Write an int8 copy of each graph of ``folder/onnx`` to ``folder/onnx_int8``; return their files
    (relative to ``folder``), in the manifest's order. ``calibration``: validation inputs (a tensor)."""
    import logging
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    form = model.onnx_form()
    chain = chain_outputs(form, calibration)
    (folder / INT8_DIR).mkdir()
    files = []
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime's quantizer logs advice on the root logger
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for part in form.parts:
                inputs = chain[part.name][0].numpy()
                prepared, target = f"{tmp}/{part.name}.onnx", f"{INT8_DIR}/{part.name}.onnx"
                quant_pre_process(str(folder / "onnx" / f"{part.name}.onnx"), prepared)
                quantize_static(
                    prepared, str(folder / target), _Calibration(inputs),
                    quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.MinMax,
                    op_types_to_quantize=QUANTIZED_OPS,
                )
                files.append(target)
    finally:
        root.setLevel(level)
    return files


def _figures(runtime, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    decisions = runtime.run(x)
    return {"accuracy": float(np.mean([d.prediction == t for d, t in zip(decisions, y)])),
            "macs": float(np.mean([d.macs for d in decisions]))}


def _alternating_passes(runtimes: dict[str, Any], run: Callable[[Any], Any], repeats: int) -> dict[str, list[float]]:
    """Seconds of ``run(runtime)`` for each runtime, ``repeats`` passes each, alternating which runs first."""
    times: dict[str, list[float]] = {name: [] for name in runtimes}
    for repeat in range(repeats):
        for name in list(runtimes) if repeat % 2 == 0 else list(runtimes)[::-1]:
            start = time.perf_counter()
            run(runtimes[name])
            times[name].append(time.perf_counter() - start)
    return times


def _batched_throughput(runtimes: dict[str, Any], x: np.ndarray, batch_size: int, repeats: int) -> dict[str, Any]:
    """Samples per second of each runtime's batched forward (``run_batch``) over ``batch_size`` inputs at a
    time (the validation inputs in order, wrapping round to two full batches), passes alternating; the
    median pass of each, and int8's throughput over float's."""
    inputs = x[np.arange(2 * batch_size) % len(x)]
    for name in runtimes:
        runtimes[name].run_batch(inputs[:batch_size], batch_size)  # warm-up
    times = _alternating_passes(runtimes, lambda runtime: runtime.run_batch(inputs, batch_size), repeats)
    throughput = {name: len(inputs) / statistics.median(times[name]) for name in runtimes}
    return {"batch_size": batch_size, "inputs": len(inputs), "repeats": repeats,
            "throughput": {name: round(v, 1) for name, v in throughput.items()},
            "int8_over_float": round(throughput["int8"] / throughput["float"], 4),
            **_paired(times["float"], times["int8"])}


def _paired(float_times: list[float], int8_times: list[float]) -> dict[str, Any]:
    """The median of the per-pass ratios (float time over int8 time: above 1 int8 is faster) and its 95%
    interval (``measure.latency.median_interval``; None with fewer than 6 passes)."""
    from dynsearch.measure.latency import median_interval

    ratios = [f / i for f, i in zip(float_times, int8_times)]
    low, high = median_interval(ratios)
    return {"int8_speedup": round(statistics.median(ratios), 4),
            "int8_speedup_interval": None if low is None else [round(low, 4), round(high, 4)]}


def _pays(speedup: dict[str, Any]) -> bool | None:
    """int8 pays where its speed-up's 95% interval lies wholly above 1; None (undetermined) without one."""
    interval = speedup["int8_speedup_interval"]
    return None if interval is None else interval[0] > 1


def compare(folder: Path, card: dict[str, Any], splits, threads: int = 1, latency_inputs: int = 200,
            repeats: int = 7, batched_size: int = 128) -> dict[str, Any]:
    """Float and int8 staged graphs measured side by side with onnxruntime at batch size 1 and batched.

    Returns per variant ``val_accuracy``, ``val_macs``, ``test_accuracy``,
    ``test_macs`` and ``latency_ms`` (median over ``repeats`` alternating passes of
    the mean per-input time over the first ``latency_inputs`` validation inputs); ``batched``: each
    variant's throughput at ``batched_size`` inputs per graph call (``_batched_throughput``); at each
    of the two sizes int8's speed-up over float (median of the per-pass ratios, 95% interval), and
    ``pays_at_batch_sizes``: the sizes where that interval lies wholly above 1 (``pays_undetermined_at``:
    too few passes for an interval, under 6).
    """
    runtimes = {name: StagedRuntime(folder, int8=name == "int8", threads=threads, card=card)
                for name in ("float", "int8")}
    result: dict[str, dict[str, Any]] = {}
    for name, runtime in runtimes.items():
        val = _figures(runtime, splits.val_x.numpy(), splits.val_y.numpy())
        test = _figures(runtime, splits.test_x.numpy(), splits.test_y.numpy())
        result[name] = {"val_accuracy": val["accuracy"], "val_macs": val["macs"],
                        "test_accuracy": test["accuracy"], "test_macs": test["macs"]}
    timing_inputs = splits.val_x[:latency_inputs].numpy()
    times = {name: [seconds * 1000 / len(timing_inputs) for seconds in passes]  # ms per input, each pass
             for name, passes in _alternating_passes(runtimes, lambda runtime: runtime.run(timing_inputs),
                                                     repeats).items()}
    for name in runtimes:
        result[name]["latency_ms"] = round(statistics.median(times[name]), 4)
        result[name]["latency_ms_runs"] = [round(t, 4) for t in times[name]]
    batched = _batched_throughput(runtimes, splits.val_x.numpy(), batched_size, repeats)
    one = _paired(times["float"], times["int8"])
    verdicts = {1: _pays(one), batched_size: _pays(batched)}
    pays = [size for size, verdict in verdicts.items() if verdict]
    undetermined = [size for size, verdict in verdicts.items() if verdict is None]
    return {
        "method": METHOD,
        "files": None,  # filled in by the exporter
        "latency": {"batch_size": 1, "threads": threads, "inputs": len(timing_inputs), "repeats": repeats,
                    "order": "float and int8 passes alternate; median of the per-input means"},
        "batch1": one,
        "batched": batched,
        "pays_at_batch_sizes": pays,
        "pays_undetermined_at": undetermined,
        "float": result["float"],
        "int8": result["int8"],
        "int8_minus_float": {"test_accuracy": result["int8"]["test_accuracy"] - result["float"]["test_accuracy"],
                             "latency_ms": result["int8"]["latency_ms"] - result["float"]["latency_ms"]},
    }
