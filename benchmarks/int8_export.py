"""int8 export of the default recipe's most accurate model, measured against float under onnxruntime.

  - `dynsearch export RUN --trials N --out DIR --quantize int8` for the most accurate
    trial on the front (ties: fewer macs): float and int8 staged graphs, card with both;
  - the two are measured again side by side here (quantize.compare: test accuracy, MACs under
    each runtime's own decisions, latency at batch 1 with 1 thread, float and int8 passes
    alternating) with more passes than the export's own measurement;
  - for contrast, the first graph alone on the whole validation split as one batch (float vs int8);
  - the load average is recorded before and after: the machine may be shared.

Writes benchmarks/results/int8_export.json:
  python benchmarks/int8_export.py [--run RUN_DIR]   (without --run, runs the default search first)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from export_default import default_run, timed  # shared by both export benchmarks

RESULTS = Path(__file__).resolve().parent / "results" / "int8_export.json"


def batched_first_graph_ms(folder: Path, card: dict, inputs, repeats: int) -> dict[str, float]:
    """Per-input time of the first graph alone on the whole batch (not staged): int8 kernels
    where compute, not per-call overhead, dominates. Float and int8 alternate; medians."""
    import statistics

    import onnxruntime

    from dynsearch.deploy.onnx_runtime import _session_options

    files = {"float": card["onnx"]["graphs"][0]["file"], "int8": card["int8"]["files"][0]}
    sessions = {k: onnxruntime.InferenceSession(str(folder / f), _session_options(1), providers=["CPUExecutionProvider"])
                for k, f in files.items()}
    times = {k: [] for k in sessions}
    for repeat in range(repeats):
        for name in (list(sessions) if repeat % 2 == 0 else list(sessions)[::-1]):
            start = time.perf_counter()
            sessions[name].run(None, {"input": inputs})
            times[name].append((time.perf_counter() - start) * 1000 / len(inputs))
    return {k: round(statistics.median(v), 5) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="an existing run directory of the default recipe (default: search first)")
    parser.add_argument("--repeats", type=int, default=21, help="alternating timing passes per variant")
    parser.add_argument("--results", default=str(RESULTS), help="where to write the results JSON")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dynsearch-int8-"))
    run_dir, search_seconds = default_run(args.run, work)
    _, front_stdout = timed(["dynsearch", "pareto", str(run_dir), "--json"])
    best = max(json.loads(front_stdout), key=lambda item: (item["accuracy"], -item["macs"]))
    out = work / "models"
    export_seconds, export_stdout = timed(["dynsearch", "export", str(run_dir), "--trials", str(best["trial"]),
                                         "--out", str(out), "--quantize", "int8"])
    folder = out / f"trial-{best['trial']}"
    card = json.loads((folder / "card.json").read_text())

    import torch

    from dynsearch.data import cached_splits
    from dynsearch.deploy.quantize import compare

    torch.set_num_threads(1)
    splits = cached_splits(card["recipe"]["data"])
    load_before = os.getloadavg()
    again = compare(folder, card, splits, threads=1, latency_inputs=len(splits.val_x), repeats=args.repeats)
    batched = batched_first_graph_ms(folder, card, splits.val_x.numpy(), args.repeats)
    load_after = os.getloadavg()
    f, q = again["float"], again["int8"]
    results = {
        "command": "python benchmarks/int8_export.py" + (f" --run {args.run}" if args.run else ""),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "torch": torch.__version__, "onnxruntime": card["versions"].get("onnxruntime"),
                    "load_average_1_5_15_before": [round(x, 2) for x in load_before],
                    "load_average_1_5_15_after": [round(x, 2) for x in load_after],
                    "note": "shared 2-core machine; other jobs may have run alongside (see load average)"},
        "search_seconds": None if search_seconds is None else round(search_seconds, 1),
        "trial": best["trial"],
        "recorded": {"val_accuracy": best["accuracy"], "val_macs": best["macs"]},
        "export_seconds": round(export_seconds, 1),
        "export_stdout": export_stdout.splitlines(),
        "card_int8_at_export": {k: card["int8"][k] for k in ("method", "latency", "float", "int8")},
        "side_by_side": again,
        "first_graph_whole_val_batch_ms_per_input": {"batch_size": len(splits.val_x), "threads": 1, **batched},
        "checks": {
            "int8_loses_at_most_1_point_of_test_accuracy": f["test_accuracy"] - q["test_accuracy"] <= 0.01,
            "int8_faster_than_float_at_batch_1": q["latency_ms"] < f["latency_ms"],
        },
        "int8_speedup_over_float_at_batch_1": round(f["latency_ms"] / q["latency_ms"], 3),  # > 1: int8 faster
        "int8_pays_at_batch_sizes": again["pays_at_batch_sizes"],  # its paired speed-up's interval above 1
        "int8_batched": again["batched"],
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({"float": f, "int8": q, "checks": results["checks"]}, indent=2))


if __name__ == "__main__":
    main()
