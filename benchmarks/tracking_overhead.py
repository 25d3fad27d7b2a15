"""What W&B tracking and the report cost on the default recipe's search.

Runs `dynsearch search` twice on the default recipe, with `--wandb off` and
with `--wandb offline`, then `dynsearch report` on the second run, and writes
benchmarks/results/tracking_overhead.json (wall times, trial counts, W&B runs
written, report sizes):
  python benchmarks/tracking_overhead.py [--out DIR]
Wall times on a shared machine are noisy; the machine's load average is recorded.
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

RESULTS = Path(__file__).resolve().parent / "results" / "tracking_overhead.json"


def timed(args: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", help="parent of the two run directories (default: a fresh temporary folder)")
    parser.add_argument("--results", default=str(RESULTS), help="where to write the results JSON")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="dynsearch-tracking-"))
    runs = {}
    for mode in ("off", "offline"):
        load_before = os.getloadavg()[0]
        seconds, stderr = timed(["dynsearch", "search", "--out", str(out / mode), "--wandb", mode, "--json"])
        wandb_runs = sorted((out / mode / "wandb").glob("offline-run-*/run-*.wandb"))
        runs[mode] = {"wall_seconds": round(seconds, 1), "load_average_before": round(load_before, 1),
                      "wandb_run_files": len(wandb_runs), "progress_lines": len(stderr.splitlines())}
    report_seconds, _ = timed(["dynsearch", "report", str(out / "offline")])
    import torch

    results = {
        "command": "python benchmarks/tracking_overhead.py",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "torch": torch.__version__},
        "search": runs,
        "wandb_offline_minus_off_seconds": round(runs["offline"]["wall_seconds"] - runs["off"]["wall_seconds"], 1),
        "report": {"wall_seconds": round(report_seconds, 1),
                   "png_bytes": (out / "offline" / "pareto.png").stat().st_size,
                   "html_bytes": (out / "offline" / "pareto.html").stat().st_size},
        "run_dirs": {mode: str(out / mode) for mode in runs},
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
