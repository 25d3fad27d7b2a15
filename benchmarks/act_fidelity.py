"""ACT fidelity on parity: as the ponder-cost weight tau rises, mean ponder steps fall, at some accuracy cost.

Claim checked (Graves 2016, arXiv 1603.08983, section 3.1: a higher time
penalty gives fewer ponder steps and, past a point, lower accuracy): trained
ACT models (recipe parity-halting's default point, tau set per point), hard
eval halting, test split; each (tau, seed) trained in its own process.
Writes benchmarks/results/act_fidelity.json:
  python benchmarks/act_fidelity.py [--epochs 10] [--seeds 0 1] [--taus 0.0001 0.001 0.01 0.1]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "act_fidelity.json"


def train_point(tau: float, seed: int, epochs: int) -> dict:
    import torch

    from dynsearch.measure.evaluate import measure
    from dynsearch.data import load_splits
    from dynsearch.recipe import load_recipe
    from dynsearch.spaces import default_config
    from dynsearch.training.trial import train_model

    torch.set_num_threads(1)
    recipe = load_recipe("parity-halting").with_overrides(
        epochs=epochs, seed=seed, defaults={"halting_mechanism": "act", "act_tau": tau})
    splits = load_splits(recipe.data.name, recipe.data.split_seed)
    config = default_config(recipe, splits)
    started = time.time()
    model = train_model(config, splits)
    result = measure(model, splits.test_x, splits.test_y)
    return {"tau": tau, "seed": seed, "test_accuracy": result["accuracy"],
            "mean_ponder_steps": result["stats"]["mean_ponder_steps"],
            "ponder_histogram": result["stats"]["ponder_histogram"],
            "macs": result["macs"], "macs_full": result["macs_full"],
            "train_seconds": round(time.time() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--taus", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2, 1e-1])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()

    import torch

    jobs = [(tau, seed) for tau in args.taus for seed in args.seeds]
    with ProcessPoolExecutor(args.workers) as pool:
        runs = list(pool.map(train_point, *zip(*jobs), [args.epochs] * len(jobs)))
    for run in runs:
        print(f"tau={run['tau']:g} seed={run['seed']}: accuracy {run['test_accuracy']:.4f}, "
              f"mean ponder steps {run['mean_ponder_steps']:.3f}", flush=True)
    points = []
    for tau in args.taus:
        mine = [r for r in runs if r["tau"] == tau]
        points.append({"tau": tau,
                       "mean_ponder_steps": statistics.mean(r["mean_ponder_steps"] for r in mine),
                       "test_accuracy": statistics.mean(r["test_accuracy"] for r in mine),
                       "macs": statistics.mean(r["macs"] for r in mine)})
    steps = [p["mean_ponder_steps"] for p in points]
    results = {
        "command": "python " + " ".join(["benchmarks/act_fidelity.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "load_average": os.getloadavg(), "note": "shared machine; timings taken under load"},
        "setup": {"recipe": "parity-halting default point (ACT, GRU cell, hidden 128, max 6 steps, epsilon 0.01)",
                  "epochs": args.epochs, "seeds": args.seeds, "split": "test"},
        "points": points,
        "runs": runs,
        "checks": {"ponder_steps_fall_as_tau_rises": all(a > b for a, b in zip(steps, steps[1:]))},
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({"points": points, **results["checks"]}, indent=2))


if __name__ == "__main__":
    main()
