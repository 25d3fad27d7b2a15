"""One trial: Lightning training of a DynamicModel, then measurement.

Used by ``dynsearch train`` directly and by the Ray Tune trainable
(trainable.py), which passes a ``report`` function.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from dynsearch.dynamic import DynamicModel, build_model
from dynsearch.measure.evaluate import MEASURE_BATCH_SIZE, count_params, measure
from dynsearch.measure.shift import shifted_metrics
from dynsearch.measure.thop_count import thop_macs_full
from dynsearch.run.rundir import trial_files, write_files
from dynsearch.training.lightning import DynamicModule, NonFiniteError, Report, ReportCallback


def train_model(config: dict[str, Any], splits, report: Report | None = None, accelerator: str = "cpu",
                callbacks: list | None = None, objectives: list[str] = (), model: DynamicModel | None = None,
                epochs: int | None = None, lr: float | None = None, lr_schedule: str | None = None) -> DynamicModel:
    """Train the model a trial config describes on ``splits`` with Lightning.

    ``accelerator`` is Lightning's ("cpu" or "gpu"); the trained model is
    returned on the CPU, where it is measured. ``model`` (with ``epochs``, ``lr``, ``lr_schedule``
    replacing the config's): go on training that model instead of a new one (fine-tuning).
    """
    import pytorch_lightning as pl

    train = config["train"]
    torch.manual_seed(int(train["seed"]))
    if model is None:
        model = build_model(config)
    model.component_macs()  # measured once, before training
    generator = torch.Generator().manual_seed(int(train["seed"]))
    train_loader = DataLoader(
        TensorDataset(splits.train_x, splits.train_y),
        batch_size=int(train["batch_size"]),
        shuffle=True,
        generator=generator,
    )
    val_loader = DataLoader(TensorDataset(splits.val_x, splits.val_y), batch_size=256)
    callbacks = [*(callbacks or []), *([ReportCallback(report, objectives)] if report else [])]
    trainer = pl.Trainer(
        max_epochs=int(epochs or train["epochs"]),
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        deterministic=False,
    )
    module = DynamicModule(model, float(lr or train["lr"]), lr_schedule or train.get("lr_schedule", "constant"),
                           channels_last=bool(train.get("channels_last", False)),
                           augment=train.get("augment", ()), augment_seed=int(train["seed"]))
    trainer.fit(module, train_loader, val_loader)
    # Stored (safetensors needs contiguous tensors), measured and exported in the default layout.
    model.cpu().to(memory_format=torch.contiguous_format).eval()
    return model


FINETUNE_LR_FACTOR = 0.1  # a fine-tuning run's learning rate: the trial's, times this, annealed (cosine)


def finetune_model(model: DynamicModel, config: dict[str, Any], splits, epochs: int) -> dict[str, Any]:
    """Train ``model`` (its trial config ``config``) ``epochs`` more epochs at a tenth of its learning rate,
    cosine-annealed, in place; returns what was done (``epochs``, ``lr``, ``lr_schedule``)."""
    lr = float(config["train"]["lr"]) * FINETUNE_LR_FACTOR
    train_model(config, splits, model=model.train(), epochs=epochs, lr=lr, lr_schedule="cosine")
    return {"epochs": int(epochs), "lr": lr, "lr_schedule": "cosine"}


def evaluate(model: DynamicModel, splits, shift=None) -> dict[str, Any]:
    """The objectives of a trained model: validation for selection, test for reporting only.

    ``shift`` (the recipe's ``ShiftSpec``, given when ``macs_shifted`` is an objective): also the expected
    MACs under its corruptions, on validation (``macs_shifted``, the objective) and test (``test_macs_shifted``),
    with the figures of each corruption in ``shift``."""
    val = measure(model, splits.val_x, splits.val_y, batch_size=MEASURE_BATCH_SIZE)
    test = measure(model, splits.test_x, splits.test_y, batch_size=MEASURE_BATCH_SIZE)
    metrics = {
        "accuracy": val["accuracy"],
        "macs": val["macs"],
        "macs_full": val["macs_full"],
        # thop's count of the same static path, for comparison with papers (docs/concepts.md, "How MACs are counted"); None: thop cannot.
        "macs_thop": thop_macs_full(model),
        "params": count_params(model),
        "test_accuracy": test["accuracy"],
        "test_macs": test["macs"],
        "stats": val["stats"],
        "test_stats": test["stats"],
        "stat_views": type(model).stat_views_record(val["stats"]),  # how the report draws them (no mechanism there)
        # Decisions at a threshold can flip with round-off: exports re-measure under these settings.
        "measured_with": {"batch_size": MEASURE_BATCH_SIZE, "threads": torch.get_num_threads()},
    }
    if shift is not None:
        metrics.update(shifted_metrics(model, splits, shift.corruptions, shift.severity, shift.seed,
                                       batch_size=MEASURE_BATCH_SIZE))
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise NonFiniteError(f"non-finite metric(s) {bad}: {[metrics[k] for k in bad]}")
    return metrics


def save_trial(folder: Path, config: dict[str, Any], model: DynamicModel | None, metrics: dict[str, Any]) -> None:
    """Write config.json, model.safetensors and metrics.json into ``folder``."""
    write_files(folder, trial_files(config, model, metrics))
