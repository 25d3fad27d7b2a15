"""ConvNet-AIG fidelity: sweep the target rate t over {0.3, 0.5, 0.7, 0.9} and measure what the gates do.

Claims checked (from trained models, hard eval gates, test split): the measured
execution rate (mean over gated blocks of the fraction of samples that ran the
block) is within 0.1 of t, and MACs rise with t. Writes
benchmarks/results/aig_target_rate.json:
  python benchmarks/aig_target_rate.py [--epochs 15]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "aig_target_rate.json"
TARGETS = (0.3, 0.5, 0.7, 0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--loss-weight", type=float, default=2.0, help="lambda (the paper's 2)")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()

    import torch

    from dynsearch.measure.evaluate import measure
    from dynsearch.data import load_splits
    from dynsearch.recipe import load_recipe
    from dynsearch.spaces import default_config
    from dynsearch.training.trial import train_model

    torch.set_num_threads(2)
    recipe = load_recipe("digits-gates").with_overrides(epochs=args.epochs)
    splits = load_splits("digits", 0)
    points = []
    for target in TARGETS:
        defaults = {"gate_kind": "aig", "aig_objective": "target_rate", "gate_target_rate": target,
                    "gate_loss_weight": args.loss_weight}
        config = default_config(recipe.with_overrides(defaults=defaults), splits)
        started = time.time()
        model = train_model(config, splits)
        result = measure(model, splits.test_x, splits.test_y)
        rates = result["stats"]["gate_rates"]
        rate = sum(rates) / len(rates)
        points.append({
            "target_rate": target, "measured_rate": rate, "per_block_rates": rates,
            "macs": result["macs"], "macs_full": result["macs_full"], "test_accuracy": result["accuracy"],
            "train_seconds": round(time.time() - started, 1),
        })
        print(f"t={target}: rate {rate:.3f}, macs {result['macs']:,.0f}, accuracy {result['accuracy']:.4f}", flush=True)

    macs = [p["macs"] for p in points]
    results = {
        "command": "python " + " ".join(["benchmarks/aig_target_rate.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "load_average": os.getloadavg()},
        "setup": {"recipe": "digits-gates (ResNet 8-16-32, depth 3, 7 gated blocks)", "epochs": args.epochs,
                  "loss_weight": args.loss_weight, "split": "test", "gates": "AIG, Gumbel-softmax temperature 1"},
        "points": points,
        "checks": {
            "rate_within_0.1_of_target": all(abs(p["measured_rate"] - p["target_rate"]) <= 0.1 for p in points),
            "macs_rise_with_target": all(a < b for a, b in zip(macs, macs[1:])),
        },
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["checks"], indent=2))


if __name__ == "__main__":
    main()
