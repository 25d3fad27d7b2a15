"""CPU seconds of one trial of a recipe (its default point, one thread), for when the machine is too
busy for a wall-clock search timing to mean anything.

CPU time is what a trial costs on a core of its own (cache and memory contention
aside); 12 trials, 2 at a time on 2 cores, need about 6x that plus Ray's start-up.
Writes benchmarks/results/trial_cpu_time_<recipe>.json:
  python benchmarks/trial_cpu_time.py parity-halting
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("recipe")
    args = parser.parse_args()

    import torch

    from dynsearch.measure.evaluate import measure
    from dynsearch.data import load_splits
    from dynsearch.recipe import load_recipe
    from dynsearch.spaces import default_config
    from dynsearch.training.trial import train_model

    torch.set_num_threads(1)
    recipe = load_recipe(args.recipe)
    splits = load_splits(recipe.data.name, recipe.data.split_seed)
    config = default_config(recipe, splits)
    load_before = os.getloadavg()
    cpu_before, wall_before = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    model = train_model(config, splits)
    result = measure(model, splits.val_x, splits.val_y)
    cpu_after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - wall_before
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    results = {
        "command": "python " + " ".join(["benchmarks/trial_cpu_time.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "recipe": args.recipe, "epochs": recipe.epochs, "config": config,
        "cpu_seconds": round(cpu, 1), "wall_seconds": round(wall, 1),
        "val_accuracy": result["accuracy"], "stats": result["stats"],
    }
    path = RESULTS / f"trial_cpu_time_{args.recipe}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("cpu_seconds", "wall_seconds", "val_accuracy")}))


if __name__ == "__main__":
    main()
