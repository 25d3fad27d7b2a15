"""Where a trial's time goes, and what a search adds to it (issue 31).

  python benchmarks/trial_time.py                       # all parts; writes benchmarks/results/trial_time.json
  python benchmarks/trial_time.py --parts share         # only the sweep share

Parts:

- ``share``: on trial configs of ``digits-exits`` (the default) and ``fmnist-exits`` (the recipe's default
  point and configs its space proposes, trained as a trial trains them, in a plain loop, one thread),
  the seconds of training, of the validation and test measurement of the trained model, and of the
  operating points, measured two ways on the same trained model, side by side: ``before``, the
  per-value sweep (one real pass of both splits per knob value) and ``after``, what a trial records
  now (``measure.points.operating_points``: replayed from one record pass, the trial's validation
  front re-measured by real passes, test figures for those points only). ``sweep_share`` = (test
  measurement + operating points) / the trial's seconds, averaged over the trials.
- ``search``: a ``dynsearch search`` of ``fmnist-exits`` at 1 epoch (trials of well over 30 s), 2 at
  once, one CPU each, as a subprocess, then the same trials in the plain loop (training,
  measurement, operating points: ``plain_loop.py``) one after another on one thread:
  ``search_over_plain`` = the search's wall time / (the plain seconds / 2); and the same trials in the
  plain loop two at a time (two processes): ``search_over_plain_two_at_a_time`` = the search's wall
  time / that wall time (both sides then share the cores the same way). Also ``first_trial_s``: the
  command's start to its first trial's start.

Timings on a shared 2-core machine are noisy: each part records the load average before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plain_loop import plain_train  # noqa: E402
from suite_overhead import timed_search  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "trial_time.json"
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _configs(recipe_name: str, count: int, seed: int = 0, **overrides) -> tuple[list[dict], object, object]:
    """The recipe's default point and ``count - 1`` configs its space proposes (a seeded random sampler)."""
    import optuna

    from dynsearch.problem import prepare
    from dynsearch.recipe import load_recipe
    from dynsearch.spaces import default_config, get_space

    recipe = load_recipe(recipe_name).with_overrides(**overrides)
    problem = prepare(recipe)
    configs = [default_config(recipe, problem.splits)]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed), directions=["maximize", "minimize"])
    while len(configs) < count:
        trial = study.ask()
        config = get_space(recipe.space).define(trial, recipe, problem.shape)
        configs.append({**config, "trial": len(configs)})
        study.tell(trial, [0.0, 0.0])
    return configs, recipe, problem.splits


def _seconds(fn):
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def share(recipe_name: str, count: int, **overrides) -> dict:
    """Part ``share`` for one recipe (``overrides``: recipe fields): per trial config, the trial's parts
    and both ways of recording its points."""
    from dynsearch.measure.evaluate import MEASURE_BATCH_SIZE, measure
    from dynsearch.measure.points import operating_points, point_front_objectives, sweep

    configs, recipe, splits = _configs(recipe_name, count, **overrides)
    load_before = os.getloadavg()
    trials = []
    for config in configs:
        _, metrics = plain_train(config, splits, threads=1, keep_model=True)
        model = metrics.pop("model")
        bs = MEASURE_BATCH_SIZE
        val_s, _ = _seconds(lambda: measure(model, splits.val_x, splits.val_y, batch_size=bs))
        test_s, _ = _seconds(lambda: measure(model, splits.test_x, splits.test_y, batch_size=bs))
        before_s, before = _seconds(lambda: sweep(model, splits, bs, replay=False))
        after_s, after = _seconds(lambda: operating_points(model, splits, bs, trained=metrics,
                                                          front_on=point_front_objectives(recipe)))
        base = metrics["train_s"] + val_s + test_s  # training and the trained model's measurement
        trials.append({
            "config": config, "knob_values": len(after), "train_s": metrics["train_s"], "val_measure_s": val_s,
            "test_measure_s": test_s, "sweep_before_s": before_s, "sweep_after_s": after_s,
            "sweep_share_before": (test_s + before_s) / (base + before_s),
            "sweep_share_after": (test_s + after_s) / (base + after_s),
            "points_with_test_figures_after": sum("test_accuracy" in p for p in after),
            "remeasured_after": sum(bool(p.get("replayed")) for p in after),
            # The points a run's operating front can hold agree: every point the new record measured
            # for real has the per-value sweep's validation figures.
            "real_points_agree": all((p["accuracy"], p["macs"]) == (q["accuracy"], q["macs"])
                                     for p, q in zip(after, before) if p["measured_by"] == "real"),
        })
    return {
        "recipe": recipe_name, "overrides": overrides, "trials": trials, "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "train_images": len(splits.train_y), "val_images": len(splits.val_y), "test_images": len(splits.test_y),
        "sweep_share_before": statistics.fmean(t["sweep_share_before"] for t in trials),
        "sweep_share_after": statistics.fmean(t["sweep_share_after"] for t in trials),
        "target": "sweep and test measurement together <= 10% of a trial's seconds",
    }


def search(work: Path, trials: int, epochs: int) -> dict:
    """Part ``search``: the search's wall time against its trials in the plain loop (divided by 2)."""
    import yaml

    from dynsearch.problem import prepare
    from dynsearch.recipe import load_recipe, recipe_dict

    recipe = load_recipe("fmnist-exits").with_overrides(trials=trials, epochs=epochs, concurrent_trials=2,
                                                         cpus_per_trial=1)
    path = work / "fmnist-exits-timing.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(recipe), sort_keys=False))
    out = work / "search"
    run = timed_search_recipe(path, out, trials)
    splits = prepare(recipe).splits
    complete = [t for t in run["trials"] if t["status"] == "COMPLETE"]
    load_before = os.getloadavg()
    for trial in complete:
        trial["plain_s"], metrics = plain_train(trial["config"], splits, threads=1)
        trial["plain_same_accuracy"] = metrics["accuracy"] == trial["accuracy"]
        trial["plain_parts_s"] = {k: metrics[k] for k in ("train_s", "evaluate_s", "sweep_s")}
    plain_total = sum(t["plain_s"] for t in complete)
    pair_wall, pair_seconds = plain_two_at_a_time(path, [t["config"] for t in complete])
    return {
        "command": run["command"], "recipe": {"name": "fmnist-exits", "epochs": epochs, "trials": trials,
                                              "concurrent_trials": 2, "cpus_per_trial": 1},
        "search_wall_s": run["wall_s"], "plain_seconds_sum": plain_total,
        "search_over_plain": run["wall_s"] / (plain_total / 2),
        # The same trials in the plain loop two at a time (two processes, one thread each): the cores'
        # contention, which the search cannot avoid, on both sides; what is left is the framework's.
        "plain_two_at_a_time_wall_s": pair_wall, "plain_two_at_a_time_trial_seconds": pair_seconds,
        "search_over_plain_two_at_a_time": run["wall_s"] / pair_wall,
        "first_trial_s": min(t["started"] for t in run["trials"]) - run["command_started"],
        "trial_plain_seconds": [t["plain_s"] for t in complete],
        "trial_seconds_in_search": [t["seconds"] for t in complete],
        "plain_same_accuracy": sum(t["plain_same_accuracy"] for t in complete), "complete": len(complete),
        "load_average_before_search": run["load_average_before"], "load_average_before_plain": load_before,
        "target": "search wall time <= 1.2 x (plain loop seconds / concurrency), trials >= 30 s",
    }


_SPLITS = None


def _load_splits(recipe_path: str, ready) -> None:
    global _SPLITS
    from dynsearch.problem import prepare
    from dynsearch.recipe import load_recipe

    torch.set_num_threads(1)
    _SPLITS = prepare(load_recipe(recipe_path)).splits
    ready.put(os.getpid())


def _plain_seconds(config: dict) -> float:
    return plain_train(config, _SPLITS, threads=1)[0]


def plain_two_at_a_time(recipe_path: Path, configs: list[dict]) -> tuple[float, list[float]]:
    """The configs in the plain loop in two processes at once (data loaded first, not timed):
    the wall seconds for all of them, and each one's seconds."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    ready = context.Manager().Queue()
    with context.Pool(2, initializer=_load_splits, initargs=(str(recipe_path), ready)) as pool:
        ready.get(), ready.get()  # both processes hold the data
        started = time.perf_counter()
        seconds = pool.map(_plain_seconds, configs, chunksize=1)
        return time.perf_counter() - started, seconds


def timed_search_recipe(recipe_path: Path, out: Path, trials: int) -> dict:
    """``suite_overhead.timed_search`` for a recipe file, with each trial's recorded time split."""
    run = timed_search(out, trials=trials, epochs=None, concurrent=2, seed=0, recipe=str(recipe_path))
    for trial in run["trials"]:
        metrics = json.loads((out / "trials" / str(trial["trial"]) / "metrics.json").read_text())
        trial["seconds"] = metrics.get("seconds")
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="share,search", help="share, search or both (default)")
    parser.add_argument("--digits-trials", type=int, default=6)
    parser.add_argument("--fmnist-trials", type=int, default=2, help="fmnist-exits configs trained in part share")
    parser.add_argument("--subset-trials", type=int, default=4,
                        help="fmnist-exits configs trained on 3,840 images for 10 epochs in part share")
    parser.add_argument("--search-trials", type=int, default=4)
    parser.add_argument("--search-epochs", type=int, default=1)
    parser.add_argument("--work", help="folder for the search's run directory (default: a temporary one)")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",")}
    torch.set_num_threads(1)
    results_path = Path(args.results)
    result = json.loads(results_path.read_text()) if results_path.is_file() else {}
    result.update({"command": "python benchmarks/trial_time.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                   "date": date.today().isoformat(), "cpus": os.cpu_count(), "torch": torch.__version__})
    if "share" in parts:
        result["share"] = {"digits-exits": share("digits-exits", args.digits_trials)}
        if FMNIST.is_dir() and args.fmnist_trials:
            result["share"]["fmnist-exits"] = share("fmnist-exits", args.fmnist_trials)
        if FMNIST.is_dir() and args.subset_trials:  # the setting the issue was measured in
            result["share"]["fmnist-exits-3840x10"] = share(
                "fmnist-exits", args.subset_trials, epochs=10, data={"train_subset": 3840})
        result["sweep_share"] = {name: {"before": part["sweep_share_before"], "after": part["sweep_share_after"]}
                                 for name, part in result["share"].items()}
    if "search" in parts:
        work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="trial-time-"))
        work.mkdir(parents=True, exist_ok=True)
        result["search"] = search(work, args.search_trials, args.search_epochs)
        result["search_over_plain"] = result["search"]["search_over_plain"]
        result["first_trial_s"] = result["search"]["first_trial_s"]
    results_path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps({k: result.get(k) for k in ("sweep_share", "search_over_plain", "first_trial_s")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
