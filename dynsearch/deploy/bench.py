"""``dynsearch bench``: latency and throughput of a saved model (trial or exported folder) beside its
static path, at one or more batch sizes, and its cost under shifted inputs."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from dynsearch.data import DATASETS, load_data, load_splits, source_of
from dynsearch.deploy.engine import chosen_engines, wrapping_batches
from dynsearch.deploy.load import load_folder
from dynsearch.errors import UserError
from dynsearch.measure.device import resolve_device
from dynsearch.measure.evaluate import count_params, measure
from dynsearch.measure.latency import component_latency_table, serving_form, paired_speedup, predict_latency_ms
from dynsearch.measure.shift import corrupt, shifted_figures
from dynsearch.run.rundir import STUDY_FILE, TRIALS_DIR, RunDir


def _bench_data_section(folder, data: str | None) -> dict:
    """The data to time on: --data NAME, else the run's recipe (trial folder) or the card (export)."""
    if data:
        return {"name": data}
    folder = Path(folder)
    run = RunDir(folder.parent.parent)  # a trial folder is RUN_DIR/trials/<N>
    if run.recipe_path.is_file():
        return run.read_recipe().data.model_dump()
    card = folder / "card.json"
    if card.is_file():
        return json.loads(card.read_text())["data"]
    raise UserError(f"{folder}: no {run.recipe_path.name} two levels up and no card.json; pass --data NAME")


def _check_bench_folder(folder: Path) -> None:
    """A run directory given where a model folder is wanted says which command to use."""
    if (folder / STUDY_FILE).is_file() or (folder / TRIALS_DIR).is_dir():
        raise UserError(f"{folder}: is a run directory, not a model folder; bench one of its trials "
                        f"('dynsearch bench {folder}/{TRIALS_DIR}/N', numbers from 'dynsearch trials {folder} "
                        f"--state COMPLETE') or an exported model ('dynsearch export {folder} --out DIR')")


def bench(folder, *, data: str | None = None, device: str = "cpu", batch_size: int | list[int] = 1,
          threads: int = 1, inputs: int = 100, repeats: int = 15, warmup: int = 3,
          shift: list[tuple[str, int]] | None = None, seed: int = 0) -> dict[str, Any]:
    """Latency and throughput of a saved model beside its static full-depth path, at each batch size.

    The model is timed as ``dynsearch.load`` serves it (``measure.latency.serving_form``). At each batch size,
    ``inputs`` batches of validation inputs are timed in alternation on both paths
    (``measure.latency.paired_speedup``): ``realised_speedup`` is the median of the paired ratios
    (static time over dynamic time: above 1 the dynamic path is faster), with its 95% interval,
    beside ``macs_speedup`` on the same inputs. The top-level figures are the first batch size's;
    ``batch_sizes`` holds every size's. At batch size 1 the latency table's prediction is added.
    ``shift``: (corruption, severity) pairs (``measure.shift``): accuracy, expected MACs, the
    mechanism's statistics and the speed-up at the first batch size under each, beside clean.
    """
    _check_bench_folder(Path(folder))
    model = serving_form(load_folder(folder)[0], inplace=True)
    section = _bench_data_section(folder, data)
    name = section.get("name")
    if source_of(section) is None and name not in DATASETS:
        raise UserError(f"--data {name}: unknown dataset; use one of {sorted(DATASETS)}")
    resolve_device(device)
    if source_of(section):
        splits = load_data({**section, "split_seed": 0})
    elif "val_fraction" in section:  # the recipe's or card's own splits (Fashion-MNIST carves 10% for validation)
        splits = load_data(section)
    else:  # --data NAME: that dataset's default splits
        splits = load_splits(name, 0)
    sizes = [batch_size] if isinstance(batch_size, int) else list(dict.fromkeys(batch_size))
    timing = dict(device=device, warmup=warmup, repeats=repeats, threads=threads)

    def timed(x: torch.Tensor, size: int) -> dict[str, Any]:
        batches = wrapping_batches(x, size, inputs)
        index = torch.arange(inputs * size) % len(x)
        costs = measure(model, x[index], splits.val_y[index])
        paired = paired_speedup(model, model.forward_static, batches, **timing)
        return {
            "batch_size": size, "inputs": inputs,
            "dynamic": {**paired["dynamic"], "macs": costs["macs"]},
            "static": {**paired["static"], "macs": costs["macs_full"]},
            "macs_speedup": costs["macs_full"] / costs["macs"],
            "realised_speedup": paired["speedup"],
            "realised_over_macs": paired["speedup"] / (costs["macs_full"] / costs["macs"]),
            **{k: paired[k] for k in ("interval", "interval_halfwidth", "interval_wide", "repeats")},
        }

    per_size = [timed(splits.val_x, size) for size in sizes]
    engines = served_engine(folder)
    if set(engines.values()) != {"eager"}:  # the card chose another engine somewhere: time it as served
        _time_served_engines(folder, model, splits.val_x, sizes, per_size, inputs, timing)
    result: dict[str, Any] = {
        "path": str(folder), "data": name, "device": device, "threads": threads, "params": count_params(model),
        "served_form": "dynsearch.load(path, engine='eager'): eager PyTorch, batch norm folded, fixed pools",
        "served_engine": engines,
        **per_size[0], "batch_sizes": per_size, "load_average": list(os.getloadavg()),
    }
    if 1 in sizes:  # the latency table predicts batch-1 latency from the traces
        one = per_size[sizes.index(1)]
        table = component_latency_table(model, device=device, threads=threads)
        predicted = predict_latency_ms(model, splits.val_x[torch.arange(inputs) % len(splits.val_x)], table)
        result["lut_predicted_ms"] = predicted
        result["lut_error"] = abs(predicted - one["dynamic"]["latency_ms_mean"]) / one["dynamic"]["latency_ms_mean"]
    if shift:
        figures = shifted_figures(model, splits.val_x, splits.val_y, shift, seed=seed)
        first = sizes[0]
        figures["clean"]["timing"] = _shift_timing(per_size[0])
        for entry in figures["shifted"]:
            shifted = corrupt(splits.val_x, entry["corruption"], entry["severity"], seed)
            entry["timing"] = _shift_timing(timed(shifted, first))
        figures["batch_size"] = first
        result["shift"] = figures
    return result


def _time_served_engines(folder, model, x: torch.Tensor, sizes: list[int], per_size: list[dict[str, Any]],
                         inputs: int, timing: dict[str, Any]) -> None:
    """At each batch size that ``dynsearch.load(folder)`` serves with an engine other than eager, that
    engine timed against the static path as the dynamic path was (paired, the same batches): each
    such size's figures get ``served``; every size gets ``served_by``, the engine load serves there."""
    from dynsearch.deploy.engine import ByBatchSize
    from dynsearch.deploy.load import load

    served = load(folder)
    for size, figures in zip(sizes, per_size):
        name = served.engine_for(size) if isinstance(served, ByBatchSize) else served.engine
        figures["served_by"] = name
        if name == "eager":
            continue
        engine = served.engines[name] if isinstance(served, ByBatchSize) else served
        paired = paired_speedup(engine, model.forward_static, wrapping_batches(x, size, inputs), **timing)
        figures["served"] = {
            "engine": name, "realised_speedup": paired["speedup"],
            "realised_over_macs": paired["speedup"] / figures["macs_speedup"],
            **{k: paired[k] for k in ("interval", "interval_halfwidth", "interval_wide")},
            "latency_ms": paired["dynamic"]["latency_ms"], "throughput": paired["dynamic"]["throughput"],
        }


def served_engine(folder) -> dict[str, str]:
    """The engine ``dynsearch.load(folder)`` serves at each batch size the export measured (its card's
    ``engine.chosen``, read as ``load`` reads it): eager for a trial folder or a card without one."""
    card = Path(folder) / "card.json"
    try:
        data = json.loads(card.read_text()) if card.is_file() else None
    except ValueError:
        data = None
    return chosen_engines(data)


def _shift_timing(sized: dict[str, Any]) -> dict[str, Any]:
    return {"latency_ms": sized["dynamic"]["latency_ms"], "throughput": sized["dynamic"]["throughput"],
            "realised_speedup": sized["realised_speedup"], "interval": sized["interval"],
            "interval_wide": sized["interval_wide"]}
