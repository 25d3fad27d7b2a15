"""``dynsearch bench``: latency of a saved model (trial or exported folder) beside its static path."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dynsearch.data import DATASETS, load_data, load_splits, source_of
from dynsearch.deploy.load import load_folder
from dynsearch.errors import UserError
from dynsearch.measure.device import resolve_device
from dynsearch.measure.evaluate import count_params, measure
from dynsearch.measure.latency import component_latency_table, measure_latency, predict_latency_ms
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


def bench(folder, *, data: str | None = None, device: str = "cpu", batch_size: int = 1, threads: int = 1,
          inputs: int = 100, repeats: int = 15, warmup: int = 3) -> dict[str, Any]:
    """Latency of a saved model and of its static full-depth path, side by side, with MACs
    and the latency table's prediction (and its error against the measured mean).
    ``realised_speedup``: the static p50 over the dynamic p50 (above 1: dynamic is faster)."""
    _check_bench_folder(Path(folder))
    model, _ = load_folder(folder)
    section = _bench_data_section(folder, data)
    name = section.get("name")
    if source_of(section) is None and name not in DATASETS:
        raise UserError(f"--data {name}: unknown dataset; use one of {sorted(DATASETS)}")
    resolve_device(device)
    splits = load_data({**section, "split_seed": 0}) if source_of(section) else load_splits(name, 0)
    x = splits.val_x[: inputs * batch_size]
    costs = measure(model, x, splits.val_y[: len(x)])
    kwargs = dict(device=device, batch_size=batch_size, warmup=warmup, repeats=repeats, threads=threads)
    dynamic = measure_latency(model, x, **kwargs)
    static = measure_latency(model, x, static=True, **kwargs)
    table = component_latency_table(model, device=device, threads=threads)
    predicted = predict_latency_ms(model, x, table)
    return {
        "path": str(folder), "data": name, "device": device, "batch_size": batch_size, "threads": threads,
        "dynamic": {**dynamic, "macs": costs["macs"]},
        "static": {**static, "macs": costs["macs_full"]},
        "params": count_params(model),
        "macs_speedup": costs["macs_full"] / costs["macs"],
        # The static path's p50 over the dynamic one's: above 1 the dynamic model is the faster.
        "realised_speedup": static["latency_ms"] / dynamic["latency_ms"],
        "lut_predicted_ms": predicted,
        "lut_error": abs(predicted - dynamic["latency_ms_mean"]) / dynamic["latency_ms_mean"],
    }
