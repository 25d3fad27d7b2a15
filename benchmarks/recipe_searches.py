"""Time a 12-trial search of each mechanism family's recipe (the claim: each within 10 minutes on 2 CPU
cores for the digits-sized recipes, 30 minutes for the Fashion-MNIST ones).

Runs `dynsearch search RECIPE --trials 12 --out DIR` then `dynsearch pareto DIR --json`
for each recipe, one after the other, and records the wall time, the machine's load average (the
machine may be shared: a time measured under load is an upper bound of the quiet one) and the
front. Writes benchmarks/results/recipe_searches.json:
  python benchmarks/recipe_searches.py [--recipes digits-gates seq-exits]
The Fashion-MNIST recipes (apt-get install dataset-fashion-mnist), keeping their run directories:
  python benchmarks/recipe_searches.py --recipes fmnist-gates fmnist-condconv --limit-minutes 30 \
      --work /tmp/fm --merge --results benchmarks/results/fmnist_recipe_searches.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "recipe_searches.json"
RECIPES = ("digits-exits", "digits-exit-policies", "digits-gates", "seq-exits")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--limit-minutes", type=float, default=10, help="the claimed bound per search")
    parser.add_argument("--work", help="keep the run directories here (default: fresh temporary folders)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other recipes' entries already in the results file")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    previous = json.loads(Path(args.results).read_text()) if args.merge and Path(args.results).exists() else {}
    runs = dict(previous.get("runs", {}))
    command = "python " + " ".join(["benchmarks/recipe_searches.py", *sys.argv[1:]])
    for recipe in args.recipes:
        name = Path(recipe).stem if recipe.endswith((".yaml", ".yml")) else recipe  # a built-in name or a file
        if args.work:
            out = Path(args.work) / name
            out.parent.mkdir(parents=True, exist_ok=True)
        else:
            out = Path(tempfile.mkdtemp(prefix=f"dynsearch-{name}-")) / "run"
        load_before = os.getloadavg()
        started = time.perf_counter()
        subprocess.run(["dynsearch", "search", recipe, "--trials", str(args.trials), "--out", str(out)],
                       check=True, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        front = json.loads(subprocess.run(["dynsearch", "pareto", str(out), "--json"], check=True,
                                          capture_output=True, text=True).stdout)
        runs[name] = {
            "date": time.strftime("%Y-%m-%d"),
            "command": command,
            "wall_seconds": round(seconds, 1),
            "limit_minutes": args.limit_minutes,
            "within_limit": seconds <= args.limit_minutes * 60,
            # the front's most accurate model by validation accuracy (what a user picks), on test
            "most_accurate_test_accuracy": max(front, key=lambda i: (i["accuracy"], -i["macs"]))["test_accuracy"],
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "front": [{k: item.get(k) for k in ("trial", "accuracy", "test_accuracy", "macs", "macs_full", "macs_thop",
                                                "stats")}
                      | {"mechanism": item["config"]["mechanism"]} for item in front],
        }
        print(f"{name}: {seconds:.0f} s, front of {len(front)}", flush=True)
        write(args, command, runs)


def write(args, command: str, runs: dict) -> None:
    """Write the results file (after every search, so a long series keeps what it measured)."""
    import torch

    results = {
        "command": command,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "note": "each search's load averages before and after say whether other jobs shared the 2 cores"},
        "trials": args.trials,
        "runs": runs,
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
