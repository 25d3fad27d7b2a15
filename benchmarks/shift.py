"""Cost under shifted inputs.

1. Exported models (`--models`): accuracy, expected MACs, exit histogram and batch-1 latency under generated
   corruptions (noise, blur, contrast, occlude; severities 1-3; seed 0), beside the clean figures
   (`dynsearch bench MODEL --shift noise,blur,contrast,occlude`).

     python benchmarks/shift.py --models DIR [DIR...] [--name digits-exits-s0]
     python benchmarks/shift.py --models NAME=DIR [NAME=DIR...]   # each folder's models named NAME/trial-N

   DIR holds exported model folders (benchmarks/serving.py says how the digits ones are made). Writes per
   model the clean and shifted figures, the largest rise of expected MACs and the corruptions flagged
   (expected MACs more than 20% above clean).

2. The `macs_shifted` objective (`--objective-search`): two seeded searches of RECIPE with identical settings
   (`--trials`, `--seed`, `--concurrent 1`) but the objectives, plain [accuracy, macs] against
   [accuracy, macs, macs_shifted] (the recipe's default shift: noise, blur, contrast, occlude at severity 2,
   seed 0). For every COMPLETE trial: clean and shifted expected MACs on validation and test, drift =
   shifted / clean - 1, accuracy, whether it is on its run's Pareto front; per run, over its front and over
   all its trials, the median and largest drift and the most accurate model at drift <= 5% / 10%.

     nice -n 10 python benchmarks/shift.py --objective-search --recipe digits-exits --trials 12 --seed 0
     nice -n 10 python benchmarks/shift.py --objective-search --recipe digits-exits --fixed-backbone --trials 24

   `--fixed-backbone` drops the recipe's backbone.search: every trial is its CNN with the exits searched (a
   searched backbone often puts exit-free models on the front, where there is no drift to remove). The two
   runs go under `--work` (default /tmp/shift-objective); each setting is kept under its own key.

Both write into benchmarks/results/shift.json (mode 2 under `macs_shifted_objective`, keeping the rest),
with the command, date, machine and load average.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "shift.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--models", nargs="+", help="folders holding exported model folders (DIR or NAME=DIR)")
    mode.add_argument("--objective-search", action="store_true", help="plain search vs one with macs_shifted")
    parser.add_argument("--name", default="digits-exits-s0")
    parser.add_argument("--inputs", type=int, default=50, help="inputs timed at batch 1 per corruption")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--recipe", default="digits-exits")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fixed-backbone", action="store_true",
                        help="drop the recipe's backbone.search: every trial is the recipe's backbone with the "
                             "exits searched")
    parser.add_argument("--work", default="/tmp/shift-objective", help="where the two runs are written")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    if args.objective_search:
        objective_search(args)
        return

    from dynsearch.deploy.bench import bench
    from dynsearch.measure.shift import CORRUPTIONS, SEVERITIES

    load_before = os.getloadavg()
    shifts = [(name, severity) for name in CORRUPTIONS for severity in SEVERITIES]
    named = []  # (prefix, folder): DIR takes --name, NAME=DIR its own
    for given in args.models:
        prefix, _, directory = given.rpartition("=") if "=" in given else (args.name, "", given)
        named += sorted(((prefix, p) for p in Path(directory).iterdir() if (p / "config.json").is_file()),
                        key=lambda item: int(item[1].name.split("-")[1]))
    models = {}
    for prefix, folder in named:
        name = f"{prefix}/{folder.name}"
        result = bench(folder, batch_size=1, inputs=args.inputs, repeats=args.repeats, shift=shifts)
        shift = result["shift"]
        rises = {f"{s['corruption']}:{s['severity']}": s["macs_change"] for s in shift["shifted"]}
        worst = max(rises, key=rises.get)
        models[name] = {"clean": shift["clean"], "shifted": shift["shifted"], "flagged": shift["flagged"],
                        "largest_macs_rise": {"shift": worst, "change": rises[worst]},
                        "macs_speedup_clean": result["macs_speedup"]}
        print(f"{name}: clean acc {shift['clean']['accuracy']:.3f} macs {shift['clean']['macs']:,.0f}; largest rise "
              f"{rises[worst]:+.1%} under {worst}; flagged {shift['flagged'] or 'none'}", flush=True)
    result = {
        "command": " ".join(["python benchmarks/shift.py", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}",
        "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
        "corruptions": "dynsearch.measure.shift (seed 0, validation split): noise sigma 0.2/0.5/1.0 x the sample's "
                       "std; blur Gaussian sigma 0.5/1/1.5 px; contrast kept 0.6/0.4/0.2; occlude a square of "
                       "1/4, 3/8, 1/2 of the side set to the sample's minimum",
        "latency": f"batch 1, {args.inputs} inputs, {args.repeats} paired repeats, 1 thread (timing.latency_ms: "
                   "dynamic p50; timing.realised_speedup: over the static path)",
        "flag_threshold": "expected MACs more than 20% above clean",
        "models": models,
        "flagged": {name: m["flagged"] for name, m in models.items() if m["flagged"]},
    }
    previous = _read(args.results)
    if "macs_shifted_objective" in previous:
        result["macs_shifted_objective"] = previous["macs_shifted_objective"]
    Path(args.results).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.results}")


def _read(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


DRIFT_LIMITS = (0.05, 0.10)


def _drift_summary(rows: list[dict]) -> dict:
    """Median and largest drift (validation, test) of ``rows``, the best accuracy, and the most accurate row
    whose validation drift is at most each of ``DRIFT_LIMITS``."""
    import statistics

    def best(limit: float):
        kept = [r for r in rows if r["drift"] <= limit]
        top = max(kept, key=lambda r: (r["accuracy"], -r["macs"])) if kept else None
        return None if top is None else {k: top[k] for k in ("trial", "accuracy", "test_accuracy", "macs", "drift",
                                                               "test_drift")}

    return {"size": len(rows), "median_drift": statistics.median(r["drift"] for r in rows),
            "largest_drift": max(r["drift"] for r in rows),
            "median_test_drift": statistics.median(r["test_drift"] for r in rows),
            "largest_test_drift": max(r["test_drift"] for r in rows),
            "best_accuracy": max(r["accuracy"] for r in rows),
            "best_test_accuracy": max(r["test_accuracy"] for r in rows),
            "best_at_drift": {f"{limit:.0%}": best(limit) for limit in DRIFT_LIMITS}}


def objective_search(args) -> None:
    """Two seeded searches, [accuracy, macs] and [accuracy, macs, macs_shifted]; their fronts' drift under shift."""
    import torch
    import yaml

    from dynsearch.data import load_splits
    from dynsearch.deploy.load import load_folder
    from dynsearch.measure.evaluate import MEASURE_BATCH_SIZE
    from dynsearch.measure.shift import shifted_cost
    from dynsearch.recipe import ShiftSpec, resolve_recipe_path
    from dynsearch.run.front import pareto

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    shift = ShiftSpec()  # the default a bare `- name: macs_shifted` takes
    arms = {"plain": ["accuracy", "macs"], "macs_shifted": ["accuracy", "macs", "macs_shifted"]}
    load_before = os.getloadavg()
    runs = {}
    for arm, objectives in arms.items():
        data = yaml.safe_load(resolve_recipe_path(args.recipe).read_text())
        data.update(name=f"{args.recipe}-{arm}", objectives=[{"name": n} for n in objectives])
        if args.fixed_backbone:
            data["backbone"].pop("search", None)
        data.setdefault("wandb", {})["mode"] = "off"
        recipe_path = work / f"{arm}.yaml"
        recipe_path.write_text(yaml.safe_dump(data, sort_keys=False))
        out = work / arm
        subprocess.run(["rm", "-rf", str(out)], check=True)
        started = time.time()
        done = subprocess.run([sys.executable, "-m", "dynsearch.cli", "search", str(recipe_path), "--out", str(out),
                               "--trials", str(args.trials), "--seed", str(args.seed), "--concurrent", "1"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{arm} search failed ({done.returncode}): {done.stderr[-2000:]}")
        runs[arm] = {"out": out, "wall_seconds": round(time.time() - started, 1), "recipe": data}
        print(f"{arm}: search done in {runs[arm]['wall_seconds']} s", flush=True)

    recipe = yaml.safe_load(resolve_recipe_path(args.recipe).read_text())
    splits = load_splits(recipe["data"]["name"], recipe["data"].get("split_seed", 0))
    settings = {"corruptions": shift.corruptions, "severity": shift.severity, "seed": shift.seed,
                "batch_size": MEASURE_BATCH_SIZE}
    summary = {}
    torch.set_num_threads(1)  # as the trials were measured (cpus_per_trial 1)
    for arm, run in runs.items():
        front = {item["trial"] for item in pareto(run["out"])}
        rows = []
        for folder in sorted((run["out"] / "trials").iterdir(), key=lambda p: int(p.name)):
            metrics = json.loads((folder / "metrics.json").read_text())
            if metrics.get("status") != "COMPLETE":
                continue
            config = json.loads((folder / "config.json").read_text())
            model, _ = load_folder(folder)
            val = shifted_cost(model, splits.val_x, splits.val_y, **settings)
            test = shifted_cost(model, splits.test_x, splits.test_y, **settings)
            row = {"trial": int(folder.name), "on_front": int(folder.name) in front,
                   "accuracy": metrics["accuracy"], "test_accuracy": metrics["test_accuracy"],
                   "macs": metrics["macs"], "macs_shifted": val["macs"], "drift": val["macs"] / metrics["macs"] - 1,
                   "test_macs": metrics["test_macs"], "test_macs_shifted": test["macs"],
                   "test_drift": test["macs"] / metrics["test_macs"] - 1, "macs_full": metrics["macs_full"],
                   "accuracy_shifted": val["accuracy"], "exits": config["exits"]["stages"],
                   "threshold": config["exits"].get("threshold")}
            row["params"] = {k: v for k, v in config.items() if k in ("backbone", "exits")}
            if "macs_shifted" in metrics:  # the trial's own figure: the same measurement
                row["recorded_macs_shifted_matches"] = metrics["macs_shifted"] == val["macs"]
            rows.append(row)
        summary[arm] = {"objectives": arms[arm], "wall_seconds": run["wall_seconds"], "complete": len(rows),
                        "front": _drift_summary([r for r in rows if r["on_front"]]), "all_trials": _drift_summary(rows),
                        "trials": rows}
        f = summary[arm]["front"]
        print(f"{arm}: front {f['size']}, median drift {f['median_drift']:+.1%} (test {f['median_test_drift']:+.1%}), "
              f"largest {f['largest_drift']:+.1%}, best acc {f['best_accuracy']:.4f}; best at drift <= 5%: "
              f"{f['best_at_drift']['5%']}", flush=True)
    configs = {arm: [json.dumps(r["params"], sort_keys=True) for r in summary[arm]["trials"]] for arm in summary}
    same = sum(a == b for a, b in zip(configs["plain"], configs["macs_shifted"]))
    for run in summary.values():  # the configs are in the run directories; kept here only to compare
        for row in run["trials"]:
            del row["params"]
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    section = {
        "command": " ".join(["nice -n 10 python benchmarks/shift.py", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}",
        "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()), "uptime_after": uptime,
        "recipe": args.recipe, "trials": args.trials, "seed": args.seed, "concurrent_trials": 1,
        "shift": {k: settings[k] for k in ("corruptions", "severity", "seed")},
        "drift": "expected MACs on the corrupted split (mean over the corruptions) / clean expected MACs - 1; "
                 "validation (what macs_shifted optimises) and test (held out)",
        "fixed_backbone": args.fixed_backbone,
        "trials_with_the_same_config_in_both_runs": same,
        "runs": summary,
    }
    label = f"{args.recipe}{' fixed backbone' if args.fixed_backbone else ''}, {args.trials} trials, seed {args.seed}"
    result = _read(args.results)
    previous = result.get("macs_shifted_objective")
    result["macs_shifted_objective"] = {**(previous if isinstance(previous, dict) and "runs" not in previous else {}),
                                        label: section}
    Path(args.results).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.results} (macs_shifted_objective)")


if __name__ == "__main__":
    main()
