"""Channels-last serving, measured: exported models' served eager form in the default (contiguous) layout
against a channels-last copy (weights and each input batch converted), at batch 1 and 128, 1 thread.

  python benchmarks/channels_last_serving.py NAME=DIR [NAME=DIR ...]   # folders of exported models (trial-N)

Per model and batch size, paired and alternated (``measure.latency.paired_speedup``, 11 repeats, 4 batches):
the static path channels-last over contiguous, the dynamic path likewise, and the dynamic-over-static speed-up
within each layout; plus the largest logit difference of the channels-last dynamic path from the contiguous one.
The measurement behind the ``channels_last`` serving engine candidate (``deploy/engine.py``), which each
export times for itself. Writes
benchmarks/results/channels_last_serving.json with the command, date, machine and load average.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "channels_last_serving.json"


def main() -> None:
    from dynsearch.data import load_splits
    from dynsearch.deploy.engine import wrapping_batches
    from dynsearch.deploy.load import load_folder
    from dynsearch.measure.latency import paired_speedup, serving_form

    if len(sys.argv) < 2 or any("=" not in a for a in sys.argv[1:]):
        sys.exit(__doc__)
    load_before = os.getloadavg()
    cl = torch.channels_last
    models = {}
    for given in sys.argv[1:]:
        prefix, _, directory = given.partition("=")
        folders = sorted((p for p in Path(directory).iterdir() if (p / "config.json").is_file()),
                         key=lambda p: int(p.name.split("-")[1]))
        for folder in folders:
            model, config = load_folder(folder)
            model = serving_form(model, inplace=True)
            last = copy.deepcopy(model).to(memory_format=cl)
            x = load_splits(json.loads((folder / "card.json").read_text())["data"]["name"], 0).val_x
            figures = {}
            for size in (1, 128):
                batches = wrapping_batches(x, size, 16 if size == 1 else 4)
                runs = {
                    "static_cl_over_contiguous": (lambda b: last.forward_static(b.contiguous(memory_format=cl)),
                                                  model.forward_static),
                    "dynamic_cl_over_contiguous": (lambda b: last(b.contiguous(memory_format=cl)), model),
                    "dynamic_over_static_contiguous": (model, model.forward_static),
                    "dynamic_over_static_cl": (lambda b: last(b.contiguous(memory_format=cl)),
                                               lambda b: last.forward_static(b.contiguous(memory_format=cl))),
                }
                figures[str(size)] = {name: {"speedup": round(r["speedup"], 3),
                                             "interval": [round(v, 3) for v in r["interval"]]}
                                      for name, (a, b) in runs.items()
                                      for r in [paired_speedup(a, b, batches, repeats=11, threads=1)]}
            with torch.no_grad():
                gap = max(float((last(b.contiguous(memory_format=cl)).logits - model(b).logits).abs().max())
                          for b in wrapping_batches(x, 128, 2))
            models[f"{prefix}/{folder.name}"] = {"sizes": figures, "max_logit_difference": gap}
            print(f"{prefix}/{folder.name}: " + "; ".join(
                f"batch {s}: " + ", ".join(f"{k} {v['speedup']:.2f}" for k, v in f.items())
                for s, f in figures.items()) + f"; logits differ by up to {gap:.2g}", flush=True)
    RESULTS.write_text(json.dumps({
        "command": " ".join(["python benchmarks/channels_last_serving.py", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}",
        "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
        "threads": 1, "repeats": 11, "models": models}, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
