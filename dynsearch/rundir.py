"""Guards of a run directory: one search at a time, the same recipe on resume,
and starting over without deleting anything.

Imports neither Ray nor Optuna.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

from dynsearch.errors import UserError
from dynsearch.recipe import Recipe, parse_recipe, recipe_dict

LOCK_FILE = ".dynsearch.lock"
RECIPE_FILE = "recipe.yaml"
PREVIOUS_DIR = "previous"
# What makes two searches' trials comparable; the trial budget, sampler and
# resources may change between runs of the same search.
RESUME_FIELDS = ("data", "backbone", "space", "objectives", "epochs", "batch_size", "latency")
# What --new moves aside (everything a search writes, see README "Run directory").
SEARCH_STATE = (RECIPE_FILE, "study.journal", "trials", "pareto.json", "ray", "pareto.png", "pareto.html", "wandb")


def make_run_dir(out: str | Path) -> Path:
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
    return run_dir


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock; refuse if another search holds it.

    An ``flock`` is released by the kernel when its process dies, so a killed
    search never leaves the directory locked.
    """
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(
                f"run directory {run_dir}: another dynsearch search is using it (pid {holder}); "
                "wait for it to finish or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def stored_recipe(run_dir: Path) -> Recipe | None:
    """The recipe an earlier search wrote to ``run_dir``, or None if there is none."""
    path = run_dir / RECIPE_FILE
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return parse_recipe(data, source=str(path))
    except (OSError, yaml.YAMLError, UserError):
        raise UserError(
            f"run directory {run_dir}: its {RECIPE_FILE} is unreadable or invalid, so resuming cannot be "
            "checked; pass --new to start a new search there (the old one is kept)"
        ) from None


def changed_fields(old: Recipe, new: Recipe) -> list[str]:
    """The RESUME_FIELDS that differ between two recipes."""
    old_dict, new_dict = recipe_dict(old), recipe_dict(new)
    return [field for field in RESUME_FIELDS if old_dict[field] != new_dict[field]]


def check_resume(run_dir: Path, recipe: Recipe, new: bool = False) -> Path | None:
    """Refuse to resume a search of another recipe; with ``new``, move the old search aside.

    Returns where the old search was moved, or None.
    """
    from dynsearch.study import STUDY_FILE

    has_search = (run_dir / STUDY_FILE).exists()
    if not has_search:
        return None
    if new:
        return move_aside(run_dir)
    old = stored_recipe(run_dir)
    if old is None:
        raise UserError(
            f"run directory {run_dir}: holds a study but no {RECIPE_FILE}, so resuming cannot be checked; "
            "pass --new to start a new search there (the old one is kept)"
        )
    changed = changed_fields(old, recipe)
    if changed:
        raise UserError(
            f"run directory {run_dir}: holds a search with a different recipe (changed: {', '.join(changed)}); "
            "re-run with the same recipe to resume, or pass --new to start a new search there (the old one is kept)"
        )
    return None


def move_aside(run_dir: Path) -> Path:
    """Move an earlier search's files into ``previous/<k>`` (k = 1, 2, ...) and return that folder."""
    previous = run_dir / PREVIOUS_DIR
    k = 1
    while (previous / str(k)).exists():
        k += 1
    target = previous / str(k)
    target.mkdir(parents=True)
    for name in SEARCH_STATE:
        if (run_dir / name).exists():
            os.replace(run_dir / name, target / name)
    return target


def write_recipe(run_dir: Path, recipe: Recipe) -> None:
    """Write the resolved recipe to the run directory (atomically)."""
    tmp = run_dir / (RECIPE_FILE + ".tmp")
    tmp.write_text(yaml.safe_dump(recipe_dict(recipe), sort_keys=False), encoding="utf-8")
    os.replace(tmp, run_dir / RECIPE_FILE)
