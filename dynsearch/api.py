"""The Python API, mirrored by the CLI: train, search, pareto, trials, export, load (the last two from deploy/)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynsearch.recipe import Recipe, load_recipe, parse_recipe

RecipeLike = Recipe | dict | str | Path | None


def _recipe(recipe_or_path: RecipeLike, overrides: dict[str, Any]) -> Recipe:
    """A Recipe from a Recipe, a dict (paths and user modules relative to the current directory),
    a YAML path or a built-in recipe's name."""
    if isinstance(recipe_or_path, Recipe):
        recipe = recipe_or_path
    elif isinstance(recipe_or_path, dict):
        recipe = parse_recipe(recipe_or_path, source="<dict>")
    else:
        recipe = load_recipe(recipe_or_path)
    return recipe.with_overrides(**overrides) if overrides else recipe


def train(recipe_or_path: RecipeLike = None, out: str | Path | None = None, **overrides) -> dict[str, Any]:
    """Train the recipe's default point once; return its measured figures.

    Returns ``test_accuracy``, ``macs`` (mean over the test split of what each
    sample's trace says ran), ``macs_full``, ``params``, plus ``val_accuracy``,
    ``val_macs``, ``macs_thop`` (thop's count of the static path, docs/concepts.md), ``stats`` (the mechanism's statistics on the test split,
    e.g. ``exit_histogram``: the fraction of samples leaving at each exit) and
    ``mechanism`` (its name, whose ``stat_summary`` says what ``stats`` mean); with a ``macs_shifted``
    objective, ``macs_shifted`` (test split) and ``val_macs_shifted``.
    With ``out``, the config, weights and metrics are written there.
    """
    recipe = _recipe(recipe_or_path, overrides)  # a bad recipe stops before Lightning is imported (seconds)
    from dynsearch.measure.device import pin_threads
    from dynsearch.problem import prepare
    from dynsearch.spaces import default_config
    from dynsearch.training.trial import evaluate, save_trial, train_model

    pin_threads(recipe.cpus_per_trial)
    splits = prepare(recipe, search=False).splits
    config = default_config(recipe, splits)
    model = train_model(config, splits)
    metrics = evaluate(model, splits, shift=recipe.shift if recipe.measures_shift else None)
    if recipe.measures_latency:  # a single process: nothing else trains here
        from dynsearch.measure.latency import measure_latency

        spec = recipe.latency
        metrics.update(measure_latency(
            model, splits.val_x[: spec.inputs * spec.batch_size], device=spec.device, batch_size=spec.batch_size,
            warmup=spec.warmup, repeats=spec.repeats, threads=spec.threads, against_static=True,
        ))
    result = {
        "test_accuracy": metrics["test_accuracy"],
        "macs": metrics["test_macs"],
        "macs_full": metrics["macs_full"],
        "macs_thop": metrics["macs_thop"],
        "params": metrics["params"],
        "val_accuracy": metrics["accuracy"],
        "val_macs": metrics["macs"],
        "stats": metrics["test_stats"],
        "mechanism": config["mechanism"],
        **{k: v for k, v in metrics.items() if k.startswith(("latency_ms", "latency_s"))},
        **({"macs_shifted": metrics["test_macs_shifted"], "val_macs_shifted": metrics["macs_shifted"]}
           if "macs_shifted" in metrics else {}),
    }
    if out is not None:
        save_trial(Path(out).expanduser().resolve(), config, model, {**metrics, "status": "COMPLETE"})
    return result


@dataclass
class SearchResult:
    run_dir: Path
    front: list[dict[str, Any]]
    trials: int = 0  # COMPLETE trials asked for (with a scheduler: COMPLETE and PRUNED)
    counts: dict[str, int] = field(default_factory=dict)  # trials of the study per state
    prunes: bool = False  # a scheduler stopped trials early: PRUNED trials count as done
    time_budget: float | None = None  # the recipe's time_budget (seconds), if any
    out_of_time: bool = False  # the time budget ended this run of the search

    @property
    def complete(self) -> int:
        return self.counts.get("COMPLETE", 0)

    @property
    def done(self) -> int:
        """The trials that count towards ``trials``: COMPLETE, and PRUNED with a scheduler."""
        return self.complete + (self.counts.get("PRUNED", 0) if self.prunes else 0)


def search(recipe_or_path: RecipeLike = None, out: str | Path | None = None,
           progress: bool = False, new: bool = False, **overrides) -> SearchResult:
    """Run (or resume) a multi-objective search; return the run directory and its front.

    ``overrides`` replace top-level recipe fields (``trials=8``, ``epochs=2``,
    ``address="HOST:PORT"`` for an existing Ray cluster...).
    ``out`` defaults to ``runs/<recipe name>``. Resuming a search of another
    recipe is refused unless ``new`` (the old search is moved to ``out/previous/<k>``).
    SIGINT / SIGTERM stop it cleanly (from the main thread): the trials running are failed
    and queued for retry, and ``dynsearch.interrupts.Interrupted`` is raised.
    """
    from dynsearch.interrupts import check, paused, stop_on_signals

    with stop_on_signals():  # SIGINT / SIGTERM: stop cleanly, raise interrupts.Interrupted
        recipe = _recipe(recipe_or_path, overrides)  # a bad recipe stops before Ray and Lightning are imported
        from dynsearch.problem import prepare
        from dynsearch.run.front import trial_counts
        from dynsearch.training.trainable import run_trial
        from dynsearch.tuning.tuner import run_search

        out = Path(out) if out is not None else Path("runs") / recipe.name
        problem = prepare(recipe)  # what the user can fix fails here, before the run directory exists
        if recipe.one_shot:
            check()  # a signal while it started; the one-shot loop has no stop points: signals act as usual there
            with paused():
                run_dir = _one_shot(problem, out, progress, new)
            counts = trial_counts(run_dir)
            wanted = recipe.evaluations  # a search_minutes budget that ran out first asked for what it got
            if recipe.search_minutes is not None:
                wanted = min(wanted, counts.get("COMPLETE", 0))
            return SearchResult(run_dir, pareto(run_dir), wanted, counts)
        callback = None
        if progress:
            from dynsearch.tuning.progress import Progress

            callback = Progress(recipe.trials, out.expanduser().resolve(), objectives=recipe.metric_names,
                                concurrent=recipe.concurrent_trials, prunes=recipe.prunes)
        outcome: dict[str, Any] = {}
        run_dir = run_search(problem, out, run_trial, progress=callback, new=new, finish=write_results, outcome=outcome)
        return SearchResult(run_dir, pareto(run_dir), recipe.trials, trial_counts(run_dir), recipe.prunes,
                            recipe.time_budget, bool(outcome.get("out_of_time")))


def _one_shot(problem, out: Path, progress: bool, new: bool) -> Path:
    """The one-shot strategy (tuning/oneshot.py): one supernet, then sub-networks searched by evaluation."""
    from dynsearch.training.oneshot import Evaluator, run_supernet_trial, supernet_threads
    from dynsearch.tuning.oneshot import console_say, run_oneshot

    say = console_say() if progress else None
    return run_oneshot(problem, out, run_supernet_trial, Evaluator, supernet_threads(problem.recipe), say=say,
                       new=new, finish=write_results)


def write_results(run_dir: Path) -> tuple[list[dict[str, Any]], Path | None]:
    """What a search leaves in its run directory when it ends: the front (``pareto.json``) and the
    report (``pareto.png``, ``pareto.html``); returns the front and the report's PNG."""
    from dynsearch.run.front import write_front
    from dynsearch.run.report import write_report

    from dynsearch.run.front import trial_counts

    front = write_front(run_dir)
    if not sum(trial_counts(run_dir).values()):  # a time budget spent before any trial started: nothing to draw
        return front, None
    png, _ = write_report(run_dir)
    return front, png


def pareto(run_dir: str | Path, operating_points: bool = False) -> list[dict[str, Any]]:
    """The non-dominated COMPLETE trials of a run, most accurate first.

    Each item: ``trial``, ``mechanism``, ``accuracy`` (validation), ``test_accuracy``,
    ``macs``, ``macs_full``, ``params``, ``config`` and ``stats`` (the
    mechanism's statistics on the validation split, e.g. ``exit_histogram``).
    With ``operating_points``: the front over every operating point of every
    trial, each item also naming its ``point`` and ``knobs`` (run/front.py: ``operating_front``).
    """
    from dynsearch.run.front import operating_front, pareto as trial_front

    if operating_points:
        from dynsearch.deploy.points import trial_points

        return operating_front(run_dir, trial_points)
    return trial_front(run_dir)


def trials(run_dir: str | Path, state: str | None = None) -> list[dict[str, Any]]:
    """Every trial of a run in order (``dynsearch.run.trials.trial_list``): number, state, mechanism,
    backbone, objectives, seconds and a FAIL trial's reason; ``state`` keeps one state (``"FAIL"``...)."""
    from dynsearch.run.trials import trial_list

    return trial_list(run_dir, state)


def export(run_dir: str | Path, out: str | Path, trials: list[int] | None = None, onnx: bool = False,
           point: int | None = None, quantize: str | None = None, finetune: int | None = None) -> list[Path]:
    """Export trials of a run as model folders ``out/trial-<N>/``; return their paths
    (``dynsearch.deploy.export.export``: trials None exports the Pareto front; ``onnx`` adds the
    staged ONNX graphs, ``quantize="int8"`` their int8 copies; ``point`` exports the one trial of
    ``trials`` at that operating point; ``finetune`` trains each model that many more epochs first,
    the card recording its figures before and after). Nothing is written unless every trial checks out."""
    from dynsearch.deploy.export import export as export_trials

    tune = None
    if finetune:
        from dynsearch.training.trial import finetune_model as tune
    return export_trials(run_dir, out, trials=trials, onnx=onnx, point=point, quantize=quantize,
                         finetune=finetune, tune=tune)


def load(path: str | Path, raw: bool = False, engine: str = "auto"):
    """The served model of an exported model folder, its weights checked against config.json
    (``dynsearch.deploy.load.load``; imports neither Ray nor Optuna, never unpickles).

    The inference-ready form (batch norm folded, as latency is measured), run by the engine the
    export chose by measurement (``engine="auto"``; ``"eager"``, ``"channels_last"`` or ``"onnx"`` force one); every
    returned object takes a batch and has ``.logits`` and ``.engine``. ``raw=True``: the trained form."""
    from dynsearch.deploy.load import load as load_folder

    return load_folder(path, raw=raw, engine=engine)
