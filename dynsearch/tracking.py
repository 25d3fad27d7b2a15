"""Experiment tracking in W&B: one run per trial, one summary run per search.

Each trial is a W&B run logged from its Ray worker: the trial config, the
validation metrics of every epoch (``val/accuracy``, ``val/macs``) and the
final objectives in its summary. The driver's summary run carries the recipe,
the Pareto table (``wandb.Table``) and the front plot. A search's runs share a
group (default: the run directory's name); their files live in
``RUN_DIR/wandb/``.

Mode ``online`` (the default) goes online when W&B credentials exist for the
server (``WANDB_API_KEY`` or a .netrc entry) and the server answers within
``init_timeout_s``; otherwise it logs offline, with a one-line notice. The
driver decides once, before any trial starts; a trial whose online start still
fails logs offline, so an unreachable server neither fails nor hangs a search.
``offline`` never touches the network; ``off`` logs nothing. ``WANDB_MODE``
set to offline or disabled in the environment overrides mode ``online``.
Configs hold the trial config or the recipe and nothing from the environment
(W&B adds its own host and Python metadata); API keys stay out of the files.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from dynsearch.recipe import is_finite_number, recipe_dict
from dynsearch.run.front import LATENCY_KEYS, SHIFT_KEYS
from dynsearch.run.rundir import WANDB_DIR, RunDir
FRONT_COLUMNS = ["trial", "accuracy", "test_accuracy", "macs", "macs_full", "macs_share", "params", "stats", "config"]


@dataclass(frozen=True)
class Tracking:
    """What a trial needs to log: plain and picklable, it travels to the Ray workers."""

    mode: str  # "online" or "offline"
    project: str
    group: str
    run_dir: str  # absolute (Ray changes a trial's working directory); W&B writes run_dir/wandb/
    init_timeout_s: float


def notice(message: str) -> None:
    print(f"dynsearch: W&B: {message}", file=sys.stderr, flush=True)


def base_url() -> str:
    import wandb

    return os.environ.get("WANDB_BASE_URL") or wandb.Settings().base_url


def netrc_path() -> Path:
    """The .netrc file W&B reads and ``wandb login`` writes: ``$NETRC``, else ~/.netrc (or ~/_netrc)."""
    if os.environ.get("NETRC"):
        return Path(os.environ["NETRC"]).expanduser()
    for name in ("~/.netrc", "~/_netrc"):
        if Path(name).expanduser().exists():
            return Path(name).expanduser()
    return Path("~/_netrc" if sys.platform == "win32" else "~/.netrc").expanduser()


def logged_in() -> bool:
    """Whether W&B credentials exist for the server: in the environment, or an API key in
    .netrc for the host of W&B's base URL (the entry ``wandb login`` writes)."""
    import netrc
    from urllib.parse import urlsplit

    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        host = urlsplit(base_url()).netloc
        entry = netrc.netrc(str(netrc_path())).authenticators(host) if host else None
    except (OSError, netrc.NetrcParseError, ValueError):  # no .netrc, an unreadable one, a malformed URL
        return False
    return bool(entry and entry[2])


def _settings(tracking: Tracking):
    import wandb

    wanted = dict(
        silent=True, console="off", disable_git=True, disable_code=True, save_code=False,
        init_timeout=tracking.init_timeout_s,
        finish_timeout=max(60.0, 3 * tracking.init_timeout_s),  # bounded upload at the end; the rest stays on disk
        x_disable_stats=True, x_save_requirements=False,  # no system-metrics sampler beside the training
    )
    if os.environ.get("WANDB_BASE_URL"):  # W&B reads it once per process; the driver may have changed it since
        wanted["base_url"] = os.environ["WANDB_BASE_URL"]
    known = wandb.Settings.model_fields  # the x_ settings are W&B's experimental ones: skip any it dropped
    return wandb.Settings(**{k: v for k, v in wanted.items() if k in known})


def start_run(tracking: Tracking, **init: Any) -> tuple[Any, Tracking, str | None]:
    """``wandb.init`` in the tracking's mode; an online start that fails is retried offline.

    Returns the run, the tracking actually used and, after a fall-back, why.
    """
    os.environ.setdefault("WANDB_SILENT", "true")  # W&B's own login lines would bypass settings.silent
    import wandb

    kwargs = dict(project=tracking.project, group=tracking.group, dir=tracking.run_dir, **init)
    reason = None
    if tracking.mode == "online":
        run_id = secrets.token_hex(4)  # ours, so that a failed attempt's folder can be found
        try:
            return wandb.init(mode="online", id=run_id, settings=_settings(tracking), **kwargs), tracking, None
        except Exception as exc:  # unreachable server, refused key, timeout
            reason = f"{exc.__class__.__name__}: {exc}".splitlines()[0][:300]
            tracking = replace(tracking, mode="offline")
            for folder in (Path(tracking.run_dir) / WANDB_DIR).glob(f"run-*-{run_id}"):
                shutil.rmtree(folder, ignore_errors=True)  # the aborted attempt: `wandb sync` would upload it
    return wandb.init(mode="offline", settings=_settings(tracking), **kwargs), tracking, reason


# -- a trial (in its Ray worker) --------------------------------------------
class TrialTracker:
    """A trial's W&B run; does nothing when tracking is off (``tracking`` None)."""

    def __init__(self, tracking: Tracking | None, trial_config: dict[str, Any]):
        self.run = None
        if tracking is not None:
            name = f"trial-{trial_config.get('trial')}"
            self.run, _, _ = start_run(tracking, name=name, job_type="trial", config=trial_config)

    def wrap(self, report: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
        """``report`` that also logs each epoch's validation metrics to the trial's run."""
        if self.run is None:
            return report

        def report_and_log(metrics: dict[str, Any]) -> None:
            values = {f"val/{k}": v for k, v in metrics.items()  # objectives not measured per epoch are NaN
                      if k not in ("epoch", "final") and is_finite_number(v)}
            self.run.log({"epoch": metrics.get("epoch"), **values})
            report(metrics)

        return report_and_log

    def finish(self, metrics: dict[str, Any] | None = None, fail_reason: str | None = None,
               stopped: bool = False) -> None:
        """Store the final objectives (or the failure) in the run's summary and close it. ``stopped``: the
        search stopped the trial (its scheduler pruned it: the study says PRUNED; or a signal stopped the search)."""
        if self.run is None:
            return
        if stopped:
            summary = {"status": "STOPPED"}
        elif fail_reason is None:
            summary = {k: v for k, v in metrics.items() if is_finite_number(v)}  # objectives, test figures, timings
            summary.update({f"stats/{k}": v for k, v in metrics.get("stats", {}).items()})
            # The trial's time split (setup, training, evaluation, latency, sweep), as metrics.json records it.
            summary.update({f"seconds/{k}": v for k, v in metrics.get("seconds", {}).items()})
            summary["status"] = "COMPLETE"
        else:
            summary = {"status": "FAIL", "fail_reason": fail_reason}
        self.run.summary.update(summary)
        self.run.finish(exit_code=1 if fail_reason is not None else 0)
        self.run = None


# -- the search (in the driver) ---------------------------------------------
class SearchTracking:
    """Decides the mode once for a search and holds its summary run."""

    def __init__(self, recipe, run_dir: RunDir | Path):
        spec = recipe.wandb
        self.trials: Tracking | None = None  # what run_trial gets
        self.run = None
        mode = spec.mode
        env_mode = os.environ.get("WANDB_MODE", "").lower()  # W&B's own switch overrides the default
        if mode == "online" and env_mode in ("offline", "dryrun", "disabled"):
            mode = "off" if env_mode == "disabled" else "offline"
        if mode == "off":
            return
        run_dir = RunDir.of(run_dir)
        where = run_dir.wandb_dir
        offline_help = f"logging offline to {where} (`wandb sync` uploads it later; --wandb off turns W&B off)"
        if mode == "online" and not logged_in():
            notice(f"not logged in (`wandb login` to go online); {offline_help}")
            mode = "offline"
        wanted = Tracking(mode, spec.project, spec.group or run_dir.name, str(run_dir), spec.init_timeout_s)
        self.run, self.trials, reason = start_run(wanted, name="search", job_type="search", config=recipe_dict(recipe))
        if reason is not None:
            notice(f"{base_url()} did not answer within {spec.init_timeout_s:g} s ({reason}); {offline_help}")

    def log(self, metrics: dict[str, Any]) -> None:
        """Log a step of the search itself (a one-shot search's supernet epochs and evaluations)."""
        if self.run is not None:
            self.run.log(metrics)

    def abort(self) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1)
            self.run = None

    def finish(self, front: list[dict[str, Any]], plot_png: Path | None, trial_counts: dict[str, int],
               run_dir: str | Path | None = None) -> None:
        """Log the Pareto table and the front plot to the summary run and close it; with ``run_dir``, also
        the hypervolume-vs-wall-clock curve (``run.front.hypervolume_history``) and every trial's state and
        epochs trained (``run.trials.trial_list``: its rung if PRUNED)."""
        if self.run is None:
            return
        import wandb

        from dynsearch.run.front import hypervolume_history
        from dynsearch.run.trials import trial_list

        history = trials = None
        if run_dir is not None:
            try:
                history, trials = hypervolume_history(run_dir), trial_list(run_dir)
            except Exception as exc:  # a finished search is not failed by its summary's extras
                notice(f"the trials table and hypervolume curve were not logged ({exc.__class__.__name__}: {exc})")

        columns, rows = front_table(front)
        table = wandb.Table(columns=columns, data=rows)
        logged = {
            "pareto": table,
            "front": wandb.plot.scatter(table, "macs", "accuracy", title="Pareto front: validation accuracy vs MACs"),
        }
        if history and history["seconds"]:
            curve = wandb.Table(columns=["seconds", "hypervolume", "trial"],
                                data=[list(row) for row in zip(history["seconds"], history["hypervolume"], history["trials"])])
            logged["hypervolume"] = wandb.plot.line(curve, "seconds", "hypervolume",
                                                    title="hypervolume of the COMPLETE trials vs wall-clock")
        if trials:
            names = sorted({name for row in trials for name in row["objectives"]})
            logged["trials"] = wandb.Table(
                columns=["trial", "state", "epochs_trained", *names],
                data=[[row["trial"], row["state"], _epochs_trained(row), *(row["objectives"].get(name) for name in names)]
                      for row in trials])
        if plot_png is not None and Path(plot_png).is_file():
            logged["pareto_plot"] = wandb.Image(str(plot_png), caption="validation accuracy vs MACs")
        self.run.log(logged)
        self.run.summary.update({"front_size": len(front), **{f"trials/{k}": n for k, n in trial_counts.items()}})
        self.run.finish()
        self.run = None


def _epochs_trained(row: dict[str, Any]) -> int | None:
    """A listed trial's epochs: its rung if PRUNED, its full epochs if COMPLETE; unknown otherwise."""
    if row["state"] == "PRUNED":
        return row.get("pruned_at_epoch")
    return row["config"].get("train", {}).get("epochs") if row["state"] == "COMPLETE" else None


def front_table(front: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """The front as columns and rows: ``FRONT_COLUMNS`` (stats and config as JSON text), plus latency and
    the MACs under shift if measured."""
    latency = [k for k in (*LATENCY_KEYS, *SHIFT_KEYS) if front and all(k in item for item in front)]
    rows = [
        [item["trial"], item["accuracy"], item["test_accuracy"], item["macs"], item["macs_full"],
         item["macs"] / item["macs_full"], item["params"],
         json.dumps(item["stats"], sort_keys=True), json.dumps(item["config"], sort_keys=True),
         *(item[k] for k in latency)]
        for item in front
    ]
    return FRONT_COLUMNS + latency, rows
