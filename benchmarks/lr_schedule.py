"""Constant vs cosine learning rate (recipe field ``lr_schedule``) on a recipe's default point.

Trains the default trial config of a recipe (``dynsearch.spaces.default_config``: its backbone
and mechanism defaults, the space's default learning rate) once per schedule and seed, two
trainings side by side in separate processes (one thread each, so both see the same machine),
and measures each on the validation and the official test split. Writes
benchmarks/results/lr_schedule.json:
  python benchmarks/lr_schedule.py [--recipe fmnist-exits] [--seeds 0] [--epochs N]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "lr_schedule.json"


def _run(recipe_name: str, schedule: str, seed: int, epochs: int | None) -> dict:
    import torch

    torch.set_num_threads(1)
    from dynsearch.data import load_data
    from dynsearch.measure.evaluate import measure
    from dynsearch.recipe import load_recipe
    from dynsearch.spaces import default_config
    from dynsearch.training.trial import train_model

    recipe = load_recipe(recipe_name)
    splits = load_data(recipe.data)
    data = type("Data", (), {"input_shape": tuple(splits.input_shape), "num_classes": splits.num_classes})()
    config = default_config(recipe, data)
    config["train"] = {**config["train"], "lr_schedule": schedule, "seed": seed,
                       **({"epochs": epochs} if epochs else {})}
    started = time.perf_counter()
    model = train_model(config, splits)
    seconds = time.perf_counter() - started
    val, test = measure(model, splits.val_x, splits.val_y), measure(model, splits.test_x, splits.test_y)
    return {"schedule": schedule, "seed": seed, "lr": config["train"]["lr"], "epochs": config["train"]["epochs"],
            "val_accuracy": val["accuracy"], "test_accuracy": test["accuracy"], "macs": test["macs"],
            "train_seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", default="fmnist-exits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, help="default: the recipe's")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    jobs = [(args.recipe, schedule, seed, args.epochs) for seed in args.seeds for schedule in ("constant", "cosine")]
    load_before = os.getloadavg()
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
        runs = list(pool.map(_run, *zip(*jobs)))
    for run in runs:
        print(f"{run['schedule']:8s} seed {run['seed']}: val {run['val_accuracy']:.4f} test {run['test_accuracy']:.4f} "
              f"({run['train_seconds']} s)", flush=True)
    result = {"command": "python " + " ".join(["benchmarks/lr_schedule.py", *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d"), "recipe": args.recipe,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_average_before": load_before, "load_average_after": os.getloadavg()},
              "runs": runs}
    Path(args.results).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
