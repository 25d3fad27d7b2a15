"""The served average pool (measure/latency.py ``ServedAvgPool2d``) against the plain kernel, at the
pool shapes of the built-in recipes' exit heads and classifiers, batch 1, 32 and 128, 1 thread.

  python benchmarks/pooling.py

Each shape and batch size: the served pool and ``nn.AvgPool2d`` (the module it replaces), each followed by the
``nn.Flatten`` of the head it sits in, timed in alternation over the same 8
batches (``measure.latency.paired_speedup``: median of paired ratios, 95% interval). Above 1 the served pool
is faster. Writes benchmarks/results/pooling.json with the command, date, machine and load average.
"""
from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from dynsearch.measure.latency import ServedAvgPool2d, paired_speedup, served_pool

RESULTS = Path(__file__).resolve().parent / "results" / "pooling.json"
# (channels, height, width), kernel: digits heads (4x4 to 2x2), digits classifiers (2x2 whole), Fashion-MNIST
# heads (28x28 and 14x14 to 2x2 or 1x1) and its pooled classifier (7x7 whole).
SHAPES = [((17, 4, 4), 2), ((34, 4, 4), 2), ((5, 2, 2), 2), ((46, 2, 2), 2), ((16, 4, 4), 4),
          ((8, 28, 28), 14), ((32, 14, 14), 7), ((8, 28, 28), 28), ((32, 14, 14), 14), ((64, 7, 7), 7)]


def main() -> None:
    load_before = os.getloadavg()
    rows = []
    torch.manual_seed(0)
    for shape, k in SHAPES:
        pool = served_pool((k, k), shape)  # what the served form installs
        way = ("plain module" if not isinstance(pool, ServedAvgPool2d) else "mean" if pool.whole_map
               else "channels_last from 1024 rows x channels")
        for batch in (1, 32, 128):
            batches = [torch.randn(batch, *shape) for _ in range(8)]
            # followed by the Flatten of the head it sits in (a channels-last result costs Flatten a copy)
            paired = paired_speedup(nn.Sequential(pool, nn.Flatten()), nn.Sequential(nn.AvgPool2d(k), nn.Flatten()),
                                    batches, repeats=21, threads=1)
            rows.append({"shape": list(shape), "kernel": k, "batch": batch, "batched_way": way,
                         "served_over_plain_speedup": round(paired["speedup"], 3),
                         "interval": [round(v, 3) for v in paired["interval"]],
                         "served_ms": round(paired["dynamic"]["latency_ms"], 4),
                         "plain_ms": round(paired["static"]["latency_ms"], 4)})
            print(rows[-1], flush=True)
    result = {"command": " ".join(["python benchmarks/pooling.py", *sys.argv[1:]]),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}",
              "torch": torch.__version__, "threads": 1,
              "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
              "rows": rows}
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
