"""Fidelity of the experts family: do the papers' claims reproduce on our small tasks?

- MoE (Shazeer 2017, Switch): more experts at fixed k raise accuracy at flat
  MACs; a larger k raises MACs. MLP (widths 64-64-64) on MNIST-1D, expert
  layers 1 and 2; a dense MLP as the reference.
- CondConv (Yang 2019): more experts raise accuracy at nearly flat MACs.
  CNN (widths 8-16-32) on digits, every block CondConv; a plain CNN as the reference.

Each variant is trained with Lightning for a few seeds and measured on the
test split (MACs from what ran). Writes benchmarks/results/experts_fidelity.json:
  python benchmarks/experts_fidelity.py [--seeds 0 1 2] [--moe-epochs 30] [--condconv-epochs 15]
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

RESULTS = Path(__file__).resolve().parent / "results" / "experts_fidelity.json"


def moe_config(layers, count, top_k, epochs, seed):
    return {
        "mechanism": "moe", "input_shape": [40], "num_classes": 10,
        "backbone": {"kind": "mlp", "widths": [64, 64, 64], "depth": 1},
        "experts": {"layers": layers, "count": count, "top_k": top_k, "balance_weight": 0.01, "capacity_factor": 1.5},
        "train": {"lr": 0.003, "epochs": epochs, "batch_size": 64, "seed": seed}, "trial": 0,
    }


def condconv_config(layers, experts, epochs, seed):
    return {
        "mechanism": "condconv", "input_shape": [1, 8, 8], "num_classes": 10,
        "backbone": {"kind": "cnn", "widths": [8, 16, 32], "depth": 1},
        "condconv": {"layers": layers, "experts": experts},
        "train": {"lr": 0.005, "epochs": epochs, "batch_size": 64, "seed": seed}, "trial": 0,
    }


def run_variant(name, make_config, splits, seeds):
    from dynsearch.measure.evaluate import measure
    from dynsearch.training.trial import train_model

    runs = []
    for seed in seeds:
        started = time.perf_counter()
        model = train_model(make_config(seed), splits)
        test = measure(model, splits.test_x, splits.test_y)
        runs.append({"seed": seed, "test_accuracy": test["accuracy"], "macs": test["macs"],
                     "macs_full": test["macs_full"], "params": sum(p.numel() for p in model.parameters()),
                     "train_seconds": round(time.perf_counter() - started, 1)})
    accuracies = [r["test_accuracy"] for r in runs]
    summary = {
        "variant": name,
        "test_accuracy_mean": round(statistics.mean(accuracies), 4),
        "test_accuracy_min": min(accuracies), "test_accuracy_max": max(accuracies),
        "macs": runs[0]["macs"] if len({r["macs"] for r in runs}) == 1 else [r["macs"] for r in runs],
        "params": runs[0]["params"], "runs": runs,
    }
    print(f"{name}: accuracy {summary['test_accuracy_mean']:.3f} ({min(accuracies):.3f}-{max(accuracies):.3f}), "
          f"MACs {summary['macs']}, params {summary['params']}", flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--moe-epochs", type=int, default=30)
    parser.add_argument("--condconv-epochs", type=int, default=15)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    import torch

    from dynsearch.data import load_splits

    torch.set_num_threads(1)
    load_before = os.getloadavg()
    mnist1d, digits = load_splits("mnist1d", 0), load_splits("digits", 0)
    moe = [run_variant("dense MLP", lambda s: moe_config([], 1, 1, args.moe_epochs, s), mnist1d, args.seeds)]
    for count, top_k in ((2, 1), (4, 1), (8, 1), (4, 2), (8, 2)):
        moe.append(run_variant(f"MoE E={count} k={top_k}",
                               lambda s, c=count, k=top_k: moe_config([1, 2], c, k, args.moe_epochs, s),
                               mnist1d, args.seeds))
    condconv = [run_variant("plain CNN", lambda s: condconv_config([], 1, args.condconv_epochs, s), digits, args.seeds)]
    for experts in (1, 2, 4, 8):
        condconv.append(run_variant(f"CondConv E={experts}",
                                    lambda s, e=experts: condconv_config([0, 1, 2], e, args.condconv_epochs, s),
                                    digits, args.seeds))
    results = {
        "command": "python " + " ".join(["benchmarks/experts_fidelity.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "threads": 1, "load_average_before": load_before, "load_average_after": os.getloadavg(),
                    "note": "2 cores shared with other jobs while this ran; accuracies do not depend on load"},
        "moe": {"data": "mnist1d (test split)", "epochs": args.moe_epochs, "variants": moe},
        "condconv": {"data": "digits (test split)", "epochs": args.condconv_epochs, "variants": condconv},
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
