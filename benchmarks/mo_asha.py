"""Multi-objective successive halving against full-fidelity trials at equal wall-clock.

    python benchmarks/mo_asha.py --recipe digits-exits --epochs 27 --trials 12 --seeds 0,1,2 --work /tmp/mo-asha

For each seed, one after the other on the same machine:
  full      `dynsearch search RECIPE --trials N`: every trial trains its full epochs; its wall-clock is W.
  mo-asha   the same recipe with `scheduler: {name: mo-asha, grace_epochs, reduction_factor}` and
            `time_budget: W` (as many trials as fit), ties broken by an epsilon-net.
  mo-asha-crowding   the same with `tie_break: crowding`.
  asha      the same with `scheduler: {name: asha}`: successive halving on validation accuracy alone (the
            naive alternative: Ray Tune's ASHA rule).
Every search gets the same NSGA-II population (the full search's, trials // 3) and seed.

Hypervolume (validation, as the searches saw it): over (accuracy, mean MACs of what ran / the largest
`macs_full` of the recipe's space) of the COMPLETE trials (a pruned trial's objectives are those of a
partly trained network: never on a front), reference (0.5, 1.0). Each search's HV-vs-wall-clock curve:
after each COMPLETE trial, seconds since its `dynsearch search` process started.
`time_to_full_hv_ratio`: the first wall-clock at which a scheduled search's HV reaches the full search's
final HV, divided by W (None: not reached within its run). `hv_at_full_wall`: its HV at W.
Results are merged into benchmarks/results/mo_asha.json under the recipe's name.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from oneshot import hv, largest_macs_full, machine  # noqa: E402  (the same HV and scale as the one-shot figures)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "mo_asha.json"


def recipe_file(base: str, work: Path, name: str, **fields) -> Path:
    from dynsearch.recipe import resolve_recipe_path

    data = yaml.safe_load(resolve_recipe_path(base).read_text())
    data.update(fields)
    data["name"] = name
    data.setdefault("wandb", {})["mode"] = "off"
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_search(recipe: Path, out: Path) -> dict:
    subprocess.run(["rm", "-rf", str(out)], check=True)
    load_before = os.getloadavg()
    started = time.time()
    done = subprocess.run(["dynsearch", "search", str(recipe), "--out", str(out)], capture_output=True, text=True)
    wall = time.time() - started
    if done.returncode != 0:
        sys.exit(f"{recipe}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return {"started": started, "wall_seconds": round(wall, 1), "load_average_before": load_before,
            "load_average_after": os.getloadavg()}


def curve(out: Path, started: float, scale: float) -> tuple[list[tuple[float, float]], dict]:
    """(seconds since the search started, validation HV) after each COMPLETE trial; and the trial counts."""
    from optuna.trial import TrialState

    from dynsearch.run.study import count_states, open_existing

    study = open_existing(out)
    trials = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.datetime_complete)
    points, hv_curve = [], []
    for t in trials:
        points.append((t.values[0], t.values[1]))
        seconds = t.datetime_complete.timestamp() - started
        hv_curve.append((round(seconds, 1), round(hv(points, scale), 5)))
    return hv_curve, count_states(study)


def hv_at(hv_curve: list[tuple[float, float]], seconds: float) -> float:
    return max([value for t, value in hv_curve if t <= seconds], default=0.0)


def first_reaching(hv_curve: list[tuple[float, float]], target: float) -> float | None:
    return next((t for t, value in hv_curve if value >= target - 1e-12), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="digits-exits")
    parser.add_argument("--epochs", type=int, default=27)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--grace", type=int, default=3)
    parser.add_argument("--reduction-factor", type=float, default=3.0)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--conditions", default="mo-asha,mo-asha-crowding,asha")
    parser.add_argument("--data", help="a data section as YAML (e.g. a Fashion-MNIST subset)")
    parser.add_argument("--work", default="/tmp/mo-asha")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    conditions = args.conditions.split(",")
    common = {"epochs": args.epochs, "sampler": {"name": "nsga2", "population_size": max(2, args.trials // 3)}}
    if args.data:
        common["data"] = yaml.safe_load(args.data)
    scale = largest_macs_full(args.recipe)
    key = args.recipe + (f"+{args.data}" if args.data else "")
    per_seed = []
    for seed in seeds:
        full_recipe = recipe_file(args.recipe, work, f"full-s{seed}", trials=args.trials, seed=seed, **common)
        full_run = run_search(full_recipe, work / f"full-s{seed}")
        full_curve, full_counts = curve(work / f"full-s{seed}", full_run["started"], scale)
        wall = full_run["wall_seconds"]
        final_hv = full_curve[-1][1] if full_curve else 0.0
        entry = {"seed": seed, "full": {**full_run, "hv_final": final_hv, "curve": full_curve, "counts": full_counts}}
        print(f"seed {seed} full: {wall:.0f} s, HV {final_hv:.4f}, {full_counts}", flush=True)
        for condition in conditions:
            scheduler = {"name": "asha" if condition == "asha" else "mo-asha", "grace_epochs": args.grace,
                         "reduction_factor": args.reduction_factor,
                         "tie_break": "crowding" if condition.endswith("crowding") else "epsilon-net"}
            recipe = recipe_file(args.recipe, work, f"{condition}-s{seed}", trials=1000, seed=seed,
                                 scheduler=scheduler, time_budget=wall, **common)
            run = run_search(recipe, work / f"{condition}-s{seed}")
            hv_curve, counts = curve(work / f"{condition}-s{seed}", run["started"], scale)
            reached = first_reaching(hv_curve, final_hv)
            entry[condition] = {**run, "curve": hv_curve, "counts": counts,
                                "hv_at_full_wall": hv_at(hv_curve, wall),
                                "hv_final": hv_curve[-1][1] if hv_curve else 0.0,
                                "time_to_full_hv_ratio": None if reached is None else round(reached / wall, 3)}
            print(f"seed {seed} {condition}: HV at W {entry[condition]['hv_at_full_wall']:.4f}, "
                  f"reached full HV at {entry[condition]['time_to_full_hv_ratio']} x W, {counts}", flush=True)
        per_seed.append(entry)
        write_results(args, key, scale, seeds[:len(per_seed)], conditions, per_seed)  # after every seed


def write_results(args, key: str, scale: float, seeds: list[int], conditions: list[str], per_seed: list[dict]) -> None:
    def mean(condition: str, field: str):
        values = [e[condition][field] for e in per_seed]
        if any(v is None for v in values):
            return None
        return round(statistics.mean(values), 4)

    verdict = {
        "seeds": seeds,
        "full_wall_seconds_mean": round(statistics.mean(e["full"]["wall_seconds"] for e in per_seed), 1),
        "full_hv_mean": round(statistics.mean(e["full"]["hv_final"] for e in per_seed), 4),
        **{f"{c}_hv_at_full_wall_mean": mean(c, "hv_at_full_wall") for c in conditions},
        **{f"{c}_time_to_full_hv_ratio_per_seed": [e[c]["time_to_full_hv_ratio"] for e in per_seed] for c in conditions},
        "time_to_full_hv_ratio": mean("mo-asha", "time_to_full_hv_ratio") if "mo-asha" in conditions else None,
    }
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[key] = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix().split("/work/main/")[-1], *sys.argv[1:]]),
        "date": datetime.date.today().isoformat(), "machine": machine(),
        "settings": {"epochs": args.epochs, "trials": args.trials, "grace_epochs": args.grace,
                     "reduction_factor": args.reduction_factor, "macs_scale": scale, "reference": [0.5, 1.0]},
        "verdict": verdict, "per_seed": per_seed,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(verdict), flush=True)


if __name__ == "__main__":
    main()
