"""Export every Pareto model of the default recipe and check it the way a user would ship it.

For each model on the front of `dynsearch search` (default recipe):
  - `dynsearch export RUN --pareto --out DIR --format onnx` writes its folder;
  - a fresh process loads it with `dynsearch.load` (Ray and Optuna must not be imported)
    and re-measures validation accuracy and macs, which must equal the trial's record;
  - each ONNX graph is checked against the loaded PyTorch model's part on the validation split;
  - staged inference with onnxruntime (dynsearch.deploy.onnx_runtime.StagedRuntime), one image at a
    time, is compared with PyTorch's batch-1 exits and predictions (and its MACs with the
    recorded ones), and timed against running every graph.

Writes benchmarks/results/export_default.json:
  python benchmarks/export_default.py [--run RUN_DIR]   (without --run, runs the search first)
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

RESULTS = Path(__file__).resolve().parent / "results" / "export_default.json"
FRESH_PROCESS = """
import json, sys
import dynsearch
from dynsearch.deploy.export import reproduce
results = [reproduce(path) for path in sys.argv[1:]]
print(json.dumps({"results": results,
                  "imported": sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "optuna"))}))
"""


def timed(args: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, proc.stdout


def default_run(given: str | None, work: Path) -> tuple[Path, float | None]:
    """The run directory to measure: ``given``, else a default search run now into ``work/run``
    (with its wall seconds; None when given)."""
    if given:
        return Path(given), None
    run = work / "run"
    seconds, _ = timed(["dynsearch", "search", "--out", str(run), "--wandb", "off"])
    return run, seconds


def onnx_checks(folder: Path, splits) -> dict:
    """Per-graph parity on the validation split, and staged onnxruntime inference vs PyTorch at batch 1."""
    import numpy as np
    import torch

    import dynsearch
    from dynsearch.deploy.onnx_export import graph_parity
    from dynsearch.deploy.onnx_runtime import StagedRuntime

    model = dynsearch.load(folder, engine="eager")  # the DynamicModel: its parts and traces
    worst = max(graph_parity(model, folder / "onnx", splits.val_x))
    with torch.no_grad():
        reference = []
        for image in splits.val_x:
            out = model(image[None])
            reference.append((int(out.logits.argmax()), int(out.trace.records["exit_index"][0])))
    images = splits.val_x.numpy()
    runtime = StagedRuntime(folder)
    start = time.perf_counter()
    staged = runtime.run(images)
    staged_ms = (time.perf_counter() - start) * 1000 / len(images)
    runtime.policy = {**runtime.policy, "threshold": float("inf")}  # the same graphs, never exiting early
    start = time.perf_counter()
    runtime.run(images)
    all_ms = (time.perf_counter() - start) * 1000 / len(images)
    card = json.loads((folder / "card.json").read_text())
    labels = splits.val_y.tolist()
    decisions = [(d.prediction, d.exit_stage) for d in staged]
    return {
        "graphs": len(card["onnx"]["graphs"]),
        "parity_max_abs_diff": worst,
        "parity_max_abs_diff_at_export": card["onnx"]["parity"]["max_abs_diff"],
        "staged_agrees_with_pytorch": sum(a == b for a, b in zip(decisions, reference)) / len(reference),
        "staged_onnx_val_accuracy": sum(d.prediction == y for d, y in zip(staged, labels)) / len(labels),
        "staged_onnx_val_macs": float(np.mean([d.macs for d in staged])),
        "staged_ms_per_image": round(staged_ms, 3),
        "all_graphs_ms_per_image": round(all_ms, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="an existing run directory of the default recipe (default: search first)")
    parser.add_argument("--results", default=str(RESULTS), help="where to write the results JSON")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dynsearch-export-"))
    run, search_seconds = default_run(args.run, work)
    out = work / "models"
    export_seconds, export_stdout = timed(["dynsearch", "export", str(run), "--pareto", "--out", str(out),
                                           "--format", "onnx"])
    _, front_stdout = timed(["dynsearch", "pareto", str(run), "--json"])
    front = json.loads(front_stdout)
    folders = [out / f"trial-{item['trial']}" for item in front]
    fresh_seconds, fresh_stdout = timed([sys.executable, "-c", FRESH_PROCESS, *map(str, folders)])
    fresh = json.loads(fresh_stdout)

    import torch

    from dynsearch.data import load_splits

    torch.set_num_threads(1)
    splits = load_splits("digits", 0)
    models = []
    for item, folder, again in zip(front, folders, fresh["results"]):
        models.append({
            "trial": item["trial"],
            "recorded": {"accuracy": item["accuracy"], "macs": item["macs"]},
            "reloaded_fresh_process": {"accuracy": again["accuracy"], "macs": again["macs"],
                                       "measured_with": again["measured_with"]},
            "reproduced_exactly": again["matches"],
            "onnx": onnx_checks(folder, splits),
        })
    results = {
        "command": "python benchmarks/export_default.py" + (f" --run {args.run}" if args.run else ""),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "torch": torch.__version__},
        "search_seconds": None if search_seconds is None else round(search_seconds, 1),
        "export_seconds": round(export_seconds, 1),
        "export_stdout": export_stdout.splitlines(),
        "fresh_process_seconds": round(fresh_seconds, 1),
        "fresh_process_imported_ray_or_optuna": fresh["imported"],
        "models": models,
        "checks": {
            "every_pareto_model_exported": sorted(p.name for p in out.iterdir()) == sorted(f.name for f in folders),
            "no_ray_or_optuna_in_load_process": fresh["imported"] == [],
            "every_model_reproduces_accuracy_and_macs_exactly": all(m["reproduced_exactly"] for m in models),
            "every_onnx_graph_within_1e-4": all(m["onnx"]["parity_max_abs_diff"] <= 1e-4 for m in models),
            "staged_onnx_takes_pytorchs_exits": all(m["onnx"]["staged_agrees_with_pytorch"] == 1.0 for m in models),
        },
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["checks"], indent=2))


if __name__ == "__main__":
    main()
