"""The files of a run directory and of a model folder: their names, atomic writes and checked reads.

Kept apart from ``rundir.py`` (which reads the typed recipe) so that loading an
exported model folder (``deploy/load.py``) needs nothing of the search.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from dynsearch.errors import UserError

RECIPE_FILE = "recipe.yaml"
STUDY_FILE = "study.journal"
# A journal repair (run/journal.py) moves the bytes it takes out of the journal here, never deleting them.
DAMAGED_JOURNAL_PREFIX = STUDY_FILE + ".damaged-"
TRIALS_DIR = "trials"
FRONT_FILE = "pareto.json"
REPORT_PNG = "pareto.png"
REPORT_HTML = "pareto.html"
RAY_DIR = "ray"
WANDB_DIR = "wandb"
LOCK_FILE = ".dynsearch.lock"
PREVIOUS_DIR = "previous"
# A one-shot search's supernet (training/supernet.py): its weights once for every evaluation, its record,
# and while it trains the last finished epoch's checkpoint.
SUPERNET_DIR = "supernet"
SUPERNET_WEIGHTS = "supernet.safetensors"
SUPERNET_RECORD = "supernet.json"
CHECKPOINT_WEIGHTS = "checkpoint.safetensors"
CHECKPOINT_OPTIMIZER = "checkpoint-optimizer.pt"
CHECKPOINT_RECORD = "checkpoint.json"
SUPERNET_FAILURE = "failure.json"  # why the supernet trial failed (its reason and traceback)
# A trial folder's files (an exported model folder uses the first two too).
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
PLACEMENT_FILE = "placement.json"
POINTS_FILE = "operating_points.json"


# -- atomic files ------------------------------------------------------------------
def json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    """Write each file atomically (temporary name, then rename), in the order given."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        tmp = folder / (name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, folder / name)


def config_sha256(config: dict[str, Any]) -> str:
    """The sha256 of a config's content (canonical JSON: sorted keys, no spaces), whatever its layout on disk."""
    config = json.loads(json.dumps(config))  # as it reads back: tuples as lists, keys as strings
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def write_durable(path: Path, data: bytes, exclusive: bool = False) -> None:
    """Write ``path`` atomically and durably: a temporary file, fsync, rename, fsync of the folder.

    With ``exclusive``, refuse (FileExistsError) to replace an existing ``path``.
    """
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if exclusive:
        try:
            os.link(tmp, path)  # fails when path exists: never replaces a kept file
        finally:
            os.unlink(tmp)
    else:
        os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: Any) -> None:
    write_files(path.parent, {path.name: json_bytes(data)})


def weights_bytes(model) -> bytes:
    """A module's state (parameters and buffers) as safetensors bytes: on the CPU, contiguous."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})


def trial_files(config: dict[str, Any], model, metrics: dict[str, Any]) -> dict[str, bytes]:
    """A trial folder's files as bytes, in write order: config, weights (safetensors), metrics last.

    ``model`` is any torch module (None: no weights); the metrics record the
    weights' sha256 and the config's (``config_sha256``), which loading, exports and
    operating points check (tampering, truncation).
    """
    files = {CONFIG_FILE: json_bytes(config)}
    metrics = {**metrics, "config_sha256": config_sha256(config)}
    if model is not None:
        weights = weights_bytes(model)
        files[WEIGHTS_FILE] = weights
        metrics = {**metrics, "weights_sha256": hashlib.sha256(weights).hexdigest()}
    files[METRICS_FILE] = json_bytes(metrics)
    return files


def config_and_placement_files(config: dict[str, Any], placement: dict[str, Any]) -> dict[str, bytes]:
    """What a trial writes when it starts: its config and where it runs."""
    return {CONFIG_FILE: json_bytes(config), PLACEMENT_FILE: json_bytes(placement)}


def metrics_file(metrics: dict[str, Any]) -> dict[str, bytes]:
    return {METRICS_FILE: json_bytes(metrics)}


def points_file(record: dict[str, Any]) -> dict[str, bytes]:
    return {POINTS_FILE: json_bytes(record)}


def read_json(path: Path, fix: str) -> Any:
    """A JSON file's content; a one-line UserError naming ``fix`` when it is missing or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing; {fix}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable or not JSON ({exc.__class__.__name__}); {fix}") from None
