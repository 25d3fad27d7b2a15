"""Trace bookkeeping in the eval forward: each mechanism whose batched eval loop kept per-component
counts as it ran (gated ResNets, predicted depth, halting, glance and focus) against the same loop that
keeps only the per-sample records its decisions leave (counts derived when read, ``Trace.derived``).

  python benchmarks/trace_bookkeeping.py [--before COMMIT]

``--before`` (default 37eb1bb, the last commit whose loops kept the counts) names the commit the old
methods are read from (``git show``); they are bound to a shallow copy of the same served model
(``measure.latency.serving_form`` of the mechanism's first tiny config, seed 0), checked to give the
same logits and counts, and timed in alternation with the current ones (``paired_speedup``: 15 repeats
after 2 warm-ups, 1 thread) at batch 1 (64 random inputs) and 128 (4 batches). ``old_over_new`` above 1:
the current loop is faster. Writes benchmarks/results/trace_bookkeeping.json with the command, date,
machine and the load average before and after each: figures from a busy machine, read the intervals.
"""
from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import platform
import subprocess
import sys
import textwrap
import types
from datetime import datetime, timezone
from pathlib import Path

import torch

from dynsearch.dynamic import MECHANISMS, build_model
from dynsearch.measure.latency import paired_speedup, serving_form

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "trace_bookkeeping.json"
CHANGED = {  # mechanism -> (file, the eval methods that kept counts)
    "skipnet": ("dynsearch/dynamic/gates.py", ["_forward_gated"]),
    "aig": ("dynsearch/dynamic/gates.py", ["_forward_gated"]),
    "depth_adaptive": ("dynsearch/dynamic/depth.py", ["_forward_predicted"]),
    "pondernet": ("dynsearch/dynamic/halting.py", ["_forward_halting", "_eval_step", "_eval_output"]),
    "act": ("dynsearch/dynamic/halting.py", ["_forward_halting", "_eval_step", "_eval_output"]),
    "glance": ("dynsearch/dynamic/glance.py", ["_forward_eval", "_eval_output"]),
}


def old_model(model, path: str, methods: list[str], commit: str):
    """A shallow copy of ``model`` (the same modules) running ``methods`` as they were at ``commit``."""
    source = subprocess.run(["git", "show", f"{commit}:{path}"], capture_output=True, text=True, check=True,
                            cwd=HERE.parent).stdout
    funcs = {n.name: n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name in methods}
    namespace = dict(vars(sys.modules[type(model).__module__]))
    old = copy.copy(model)
    for name in methods:
        exec(textwrap.dedent(ast.get_source_segment(source, funcs[name])), namespace)
        static = any(getattr(d, "id", None) == "staticmethod" for d in funcs[name].decorator_list)
        setattr(old, name, namespace[name] if static else types.MethodType(namespace[name], old))
    return old


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="37eb1bb")
    args = parser.parse_args()
    rows = []
    for name, (path, methods) in CHANGED.items():
        config = MECHANISMS[name].cls.tiny_configs()[0]
        torch.manual_seed(0)
        model = serving_form(build_model(config)).eval()
        old = old_model(model, path, methods, args.before)
        for batch, count in ((1, 64), (128, 4)):
            xs = [torch.rand(batch, *config["input_shape"]) for _ in range(count)]
            with torch.inference_mode():
                for x in xs:
                    new_out, old_out = model(x), old(x)
                    assert torch.equal(new_out.logits, old_out.logits), name
                    assert all(torch.equal(new_out.trace.counts[k], old_out.trace.counts[k]) for k in old_out.trace.counts)
            load_before = os.getloadavg()
            r = paired_speedup(model, old, xs, repeats=15, warmup=2, threads=1)
            rows.append({"mechanism": name, "batch_size": batch, "batches": count,
                         "new_latency_ms": r["dynamic"]["latency_ms"], "old_latency_ms": r["static"]["latency_ms"],
                         "old_over_new": r["speedup"], "interval": r["interval"], "interval_wide": r["interval_wide"],
                         "load_before": list(load_before), "load_after": list(os.getloadavg())})
            row = rows[-1]
            interval = "-".join(f"{v:.2f}" for v in row["interval"]) if row["interval"] else "none"
            print(f"{name:<15} batch {batch:>3}: new {row['new_latency_ms'] * 1e3:8.1f} us  old "
                  f"{row['old_latency_ms'] * 1e3:8.1f} us  old/new {row['old_over_new']:.2f}x ({interval})  "
                  f"load {row['load_before'][0]:.2f}", flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "command": "python benchmarks/trace_bookkeeping.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
        "cpus": os.cpu_count(), "torch": torch.__version__, "before": args.before, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
