"""The benchmark suite (issue 13): where dynsearch stands, in one run.

  python benchmarks/run.py                    # all sections; writes the committed results
  python benchmarks/run.py --sections 3,4     # some sections, merged into the committed summary
  python benchmarks/run.py --quick            # every section at a tiny budget, into a scratch folder

Sections: 1 dynamic vs static spaces (digits, MNIST-1D, a Fashion-MNIST training subset;
``--datasets`` runs some of them and keeps the others' committed figures), 2 hypervolume of
NSGA-II / TPE vs random search, 3 framework overhead, 4 parallel scaling,
5 realised speed-up (read from benchmarks/results/latency.json).

Full mode writes ``benchmarks/results/summary.json`` and replaces the text
between ``<!-- suite:start -->`` and ``<!-- suite:end -->`` in
``benchmarks/RESULTS.md``, leaving the rest of the file alone. A partial run
(``--sections``) replaces only the sections it ran: the others, each with its
own command and date, are kept from the existing summary. ``--quick`` (or
``--out DIR``) writes ``summary.json`` and ``RESULTS.md`` to a scratch folder
and never touches the committed files. Search run directories go to a
temporary folder (``--work`` to choose it).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS, SUMMARY, LATENCY = BENCH / "RESULTS.md", BENCH / "results" / "summary.json", BENCH / "results" / "latency.json"
SECTIONS = ("1", "2", "3", "4", "5")
# Budgets: full mode is sized for well under 60 min on 2 quiet cores, quick mode for ~2 min.
# A quiet 2-core estimate, full: sections 1 ~3 min, 2 ~13 min, 3+4 ~4 min (about 1.3 s per digits trial
# with 2 at once, 5-10 s to start a search). Quick is dominated by the 9 searches' start-up.
FULL = {"trials": 24, "epochs": None, "hv_seeds": [0, 1, 2], "timing_trials": 24, "long_epochs": 60,
        "fmnist_trials": 12, "fmnist_subset": 6000}
# Quick mode checks that every section runs and writes its figures, not the figures: 2 trials of 1 epoch
# (a search with 1 and with 2 concurrent trials still differs), the same code paths at a third of the cost.
QUICK = {"trials": 2, "epochs": 1, "hv_seeds": [0], "timing_trials": 2, "long_epochs": None, "fmnist_trials": 2,
         "fmnist_subset": 1000}
# Section 1 on Fashion-MNIST: 12 trials per space (each trial trains on 6,000 images and sweeps its exit
# thresholds over the 6,000 validation and 10,000 test images: ~1 min on one core), about 12 min in all.
SEED = 0  # sections 1, 3 and 4; section 2 uses hv_seeds


def _sections(text: str) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"{text!r}: sections are a comma-separated list of {', '.join(SECTIONS)}")
    return sorted(set(chosen))


def machine() -> dict:
    import numpy
    import optuna
    import pytorch_lightning
    import ray
    import torch

    import dynsearch

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "versions": {"dynsearch": dynsearch.__version__, "torch": torch.__version__, "ray": ray.__version__,
                         "optuna": optuna.__version__, "pytorch_lightning": pytorch_lightning.__version__,
                         "numpy": numpy.__version__}}


def realised_speedup() -> dict:
    """Section 5: the latency benchmark's headline, read (never rerun) from its committed results."""
    if not LATENCY.is_file():
        return {"available": False, "note": f"{LATENCY.relative_to(BENCH.parent)} is missing: run benchmarks/latency.py"}
    latency = json.loads(LATENCY.read_text())
    headline = latency["headline"]
    return {"available": True, "source": str(LATENCY.relative_to(BENCH.parent)), "source_command": latency["command"],
            **{k: headline[k] for k in ("trial", "macs_speedup", "realised_speedup", "ratio")},
            "target": "realised speed-up at least 0.85 of the MACs speed-up",
            "pass": bool(latency["targets"]["realised_at_least_0.85_of_macs"])}


def run_sections(chosen: list[str], budget: dict, work: Path, command: str,
                 datasets: tuple[str, ...] = (), kept_datasets: dict | None = None) -> dict:
    """Run the chosen sections; return their results by section number."""
    import ray

    import suite_overhead
    import suite_searches
    from dynsearch.tuning.tuner import init_ray

    done: dict = {}

    def finish(key: str, result: dict, started: float) -> None:
        done[key] = {**result, "command": command, "budget": budget, "seconds": round(time.perf_counter() - started, 1),
                     "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "load_average": os.getloadavg()}
        print(f"[section {key}] done in {done[key]['seconds']:.0f} s", flush=True)

    if {"1", "2"} & set(chosen):
        init_ray()  # one local Ray instance for every in-process search of sections 1 and 2
        try:
            if "1" in chosen:
                started = time.perf_counter()
                chosen_datasets = datasets or suite_searches.DATASETS
                print(f"[section 1] dynamic vs static: {', '.join(chosen_datasets)}", flush=True)
                results = {name: suite_searches.dynamic_vs_static(
                    name, work / "s1",
                    budget["fmnist_trials"] if name == "fashion-mnist" else budget["trials"], budget["epochs"], SEED,
                    budget["fmnist_subset"])
                    for name in chosen_datasets}
                # a run of some datasets keeps the others' figures (each with its own command and date)
                kept = {k: v for k, v in (kept_datasets or {}).items() if k not in results}
                for result in results.values():
                    result.update(command=command, finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
                merged = {**kept, **results}
                ordered = {k: merged[k] for k in suite_searches.DATASETS if k in merged}
                finish("1", {"datasets": ordered}, started)
            if "2" in chosen:
                started = time.perf_counter()
                print(f"[section 2] hypervolume: nsga2, tpe, random x seeds {budget['hv_seeds']}", flush=True)
                finish("2", suite_searches.sampler_comparison(work / "s2", budget["trials"], budget["epochs"],
                                                              budget["hv_seeds"]), started)
        finally:
            ray.shutdown()
    if {"3", "4"} & set(chosen):
        from dynsearch.data import load_splits

        started = time.perf_counter()
        print("[sections 3, 4] dynsearch search with 1, then 2 concurrent trials", flush=True)
        (work / "s34").mkdir(parents=True, exist_ok=True)
        runs = [suite_overhead.timed_search(work / "s34" / f"concurrent-{n}", budget["timing_trials"],
                                            budget["epochs"], n, SEED) for n in (1, 2)]
        print(f"  searches: {runs[0]['wall_s']:.0f} s and {runs[1]['wall_s']:.0f} s; plain loops next", flush=True)
        if "3" in chosen:
            long_run = None
            if budget.get("long_epochs"):  # 3(b) again with trials as long as a real search's (full mode only)
                long_run = suite_overhead.timed_search(work / "s34" / f"concurrent-2-epochs-{budget['long_epochs']}",
                                                       budget["timing_trials"], budget["long_epochs"], 2, SEED)
                print(f"  search with {budget['long_epochs']}-epoch trials: {long_run['wall_s']:.0f} s", flush=True)
            suite_overhead.plain_times(runs + ([long_run] if long_run else []), load_splits("digits", 0))
            result = suite_overhead.overhead(*runs)
            if long_run is not None:
                result["long_trials"] = suite_overhead.efficiency(long_run)
            finish("3", result, started)
        if "4" in chosen:
            finish("4", suite_overhead.scaling(*runs), started)
    if "5" in chosen:
        finish("5", realised_speedup(), time.perf_counter())
    return done


def write(summary_path: Path, results_path: Path, sections: dict, command: str, mode: str,
          budget: dict) -> dict:
    import suite_report

    values = suite_report.headline_values(sections)
    summary = {"command": command, "mode": mode, "machine": machine(), "budget": budget,
               "seeds": {"sections_1_3_4": SEED, "section_2": budget["hv_seeds"], "data_split_seed": 0,
                         "trial_training_seed": "search seed + trial number"},
               **values, "headlines": suite_report.headlines(values, sections), "sections": sections}
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    text = results_path.read_text() if results_path.is_file() else "# Benchmark results\n"
    results_path.write_text(suite_report.replace_section(text, suite_report.markdown(summary)))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny budgets, results in a scratch folder")
    parser.add_argument("--sections", type=_sections, default=list(SECTIONS), help="e.g. 1,2 (default: all)")
    parser.add_argument("--out", help="write summary.json and RESULTS.md here instead of the committed files")
    parser.add_argument("--work", help="folder for the searches' run directories (default: a temporary one)")
    parser.add_argument("--datasets", nargs="+", choices=("digits", "mnist1d", "fashion-mnist"),
                        help="section 1 on these datasets only; the others' committed figures are kept")
    args = parser.parse_args()
    command = "python benchmarks/run.py " + " ".join(sys.argv[1:])
    scratch = Path(args.out).resolve() if args.out else (
        Path(tempfile.mkdtemp(prefix="dynsearch-bench-")) if args.quick else None)
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="dynsearch-bench-runs-"))
    budget = QUICK if args.quick else FULL
    mode = "quick" if args.quick else "full"
    summary_path, results_path = (scratch / "summary.json", scratch / "RESULTS.md") if scratch else (SUMMARY, RESULTS)
    print(f"{command}: sections {','.join(args.sections)}, {mode} mode, run dirs in {work}, "
          f"results to {summary_path.parent}", flush=True)
    sys.path.insert(0, str(BENCH))
    committed = json.loads(summary_path.read_text()).get("sections", {}) if summary_path.is_file() else {}
    kept = committed if set(args.sections) != set(SECTIONS) else {}  # a partial run keeps the other sections
    kept_datasets = committed.get("1", {}).get("datasets", {}) if args.datasets else {}
    sections = {**kept, **run_sections(args.sections, budget, work, command.strip(), tuple(args.datasets or ()),
                                       kept_datasets)}
    summary = write(summary_path, results_path, dict(sorted(sections.items())), command.strip(), mode, budget)
    for name, item in summary["headlines"].items():
        print(f"{name}: {item['value']} (target {item['target']}): {item['pass']}", flush=True)
    print(f"wrote {summary_path} and {results_path}", flush=True)


if __name__ == "__main__":
    main()
