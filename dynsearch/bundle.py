"""Export trials of a run as self-contained model folders, and load them back.

A model folder ``DIR/trial-<N>/`` holds:

  config.json        the trial config (architecture, mechanism; ``build_model`` takes it as it is)
                     plus ``runtime_policy`` (the decision rule and its thresholds) and ``export``
                     (format, the weights' sha256)
  model.safetensors  the weights, byte for byte those the trial wrote
  card.json, card.md the objectives as measured, data, recipe, library versions, supported forms
  onnx/              with ``onnx=True``: the mechanism's staged graphs (see onnx_export.py)
  onnx_int8/         with ``quantize="int8"``: the same graphs quantized (see quantize.py)

Nothing in it is a pickle. ``load`` needs torch and dynsearch only (it imports
neither Ray nor Optuna) and never unpickles. Before anything is written, every
trial's weights are checked against the sha256 the trial recorded and the model
is measured again under the trial's settings; the card says whether the figures
came out identical (runs older than the checksum must reproduce them exactly).
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynsearch.errors import UserError

FORMAT = "dynsearch-model/1"
WEIGHTS_FILE = "model.safetensors"
_REEXPORT = "export it again with 'dynsearch export'"
_EXPORT_KEYS = ("export", "runtime_policy")  # added to the trial config in an exported config.json


# -- load ----------------------------------------------------------------------
def load(path: str | Path):
    """The DynamicModel of an exported model folder, in eval mode, weights checked against config.json."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(f"model folder {path}: not found; pass a DIR/trial-<N> folder written by 'dynsearch export'")
    config = _read_json(folder / "config.json", _REEXPORT)
    export_info = config.get("export") if isinstance(config, dict) else None
    if not isinstance(export_info, dict) or export_info.get("format") != FORMAT:
        raise UserError(f"{folder / 'config.json'}: not a {FORMAT} model config; {_REEXPORT}")
    if not isinstance(export_info.get("weights_sha256"), str):
        raise UserError(f"{folder / 'config.json'}: no weights checksum (export.weights_sha256); {_REEXPORT}")
    state = _read_weights(folder / WEIGHTS_FILE, export_info["weights_sha256"], _REEXPORT)
    model_config = {k: v for k, v in config.items() if k not in _EXPORT_KEYS}
    return _build(model_config, state, folder)


def reproduce(path: str | Path) -> dict[str, Any]:
    """Load a model folder and measure it again on the validation split, as its trial was measured.

    Returns ``accuracy``, ``macs`` (measured now), ``recorded`` (the trial's
    figures from card.json) and ``matches`` (exactly equal).
    """
    folder = Path(path).expanduser()
    model = load(folder)
    card = _read_json(folder / "card.json", _REEXPORT)
    measured = _measure_val(model, card["data"], card["measured_with"])
    recorded = {k: card["objectives"][k] for k in ("accuracy", "macs")}
    return {**measured, "recorded": recorded, "matches": _same_figures(measured, recorded)}


# -- export --------------------------------------------------------------------
@dataclass
class _Checked:
    """A trial read from a run directory whose weights were verified and re-measured."""

    number: int
    config: dict[str, Any]
    metrics: dict[str, Any]
    weights: bytes
    model: Any
    measured: dict[str, Any]
    point: dict[str, Any] | None = None  # the operating point it is exported at (operating_points.py)


def export(run_dir: str | Path, out: str | Path, trials: list[int] | None = None, onnx: bool = False,
           point: int | None = None, quantize: str | None = None) -> list[Path]:
    """Export trials of a run as model folders ``out/trial-<N>/``; return their paths.

    Args:
        trials: trial numbers; None exports the Pareto front.
        onnx: also write the staged ONNX graphs (an error for a mechanism without an ONNX form).
        point: export the one trial in ``trials`` at this operating point (its knob values in
            the config, runtime policy and card; see ``pareto(run_dir, operating_points=True)``).
        quantize: ``"int8"``: also write int8 copies of the graphs (implies ``onnx``), measured
            again with onnxruntime; the card records the float and int8 figures.

    Every trial is checked (COMPLETE, weights intact, figures reproduced) before
    anything is written; the folders are built in a temporary folder and renamed
    into place, so a failed export leaves nothing behind.
    """
    from dynsearch.front import _check_run_dir
    from dynsearch.quantize import check_quantize

    check_quantize(quantize)
    onnx = onnx or quantize is not None
    run = _check_run_dir(run_dir)
    recipe = _read_recipe(run)
    numbers = _trial_numbers(run, trials)
    out_dir = Path(out).expanduser()
    _check_targets(out_dir, numbers)
    if point is not None and (trials is None or len(numbers) != 1):
        raise UserError("--point: pass exactly one trial with --trials N (operating points are per trial)")
    checked = [_check_trial(run, number, recipe) for number in numbers]
    if point is not None:
        from dynsearch.operating_points import at_point

        checked = [at_point(run, checked[0], point, recipe)]
    if onnx:
        for item in checked:
            if item.model.onnx_form() is None:
                raise UserError(f"trial {item.number}: ONNX not supported for mechanism "
                                f"{item.config.get('mechanism')!r}; export it without --format onnx")
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    except OSError as exc:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise UserError(f"--out {out}: cannot write there ({exc.strerror}); choose another folder") from None
    try:
        for item in checked:
            _write_model_folder(staging / f"trial-{item.number}", item, run, recipe, onnx, quantize)
        for item in checked:
            os.rename(staging / f"trial-{item.number}", out_dir / f"trial-{item.number}")
    except BaseException:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [(out_dir / f"trial-{item.number}").resolve() for item in checked]


def _read_recipe(run: Path) -> dict[str, Any]:
    import yaml

    path = run / "recipe.yaml"
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: missing or unreadable ({exc.__class__.__name__}); "
                        "restore the run's recipe.yaml") from None
    if not isinstance(recipe, dict) or not isinstance(recipe.get("data"), dict):
        raise UserError(f"{path}: not a resolved recipe (no 'data' mapping); restore the run's recipe.yaml")
    return recipe


def _trial_numbers(run: Path, trials: list[int] | None) -> list[int]:
    """The Pareto front's trials, or the given ones after checking each is a COMPLETE trial of the study."""
    from dynsearch.front import pareto
    from dynsearch.study import open_study

    if trials is None:
        numbers = [item["trial"] for item in pareto(run)]
        if not numbers:
            raise UserError(f"run directory {run}: no COMPLETE trial to export; run or resume the search first")
        return numbers
    try:
        study = open_study(run)
    except Exception as exc:  # a journal that optuna cannot replay
        raise UserError(f"run directory {run}: the study cannot be read ({exc.__class__.__name__}); "
                        "the journal is corrupt") from None
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    for number in trials:
        if number not in by_number:
            known = f"0-{max(by_number)}" if by_number else "none"
            raise UserError(f"run directory {run}: no trial {number} (trials: {known}); "
                            f"pick one from 'dynsearch pareto {run}'")
        state = by_number[number].state.name
        if state != "COMPLETE":
            reason = by_number[number].user_attrs.get("fail_reason", "")
            because = f" ({reason.splitlines()[0][:200]})" if reason else ""
            raise UserError(f"trial {number}: is {state}{because}, not COMPLETE; "
                            f"export a COMPLETE trial (see 'dynsearch pareto {run}')")
    return list(dict.fromkeys(trials))


def _check_targets(out_dir: Path, numbers: list[int]) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: exists and is not a folder; choose another path")
    for number in numbers:
        if (out_dir / f"trial-{number}").exists():
            raise UserError(f"--out {out_dir}: trial-{number} already exists; remove it or choose another --out")


def _check_trial(run: Path, number: int, recipe: dict[str, Any]) -> _Checked:
    """Read a trial folder, verify its weights and re-measure the model under the trial's settings."""
    from dynsearch.study import trial_dir

    folder = trial_dir(run, number)
    fix = f"the trial's folder {folder} is damaged; re-run the search in a new run directory"
    config = _read_json(folder / "config.json", fix)
    metrics = _read_json(folder / "metrics.json", fix)
    if metrics.get("status") != "COMPLETE":
        raise UserError(f"trial {number}: its metrics.json says {metrics.get('status')!r}, not COMPLETE; "
                        "export a COMPLETE trial")
    recorded_sha = metrics.get("weights_sha256")
    weights = _read_bytes(folder / WEIGHTS_FILE, fix)
    model = _build(config, _parse_weights(folder / WEIGHTS_FILE, weights, recorded_sha, fix), folder)
    measured_with = metrics.get("measured_with") or _settings_from_recipe(recipe)
    measured = _measure_val(model, recipe["data"], measured_with)
    if recorded_sha is None and not _same_figures(measured, metrics):
        # No checksum (an older run): the figures are the only evidence these are the trial's weights.
        raise UserError(f"trial {number}: its weights give accuracy {measured['accuracy']} and macs "
                        f"{measured['macs']}, not the recorded {metrics['accuracy']} and {metrics['macs']}: "
                        f"tampered or from another trial; {fix}")
    return _Checked(number, config, metrics, weights, model, measured)


def _settings_from_recipe(recipe: dict[str, Any]) -> dict[str, int]:
    import math

    from dynsearch.trial import MEASURE_BATCH_SIZE

    return {"batch_size": MEASURE_BATCH_SIZE, "threads": max(1, math.ceil(float(recipe.get("cpus_per_trial", 1))))}


def _write_model_folder(folder: Path, item: _Checked, run: Path, recipe: dict[str, Any], onnx: bool,
                        quantize: str | None = None) -> None:
    import hashlib

    from dynsearch.card import card_markdown, make_card
    from dynsearch.trial import write_json

    folder.mkdir()
    (folder / WEIGHTS_FILE).write_bytes(item.weights)
    model = item.model
    write_json(folder / "config.json", {
        **item.config,
        "runtime_policy": model.runtime_policy(),
        "export": {"format": FORMAT, "weights_sha256": hashlib.sha256(item.weights).hexdigest()},
    })
    onnx_manifest = int8 = None
    if onnx:
        from dynsearch.onnx_export import export_onnx

        splits = _data_splits(recipe["data"])
        onnx_manifest = export_onnx(model, folder / "onnx", splits.val_x)
    if quantize:
        from dynsearch.quantize import compare, quantize_graphs

        files = quantize_graphs(model, folder, splits.val_x)
        int8 = compare(folder, {"runtime_policy": model.runtime_policy(), "onnx": onnx_manifest, "int8": {"files": files}},
                       splits, threads=int(item.measured["measured_with"]["threads"]))
        int8["files"] = files
    card = make_card(item.number, item.config, item.metrics, model, run, recipe, onnx_manifest,
                     reproduced={**item.measured, "matches_recorded": _same_figures(item.measured, item.metrics)},
                     int8=int8)
    if item.point is not None:
        card["operating_point"] = item.point
    write_json(folder / "card.json", card)
    (folder / "card.md").write_text(card_markdown(card), encoding="utf-8")


# -- shared checks -----------------------------------------------------------------
def _read_json(path: Path, fix: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing; {fix}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable or not JSON ({exc.__class__.__name__}); {fix}") from None


def _read_bytes(path: Path, fix: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: missing; {fix}") from None
    except OSError as exc:
        raise UserError(f"{path}: unreadable ({exc.strerror}); {fix}") from None


def _read_weights(path: Path, sha256: str | None, fix: str):
    return _parse_weights(path, _read_bytes(path, fix), sha256, fix)


def _parse_weights(path: Path, data: bytes, sha256: str | None, fix: str):
    """Tensors from safetensors bytes (parsing them runs no code), checked against ``sha256``."""
    import hashlib

    from safetensors.torch import load as load_safetensors

    try:
        state = load_safetensors(data)
    except Exception as exc:  # safetensors raises its own error types for every malformed file
        if data[:4] == b"PK\x03\x04" or data[:1] == b"\x80":  # torch.save zip archive, or a raw pickle
            raise UserError(f"{path}: is a pickle (torch.save) file, not safetensors; "
                            f"dynsearch never unpickles weights; {fix}") from None
        raise UserError(f"{path}: not a valid safetensors file, truncated or corrupt "
                        f"({exc.__class__.__name__}); {fix}") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise UserError(f"{path}: sha256 differs from the one recorded with it (tampered or truncated); {fix}")
    return state


def _build(config: Any, state: dict, where: Path):
    from dynsearch.dynamic import build_model

    if not isinstance(config, dict):
        raise UserError(f"{where}: no model config; {_REEXPORT}")
    try:
        model = build_model(config)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    except Exception as exc:
        raise UserError(f"{where}: the config does not describe a model ({exc.__class__.__name__}: {exc}); "
                        "restore the config.json written with it") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:200]
        raise UserError(f"{where}: the weights do not fit the model the config describes ({first}); "
                        "restore the matching weights") from None
    return model.eval()


def _data_splits(data: dict[str, Any]):
    """The splits of a recipe's (or card's) data section: a built-in dataset or the user's own."""
    from dynsearch.recipe import DataSpec
    from dynsearch.user_data import source_of

    if source_of(data) is not None:  # the section's own fields (a card adds description and shapes)
        return _user_splits(json.dumps({k: data.get(k) for k in DataSpec.model_fields}, sort_keys=True))
    return _splits(data["name"], int(data["split_seed"]), float(data["val_fraction"]), float(data["test_fraction"]))


@functools.lru_cache(maxsize=4)
def _splits(name: str, split_seed: int, val_fraction: float, test_fraction: float):
    from dynsearch.data import load_splits

    return load_splits(name, split_seed, val_fraction, test_fraction)


@functools.lru_cache(maxsize=2)
def _user_splits(data_key: str):
    from dynsearch.data import load_data

    return load_data(json.loads(data_key))


def _measure_val(model, data: dict[str, Any], measured_with: dict[str, int]) -> dict[str, Any]:
    """Validation accuracy and macs at the batch size and thread count the trial was measured with."""
    import torch

    from dynsearch.cost import measure

    splits = _data_splits(data)
    threads = torch.get_num_threads()
    torch.set_num_threads(int(measured_with["threads"]))
    try:
        result = measure(model, splits.val_x, splits.val_y, batch_size=int(measured_with["batch_size"]))
    finally:
        torch.set_num_threads(threads)
    return {"accuracy": result["accuracy"], "macs": result["macs"], "measured_with": dict(measured_with)}


def _same_figures(measured: dict[str, Any], recorded: dict[str, Any]) -> bool:
    return measured["accuracy"] == recorded.get("accuracy") and measured["macs"] == recorded.get("macs")
