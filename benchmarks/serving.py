"""Batched serving: realised vs MACs speed-up of exported models at batch 1 and throughput at larger
batches, each the median of paired, alternated timings with a 95% interval (`dynsearch bench`'s
protocol, measure/latency.py `paired_speedup`), and the batched staged ONNX runtime's throughput.

  python benchmarks/serving.py                       # a seeded 12-trial digits-exits search, exported
  python benchmarks/serving.py --recipe fmnist-exits --trials 8 --concurrent 0 --name fmnist-exits-s0
  python benchmarks/serving.py --models NAME=DIR [NAME=DIR...] # folders of exported models, timed in one run

Without --models it runs `dynsearch search RECIPE --trials N --seed 0` (default: the digits default, 12 trials,
one at a time) and exports its front plus every other COMPLETE trial with exit heads (a small front is often
exit-free); with --work DIR a finished search there is reused (re-running a search resumes it). Then it times
every exported model: batch 1 (--inputs-1 inputs) and --batch-sizes (--inputs-batched batches each),
1 torch thread, the model as `dynsearch.load` serves it. Writes benchmarks/results/serving.json:
`batch1_realised_over_macs` and `batch128_throughput_over_macs` (model -> realised / MACs speed-up),
their 95% intervals, every figure, the command, date, machine and load average before and after.
Timings of a busy machine are upper bounds of the noise: read the intervals and the load.
--cards DIR copies each model's config.json, card.json and card.md to DIR/NAME/trial-N (the weights are
not committed: the seeded search command remakes them).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "serving.json"


def exported_models(work: Path, recipe: str, trials: int, concurrent: int) -> tuple[list[Path], list[list[str]]]:
    """Search, then export the front and every other COMPLETE trial with exit heads; the commands run."""
    run, out = work / "run", work / "models"
    search = ["dynsearch", "search", recipe, "--trials", str(trials), "--seed", "0", "--wandb", "off",
              *(["--concurrent", str(concurrent)] if concurrent else []), "--out", str(run)]
    commands = [search, ["dynsearch", "export", str(run), "--pareto", "--out", str(out), "--format", "onnx"]]
    if out.exists():
        shutil.rmtree(out)  # exported again from the (resumed, finished) search
    for command in commands:
        subprocess.run(command, check=True, capture_output=True)
    front = {int(p.name.split("-")[1]) for p in out.iterdir()}
    extra = []
    for trial in sorted((run / "trials").iterdir(), key=lambda p: int(p.name)):
        metrics = json.loads((trial / "metrics.json").read_text()) if (trial / "metrics.json").is_file() else {}
        config = json.loads((trial / "config.json").read_text())
        if metrics.get("status", "COMPLETE") == "COMPLETE" and "accuracy" in metrics \
                and config.get("exits", {}).get("stages") and int(trial.name) not in front:
            extra.append(trial.name)
    if extra:
        commands.append(["dynsearch", "export", str(run), "--trials", ",".join(extra), "--out", str(out),
                         "--format", "onnx"])
        subprocess.run(commands[-1], check=True, capture_output=True)
    return sorted(out.iterdir(), key=lambda p: int(p.name.split("-")[1])), commands


def onnx_throughput(folder: Path, samples: int, batch_size: int) -> dict | None:
    """Samples per second of the staged ONNX runtime one input at a time and ``batch_size`` at a time."""
    from dynsearch.data import cached_splits
    from dynsearch.deploy.onnx_runtime import StagedRuntime

    card = json.loads((folder / "card.json").read_text())
    if not card.get("onnx"):
        return None
    x = cached_splits(card["data"]).val_x[:samples].numpy()
    runtime = StagedRuntime(folder)
    timings = {}
    for name, call in (("one_at_a_time", lambda: runtime.run(x)), ("batched", lambda: runtime.run_batch(x, batch_size))):
        call()  # warm-up
        best = []
        for _ in range(3):
            start = time.perf_counter()
            call()
            best.append(time.perf_counter() - start)
        timings[name] = len(x) / min(best)
    return {"samples": len(x), "batch_size": batch_size, "throughput": timings,
            "batched_over_one_at_a_time": timings["batched"] / timings["one_at_a_time"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", help="NAME=DIR: folders holding exported model folders (trial-N), "
                        "their models named NAME/trial-N in the results")
    parser.add_argument("--recipe", default="digits-exits", help="without --models: the recipe searched")
    parser.add_argument("--trials", type=int, default=12, help="without --models: trials searched")
    parser.add_argument("--concurrent", type=int, default=1, help="without --models: trials at once (0: the recipe's)")
    parser.add_argument("--name", default="digits-exits-s0", help="without --models: prefix of the model names")
    parser.add_argument("--cards", help="copy each model's config.json, card.json and card.md to CARDS/NAME/trial-N")
    parser.add_argument("--batch-sizes", default="32,128,256")
    parser.add_argument("--inputs-1", type=int, default=100, help="inputs timed at batch 1")
    parser.add_argument("--inputs-batched", type=int, default=8, help="batches timed at each larger size")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--models-made-by", help="with --models: the commands that wrote them (recorded)")
    parser.add_argument("--work", help="where the search and its exports go without --models (default: a temp folder)")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()

    from dynsearch.deploy.bench import bench

    load_before = os.getloadavg()
    commands = []
    named: list[tuple[str, Path]] = []  # (model name, folder)
    if args.models:
        for given in args.models:
            prefix, sep, directory = given.partition("=")
            if not sep:
                parser.error(f"--models {given}: give NAME=DIR")
            folders = sorted((p for p in Path(directory).iterdir() if (p / "config.json").is_file()),
                             key=lambda p: int(p.name.split("-")[1]))
            named += [(f"{prefix}/{p.name}", p) for p in folders]
    else:
        work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="dynsearch-serving-"))
        folders, commands = exported_models(work, args.recipe, args.trials, args.concurrent)
        named = [(f"{args.name}/{p.name}", p) for p in folders]
        print(f"models exported to {work / 'models'}", flush=True)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    models, batch1, batch1_interval, batch128, batch128_interval, onnx = {}, {}, {}, {}, {}, {}
    served1, served128 = {}, {}
    for name, folder in named:
        if args.cards:
            (Path(args.cards) / name).mkdir(parents=True, exist_ok=True)
            for file in ("config.json", "card.json", "card.md"):
                shutil.copy(folder / file, Path(args.cards) / name / file)
        one = bench(folder, batch_size=1, inputs=args.inputs_1, repeats=args.repeats)
        many = bench(folder, batch_size=sizes, inputs=args.inputs_batched, repeats=args.repeats)
        config = json.loads((folder / "config.json").read_text())
        per_size = {str(s["batch_size"]): {k: s[k] for k in (
            "macs_speedup", "realised_speedup", "realised_over_macs", "interval", "interval_halfwidth",
            "interval_wide", "inputs")} | {"dynamic_throughput": s["dynamic"]["throughput"],
                                           "static_throughput": s["static"]["throughput"],
                                           "dynamic_latency_ms": s["dynamic"]["latency_ms"],
                                           "static_latency_ms": s["static"]["latency_ms"]}
                    | {k: s[k] for k in ("served_by", "served") if k in s}
                    for s in [*one["batch_sizes"], *many["batch_sizes"]]}
        models[name] = {"backbone": config["backbone"], "exit_stages": config.get("exits", {}).get("stages"),
                        "threshold": config.get("runtime_policy", {}).get("threshold"), "sizes": per_size}
        b1 = per_size["1"]
        batch1[name] = b1["realised_over_macs"]
        batch1_interval[name] = b1["interval"] and [v / b1["macs_speedup"] for v in b1["interval"]]
        if "128" in per_size:
            b128 = per_size["128"]
            batch128[name] = b128["realised_over_macs"]
            batch128_interval[name] = b128["interval"] and [v / b128["macs_speedup"] for v in b128["interval"]]
        for size, mapping in (("1", served1), ("128", served128)):
            if size in per_size:  # as dynsearch.load serves it: the card's engine where it is not eager
                sized = per_size[size]
                mapping[name] = {"engine": sized.get("served_by", "eager"), "realised_over_macs":
                                 sized.get("served", sized)["realised_over_macs"]}
        onnx[name] = onnx_throughput(folder, samples=256, batch_size=128)
        print(f"{name}: MACs {b1['macs_speedup']:.2f}x; batch 1 {b1['realised_speedup']:.2f}x "
              f"({batch1[name]:.2f} of MACs, +-{(b1['interval_halfwidth'] or float('nan')):.1%}); batch 128 "
              f"{per_size.get('128', {}).get('realised_speedup', float('nan')):.2f}x "
              f"({batch128.get(name, float('nan')):.2f} of MACs)", flush=True)

    def goal_batch1(name):
        b1 = models[name]["sizes"]["1"]
        return b1["realised_over_macs"] >= 0.9 and b1["interval_halfwidth"] is not None and b1["interval_halfwidth"] <= 0.05

    def goal_batch128(name):
        b = models[name]["sizes"]["128"]
        return b["realised_speedup"] >= 0.95 and (b["macs_speedup"] < 1.5 or b["realised_over_macs"] >= 0.8)

    result = {
        "command": " ".join(["python benchmarks/serving.py", *sys.argv[1:]]),
        "model_commands": [" ".join(c) for c in commands] or args.models_made_by or "given with --models",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}",
        "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
        "threads": 1, "repeats": args.repeats, "inputs_batch1": args.inputs_1, "batches_timed": args.inputs_batched,
        "protocol": "dynamic and static timed in alternation over the same inputs (order swapped every repeat), "
                    "1 torch thread; speed-up = median of the paired ratios (static time / dynamic time), 95% "
                    "interval from order statistics (scipy.stats.quantile_test); served form (batch norm folded, "
                    "fixed pools)",
        "batch1_realised_over_macs": batch1, "batch1_realised_over_macs_interval": batch1_interval,
        "batch128_throughput_over_macs": batch128, "batch128_throughput_over_macs_interval": batch128_interval,
        "goals": {
            "batch1: realised >= 0.9 x MACs speed-up, interval within +-5%": {n: goal_batch1(n) for n in models},
            "batch128: throughput speed-up >= 0.8 x MACs where MACs >= 1.5, never below 0.95":
                {n: goal_batch128(n) for n in models if "128" in models[n]["sizes"]},
        },
        "served_by_the_cards_engine": {
            "what": "each model as dynsearch.load serves it: where its card chose an engine other than eager at "
                    "a batch size (export's measurement), that engine timed against the eager static path; "
                    "elsewhere the eager figure. Against the eager static path, an engine's figure includes "
                    "that engine's own speed over eager (a static model would gain it too): it says how fast "
                    "the served model is, not how much its dynamic path saves; the goals are judged on the "
                    "eager figures above (dynamic and static path in one engine)",
            "batch1_realised_over_macs": served1, "batch128_throughput_over_macs": served128},
        "onnx_staged_runtime_throughput": onnx,
        "models": models,
    }
    Path(args.results).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
