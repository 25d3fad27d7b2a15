"""The run directory: the one module that knows its file and folder names and reads and writes them.

A search's run directory holds::

    recipe.yaml          the resolved recipe (resume compares it with the new one)
    study.journal        the Optuna study (journal file storage)
    study.journal.damaged-<k>  bytes a repair moved out of the journal (a torn last record), kept
    trials/<N>/          per trial: config.json, model.safetensors, metrics.json (written last),
                         placement.json, operating_points.json
    pareto.json          the front, pareto.png and pareto.html the report
    ray/  wandb/         Ray Tune's experiment folder, W&B's files
    .dynsearch.lock      held (flock) while a search runs
    previous/<k>/        earlier searches moved aside by --new

Every write is atomic (a temporary name, then a rename). An exported model
folder reuses the trial folder's names for its config and weights
(``CONFIG_FILE``, ``WEIGHTS_FILE``). The recipe goes in and comes out as the
typed ``Recipe`` (``write_recipe`` / ``read_recipe``); imports neither Ray,
Optuna nor any mechanism.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from dynsearch.errors import UserError
from dynsearch.recipe import Recipe, parse_recipe, recipe_dict
# The run directory's file names and file helpers live in files.py (deploy/load.py reads them without the recipe).
from dynsearch.run.files import (  # noqa: F401 (re-exported)
    RECIPE_FILE, STUDY_FILE, DAMAGED_JOURNAL_PREFIX, TRIALS_DIR, FRONT_FILE, REPORT_PNG, REPORT_HTML, RAY_DIR,
    WANDB_DIR, LOCK_FILE, PREVIOUS_DIR, SUPERNET_DIR, SUPERNET_WEIGHTS, SUPERNET_RECORD, CHECKPOINT_WEIGHTS,
    CHECKPOINT_OPTIMIZER, CHECKPOINT_RECORD, CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE, PLACEMENT_FILE, POINTS_FILE,
    json_bytes, write_files, config_sha256, write_durable, write_json, trial_files, config_and_placement_files,
    metrics_file, points_file, read_json, weights_bytes,
)

# What makes two searches' trials comparable; the trial budget, sampler and
# resources may change between runs of the same search.
RESUME_FIELDS = ("data", "backbone", "space", "objectives", "epochs", "batch_size", "lr_schedule", "augment", "latency",
                 "strategy", "supernet", "scheduler", "shift")
# What --new moves aside (everything a search writes, see docs/trust.md "The run directory").
SEARCH_STATE = (RECIPE_FILE, STUDY_FILE, TRIALS_DIR, FRONT_FILE, RAY_DIR, REPORT_PNG, REPORT_HTML, WANDB_DIR,
                SUPERNET_DIR)


class RunDir:
    """A search's run directory (see the module docstring); ``path`` is absolute."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser().resolve()

    @classmethod
    def of(cls, run_dir: "RunDir | str | Path") -> "RunDir":
        return run_dir if isinstance(run_dir, RunDir) else cls(run_dir)

    @classmethod
    def create(cls, out: str | Path) -> "RunDir":
        """Create the run directory (and its parents); one-line UserError if impossible."""
        run_dir = Path(out).expanduser().resolve()
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"--out {out}: exists and is not a directory; choose another path")
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--out {out}: cannot create the run directory ({exc.strerror}); choose another path") from None
        if not os.access(run_dir, os.W_OK):
            raise UserError(f"--out {out}: the run directory is not writable; choose another path")
        return cls(run_dir)

    @classmethod
    def existing(cls, run_dir: "RunDir | str | Path") -> "RunDir":
        """The run directory of a search that has started; a one-line UserError otherwise."""
        if isinstance(run_dir, RunDir):
            run_dir = run_dir.path
        path = Path(run_dir).expanduser()
        if not path.is_dir():
            raise UserError(f"run directory {run_dir}: not found; pass the --out folder of a search")
        if not (path / STUDY_FILE).is_file():
            raise UserError(f"run directory {run_dir}: holds no {STUDY_FILE}; pass the --out folder of a search")
        return cls(path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # -- paths ---------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def study_path(self) -> Path:
        return self.path / STUDY_FILE

    @property
    def recipe_path(self) -> Path:
        return self.path / RECIPE_FILE

    @property
    def front_path(self) -> Path:
        return self.path / FRONT_FILE

    @property
    def report_png(self) -> Path:
        return self.path / REPORT_PNG

    @property
    def report_html(self) -> Path:
        return self.path / REPORT_HTML

    @property
    def ray_dir(self) -> Path:
        return self.path / RAY_DIR

    @property
    def supernet_dir(self) -> Path:
        return self.path / SUPERNET_DIR

    @property
    def wandb_dir(self) -> Path:
        return self.path / WANDB_DIR

    def has_study(self) -> bool:
        return self.study_path.exists()

    def damaged_journals(self) -> list[Path]:
        """The files journal repairs moved damaged bytes into, oldest first."""
        found = [p for p in self.path.glob(DAMAGED_JOURNAL_PREFIX + "*") if p.name[len(DAMAGED_JOURNAL_PREFIX):].isdigit()]
        return sorted(found, key=lambda p: int(p.name[len(DAMAGED_JOURNAL_PREFIX):]))

    def new_damaged_journal_path(self) -> Path:
        """A free name for the next file of damaged journal bytes: ``study.journal.damaged-<k>``."""
        k = 1
        while (self.path / f"{DAMAGED_JOURNAL_PREFIX}{k}").exists():
            k += 1
        return self.path / f"{DAMAGED_JOURNAL_PREFIX}{k}"

    def write_journal(self, data: bytes) -> None:
        """Replace the journal with ``data``, atomically and durably (used by a repair, under the lock)."""
        write_durable(self.study_path, data)

    def trial_numbers(self) -> list[int]:
        """The numbers of the trial folders present, ascending."""
        folder = self.path / TRIALS_DIR
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())

    def trial_dir(self, number: int) -> Path:
        return self.path / TRIALS_DIR / str(number)

    def config_path(self, number: int) -> Path:
        return self.trial_dir(number) / CONFIG_FILE

    def weights_path(self, number: int) -> Path:
        return self.trial_dir(number) / WEIGHTS_FILE

    def metrics_path(self, number: int) -> Path:
        return self.trial_dir(number) / METRICS_FILE

    def points_path(self, number: int) -> Path:
        return self.trial_dir(number) / POINTS_FILE

    # -- trial folders ---------------------------------------------------------------
    def read_metrics(self, number: int) -> dict[str, Any]:
        """A trial's metrics.json ({} while it has none); a UserError when it is corrupt."""
        path = self.metrics_path(number)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: unreadable or corrupt ({exc.__class__.__name__}); remove the trial folder") from None

    def finished_result(self, number: int) -> dict[str, Any] | None:
        """The metrics of trial ``number`` when its folder holds a finished result, else None.

        Finished: metrics.json (written last) is a JSON object whose status is
        COMPLETE, FAIL or PRUNED; for COMPLETE also config.json of this trial and the
        weights, whose sha256 matches the one recorded. Never raises for a damaged folder.
        """
        try:
            metrics = json.loads(self.metrics_path(number).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(metrics, dict) or metrics.get("status") not in ("COMPLETE", "FAIL", "PRUNED"):
            return None
        if metrics["status"] in ("FAIL", "PRUNED"):  # a pruned trial (tuning/schedulers.py) left no weights
            return metrics
        try:
            config = json.loads(self.config_path(number).read_text(encoding="utf-8"))
            # A one-shot evaluation has no weights of its own: they are sliced from the run's supernet.
            weights = None if "supernet_sha256" in metrics else self.weights_path(number).read_bytes()
        except (OSError, ValueError):
            return None
        if not isinstance(config, dict) or config.get("trial", number) != number:
            return None
        if metrics.get("config_sha256") not in (None, config_sha256(config)):
            return None
        recorded = metrics.get("weights_sha256")
        if weights is not None and recorded is not None and hashlib.sha256(weights).hexdigest() != recorded:
            return None
        return metrics

    def read_config(self, number: int) -> dict[str, Any] | None:
        """A trial's config.json, or None while it has none."""
        path = self.config_path(number)
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def write_trial(self, number: int, files: dict[str, bytes]) -> None:
        """Write files (``trial_files`` and friends) into trial ``number``'s folder, atomically, in order."""
        write_files(self.trial_dir(number), files)

    def write_front(self, front: list[dict[str, Any]]) -> None:
        write_json(self.front_path, front)

    # -- the recipe ------------------------------------------------------------------
    def read_recipe(self) -> Recipe:
        """The resolved recipe the search wrote, typed; a one-line UserError when it is missing or invalid."""
        return parse_recipe(self.read_recipe_data(), source=str(self.recipe_path), stored=True)

    def read_recipe_data(self) -> dict[str, Any]:
        """The resolved recipe a search wrote, as its plain dict (what a file of it holds); a one-line
        UserError when it is missing or not one. Code reads fields of ``read_recipe()``."""
        path = self.recipe_path
        try:
            recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"{path}: missing or unreadable ({exc.__class__.__name__}); "
                            f"restore the run's {RECIPE_FILE}") from None
        if not isinstance(recipe, dict) or not isinstance(recipe.get("data"), dict):
            raise UserError(f"{path}: not a resolved recipe (no 'data' mapping); restore the run's {RECIPE_FILE}")
        return recipe

    def write_recipe(self, recipe: Recipe) -> None:
        """Write the resolved recipe atomically."""
        data = recipe_dict(recipe)
        write_files(self.path, {RECIPE_FILE: yaml.safe_dump(data, sort_keys=False).encode("utf-8")})

    # -- guards ----------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run directory's lock; refuse if another search holds it.

        An ``flock`` is released by the kernel when its process dies, so a killed
        search never leaves the directory locked.
        """
        fd = self._acquire_lock()
        try:
            yield
        finally:
            os.close(fd)  # closing releases the lock

    @contextmanager
    def try_locked(self) -> Iterator[str]:
        """Hold the lock if it is free, without waiting or raising.

        Yields ``"held"`` (this process holds it), ``"busy"`` (a live search
        holds it) or ``"read-only"`` (the lock file cannot be opened: the run
        directory is not writable).
        """
        try:
            fd = self._acquire_lock()
        except UserError:
            yield "busy"
            return
        except OSError:
            yield "read-only"
            return
        try:
            yield "held"
        finally:
            os.close(fd)

    def _acquire_lock(self) -> int:
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(
                f"run directory {self.path}: another dynsearch search is using it (pid {holder}); "
                "wait for it to finish or choose another --out"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def check_resume(self, recipe: Recipe, new: bool = False) -> Path | None:
        """Refuse to resume a search of another recipe; with ``new``, move the old search aside.

        ``recipe`` is the new search's; the stored one is read back and the two are
        compared on ``RESUME_FIELDS``. Returns where the old search was moved, or None.
        """
        if not self.has_study():
            return None
        if new:
            return self.move_aside()
        unchecked = ("so resuming cannot be checked; pass --new to start a new search there "
                     "(the old one is kept)")
        if not self.recipe_path.is_file():
            raise UserError(f"run directory {self.path}: holds a study but no {RECIPE_FILE}, {unchecked}")
        try:
            old = recipe_dict(self.read_recipe())
        except UserError:
            raise UserError(f"run directory {self.path}: its {RECIPE_FILE} is unreadable or invalid, {unchecked}") from None
        new_data = recipe_dict(recipe)
        changed = [field for field in RESUME_FIELDS if old[field] != new_data[field]]
        if changed:
            raise UserError(
                f"run directory {self.path}: holds a search with a different recipe (changed: {', '.join(changed)}); "
                "re-run with the same recipe to resume, or pass --new to start a new search there (the old one is kept)"
            )
        return None

    def move_aside(self) -> Path:
        """Move an earlier search's files into ``previous/<k>`` (k = 1, 2, ...) and return that folder."""
        previous = self.path / PREVIOUS_DIR
        k = 1
        while (previous / str(k)).exists():
            k += 1
        target = previous / str(k)
        target.mkdir(parents=True)
        for name in SEARCH_STATE:
            if (self.path / name).exists():
                os.replace(self.path / name, target / name)
        for path in self.damaged_journals():  # they belong to that search's journal
            os.replace(path, target / path.name)
        return target
