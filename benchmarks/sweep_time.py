"""Operating-point sweep time: one real pass per knob value (before) vs one record pass per split and replay.

Trains the default trial config of ``fmnist-exits`` (an early-exit CNN; the ``digits-exits``
default recipe where Fashion-MNIST is not installed) for ``--epochs`` on a stratified training
subset, one thread, then times in one process, alternating, ``--reps`` times:

- ``real``: ``sweep(..., replay=False)``, the sweep as it was: validation and test, every value;
- ``replay``: ``sweep(...)``, the same points from one record pass per split;
- the flows of issue 31: ``sweep(..., test=False)``, then the trained point and the points on the
  trial's validation front measured again (``remeasured_points``): ``replay_then_real_val_front``, a
  real validation pass each and their test figures replayed; ``replay_then_real_val_test_front``,
  real validation and test passes each.

The ratios of the medians are the speed-ups (side by side, so both see the same machine); the
replayed points are compared with the real ones too. Validation is the first ``--val`` images of
the recipe's validation split (the issue's trials had 1,280), test the whole test split.
Writes benchmarks/results/sweep_time.json:
  python benchmarks/sweep_time.py [--train 3840] [--val 1280] [--epochs 2] [--reps 1]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "sweep_time.json"


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return ""


def _recipe_and_splits(train: int, val: int):
    """fmnist-exits with its data, or the default recipe (digits) where Fashion-MNIST is absent."""
    from dynsearch.data import load_splits
    from dynsearch.recipe import DEFAULT_RECIPE, load_recipe

    for name in ("fmnist-exits", DEFAULT_RECIPE):
        recipe = load_recipe(name)
        try:
            splits = load_splits(recipe.data.name, recipe.data.split_seed, val_fraction=recipe.data.val_fraction,
                                 train_subset=min(train, 1000) if name == DEFAULT_RECIPE else train)
        except Exception as exc:  # Fashion-MNIST's files are not installed: the digits default
            print(f"{name}: {exc}; falling back to {DEFAULT_RECIPE}", flush=True)
            continue
        return recipe, replace(splits, val_x=splits.val_x[:val], val_y=splits.val_y[:val])
    raise SystemExit("no data")


def _flow(model, splits, batch_size: int, real_test: bool):
    """Validation points by replay, then the trained point and the trial's validation front measured
    again: real validation figures, and test figures real (``real_test``) or replayed."""
    from dynsearch.measure.points import remeasured_points, sweep
    from dynsearch.run.front import non_dominated

    points = sweep(model, splits, batch_size, test=False)
    front = non_dominated(points, [("accuracy", "max"), ("macs", "min")])
    indices = sorted({p["point"] for p in front} | {p["point"] for p in points if p["trained"]})
    return remeasured_points(model, splits, points, indices, batch_size, real_test=real_test), len(indices)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=int, default=3840, help="training images")
    parser.add_argument("--val", type=int, default=1280, help="validation images the sweep measures")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)  # a trial's worker: one thread per CPU, 1 CPU
    from dynsearch.measure.evaluate import MEASURE_BATCH_SIZE
    from dynsearch.measure.points import sweep
    from dynsearch.spaces import default_config
    from dynsearch.training.trial import train_model

    uptime_before, load_before = _uptime(), os.getloadavg()
    recipe, splits = _recipe_and_splits(args.train, args.val)
    data = type("Data", (), {"input_shape": tuple(splits.input_shape), "num_classes": splits.num_classes})()
    config = default_config(recipe, data)
    config["train"] = {**config["train"], "epochs": args.epochs}
    started = time.perf_counter()
    model = train_model(config, splits)
    train_seconds = time.perf_counter() - started
    model.component_macs()
    runs = {"real": lambda: sweep(model, splits, MEASURE_BATCH_SIZE, replay=False),
            "replay": lambda: sweep(model, splits, MEASURE_BATCH_SIZE),
            "replay_then_real_val_front": lambda: _flow(model, splits, MEASURE_BATCH_SIZE, real_test=False),
            "replay_then_real_val_test_front": lambda: _flow(model, splits, MEASURE_BATCH_SIZE, real_test=True)}
    seconds = {name: [] for name in runs}
    results = {}
    for _ in range(args.reps):
        for name, run in runs.items():
            started = time.perf_counter()
            results[name] = run()
            seconds[name].append(round(time.perf_counter() - started, 3))
            print(f"{name:22s} {seconds[name][-1]:8.2f} s", flush=True)
    real, replayed = results["real"], results["replay"]
    figures = ("accuracy", "macs", "stats", "test_accuracy", "test_macs")
    differing = [p["point"] for p, q in zip(real, replayed) if any(p[k] != q[k] for k in figures)]
    flows = ("replay_then_real_val_front", "replay_then_real_val_test_front")
    median = {name: statistics.median(values) for name, values in seconds.items()}
    result = {
        "command": "python " + " ".join(["benchmarks/sweep_time.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
        "recipe": recipe.name, "mechanism": config["mechanism"], "backbone": config["backbone"],
        "exits": config.get("exits"), "knob_values": len(real),
        "train_images": len(splits.train_x), "val_images": len(splits.val_x), "test_images": len(splits.test_x),
        "epochs": args.epochs, "train_seconds": round(train_seconds, 2), "batch_size": MEASURE_BATCH_SIZE,
        "threads": 1, "reps": args.reps, "torch": torch.__version__,
        "seconds": seconds,
        "speedup": {name: round(median["real"] / median[name], 2) for name in runs if name != "real"},
        "points_remeasured_in_flows": results[flows[0]][1],
        "replayed_points_equal_real": not differing, "differing_points": differing,
        "flow_points_equal_real": {name: all(p[k] == real[p["point"]][k] for p in results[name][0]
                                             for k in figures if k in p) for name in flows},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "uptime_before": uptime_before,
                    "uptime_after": _uptime(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg()},
    }
    print(f"speed-up over the real sweep ({median['real']:.2f} s): {result['speedup']}; "
          f"{result['points_remeasured_in_flows']} of {len(real)} points remeasured in the flows; "
          f"replayed points equal real: {not differing}", flush=True)
    Path(args.results).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
