"""Searching the network, not only its mechanism (issue #20): three searches at equal budget and seeds.

Per dataset and seed, with the same trials, epochs, sampler (NSGA-II, population trials // 3) and seeds:

1. ``static``  the static architecture search: space ``static`` over the backbone's search ranges
               (no exit heads; the backbone and the learning rate are searched);
2. ``fixed``   the mechanism on the fixed recipe backbone: space ``exits``, no backbone search
               (dynsearch's behaviour before backbone search);
3. ``joint``   the backbone and the mechanism in one search: space ``exits`` with the backbone ranges.

Scored by the hypervolume of each search's front over (validation accuracy, MACs) up to a fixed
reference per dataset (``REFERENCES``, stated in the results), and by the dynamic-vs-static MACs
ratio: the cheapest model of (3) within 0.5 point of the validation accuracy of the best static
architecture found by (1), its MACs over that static model's (per seed, and pooled over the seeds).

Datasets: ``digits`` (CNN, the default recipe's backbone and ranges), ``mnist1d`` (MLP; 4,000 /
1,000 generated locally) and ``fmnist`` (MLP on a Fashion-MNIST training subset: 3,840 training and
1,280 validation images, 10 epochs; Optuna's multi-objective tutorial set-up, as in the issue).
Searches run in this process on one local Ray instance, W&B off.

    python benchmarks/backbone_search.py                                  # the full benchmark
    python benchmarks/backbone_search.py --trials 16                      # the committed results (30 min, busy)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import dynsearch  # noqa: E402
from dynsearch.recipe import load_recipe, parse_recipe  # noqa: E402
from dynsearch.run.front import hypervolume, non_dominated  # noqa: E402
from dynsearch.run.rundir import RunDir  # noqa: E402
from dynsearch.run.study import open_study  # noqa: E402

WITHIN_POINTS = 0.005  # "within 0.5 point" of the best static architecture's validation accuracy
METHODS = ("static", "fixed", "joint")

# (lowest validation accuracy, highest MACs per sample): fixed per dataset, whatever the searches find.
REFERENCES = {"digits": (0.8, 400_000), "mnist1d": (0.3, 100_000), "fmnist": (0.5, 130_000)}

MLP_SEARCH = {"stages": [1, 3], "width": {"int": [8, 256], "log": True}, "dropout": [0.0, 0.3]}


def dataset_recipe(name: str, trials: int, epochs: int | None):
    """The fixed-backbone form (``backbone.search`` present; method ``fixed`` drops it)."""
    if name == "digits":
        recipe = load_recipe("digits-exits")  # CNN 8-32-64 d1; stages, widths, depth and kernel searched
    elif name == "mnist1d":
        recipe = parse_recipe({
            "name": "bench-mnist1d", "data": {"name": "mnist1d", "split_seed": 0},
            "backbone": {"kind": "mlp", "widths": [64, 64, 64], "depth": 1, "search": MLP_SEARCH},
            "space": "exits", "epochs": 15, "batch_size": 64, "concurrent_trials": 2}, "mnist1d")
    elif name == "fmnist":
        recipe = parse_recipe({
            "name": "bench-fmnist", "data": {"name": "fashion-mnist", "split_seed": 0, "train_subset": 3840,
                                             "val_fraction": 1280 / 60000},
            "backbone": {"kind": "mlp", "widths": [128, 64, 32], "depth": 1, "search": MLP_SEARCH},
            "space": "exits", "epochs": 10, "batch_size": 64, "concurrent_trials": 2}, "fmnist")
    else:
        raise SystemExit(f"unknown dataset {name!r}; use digits, mnist1d, fmnist")
    return recipe.with_overrides(trials=trials, epochs=epochs, sampler={"name": "nsga2"}, wandb={"mode": "off"})


def method_recipe(recipe, method: str):
    if method == "static":
        return recipe.with_overrides(space="static")
    if method == "fixed":
        return recipe.with_overrides(backbone={"search": None})
    return recipe


def complete_trials(run_dir: Path) -> list[dict[str, Any]]:
    trials = []
    for trial in open_study(run_dir).get_trials(deepcopy=False):
        metrics = RunDir(run_dir).read_metrics(trial.number)
        if trial.state.name == "COMPLETE" and metrics.get("status") == "COMPLETE":
            config = RunDir(run_dir).read_config(trial.number) or {}
            trials.append({"trial": trial.number, "backbone": config.get("backbone"),
                           "exits": (config.get("exits") or {}).get("stages"),
                           **{k: metrics[k] for k in ("accuracy", "macs", "macs_full", "test_accuracy", "test_macs")}})
    return sorted(trials, key=lambda t: t["trial"])


def summarise(trials: list[dict[str, Any]], reference: tuple[float, float]) -> dict[str, Any]:
    front = non_dominated(trials, [("accuracy", "max"), ("macs", "min")])
    return {
        # normalised by the reference box, (1 - lowest accuracy) x highest MACs: 1.0 would be accuracy 1 at 0 MACs
        "hypervolume": hypervolume([(t["accuracy"], t["macs"]) for t in trials], reference)
        / ((1.0 - reference[0]) * reference[1]),
        "best_val_accuracy": max(t["accuracy"] for t in trials),
        "front": sorted(front, key=lambda t: t["macs"]),
    }


def cheapest_within(candidates: list[dict[str, Any]], static_best: dict[str, Any]) -> dict[str, Any] | None:
    close = [t for t in candidates if t["accuracy"] >= static_best["accuracy"] - WITHIN_POINTS]
    return min(close, key=lambda t: (t["macs"], -t["accuracy"])) if close else None


def ratio_entry(static_best: dict[str, Any], cheapest: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "static_best": static_best,
        "joint_cheapest_within_0.5pt": cheapest,
        "macs_ratio": cheapest["macs"] / static_best["macs"] if cheapest else None,
        "test_macs_ratio": cheapest["test_macs"] / static_best["test_macs"] if cheapest else None,
    }


def run(datasets: list[str], seeds: list[int], trials: int, epochs: int | None, work: Path,
        out: Path, command: str) -> dict[str, Any]:
    from dynsearch.tuning.tuner import init_ray
    import ray

    results: dict[str, Any] = {
        "command": command, "issue": 20, "within_points": WITHIN_POINTS,
        "budget": {"trials": trials, "epochs": epochs or "recipe", "seeds": seeds, "sampler": "nsga2 (population trials // 3)",
                   "concurrent_trials": 2, "cpus_per_trial": 1},
        "hypervolume": "area dominated over (validation accuracy, MACs per sample) up to the dataset's reference "
                       "(lowest accuracy, highest MACs), dynsearch.run.front.hypervolume, divided by the reference "
                       "box's area (1 - lowest accuracy) x highest MACs, so 1.0 = accuracy 1 at 0 MACs",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "note": "2 cores shared with other work; wall times are not quiet-machine figures"},
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "datasets": {},
    }
    init_ray()
    try:
        for name in datasets:
            reference = REFERENCES[name]
            base = dataset_recipe(name, trials, epochs)
            entry: dict[str, Any] = {"reference": {"accuracy": reference[0], "macs": reference[1]},
                                     "fixed_backbone": base.backbone.as_config(),
                                     "backbone_search": base.backbone.search, "runs": {m: {} for m in METHODS}}
            for seed in seeds:
                for method in METHODS:
                    folder = work / name / method / str(seed)
                    started = time.perf_counter()
                    dynsearch.search(method_recipe(base, method), out=folder, seed=seed, wandb={"mode": "off"})
                    seconds = time.perf_counter() - started
                    found = complete_trials(folder)
                    summary = {**summarise(found, reference), "complete": len(found), "seconds": round(seconds, 1),
                               "load_average": os.getloadavg()}
                    entry["runs"][method][str(seed)] = summary
                    print(f"  {name} {method} seed {seed}: hv {summary['hypervolume']:.4f}, best val "
                          f"{summary['best_val_accuracy']:.4f}, {len(found)} trials, {seconds:.0f} s", flush=True)
                    if method == "joint":
                        entry["runs"]["joint"][str(seed)]["all"] = found
                    elif method == "static":
                        entry["runs"]["static"][str(seed)]["all"] = found
                _write_partial(out, results, name, entry, seeds)
            results["datasets"][name] = _aggregate(entry, seeds)
            _write(out, results)
    finally:
        ray.shutdown()
    results["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results["verdict"] = _verdict(results)
    _write(out, results)
    return results


def _aggregate(entry: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    runs = entry["runs"]
    hv = {m: [runs[m][str(s)]["hypervolume"] for s in seeds if str(s) in runs[m]] for m in METHODS}
    entry["mean_hypervolume"] = {m: statistics.fmean(v) if v else None for m, v in hv.items()}
    entry["hypervolumes"] = hv
    per_seed, statics, joints = {}, [], []
    for s in seeds:
        if str(s) not in runs["static"] or str(s) not in runs["joint"]:
            continue
        static_all, joint_all = runs["static"][str(s)]["all"], runs["joint"][str(s)]["all"]
        best = max(static_all, key=lambda t: (t["accuracy"], -t["macs"]))
        per_seed[str(s)] = ratio_entry(best, cheapest_within(joint_all, best))
        statics += static_all
        joints += joint_all
    entry["macs_ratio_per_seed"] = per_seed
    if statics:
        best = max(statics, key=lambda t: (t["accuracy"], -t["macs"]))
        entry["macs_ratio_pooled"] = ratio_entry(best, cheapest_within(joints, best))
    for m in ("static", "joint"):  # the full trial lists were needed above only
        for s in runs[m].values():
            s.pop("all", None)
    return entry


def _verdict(results: dict[str, Any]) -> dict[str, Any]:
    verdict: dict[str, Any] = {}
    strictly_above_static = 0
    for name, entry in results["datasets"].items():
        mean = entry["mean_hypervolume"]
        ok = all(mean[m] is not None for m in METHODS)
        verdict[name] = {
            "joint_ge_static": ok and mean["joint"] >= mean["static"],
            "joint_ge_fixed": ok and mean["joint"] >= mean["fixed"],
            "joint_gt_static": ok and mean["joint"] > mean["static"],
            "pooled_macs_ratio": (entry.get("macs_ratio_pooled") or {}).get("macs_ratio"),
        }
        strictly_above_static += bool(verdict[name]["joint_gt_static"])
    verdict["datasets_joint_strictly_above_static"] = strictly_above_static
    return verdict


def _write_partial(out: Path, results: dict[str, Any], name: str, entry: dict[str, Any], seeds: list[int]) -> None:
    partial = json.loads(json.dumps(results))
    partial["datasets"][name] = {"in_progress": True, "runs": {
        m: {s: {k: v for k, v in r.items() if k != "all"} for s, r in entry["runs"][m].items()} for m in METHODS}}
    _write(out, partial)


def _write(out: Path, results: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="digits,mnist1d,fmnist", help="comma-separated: digits, mnist1d, fmnist")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated search seeds (default 0,1,2)")
    parser.add_argument("--trials", type=int, default=30, help="trials per search (default 30)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the dataset's recipe)")
    parser.add_argument("--out", default=str(HERE / "results" / "backbone_search.json"))
    parser.add_argument("--work", default=None, help="folder for the run directories (default: a temporary one)")
    args = parser.parse_args()
    datasets = [d for d in args.datasets.split(",") if d]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    command = "python benchmarks/backbone_search.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="backbone-search-"))
    results = run(datasets, seeds, args.trials, args.epochs, work, Path(args.out), command.strip())
    print(json.dumps(results["verdict"], indent=2))


if __name__ == "__main__":
    main()
