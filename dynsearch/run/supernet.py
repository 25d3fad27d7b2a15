"""A one-shot run's supernet read back (training/supernet.py writes it), and what its evaluations stand on.

A one-shot run stores the supernet's weights once, ``supernet/supernet.safetensors``, beside
``supernet/supernet.json`` (its sha256, the largest and smallest sub-network configs it was built
from, its training history). Each evaluation is a study trial with a trial folder of its own
(``config.json``: the sub-network's config; ``metrics.json``; ``operating_points.json``) and no
weights: its metrics record ``supernet_sha256`` (the supernet it was sliced from) and
``weights_sha256`` (its sliced weights with their batch-norm statistics recomputed). ``pareto``
and ``report`` read the trial folders as for any run; ``export`` and operating points that need
the model slice it again from the supernet (deploy/trials.py) and check it against that sha256.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from dynsearch.dynamic.supernet import Supernet, build_supernet
from dynsearch.errors import UserError
from dynsearch.run.files import SUPERNET_RECORD, SUPERNET_WEIGHTS

_FIX = "train it again in a new run directory (or restore the run's supernet folder)"
_CHECKED: dict[tuple, str] = {}  # (path, size, mtime) -> sha256 of a supernet file already hashed


def is_oneshot_trial(metrics: dict[str, Any]) -> bool:
    """Whether a trial's metrics are a one-shot evaluation's (weights sliced from the run's supernet)."""
    return isinstance(metrics, dict) and "supernet_sha256" in metrics


def read_record(folder: Path) -> dict[str, Any]:
    try:
        record = json.loads((folder / SUPERNET_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder / SUPERNET_RECORD}: missing or unreadable ({exc.__class__.__name__}); {_FIX}") from None
    if not isinstance(record, dict) or not all(k in record for k in ("space", "largest", "smallest", "weights_sha256")):
        raise UserError(f"{folder / SUPERNET_RECORD}: not a supernet record; {_FIX}")
    return record


def supernet_sha256(folder: Path) -> str | None:
    """The sha256 of the supernet's weights file as it is now (hashed once per file version); None when missing."""
    path = folder / SUPERNET_WEIGHTS
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _CHECKED:
        _CHECKED[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _CHECKED[key]


def load_supernet(folder: Path) -> tuple[Supernet, dict[str, Any]]:
    """The trained supernet in ``folder`` (weights checked against their recorded sha256) and its record."""
    from safetensors.torch import load as load_bytes

    record = read_record(folder)
    try:
        weights = (folder / SUPERNET_WEIGHTS).read_bytes()
    except OSError as exc:
        raise UserError(f"{folder / SUPERNET_WEIGHTS}: missing or unreadable ({exc.__class__.__name__}); {_FIX}") from None
    if hashlib.sha256(weights).hexdigest() != record["weights_sha256"]:
        raise UserError(f"{folder / SUPERNET_WEIGHTS}: its sha256 is not the one {SUPERNET_RECORD} records "
                        f"(tampered or truncated); {_FIX}")
    supernet = build_supernet(record["space"], record["largest"], record["smallest"])
    try:
        supernet.load_state_dict(load_bytes(weights))
    except Exception as exc:  # safetensors parse errors, shapes that do not fit the recorded configs
        raise UserError(f"{folder / SUPERNET_WEIGHTS}: does not fit its record ({exc.__class__.__name__}); {_FIX}") from None
    return supernet.eval(), record


def check_trial_supernet(folder: Path, metrics: dict[str, Any], number: int) -> None:
    """A UserError unless a one-shot trial's supernet is the one in the run directory now."""
    now = supernet_sha256(folder)
    if now is None:
        raise UserError(f"trial {number}: its weights are sliced from {folder / SUPERNET_WEIGHTS}, which is missing; "
                        f"{_FIX}")
    if now != metrics["supernet_sha256"]:
        raise UserError(f"trial {number}: was evaluated on another supernet than {folder / SUPERNET_WEIGHTS} "
                        f"(sha256 differs); {_FIX}")
