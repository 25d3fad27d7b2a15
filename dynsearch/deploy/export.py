"""Export trials of a run as self-contained model folders (``load.py`` loads them back).

A model folder ``DIR/trial-<N>/`` holds:

  config.json        the trial config (architecture, mechanism; ``build_model`` takes it as it is)
                     plus ``runtime_policy`` (the decision rule and its thresholds) and ``export``
                     (format, the weights' sha256)
  model.safetensors  the weights, byte for byte those the trial wrote
  card.json, card.md the objectives as measured, data, recipe, library versions, supported forms,
                     the serving engine chosen by measurement (``engine``, see engine.py)
  onnx/              with ``onnx=True``: the mechanism's staged graphs (see onnx_export.py)
  onnx_int8/         with ``quantize="int8"``: the same graphs quantized (see quantize.py)

Nothing in it is a pickle, but a config naming a user backbone names code that
``load`` imports and calls (docs/trust.md): config.json records the sha256 of its
own content (``export.config_sha256``), and an edited one is refused. ``load`` needs
torch and dynsearch only (it imports neither Ray nor Optuna) and never unpickles. Before anything is written, every
trial's weights are checked against the sha256 the trial recorded and the model
is measured again under the trial's settings; the card says whether the figures
came out identical (runs older than the checksum must reproduce them exactly).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from dynsearch.data import cached_splits
from dynsearch.deploy.card import card_markdown, make_card
from dynsearch.deploy.load import FORMAT, REEXPORT, load
from dynsearch.deploy.onnx_export import export_onnx
from dynsearch.deploy.points import at_point, trial_points
from dynsearch.deploy.quantize import check_quantize, compare, quantize_graphs
from dynsearch.deploy.trials import CheckedTrial, check_trial
from dynsearch.errors import UserError
from dynsearch.measure.evaluate import measure_val, same_figures
from dynsearch.recipe import Recipe
from dynsearch.run.front import pareto, point_of
from dynsearch.run.rundir import CONFIG_FILE, WEIGHTS_FILE, RunDir, config_sha256, read_json, weights_bytes, write_json
from dynsearch.run.study import PRUNED_AT, open_existing

CARD_JSON, CARD_MD = "card.json", "card.md"


def export(run_dir: str | Path, out: str | Path, trials: list[int] | None = None, onnx: bool = False,
           point: int | None = None, quantize: str | None = None, finetune: int | None = None,
           tune: Callable | None = None) -> list[Path]:
    """Export trials of a run as model folders ``out/trial-<N>/``; return their paths.

    Args:
        trials: trial numbers; None exports the Pareto front.
        onnx: also write the staged ONNX graphs (an error for a mechanism without an ONNX form).
        point: export the one trial in ``trials`` at this operating point (its knob values in
            the config, runtime policy and card; see ``pareto(run_dir, operating_points=True)``).
        quantize: ``"int8"``: also write int8 copies of the graphs (implies ``onnx``), measured
            again with onnxruntime; the card records the float and int8 figures.
        finetune: train each exported model this many more epochs first, with ``tune(model, config,
            splits, epochs)`` (``training.trial.finetune_model``, passed in by ``dynsearch.api``); the card
            records the validation and test figures before and after (``finetune``).

    Every trial is checked (COMPLETE, weights intact, figures reproduced) before
    anything is written; the folders are built in a temporary folder and renamed
    into place, so a failed export leaves nothing behind.
    """
    check_quantize(quantize)
    onnx = onnx or quantize is not None
    run = RunDir.existing(run_dir)
    recipe = run.read_recipe()
    numbers = _trial_numbers(run, trials)
    out_dir = Path(out).expanduser()
    _check_targets(out_dir, numbers)
    if point is not None and (trials is None or len(numbers) != 1):
        raise UserError("--point: pass exactly one trial with --trials N (operating points are per trial)")
    if finetune is not None and (finetune < 1 or tune is None):
        raise UserError(f"--finetune {finetune}: give a whole number of epochs >= 1")
    if point is not None:  # before any model is re-measured: a wrong --point fails at once
        point_of(trial_points(run, numbers[0]), point, run_dir)
    checked = [check_trial(run, number, recipe) for number in numbers]
    if point is not None:
        checked = [at_point(run, checked[0], point, recipe)]
    if finetune:
        checked = [_finetuned(item, recipe, finetune, tune) for item in checked]
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


def _figures(model, splits, measured_with: dict[str, Any]) -> dict[str, Any]:
    from dynsearch.measure.device import pinned_threads
    from dynsearch.measure.evaluate import measure

    batch = int(measured_with["batch_size"])
    with pinned_threads(int(measured_with["threads"])):
        val = measure(model, splits.val_x, splits.val_y, batch_size=batch)
        test = measure(model, splits.test_x, splits.test_y, batch_size=batch)
    return {"accuracy": val["accuracy"], "macs": val["macs"], "stats": val["stats"],
            "test_accuracy": test["accuracy"], "test_macs": test["macs"], "test_stats": test["stats"]}


def _finetuned(item: CheckedTrial, recipe: Recipe, epochs: int, tune: Callable) -> CheckedTrial:
    """``item`` trained ``epochs`` more epochs (weights, figures and metrics replaced; ``finetune`` says how)."""
    splits = cached_splits(recipe.data)
    measured_with = item.measured["measured_with"]
    keys = ("accuracy", "macs", "test_accuracy", "test_macs")
    before = _figures(item.model, splits, measured_with)
    how = tune(item.model, item.config, splits, epochs)
    model = item.model.eval()
    after = _figures(model, splits, measured_with)
    weights = weights_bytes(model)
    metrics = {**item.metrics, **after, "weights_sha256": hashlib.sha256(weights).hexdigest(),
               "finetune": {**how, "before": {k: before[k] for k in keys}, "after": {k: after[k] for k in keys}}}
    if "macs_shifted" in item.metrics and recipe.measures_shift:  # the objective of the weights exported
        from dynsearch.measure.device import pinned_threads
        from dynsearch.measure.shift import shifted_metrics

        shift = recipe.shift
        with pinned_threads(int(measured_with["threads"])):
            metrics.update(shifted_metrics(model, splits, shift.corruptions, shift.severity, shift.seed,
                                           batch_size=int(measured_with["batch_size"])))
    measured = {**item.measured, "accuracy": after["accuracy"], "macs": after["macs"]}
    return replace(item, weights=weights, metrics=metrics, measured=measured)


def _trial_numbers(run: Path, trials: list[int] | None) -> list[int]:
    """The Pareto front's trials, or the given ones after checking each is a COMPLETE trial of the study."""
    if trials is None:
        numbers = [item["trial"] for item in pareto(run)]
        if not numbers:
            raise UserError(f"run directory {run}: no COMPLETE trial to export; run or resume the search first")
        return numbers
    study = open_existing(run)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    for number in trials:
        if number not in by_number:
            known = f"0-{max(by_number)}" if by_number else "none"
            raise UserError(f"run directory {run}: no trial {number} (trials: {known}); "
                            f"pick one from 'dynsearch pareto {run}'")
        state = by_number[number].state.name
        if state != "COMPLETE":
            attrs = by_number[number].user_attrs
            reason = attrs.get("fail_reason", "") or (f"stopped early by the scheduler after epoch {attrs[PRUNED_AT]}"
                                                      if PRUNED_AT in attrs else "")
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


def write_model_files(folder: Path, config: dict[str, Any], model, weights: bytes) -> None:
    """Write the two files ``load`` reads into ``folder``: ``model.safetensors`` (``weights``, as
    they are) and ``config.json`` (``config`` plus the model's ``runtime_policy`` and ``export``:
    format, the weights' sha256 and ``config_sha256``, the sha256 of the rest of config.json)."""
    (folder / WEIGHTS_FILE).write_bytes(weights)
    written = {
        **config,
        "runtime_policy": model.runtime_policy(),
        "export": {"format": FORMAT, "weights_sha256": hashlib.sha256(weights).hexdigest()},
    }
    written["export"]["config_sha256"] = config_sha256(written)  # of everything but itself
    write_json(folder / CONFIG_FILE, written)


def _write_model_folder(folder: Path, item: CheckedTrial, run: RunDir, recipe: Recipe, onnx: bool,
                        quantize: str | None = None) -> None:
    folder.mkdir()
    model = item.model
    write_model_files(folder, item.config, model, item.weights)
    onnx_manifest = int8 = None
    if onnx:
        splits = cached_splits(recipe.data)
        onnx_manifest = export_onnx(model, folder / "onnx", splits.val_x)
    if quantize:
        files = quantize_graphs(model, folder, splits.val_x)
        int8 = compare(folder, {"runtime_policy": model.runtime_policy(), "onnx": onnx_manifest, "int8": {"files": files}},
                       splits, threads=int(item.measured["measured_with"]["threads"]))
        int8["files"] = files
    card = make_card(item.number, item.config, item.metrics, model, run, recipe, onnx_manifest,
                     reproduced={**item.measured, "matches_recorded": same_figures(item.measured, item.metrics)},
                     int8=int8)
    if item.point is not None:
        card["operating_point"] = item.point
    if "finetune" in item.metrics:
        card["finetune"] = item.metrics["finetune"]
    card["engine"] = engine_section(folder, card, cached_splits(recipe.data).val_x,
                                    int(item.measured["measured_with"]["threads"]))
    card["shift"] = shift_section(model, cached_splits(recipe.data), int(item.measured["measured_with"]["threads"]))
    write_json(folder / CARD_JSON, card)
    (folder / CARD_MD).write_text(card_markdown(card), encoding="utf-8")


def engine_section(folder: Path, card: dict[str, Any], inputs, threads: int) -> dict[str, Any]:
    """The card's ``engine`` section (``deploy.engine.measure_engines``): the served eager form, as
    ``load`` returns it, its channels-last copy for a convolutional model, and the staged ONNX graphs
    when written, timed on the validation inputs."""
    from dynsearch.deploy.engine import ChannelsLastEngine, OnnxEngine, has_conv2d, measure_engines

    eager = load(folder, engine="eager")
    engines = {"eager": eager}
    if has_conv2d(eager):
        engines["channels_last"] = ChannelsLastEngine(eager, tuple(eager.config["input_shape"]))
    if card.get("onnx"):
        engines["onnx"] = OnnxEngine(folder, card, eager, threads, tuple(eager.config["input_shape"]))
    return measure_engines(engines, inputs, threads=threads)


def shift_section(model, splits, threads: int) -> dict[str, Any]:
    """The card's cost under shifted inputs: accuracy, expected MACs and the mechanism's statistics on
    the validation split under each generated corruption at each severity (``measure.shift``), beside
    the clean figures; ``flagged`` names those whose expected MACs rise more than 20%."""
    from dynsearch.measure.device import pinned_threads
    from dynsearch.measure.shift import CORRUPTIONS, SEVERITIES, shifted_figures

    shifts = [(name, severity) for name in CORRUPTIONS for severity in SEVERITIES]
    with pinned_threads(threads):
        return shifted_figures(model, splits.val_x, splits.val_y, shifts)


def reproduce(path: str | Path) -> dict[str, Any]:
    """Load a model folder and measure it again on the validation split, as its trial was measured.

    Returns ``accuracy``, ``macs`` (measured now), ``recorded`` (the trial's
    figures from card.json) and ``matches`` (exactly equal).
    """
    folder = Path(path).expanduser()
    model = load(folder, raw=True)  # the trained form, as the trial measured it (figures compared exactly)
    card = read_json(folder / CARD_JSON, REEXPORT)
    measured = measure_val(model, card["data"], card["measured_with"])
    recorded = {k: card["objectives"][k] for k in ("accuracy", "macs")}
    return {**measured, "recorded": recorded, "matches": same_figures(measured, recorded)}
