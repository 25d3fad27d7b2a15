"""One-shot vs multi-trial search: hypervolume, front, wall-clock, and the honesty of weight sharing.

Parts (each merged into benchmarks/results/oneshot.json):

  python benchmarks/oneshot.py --part digits  --work /tmp/os-bench
      `dynsearch search digits-exits` (the multi-trial default) and `dynsearch search digits-exits-oneshot`
      one after the other, timed; hypervolume, front size and accuracy of each.
  python benchmarks/oneshot.py --part fmnist  --work /tmp/os-bench
      `dynsearch search fmnist-exits-oneshot`, timed, against the committed 12-trial fmnist-exits run
      (benchmarks/results/fmnist_recipe_searches.json, entry "fmnist-exits"); the one-shot run's
      HV-vs-wall-clock curve (validation figures, as the search saw them).
  python benchmarks/oneshot.py --part sharing --work /tmp/os-bench [--run DIR] [--count 10]
      trains `count` sub-networks spread over a one-shot run's front from scratch with the multi-trial
      budget (the recipe's epochs, batch size and learning rate) and compares their validation accuracy
      with the inherited-weight one: Kendall tau and the mean gap (stand-alone minus inherited).

Hypervolume (`hv`, one function for both sides): over (test accuracy, expected per-sample MACs) of the
points a front selected on validation (each run's operating-point front: every sub-network or trial at
every exit threshold; for the committed multi-trial run, its trial front as recorded), MACs divided by the
largest `macs_full` in either search space, reference point (accuracy 0.5, MACs 1.0).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "oneshot.json"
REFERENCE = (0.5, 1.0)


def hv(points: list[tuple[float, float]], macs_scale: float) -> float:
    """Hypervolume of (test accuracy, MACs) points, MACs divided by ``macs_scale``, reference REFERENCE."""
    from dynsearch.run.front import hypervolume

    return hypervolume([(acc, macs / macs_scale) for acc, macs in points], REFERENCE)


def largest_macs_full(recipe_name: str) -> int:
    """The static full-path MACs of the largest network a recipe's space holds."""
    import optuna

    from dynsearch.data import load_data
    from dynsearch.dynamic import build_model
    from dynsearch.recipe import load_recipe
    from dynsearch.training.supernet import BoundTrial, OneShotSpace

    recipe = load_recipe(recipe_name)
    splits = load_data(recipe.data)
    from types import SimpleNamespace

    shape = SimpleNamespace(input_shape=tuple(splits.input_shape), num_classes=int(splits.num_classes))
    if recipe.one_shot:
        config = OneShotSpace(recipe, shape).bound(True)
    else:
        from dynsearch.spaces import get_space

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        config = get_space(recipe.space).define(BoundTrial(True), recipe, shape)
    return int(build_model(config).macs_full())


def machine() -> dict:
    import torch

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__}


def timed_search(recipe: str, out: Path, *extra: str) -> dict:
    load_before = os.getloadavg()
    started = time.perf_counter()
    result = subprocess.run(["dynsearch", "search", recipe, "--out", str(out), "--wandb", "off", *extra],
                            capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{recipe}: exit {result.returncode}\n{result.stderr[-3000:]}")
    return {"recipe": recipe, "args": list(extra), "wall_seconds": round(seconds, 1),
            "load_average_before": load_before, "load_average_after": os.getloadavg(), "log_tail": result.stderr[-1500:]}


def front_points(out: Path) -> list[dict]:
    from dynsearch.api import pareto

    return pareto(out, operating_points=True)


def summary(out: Path, scale: float) -> dict:
    from dynsearch.api import pareto

    points = front_points(out)
    best = max(points, key=lambda p: p["test_accuracy"])
    within = [p for p in points if p["test_accuracy"] >= best["test_accuracy"] - 0.01]
    cheapest = min(within, key=lambda p: p["macs"])
    return {
        "hv": round(hv([(p["test_accuracy"], p["test_macs"]) for p in points], scale), 5),
        "front_points": len(points),
        "trial_front_points": len(pareto(out)),
        "best_test_accuracy": best["test_accuracy"],
        "cheapest_within_1pt": {"trial": cheapest["trial"], "test_accuracy": cheapest["test_accuracy"],
                                "test_macs": cheapest["test_macs"]},
        "cheapest_within_1pt_macs_ratio": round(cheapest["test_macs"] / best["test_macs"], 4),
        "front": [{k: p[k] for k in ("trial", "point", "accuracy", "macs", "test_accuracy", "test_macs")} for p in points],
    }


def hv_curve(out: Path, scale: float, start_offset: float = 0.0) -> list[tuple[float, float]]:
    """(seconds since the study's first trial started + ``start_offset``, validation HV) after each COMPLETE trial."""
    from optuna.trial import TrialState

    from dynsearch.dominance import non_dominated
    from dynsearch.run.study import open_existing

    trials = [t for t in open_existing(out).get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    trials.sort(key=lambda t: t.datetime_complete)
    if not trials:
        return []
    first = min(t.datetime_start for t in trials)
    curve, seen = [], []
    for t in trials:
        record = json.loads((out / "trials" / str(t.number) / "operating_points.json").read_text())
        seen += [{"accuracy": p["accuracy"], "macs": p["macs"]} for p in record["points"]]
        seen = non_dominated(seen, [("accuracy", "max"), ("macs", "min")])
        seconds = (t.datetime_complete - first).total_seconds() + start_offset
        curve.append((round(seconds, 1), round(hv([(p["accuracy"], p["macs"]) for p in seen], scale), 5)))
    return curve


def part_digits(work: Path) -> dict:
    scale = largest_macs_full("digits-exits")
    runs = {}
    for recipe in ("digits-exits", "digits-exits-oneshot"):
        out = work / recipe
        subprocess.run(["rm", "-rf", str(out)], check=True)
        runs[recipe] = {**timed_search(recipe, out), **summary(out, scale)}
    multi, one = runs["digits-exits"], runs["digits-exits-oneshot"]
    return {
        **digits_curves(work, scale),
        "macs_scale": scale,
        "runs": runs,
        "hv_multitrial": multi["hv"], "hv_oneshot": one["hv"],
        "wall_seconds_multitrial": multi["wall_seconds"], "wall_seconds_oneshot": one["wall_seconds"],
        "wall_ratio": round(one["wall_seconds"] / multi["wall_seconds"], 3),
        "front_points_oneshot": one["front_points"],
        "goals": {"wall_ratio <= 0.5": one["wall_seconds"] <= 0.5 * multi["wall_seconds"],
                  "front_points >= 10": one["front_points"] >= 10,
                  "hv_oneshot >= hv_multitrial": one["hv"] >= multi["hv"]},
    }


def digits_curves(work: Path, scale: float) -> dict:
    """Validation HV against wall-clock of both digits runs in ``work``, and when one-shot reaches multi-trial's final HV."""
    supernet_seconds = json.loads((work / "digits-exits-oneshot" / "supernet" / "supernet.json").read_text())["this_run_seconds"]
    curves = {"digits-exits": hv_curve(work / "digits-exits", scale),
              "digits-exits-oneshot": hv_curve(work / "digits-exits-oneshot", scale, start_offset=supernet_seconds)}
    target = curves["digits-exits"][-1][1] if curves["digits-exits"] else None
    reached = next((t for t, value in curves["digits-exits-oneshot"] if target is not None and value >= target), None)
    return {
        "hv_curves_validation": curves,
        "hv_curve_note": "seconds from the first trial's start (multi-trial) / after the supernet's training "
                         "(one-shot, its training seconds added); validation figures, as each search saw them",
        "oneshot_reaches_multitrial_final_validation_hv_at_s": reached,
        "multitrial_final_validation_hv_at_s": curves["digits-exits"][-1][0] if curves["digits-exits"] else None,
    }


def part_fmnist(work: Path, extra: list[str]) -> dict:
    committed = json.loads((ROOT / "benchmarks" / "results" / "fmnist_recipe_searches.json").read_text())["runs"]["fmnist-exits"]
    scale = max(largest_macs_full("fmnist-exits"), largest_macs_full("fmnist-exits-oneshot"))
    out = work / "fmnist-exits-oneshot"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    run = {**timed_search("fmnist-exits-oneshot", out, *extra), **summary(out, scale)}
    record = json.loads((out / "supernet" / "supernet.json").read_text())
    supernet_seconds = record["this_run_seconds"]
    multi_points = [(p["test_accuracy"], p["macs"]) for p in committed["front"]]
    hv_multi = hv(multi_points, scale)
    best = max(committed["front"], key=lambda p: p["test_accuracy"])
    return {
        "macs_scale": scale,
        "oneshot": run,
        "supernet_history": record["history"],
        "hv_curve_oneshot_validation": hv_curve(out, scale, start_offset=supernet_seconds),
        "multitrial": {"source": "benchmarks/results/fmnist_recipe_searches.json runs['fmnist-exits'] (committed "
                                 "12-trial run, fixed 8-32-64 backbone, its trial front)",
                       "date": committed.get("date"), "wall_seconds": committed["wall_seconds"],
                       "front_points": len(committed["front"]), "best_test_accuracy": best["test_accuracy"],
                       "hv": round(hv_multi, 5)},
        "hv_oneshot": run["hv"], "hv_multitrial": round(hv_multi, 5),
        "front_points": run["front_points"], "best_test_accuracy": run["best_test_accuracy"],
        "cheapest_within_1pt_macs_ratio": run["cheapest_within_1pt_macs_ratio"],
        "wall_seconds_oneshot": run["wall_seconds"], "wall_seconds_multitrial": committed["wall_seconds"],
        "goals": {"wall <= multi-trial": run["wall_seconds"] <= committed["wall_seconds"],
                  "hv_oneshot >= hv_multitrial": run["hv"] >= hv_multi,
                  "front_points >= 20": run["front_points"] >= 20,
                  "best_test_accuracy >= 0.92": run["best_test_accuracy"] >= 0.92,
                  "cheapest_within_1pt_macs_ratio <= 0.4": run["cheapest_within_1pt_macs_ratio"] <= 0.4},
    }


def part_sharing(run_dir: Path, count: int) -> dict:
    import torch
    from scipy.stats import kendalltau

    from dynsearch.data import load_data
    from dynsearch.measure.evaluate import MEASURE_BATCH_SIZE, measure
    from dynsearch.run.rundir import RunDir
    from dynsearch.training.trial import train_model

    run = RunDir(run_dir)
    recipe = run.read_recipe()
    splits = load_data(recipe.data)
    trials, seen = [], set()
    for number in sorted({p["trial"] for p in front_points(run_dir)}, key=lambda n: run.read_metrics(n)["macs"]):
        config = run.read_config(number)
        exits = {k: v for k, v in config["exits"].items() if k != "threshold"}  # a runtime knob, not architecture
        architecture = json.dumps({"backbone": config["backbone"], "exits": exits}, sort_keys=True)
        if architecture not in seen:  # one sub-network per architecture (evaluations may repeat one)
            seen.add(architecture)
            trials.append(number)
    if len(trials) > count:  # spread over the front, cheapest to most accurate
        trials = [trials[round(i * (len(trials) - 1) / (count - 1))] for i in range(count)]
    rows = []
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    for number in trials:
        config = run.read_config(number)
        started = time.perf_counter()
        model = train_model(config, splits)
        alone = measure(model, splits.val_x, splits.val_y, batch_size=MEASURE_BATCH_SIZE)["accuracy"]
        inherited = run.read_metrics(number)["accuracy"]
        rows.append({"trial": number, "backbone": config["backbone"], "inherited_val_accuracy": inherited,
                     "standalone_val_accuracy": alone, "train_seconds": round(time.perf_counter() - started, 1)})
        print(rows[-1], flush=True)
    tau = kendalltau([r["inherited_val_accuracy"] for r in rows], [r["standalone_val_accuracy"] for r in rows])
    gaps = [r["standalone_val_accuracy"] - r["inherited_val_accuracy"] for r in rows]
    return {"run": str(run_dir), "recipe": recipe.name, "budget": {"epochs": recipe.epochs, "batch_size": recipe.batch_size,
            "lr": rows and run.read_config(rows[0]["trial"])["train"]["lr"]},
            "kendall_tau": round(float(tau.statistic), 4), "p_value": round(float(tau.pvalue), 4),
            "mean_gap": round(sum(gaps) / len(gaps), 4), "subnetworks": rows,
            "goals": {"kendall_tau >= 0.6": float(tau.statistic) >= 0.6}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["digits", "digits-curves", "fmnist", "sharing"], required=True,
                        help="digits-curves: add the HV-vs-time curves of the digits runs already in --work")
    parser.add_argument("--work", default="/tmp/oneshot-bench")
    parser.add_argument("--run", help="sharing: the one-shot run directory (default: WORK/digits-exits-oneshot)")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("extra", nargs="*", help="fmnist: extra 'dynsearch search' arguments")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_average_start": os.getloadavg()}
    if args.part == "digits-curves":
        path = Path(args.results)
        merged = json.loads(path.read_text())
        curves = digits_curves(work, merged["digits"]["macs_scale"])
        merged["digits"].update(curves, curves_command="python benchmarks/oneshot.py " + " ".join(sys.argv[1:]))
        path.write_text(json.dumps(merged, indent=1) + "\n")
        print(json.dumps({k: v for k, v in curves.items() if k != "hv_curves_validation"}, indent=1))
        return
    if args.part == "digits":
        result = part_digits(work)
    elif args.part == "fmnist":
        result = part_fmnist(work, args.extra)
    else:
        result = part_sharing(Path(args.run) if args.run else work / "digits-exits-oneshot", args.count)
    result = {"command": "python benchmarks/oneshot.py " + " ".join(sys.argv[1:]), **started,
              "load_average_end": os.getloadavg(), "machine": machine(), **result}
    path = Path(args.results)
    merged = json.loads(path.read_text()) if path.exists() else {}
    key = {"digits": "digits", "fmnist": "fmnist", "sharing": "weight_sharing"}[args.part]
    merged[key] = result
    path.write_text(json.dumps(merged, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "front", "oneshot", "subnetworks",
                                                                  "hv_curve_oneshot_validation")}, indent=1))


if __name__ == "__main__":
    main()
