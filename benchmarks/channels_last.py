"""Training time in the default (contiguous) vs channels-last layout (recipe field ``channels_last``).

For each recipe, trains its default trial config (``dynsearch.spaces.default_config``) with
``train_model`` (Lightning, one thread) for one epoch on a stratified training subset, in each
layout in turn, alternating, ``--reps`` times; the ratio of the median times is the speed-up
(measured side by side in one process, so both layouts see the same machine). Validation
accuracy after the epoch is printed too: the layouts compute the same values up to round-off.
Writes benchmarks/results/channels_last.json:
  python benchmarks/channels_last.py [--recipes fmnist-exits ...] [--subset 6400] [--reps 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "channels_last.json"
RECIPES = ["fmnist-exits", "fmnist-gates", "fmnist-condconv", "fmnist-moe", "fmnist-cross-family"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipes", nargs="+", default=RECIPES)
    parser.add_argument("--subset", type=int, default=6400, help="training images per epoch")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from dynsearch.data import load_splits
    from dynsearch.measure.evaluate import measure
    from dynsearch.recipe import load_recipe
    from dynsearch.spaces import default_config
    from dynsearch.training.trial import train_model

    load_before = os.getloadavg()
    rows = []
    for name in args.recipes:
        recipe = load_recipe(name)
        splits = load_splits(recipe.data.name, recipe.data.split_seed, val_fraction=recipe.data.val_fraction,
                             train_subset=args.subset)
        data = type("Data", (), {"input_shape": tuple(splits.input_shape), "num_classes": splits.num_classes})()
        config = default_config(recipe, data)
        seconds = {False: [], True: []}
        accuracy = {}
        for _ in range(args.reps):
            for layout in (False, True):
                config["train"] = {**config["train"], "epochs": 1, "channels_last": layout}
                started = time.perf_counter()
                model = train_model(config, splits)
                seconds[layout].append(round(time.perf_counter() - started, 2))
                accuracy[layout] = measure(model, splits.val_x, splits.val_y)["accuracy"]
        row = {"recipe": name, "mechanism": config["mechanism"], "backbone": config["backbone"],
               "contiguous_seconds": seconds[False], "channels_last_seconds": seconds[True],
               "speedup": round(statistics.median(seconds[False]) / statistics.median(seconds[True]), 3),
               "val_accuracy_contiguous": accuracy[False], "val_accuracy_channels_last": accuracy[True]}
        rows.append(row)
        print(f"{name:22s} contiguous {seconds[False]} s, channels_last {seconds[True]} s: "
              f"speed-up {row['speedup']}x (val {accuracy[False]:.4f} / {accuracy[True]:.4f})", flush=True)
    result = {"command": "python " + " ".join(["benchmarks/channels_last.py", *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d"), "subset": args.subset, "reps": args.reps,
              "torch": torch.__version__,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                          "load_average_before": load_before, "load_average_after": os.getloadavg()},
              "rows": rows}
    Path(args.results).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
