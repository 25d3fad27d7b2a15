"""How fast the everyday commands answer: ``dynsearch --help``, ``list``, ``pareto RUN`` and ``trials RUN``.

  python benchmarks/startup.py                 # writes benchmarks/results/startup.json
  python benchmarks/startup.py --runs 5 --run RUN_DIR

Each command runs as a fresh process (``python -m dynsearch.cli ...``, what the installed
``dynsearch`` command runs) once to warm the file cache, then ``--runs`` times; the median
wall time is recorded with the load average before and after. Without ``--run`` a tiny
2-trial digits search is run first into a temporary folder to have a run directory to read.
Target (issue 33): each median under 1 s warm on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

TINY = """\
name: startup
data: {name: digits, split_seed: 0}
backbone: {kind: cnn, widths: [4, 8, 8], depth: 1}
space: exits
objectives: [{name: accuracy}, {name: macs}]
trials: 2
epochs: 1
cpus_per_trial: 1
concurrent_trials: 2
wandb: {mode: "off"}
"""


def _time(args: list[str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dynsearch.cli", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"dynsearch {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--run", help="a run directory to read (default: a tiny search made first)")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results" / "startup.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        run = args.run
        if run is None:
            recipe = Path(work) / "startup.yaml"
            recipe.write_text(TINY)
            run = str(Path(work) / "run")
            subprocess.run([sys.executable, "-m", "dynsearch.cli", "search", str(recipe), "--out", run],
                           check=True, capture_output=True)
        commands = {"--help": ["--help"], "list": ["list"], "pareto": ["pareto", run], "trials": ["trials", run]}
        load_before = os.getloadavg()
        results = {}
        for name, command in commands.items():
            _time(command)  # warm: the file cache, Python's bytecode cache
            times = [_time(command) for _ in range(args.runs)]
            results[name] = {"median_s": round(statistics.median(times), 3), "runs_s": [round(t, 3) for t in times]}
            print(f"dynsearch {name:<7} median {results[name]['median_s']:.3f} s of {args.runs}")
        load_after = os.getloadavg()
    record = {
        "command": "python benchmarks/startup.py" + (f" --runs {args.runs}" if args.runs != 5 else ""),
        "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "target_s": 1.0,
        "results": results,
        "all_under_target": all(r["median_s"] < 1.0 for r in results.values()),
    }
    Path(args.results).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
