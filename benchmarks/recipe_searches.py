"""Time a 12-trial search of each mechanism family's recipe (the claim: each within 10 minutes on 2 CPU cores).

Runs `dynsearch search RECIPE --trials 12 --out DIR` then `dynsearch pareto DIR --json`
for digits-exits, digits-exit-policies, digits-gates and seq-exits, one after the other, and records
the wall time, the machine's load average (the machine may be shared) and the
front. Writes benchmarks/results/recipe_searches.json:
  python benchmarks/recipe_searches.py [--recipes digits-gates seq-exits]
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
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    runs = {}
    for recipe in args.recipes:
        out = Path(tempfile.mkdtemp(prefix=f"dynsearch-{recipe}-")) / "run"
        load_before = os.getloadavg()
        started = time.perf_counter()
        subprocess.run(["dynsearch", "search", recipe, "--trials", str(args.trials), "--out", str(out)],
                       check=True, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        front = json.loads(subprocess.run(["dynsearch", "pareto", str(out), "--json"], check=True,
                                          capture_output=True, text=True).stdout)
        runs[recipe] = {
            "wall_seconds": round(seconds, 1),
            "within_10_minutes": seconds <= 600,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "front": [{k: item[k] for k in ("trial", "accuracy", "test_accuracy", "macs", "macs_full", "stats")}
                      | {"mechanism": item["config"]["mechanism"]} for item in front],
        }
        print(f"{recipe}: {seconds:.0f} s, front of {len(front)}", flush=True)
    import torch

    results = {
        "command": "python " + " ".join(["benchmarks/recipe_searches.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "note": "2 cores shared with other jobs while this ran (see the load averages)"},
        "trials": args.trials,
        "runs": runs,
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
