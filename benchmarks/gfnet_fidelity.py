"""Glance and focus (GFNet, arXiv 2010.05300) on Fashion-MNIST against a static CNN search at the same budget.

Claims of the issue (benchmarks/results/gfnet_fidelity.json, ``verdict``):

1. ``macs_ratio_at_static_accuracy``: a 12-trial ``fmnist-glance`` search and a 12-trial ``space: static``
   search of the fmnist-exits CNN (8/32/64, flattened classifier) with the same data (the recipe's
   training subset), epochs, batch size, schedule, sampler and seed. The static search's most accurate
   trial on validation gives the accuracy to reach; among every glance trial's operating points
   (threshold sweep; the points with test figures: the trained point and each trial's validation
   front), the cheapest whose validation accuracy reaches it is picked, and its test MACs over the
   static model's test MACs is the ratio (goal <= 0.5; GFNet reports 1.4-3x savings on ImageNet).
   None when no glance point reaches the static accuracy; the gap is then reported.
2. ``learned_policy_beats_fixed``: the most accurate glance trial's config retrained twice, with
   ``crop_policy: learned`` and ``fixed`` (same seed), each swept over the threshold grid on validation
   and test; the test curves (upper envelopes) are compared at equal MACs over their common range:
   true when the learned policy's curve lies above on average.
3. ``search_wall_seconds``: the wall time of the 12-trial fmnist-glance search (goal <= 30 minutes on
   2 quiet cores), with the load average before and after (the cores are shared: an upper bound when busy).

    python benchmarks/gfnet_fidelity.py --work /tmp/gfnet [--trials 12]

``--part glance`` and ``--part static`` run one search each (they may run at once, in two processes:
each records its own wall time and load), ``--part finish`` reads both and retrains the policy pair;
``--part all`` (the default) runs the three in order.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results" / "gfnet_fidelity.json"
STATIC_BACKBONE = {"kind": "cnn", "widths": [8, 32, 64], "depth": 1, "classifier": "flatten", "search": None}


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def timed_search(recipe, out: Path) -> dict:
    import dynsearch
    from suite_searches import complete_trials

    before = load()
    started = time.perf_counter()
    dynsearch.search(recipe, out=out, wandb={"mode": "off"})
    seconds = time.perf_counter() - started
    return {"run_dir": str(out), "wall_seconds": round(seconds, 1), "load_before": before, "load_after": load(),
            "trials": complete_trials(out)}


def glance_points(run_dir: Path, trials: list[dict]) -> list[dict]:
    """Every operating point of every glance trial that has test figures (trained point, trial's front)."""
    from dynsearch.deploy.points import trial_points

    points = []
    for trial in trials:
        for p in trial_points(run_dir, trial["trial"])["points"]:
            if "test_accuracy" in p:
                points.append({"trial": trial["trial"], "point": p["point"], "knobs": p["knobs"],
                               "accuracy": p["accuracy"], "macs": p["macs"], "test_accuracy": p["test_accuracy"],
                               "test_macs": p["test_macs"], "mean_steps": p["stats"].get("mean_steps")})
    return points


def best_within(points: list[dict], macs_budget: float) -> dict | None:
    """The most accurate point by validation whose validation MACs are at most ``macs_budget``."""
    within = [p for p in points if p["macs"] <= macs_budget]
    return max(within, key=lambda p: (p["accuracy"], -p["macs"])) if within else None


def envelope(points: list[dict]) -> list[tuple[float, float]]:
    """(test MACs, test accuracy) of the points no cheaper point beats, by MACs."""
    best, curve = -1.0, []
    for p in sorted(points, key=lambda p: (p["test_macs"], -p["test_accuracy"])):
        if p["test_accuracy"] > best:
            best = p["test_accuracy"]
            curve.append((p["test_macs"], p["test_accuracy"]))
    return curve


def at(curve: list[tuple[float, float]], macs: float) -> float:
    """The envelope's accuracy at ``macs``: the best accuracy of a point costing at most that (a step curve)."""
    return max((acc for m, acc in curve if m <= macs), default=float("nan"))


def compare_curves(learned: list[dict], fixed: list[dict]) -> dict:
    """Mean (learned - fixed) envelope accuracy over the MACs of both curves' points in their common range."""
    a, b = envelope(learned), envelope(fixed)
    low, high = max(a[0][0], b[0][0]), min(a[-1][0], b[-1][0])
    grid = sorted({m for m, _ in a + b if low <= m <= high})
    diffs = [at(a, m) - at(b, m) for m in grid]
    mean = sum(diffs) / len(diffs) if diffs else None
    return {"common_macs_range": [low, high], "compared_at": len(grid),
            "mean_accuracy_difference_learned_minus_fixed": mean,
            "learned_envelope": a, "fixed_envelope": b}


def train_and_sweep(job: tuple[dict, dict]) -> dict:
    """One config trained (one thread) and swept over its threshold grid on validation and test."""
    import torch

    from dynsearch.data import load_data
    from dynsearch.measure.points import sweep
    from dynsearch.recipe import parse_recipe
    from dynsearch.training.trial import train_model

    torch.set_num_threads(1)
    cfg, recipe_data = job
    splits = load_data(parse_recipe({"data": recipe_data}, "benchmark").data)
    started = time.perf_counter()
    model = train_model(cfg, splits)
    seconds = time.perf_counter() - started
    points = sweep(model, splits, 256)
    return {"train_seconds": round(seconds, 1), "macs_full": model.macs_full(),
            "points": [{k: p[k] for k in ("knobs", "accuracy", "macs", "test_accuracy", "test_macs")}
                       | {"mean_steps": p["stats"]["mean_steps"]} for p in points]}


def policy_pair(run_dir: Path, trial: int, recipe) -> dict:
    """The trial's config retrained with the learned and the fixed crop policy (two processes at once,
    one thread each, the same seed); both threshold curves."""
    from concurrent.futures import ProcessPoolExecutor

    from dynsearch.run.rundir import RunDir

    config = RunDir(run_dir).read_config(trial)
    jobs = []
    for policy in ("learned", "fixed"):
        cfg = json.loads(json.dumps(config))
        cfg["glance"]["crop_policy"] = policy
        jobs.append((cfg, recipe.data.model_dump(exclude_none=True)))
    with ProcessPoolExecutor(max_workers=2) as pool:
        learned, fixed = pool.map(train_and_sweep, jobs)
    out = {"learned": learned, "fixed": fixed}
    return {"trial": trial, "config": config, **out,
            "comparison": compare_curves(out["learned"]["points"], out["fixed"]["points"])}


def search_part(name: str, recipe, work: Path) -> None:
    """One search, its timing and load written to ``work/<name>.json``."""
    result = timed_search(recipe, work / name)
    (work / f"{name}.json").write_text(json.dumps(result, indent=1))
    print(f"{name} search: {result['wall_seconds']} s, load {result['load_before']} -> {result['load_after']}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the run directories")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--part", choices=["all", "glance", "static", "finish"], default="all")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()

    from dynsearch.recipe import load_recipe

    glance_recipe = load_recipe("fmnist-glance").with_overrides(trials=args.trials)
    static_recipe = glance_recipe.with_overrides(space="static", backbone=STATIC_BACKBONE)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.part in ("all", "glance"):
        search_part("glance", glance_recipe, args.work)
    if args.part in ("all", "static"):
        search_part("static", static_recipe, args.work)
    if args.part in ("all", "finish"):
        finish(args, glance_recipe)


def finish(args, glance_recipe) -> None:
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    started = dt.datetime.now(dt.timezone.utc)
    glance = json.loads((args.work / "glance.json").read_text())
    static = json.loads((args.work / "static.json").read_text())

    best_static = max(static["trials"], key=lambda t: (t["accuracy"], -t["trial"]))
    points = glance_points(args.work / "glance", glance["trials"])
    reaching = [p for p in points if p["accuracy"] >= best_static["accuracy"]]
    cheapest = min(reaching, key=lambda p: (p["macs"], -p["accuracy"])) if reaching else None
    best_glance = max(points, key=lambda p: (p["accuracy"], -p["macs"]))
    ratio = cheapest["test_macs"] / best_static["test_macs"] if cheapest else None
    print(f"static best val {best_static['accuracy']:.4f} test {best_static['test_accuracy']:.4f} "
          f"at {best_static['test_macs']:.0f}; glance best val {best_glance['accuracy']:.4f} "
          f"test {best_glance['test_accuracy']:.4f} at {best_glance['test_macs']:.0f}; ratio {ratio}", flush=True)

    best_trial = max(glance["trials"], key=lambda t: (t["accuracy"], -t["macs"]))["trial"]
    pair = policy_pair(args.work / "glance", best_trial, glance_recipe)
    difference = pair["comparison"]["mean_accuracy_difference_learned_minus_fixed"]
    print(f"learned - fixed, mean over common MACs: {difference}", flush=True)

    result = {
        "command": command if args.part == "all" else [
            f"python benchmarks/gfnet_fidelity.py --work {args.work} --trials {args.trials} --part {part}"
            for part in ("glance", "static", "finish")],
        "date": started.date().isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "note": "2 cores shared with other work; load averages beside each timing (2.0: both busy)"},
        "recipe": "fmnist-glance", "trials": args.trials, "epochs": glance_recipe.epochs,
        "data": glance_recipe.data.model_dump(exclude_none=True),
        "notes": "the glance and static searches ran at the same time (two processes, 2 cores shared with "
                 "other work): each wall time is an upper bound for that search alone",
        "static": {"space": "static", "backbone": {k: v for k, v in STATIC_BACKBONE.items() if v is not None},
                   "same_budget": "same trials, data subset, epochs, batch size, lr schedule, sampler, seed",
                   "reused_committed_result": False, "wall_seconds": static["wall_seconds"],
                   "load_before": static["load_before"], "load_after": static["load_after"],
                   "best_by_validation": best_static, "trials": static["trials"]},
        "glance": {"wall_seconds": glance["wall_seconds"], "load_before": glance["load_before"],
                   "load_after": glance["load_after"], "trials": glance["trials"],
                   "most_accurate_point_by_validation": best_glance,
                   "cheapest_point_reaching_static_validation_accuracy": cheapest,
                   "validation_accuracy_gap_to_static": best_static["accuracy"] - best_glance["accuracy"],
                   "most_accurate_point_within_half_the_static_macs": best_within(points, best_static["macs"] / 2),
                   "points_with_test_figures": points},
        "policy_comparison": pair,
        "verdict": {
            "macs_ratio_at_static_accuracy": ratio,
            "macs_ratio_goal": 0.5,
            "macs_ratio_met": ratio is not None and ratio <= 0.5,
            "learned_policy_beats_fixed": difference is not None and difference > 0,
            "learned_minus_fixed_mean_test_accuracy": difference,
            "search_wall_seconds": glance["wall_seconds"],
            "search_load": [glance["load_before"], glance["load_after"]],
            "search_within_30_minutes": glance["wall_seconds"] <= 1800,
        },
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["verdict"], indent=1))


if __name__ == "__main__":
    main()
