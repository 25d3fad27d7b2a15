"""The one-shot search: Ray Tune trains one supernet, then multi-objective Optuna searches its sub-networks
by evaluation alone.

1. **Supernet**: one Ray Tune trial runs the supernet trainable (training/oneshot.py,
   ``run_supernet_trial``), pinned to the driver's node (it writes ``supernet/`` in the run
   directory); each epoch is checkpointed, so a killed run resumes at the last finished epoch.
   A run whose supernet is trained skips this step.
2. **Evaluations**: an NSGA-II study in the run directory's journal (the same ``study.journal``
   as a multi-trial search), its population sized for thousands of evaluations
   (``Recipe.population_size``). Each study trial is one sub-network with its runtime policy: the
   evaluator defines its config, measures it on validation and hands back its objectives and its
   trial folder's files (no weights: run/supernet.py). A budget of ``evaluations`` COMPLETE trials
   and optionally ``search_minutes``; progress lines with an ETA. An evaluation interrupted
   (Ctrl-C, a killed driver) is left RUNNING and retried on resume (``fail_orphans``).
3. **Real passes** for what reached the fronts (the evaluator's ``settle_front``: validation again,
   the test split for the first time), then the front and the report (``finish``), as for a
   multi-trial search.

Like the multi-trial loop, this layer sees configs and metrics only: the evaluator and the
trainable come from ``dynsearch.api``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from ray import tune

from dynsearch.errors import UserError
from dynsearch.run.files import CHECKPOINT_RECORD, SUPERNET_FAILURE, SUPERNET_RECORD, read_json
from dynsearch.run.front import front_trials, operating_front, trial_counts
from dynsearch.run.rundir import RunDir
from dynsearch.run.study import count_states, fail_orphans, finish_resume, make_sampler, open_study, prepare_resume
from dynsearch.tracking import SearchTracking

Say = Callable[[str], None]


def console_say() -> Say:
    """Progress lines on stderr, each with the time of day (rich; never cut when stderr is not a terminal)."""
    from rich.console import Console

    console = Console(stderr=True, highlight=False)

    def say(line: str) -> None:
        console.print(f"{time.strftime('%H:%M:%S')}  {line}", soft_wrap=True, markup=False)

    return say


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def run_oneshot(problem, out: str | Path, trainable: Callable[..., None], make_evaluator: Callable[..., Any],
                cpus: int, say: Say | None = None, new: bool = False, finish=None) -> Path:
    """Run (or continue) the one-shot search of ``problem`` in run directory ``out`` (module docstring).

    ``trainable``: the supernet trainable; ``make_evaluator(problem, run_dir)``: the evaluator of
    the trained supernet; ``cpus``: threads of the supernet trial; ``say``: where progress lines go
    (None: nowhere); ``finish``: writes the front and the report, under the run directory's lock.
    """
    recipe = problem.recipe
    say = say or (lambda line: None)
    run_dir = RunDir.create(out)
    with run_dir.locked():
        run_dir.check_resume(recipe, new=new)
        repaired = prepare_resume(run_dir)
        run_dir.write_recipe(recipe)
        tracking = SearchTracking(recipe, run_dir)
        try:
            if not (run_dir.supernet_dir / SUPERNET_RECORD).is_file():
                _train_supernet(problem, run_dir, trainable, cpus, say, tracking)
            else:
                say(f"supernet: trained already ({run_dir.supernet_dir}); evaluating its sub-networks")
            study = open_study(run_dir, recipe, make_sampler(recipe))
            finish_resume(study, run_dir, repaired)
            fail_orphans(study)
            evaluator = make_evaluator(problem, run_dir.path)
            _evaluate(study, evaluator, recipe, run_dir, say, tracking)
            names = recipe.metric_names
            front = [t.number for t in front_trials(study, names)]
            points = operating_front(run_dir, _stored_points)
            settled = evaluator.settle_front(front, points)
            say(f"front: {len(front)} sub-networks, {len(points)} operating points; real passes for "
                f"{settled['trials']} sub-networks (validation again, test for the first time): replay had "
                f"{settled['replay_matched']} of {settled['points']} points exactly")
        except BaseException:
            tracking.abort()
            raise
        front_items, png = finish(run_dir.path) if finish is not None else ([], None)
        tracking.finish(front_items, png, trial_counts(run_dir))
    return run_dir.path


def _stored_points(run: RunDir, number: int) -> dict[str, Any]:
    """A one-shot evaluation's operating points as its evaluation recorded them."""
    return read_json(run.points_path(number), "re-run the search to evaluate it again")


# -- 1. the supernet, one Ray Tune trial ----------------------------------------------------------
class SupernetProgress(tune.Callback):
    """A line per supernet epoch (validation of the largest and smallest sub-networks, ETA)."""

    def __init__(self, epochs: int, say: Say, tracking: SearchTracking | None):
        self.epochs = epochs
        self.say, self.tracking = say, tracking
        self.seconds: list[float] = []

    def __getstate__(self):  # Tune pickles its callbacks; a console and a W&B run hold locks
        return {k: v for k, v in self.__dict__.items() if k not in ("say", "tracking")}

    def __setstate__(self, state):
        self.__dict__.update(state, say=lambda line: None, tracking=None)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("final") or "epoch" not in result:
            return
        self.seconds.append(float(result["seconds"]))
        done = int(result["epoch"])
        eta = (self.epochs - done) * (sum(self.seconds) / len(self.seconds))
        self.say(f"supernet epoch {done}/{self.epochs}: largest {result['largest_accuracy']:.3f} val, "
                 f"smallest {result['smallest_accuracy']:.3f} val, {result['seconds']:.1f}s; ETA {_duration(eta)}")
        if self.tracking is not None:
            self.tracking.log({f"supernet/{k}": v for k, v in result.items()
                               if k in ("epoch", "largest_accuracy", "smallest_accuracy", "largest_macs",
                                        "smallest_macs", "seconds")})


def _train_supernet(problem, run_dir: RunDir, trainable, cpus: int, say: Say, tracking: SearchTracking) -> None:
    import ray

    from dynsearch.tuning.tuner import init_ray

    recipe = problem.recipe
    folder = run_dir.supernet_dir
    checkpoint = folder / CHECKPOINT_RECORD
    if checkpoint.is_file():
        done = json.loads(checkpoint.read_text(encoding="utf-8")).get("epochs_done", 0)
        say(f"supernet: resuming after epoch {done}/{recipe.supernet.epochs}")
    else:
        say(f"supernet: training {recipe.supernet.epochs} epochs (sandwich of {recipe.supernet.sandwich + 2} "
            f"sub-networks a step, distillation {'on' if recipe.supernet.distill else 'off'}, {cpus} threads)")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SUPERNET_FAILURE).unlink(missing_ok=True)
    started_ray = init_ray(recipe.address)
    try:
        # Pinned to the driver's node: the trial writes the run directory's supernet folder.
        node = f"node:{ray.util.get_node_ip_address()}"
        resources = tune.PlacementGroupFactory([{"CPU": min(cpus, _cluster_cpus()), node: 0.001}])
        runnable = tune.with_resources(
            tune.with_parameters(trainable, recipe=recipe, folder=str(folder), splits=problem.splits, cpus=cpus),
            resources)
        tuner = tune.Tuner(
            runnable,
            tune_config=tune.TuneConfig(num_samples=1),
            run_config=tune.RunConfig(name="supernet", storage_path=str(run_dir.ray_dir), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=recipe.trial_retries),
                                      callbacks=[SupernetProgress(recipe.supernet.epochs, say, tracking)]),
        )
        tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()
    if (folder / SUPERNET_RECORD).is_file():
        return
    failure = folder / SUPERNET_FAILURE
    if failure.is_file():
        reason = json.loads(failure.read_text(encoding="utf-8")).get("reason", "unknown")
        raise UserError(f"supernet training failed: {reason}; fix the recipe (supernet, batch_size, backbone) and "
                        f"re-run the same command to resume from the last finished epoch")
    raise KeyboardInterrupt  # Ray Tune stopped the trial (its own SIGINT handler): the search was interrupted


def _cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


# -- 2. the evaluations ------------------------------------------------------------------------------------
def _evaluate(study, evaluator, recipe, run: RunDir, say: Say, tracking: SearchTracking) -> None:
    from optuna.trial import TrialState

    names = recipe.metric_names
    complete = count_states(study).get("COMPLETE", 0)
    budget = recipe.evaluations
    if complete >= budget:
        say(f"evaluations: {complete} done already")
        return
    deadline = time.monotonic() + recipe.search_minutes * 60 if recipe.search_minutes else None
    limit = f" or {recipe.search_minutes:g} min" if recipe.search_minutes else ""
    say(f"evaluations: {budget - complete} to go{limit} (NSGA-II, population {recipe.population_size()}), "
        f"{complete} done")
    started, done_here, failures = time.monotonic(), 0, 0
    every = max(1, budget // 20)
    last_line = started
    while complete < budget:
        if deadline is not None and time.monotonic() >= deadline:
            say(f"evaluations: the {recipe.search_minutes:g} min budget ran out after {complete} evaluations")
            break
        trial = study.ask()
        try:
            config = evaluator.define(trial)
            values, files = evaluator.evaluate(config)
        except Exception as exc:  # this sub-network's evaluation failed: FAIL with the reason, go on
            reason = f"{exc.__class__.__name__}: {exc}".splitlines()[0][:500]
            trial.set_user_attr("fail_reason", reason)
            study.tell(trial, state=TrialState.FAIL)
            failures += 1
            if failures > max(10, budget // 10):
                raise UserError(f"{failures} evaluations failed, the last with {reason}; see the study's "
                                "fail_reason attributes") from None
            continue
        run.write_trial(trial.number, files)
        study.tell(trial, [float(values[name]) for name in names])
        complete += 1
        done_here += 1
        now = time.monotonic()
        if complete == budget or done_here % every == 0 or now - last_line > 30:
            last_line = now
            each = (now - started) / done_here
            left = (budget - complete) * each
            if deadline is not None:
                left = min(left, deadline - now)
            front = len(front_trials(study, names))
            say(f"evaluated {complete}/{budget}: {each:.2f}s each, {front} sub-networks on the front; "
                f"ETA {_duration(left)}")
            tracking.log({"evaluations": complete, "front_size": front, "seconds_per_evaluation": each})
