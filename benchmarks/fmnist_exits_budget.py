"""Which training budget lets fmnist-exits fit 30 minutes: one early-exit network, trained side by side.

Trains the most accurate model of a 7-epoch fmnist-exits search (its trial config: exits after
stage 1, head 32, cosine rate from 0.011, seed 1) under smaller budgets, two variants at a time
(one process and thread each), and prints (variant, train seconds, validation accuracy, test
accuracy). A variant is (train_subset or None for all 54,000, epochs, batch size, widths[, augment]):
  python benchmarks/fmnist_exits_budget.py RUN_DIR 1 "36000,5,64,16-32-64" "none,4,128,16-32-64"
  python benchmarks/fmnist_exits_budget.py RUN_DIR 9 "none,6,64,8-32-64,hflip" "none,6,64,8-32-64,hflip+crop"
Printed lines are kept in benchmarks/results/fmnist_exits_budget.txt with their command.
"""
from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context


def run(job):
    import torch

    from dynsearch.data import load_splits
    from dynsearch.measure.evaluate import measure
    from dynsearch.training.trial import train_model

    torch.set_num_threads(1)
    config_path, (subset, epochs, batch_size, widths, augment) = job
    cfg = json.load(open(config_path))
    cfg["train"].update(epochs=epochs, batch_size=batch_size, augment=augment)
    cfg["backbone"]["widths"] = widths
    splits = load_splits("fashion-mnist", 0, val_fraction=0.1, train_subset=subset)
    started = time.perf_counter()
    model = train_model(cfg, splits)
    seconds = time.perf_counter() - started
    return ((subset, epochs, batch_size, widths, *([augment] if augment else [])), round(seconds),
            measure(model, splits.val_x, splits.val_y)["accuracy"], measure(model, splits.test_x, splits.test_y)["accuracy"])


def parse(text: str):
    subset, epochs, batch_size, widths, *augment = text.split(",")
    return (None if subset == "none" else int(subset), int(epochs), int(batch_size), [int(w) for w in widths.split("-")],
            augment[0].split("+") if augment else [])


if __name__ == "__main__":
    run_dir, trial, *variants = sys.argv[1:]
    config_path = f"{run_dir}/trials/{trial}/config.json"
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        for line in pool.map(run, [(config_path, parse(v)) for v in variants]):
            print(line, flush=True)
