"""A trial of a run read back for export or operating points: weights verified, model re-measured."""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynsearch.deploy.load import build_checked, check_config, parse_weights, read_bytes
from dynsearch.errors import UserError
from dynsearch.measure.evaluate import MEASURE_BATCH_SIZE, measure_val, same_figures
from dynsearch.recipe import Recipe
from dynsearch.run.rundir import METRICS_FILE, RunDir, read_json, weights_bytes
from dynsearch.run.supernet import check_trial_supernet, is_oneshot_trial, load_supernet


# -- export --------------------------------------------------------------------
@dataclass
class CheckedTrial:
    """A trial read from a run directory whose weights were verified and re-measured."""

    number: int
    config: dict[str, Any]
    metrics: dict[str, Any]
    weights: bytes
    model: Any
    measured: dict[str, Any]
    point: dict[str, Any] | None = None  # the operating point it is exported at (operating_points.py)


def check_trial(run: Path, number: int, recipe: Recipe) -> CheckedTrial:
    """Read a trial folder, verify its weights and re-measure the model under the trial's settings."""
    run = RunDir.of(run)
    folder = run.trial_dir(number)
    fix = f"the trial's folder {folder} is damaged; re-run the search in a new run directory"
    config = read_json(run.config_path(number), fix)
    metrics = read_json(run.metrics_path(number), fix)
    if metrics.get("status") != "COMPLETE":
        raise UserError(f"trial {number}: its {METRICS_FILE} says {metrics.get('status')!r}, not COMPLETE; "
                        "export a COMPLETE trial")
    if "config_sha256" in metrics:
        check_config(run.config_path(number), config, metrics["config_sha256"], fix)
    recorded_sha = metrics.get("weights_sha256")
    measured_with = metrics.get("measured_with") or settings_from_recipe(recipe)
    if is_oneshot_trial(metrics):  # no weights of its own: sliced from the run's supernet again
        model, weights = sliced_trial(run, number, config, metrics, recipe, measured_with)
        recorded_sha = None if hashlib.sha256(weights).hexdigest() != recorded_sha else recorded_sha
    else:
        weights = read_bytes(run.weights_path(number), fix)
        model = build_checked(config, parse_weights(run.weights_path(number), weights, recorded_sha, fix), folder)
    measured = measure_val(model, recipe.data, measured_with)
    if recorded_sha is None and not same_figures(measured, metrics):
        # No checksum (an older run): the figures are the only evidence these are the trial's weights.
        raise UserError(f"trial {number}: its weights give accuracy {measured['accuracy']} and macs "
                        f"{measured['macs']}, not the recorded {metrics['accuracy']} and {metrics['macs']}: "
                        f"tampered or from another trial; {fix}")
    return CheckedTrial(number, config, metrics, weights, model, measured)


def sliced_trial(run: RunDir, number: int, config: dict[str, Any], metrics: dict[str, Any], recipe: Recipe,
                 measured_with: dict[str, Any]):
    """A one-shot trial's model and weights (safetensors bytes): sliced from the run's supernet (checked to be
    the one it was evaluated on), batch-norm statistics recomputed as its evaluation recomputed them."""
    from dynsearch.data import cached_splits
    from dynsearch.dynamic.supernet import calibrated_subnet, calibration_images
    from dynsearch.measure.device import pinned_threads

    check_trial_supernet(run.supernet_dir, metrics, number)
    supernet, _ = load_supernet(run.supernet_dir)
    splits = cached_splits(recipe.data)
    calibration = calibration_images(splits.train_x, recipe.supernet.calibration_images, recipe.seed)
    with pinned_threads(int(measured_with["threads"])):
        model = calibrated_subnet(supernet, config, calibration)
    return model, weights_bytes(model)


def settings_from_recipe(recipe: Recipe) -> dict[str, int]:
    """What a trial made before ``measured_with`` was recorded was measured with."""
    return {"batch_size": MEASURE_BATCH_SIZE, "threads": max(1, math.ceil(recipe.cpus_per_trial))}
