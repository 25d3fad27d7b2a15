"""Sections 1 and 2 of the benchmark suite: dynamic vs static spaces, and samplers vs random search.

Searches run in this process through ``dynsearch.search`` on one shared local
Ray instance (started by run.py), W&B off. Models are selected on the
validation split; test figures are reported for the selected models only.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import dynsearch
from dynsearch.run.front import hypervolume
from dynsearch.recipe import load_recipe, parse_recipe
from dynsearch.run.rundir import RunDir
from dynsearch.run.study import open_study

# Hypervolume reference: (validation accuracy, MACs as a share of the static backbone's).
HV_REFERENCE = (0.8, 1.0)
WITHIN_POINTS = 0.005  # "within 0.5 point" of the best static accuracy

MNIST1D_RECIPE = {  # MNIST-1D signals are vectors of 40: a small 1-D CNN (mnist1d_cnn.py; MLPs stay near 65-70 %)
    "name": "mnist1d-exits",
    "data": {"name": "mnist1d", "split_seed": 0},
    "backbone": {"kind": "user", "callable": "mnist1d_cnn:mnist1d_cnn", "module_path": str(Path(__file__).parent)},
    "space": "exits",
    "objectives": [{"name": "accuracy"}, {"name": "macs"}],
    "epochs": 30,
    "batch_size": 64,
    "cpus_per_trial": 1,
    "concurrent_trials": 2,
}


# Fashion-MNIST (apt-get install dataset-fashion-mnist): the fmnist-exits recipe's CNN on a stratified
# training subset with fewer epochs, so that static + dynamic searches fit the suite's budget.
FMNIST_SUBSET, FMNIST_EPOCHS = 6000, 4
DATASETS = ("digits", "mnist1d", "fashion-mnist")


def dataset_recipe(dataset: str, fmnist_subset: int = FMNIST_SUBSET):
    """The dynamic (exits) recipe of a dataset; the static one differs only in ``space``.

    Sections 1 and 2 compare mechanisms and samplers on one fixed backbone, so the default
    recipe's backbone search is dropped here (its fixed CNN 8-32-64, as when these results were
    measured); benchmarks/backbone_search.py compares searched backbones."""
    if dataset == "digits":
        return load_recipe("digits-exits").with_overrides(backbone={"search": None})
    if dataset == "fashion-mnist":
        return load_recipe("fmnist-exits").with_overrides(data={"train_subset": fmnist_subset}, epochs=FMNIST_EPOCHS)
    return parse_recipe(MNIST1D_RECIPE, "mnist1d")


def complete_trials(run_dir: Path) -> list[dict[str, Any]]:
    """COMPLETE trials of a run in trial-number order (the order the sampler asked for them)."""
    trials = []
    for trial in open_study(run_dir).get_trials(deepcopy=False):
        metrics = RunDir(run_dir).read_metrics(trial.number)
        if trial.state.name == "COMPLETE" and metrics.get("status") == "COMPLETE":
            trials.append({"trial": trial.number, **{k: metrics[k] for k in (
                "accuracy", "macs", "macs_full", "test_accuracy", "test_macs")}})
    return sorted(trials, key=lambda t: t["trial"])


def run_search(recipe, out: Path, **overrides) -> tuple[list[dict[str, Any]], float]:
    started = time.perf_counter()
    dynsearch.search(recipe, out=out, wandb={"mode": "off"}, **overrides)
    return complete_trials(out), time.perf_counter() - started


def _pick(trial: dict[str, Any]) -> dict[str, Any]:
    return {k: trial[k] for k in ("trial", "accuracy", "test_accuracy", "test_macs", "macs_full")}


def dynamic_vs_static(dataset: str, work: Path, trials: int, epochs: int | None, seed: int,
                      fmnist_subset: int = FMNIST_SUBSET) -> dict[str, Any]:
    """Section 1 for one dataset: the same budget over the static and the exits space."""
    recipe = dataset_recipe(dataset, fmnist_subset)
    budget = {"trials": trials, "epochs": epochs, "seed": seed}
    static, static_s = run_search(recipe.with_overrides(space="static"), work / f"{dataset}-static", **budget)
    dynamic, dynamic_s = run_search(recipe, work / f"{dataset}-dynamic", **budget)
    best_static = max(static, key=lambda t: (t["accuracy"], -t["trial"]))
    best_dynamic = max(dynamic, key=lambda t: (t["accuracy"], -t["macs"]))
    close = [t for t in dynamic if t["accuracy"] >= best_static["accuracy"] - WITHIN_POINTS]
    cheapest = min(close, key=lambda t: (t["macs"], -t["accuracy"])) if close else None
    ratio = cheapest["test_macs"] / best_static["test_macs"] if cheapest else None
    print(f"  {dataset}: static best val {best_static['accuracy']:.3f} ({static_s:.0f} s), dynamic best val "
          f"{best_dynamic['accuracy']:.3f} ({dynamic_s:.0f} s), macs ratio {ratio}", flush=True)
    return {
        "recipe": recipe.name, "data": recipe.data.model_dump(exclude_none=True),
        "backbone": recipe.backbone.model_dump(exclude={"callable", "kwargs", "module_path"}), "trials": trials,
        "epochs": epochs or recipe.epochs, "seed": seed,
        "static_best": _pick(best_static), "dynamic_best": _pick(best_dynamic),
        "dynamic_cheapest_within_0.5pt": _pick(cheapest) if cheapest else None,
        "cheapest_test_accuracy_within_0.5pt": (
            cheapest["test_accuracy"] >= best_static["test_accuracy"] - WITHIN_POINTS if cheapest else None),
        "macs_ratio": ratio,
        "search_seconds": {"static": round(static_s, 1), "dynamic": round(dynamic_s, 1)},
    }


def hypervolume_history(trials: list[dict[str, Any]]) -> list[float]:
    """Hypervolume of the front of the first k COMPLETE trials, for k = 1..len(trials)."""
    points = [(t["accuracy"], t["macs"] / t["macs_full"]) for t in trials]
    return [hypervolume(points[:k], HV_REFERENCE) for k in range(1, len(points) + 1)]


def sampler_comparison(work: Path, trials: int, epochs: int | None, seeds: list[int],
                       samplers=("nsga2", "tpe", "random")) -> dict[str, Any]:
    """Section 2: digits exits, ``trials`` COMPLETE trials per search, each sampler at each seed."""
    recipe = dataset_recipe("digits")
    history: dict[str, list[list[float]]] = {name: [] for name in samplers}
    seconds: dict[str, list[float]] = {name: [] for name in samplers}
    for seed in seeds:
        for name in samplers:
            done, took = run_search(recipe, work / f"hv-{name}-{seed}", trials=trials, epochs=epochs, seed=seed,
                                    sampler={"name": name})
            history[name].append(hypervolume_history(done))
            seconds[name].append(round(took, 1))
            print(f"  {name} seed {seed}: hypervolume {history[name][-1][-1]:.4f} ({took:.0f} s)", flush=True)
    final = {name: [runs[-1] for runs in history[name]] for name in samplers}
    wins = {name: sum(f > r for f, r in zip(final[name], final["random"])) for name in samplers if name != "random"}
    scaled = recipe.with_overrides(trials=trials)
    return {
        "recipe": recipe.name, "trials": trials, "epochs": epochs or recipe.epochs, "seeds": seeds,
        "reference": {"accuracy": HV_REFERENCE[0], "macs_share_of_full": HV_REFERENCE[1]},
        "sampler_settings": {"nsga2_population_size": scaled.population_size(),
                             "tpe_n_startup_trials": scaled.n_startup_trials()},
        "hv": final,
        "hv_mean": {name: statistics.fmean(v) for name, v in final.items()},
        "hv_stdev": {name: statistics.stdev(v) if len(v) > 1 else 0.0 for name, v in final.items()},
        "wins_over_random": wins,
        "hv_history": history,
        "search_seconds": seconds,
    }
