"""Early-exit fidelity: accuracy-MACs curves over thresholds, and PABEE against confidence at equal MACs.

A CNN with five exits (digits, 6 stages) is trained three ways:
  joint     PABEE's weighted average sum_j j*L_j / sum_j j (all heads together)
  deebert   two-stage: backbone + final classifier, then the exit heads alone
  fastbert  two-stage, exit heads by self-distillation KL(final || exit)
Then every rule is swept on the test split without retraining: confidence,
entropy and patience on the joint model, entropy on deebert, the normalised
entropy ("speed") on fastbert. MACs are traced per sample (what ran).
PABEE's points are compared with the confidence curve of the same model,
linearly interpolated at PABEE's MACs. Writes benchmarks/results/exit_policies.json:
  python benchmarks/exit_policies.py [--epochs 15]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "exit_policies.json"
WIDTHS = [8, 16, 32, 32, 64, 64]


def config(training: str, policy: str, loss_weights: str, epochs: int) -> dict:
    return {
        "mechanism": "exits", "input_shape": [1, 8, 8], "num_classes": 10,
        "backbone": {"kind": "cnn", "widths": WIDTHS, "depth": 1},
        "exits": {"stages": [0, 1, 2, 3, 4], "head_width": 32, "policy": policy, "threshold": 0.9,
                  "training": training, "loss_weights": loss_weights, "loss_weight": 1.0},
        "train": {"lr": 0.005, "epochs": epochs, "batch_size": 64, "seed": 0}, "trial": 0,
    }


def sweep(model, splits, policy: str, knobs: list) -> list[dict]:
    from dynsearch.measure.evaluate import measure

    model.policy = policy
    curve = []
    for knob in knobs:
        if policy == "patience":
            model.patience = knob
        else:
            model.threshold = knob
        result = measure(model, splits.test_x, splits.test_y)
        curve.append({"knob": knob, "macs": result["macs"], "accuracy": result["accuracy"],
                      "exit_histogram": result["stats"]["exit_histogram"]})
    return curve


def interpolate(curve: list[dict], macs: float) -> float | None:
    """Accuracy of a curve at ``macs`` (linear between its points; None outside its MACs range)."""
    points = sorted((p["macs"], p["accuracy"]) for p in curve)
    for (m0, a0), (m1, a1) in zip(points, points[1:]):
        if m0 <= macs <= m1:
            return a0 if m1 == m0 else a0 + (a1 - a0) * (macs - m0) / (m1 - m0)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()

    import numpy as np
    import torch

    from dynsearch.data import load_splits
    from dynsearch.training.trial import train_model

    torch.set_num_threads(2)
    splits = load_splits("digits", 0)
    # Linear up to 0.99, then ever closer to 1 (no exit at all only above 1), so the curve spans the MACs range.
    confidences = [round(float(t), 4) for t in np.linspace(0.3, 0.99, 12)] + [1 - 10.0**-k for k in range(3, 8)] + [1.01]
    entropies = [0.0, 1e-6, 1e-5, 1e-4, 1e-3] + [round(float(t), 4) for t in np.linspace(0.01, 1.5, 14)]
    speeds = [0.0, 1e-6, 1e-5, 1e-4, 1e-3] + [round(float(t), 4) for t in np.linspace(0.01, 0.7, 14)]
    joint = train_model(config("joint", "confidence", "linear", args.epochs), splits)
    deebert = train_model(config("two_stage", "entropy", "constant", args.epochs), splits)
    fastbert = train_model(config("two_stage", "fastbert", "constant", args.epochs), splits)
    curves = {
        "joint/confidence": sweep(joint, splits, "confidence", confidences),
        "joint/entropy": sweep(joint, splits, "entropy", entropies),
        "joint/patience (PABEE)": sweep(joint, splits, "patience", [1, 2, 3, 4]),
        "deebert/entropy": sweep(deebert, splits, "entropy", entropies),
        "fastbert/speed": sweep(fastbert, splits, "fastbert", speeds),
    }
    full = joint.macs_full()
    comparison = []
    for point in curves["joint/patience (PABEE)"]:
        at = interpolate(curves["joint/confidence"], point["macs"])
        comparison.append({"patience": point["knob"], "macs": point["macs"], "pabee_accuracy": point["accuracy"],
                           "confidence_accuracy_at_equal_macs": at,
                           "pabee_minus_confidence": None if at is None else point["accuracy"] - at})
    for name, curve in curves.items():
        print(name, [(round(p["macs"] / full, 3), round(p["accuracy"], 4)) for p in curve], flush=True)
    results = {
        "command": "python " + " ".join(["benchmarks/exit_policies.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "setup": {"data": "digits, test split (360 images)", "backbone": f"cnn widths {WIDTHS}, exits after stages 0-4",
                  "epochs": args.epochs, "macs_full": full,
                  "no_exit_test_accuracy": {name: sweep(model, splits, "confidence", [2.0])[0]["accuracy"]
                                            for name, model in (("joint", joint), ("deebert", deebert),
                                                                ("fastbert", fastbert))}},
        "curves": curves,
        "pabee_vs_confidence_at_equal_macs": comparison,
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(comparison, indent=2))


if __name__ == "__main__":
    main()
