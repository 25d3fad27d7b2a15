"""One trial: Lightning training of a DynamicModel, then measurement.

``run_config`` is the whole trial, used by ``dynsearch train`` directly and by
the Ray Tune trainable (tuner.py), which passes a ``report`` function.
"""
from __future__ import annotations

import json
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, TensorDataset

from dynsearch.cost import count_params, measure
from dynsearch.dynamic import DynamicModel, build_model

Report = Callable[[dict[str, Any]], None]
MEASURE_BATCH_SIZE = 256


def _quiet_lightning() -> None:
    # Lightning sets its loggers to INFO when imported, so this runs after the import.
    for name in ("pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def _lightning():
    import pytorch_lightning as pl

    _quiet_lightning()
    return pl


class NonFiniteError(RuntimeError):
    """A loss or metric came out NaN or infinite."""


def make_module(model: DynamicModel, lr: float):
    """The LightningModule around a DynamicModel (built lazily: Lightning is imported here)."""
    pl = _lightning()

    class DynamicModule(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model
            self._val_correct = 0
            self._val_macs = 0.0
            self._val_count = 0

        def on_train_batch_start(self, _batch, _index):
            # Multi-stage schemes (two-stage exits, SkipNet's RL stage) switch on this.
            self.model.set_training_progress(self.global_step / max(1, self.trainer.estimated_stepping_batches))

        def training_step(self, batch, _index):
            x, y = batch
            loss = self.model.training_loss(self.model(x), y)
            if not torch.isfinite(loss):
                raise NonFiniteError(f"training loss is {float(loss)} at epoch {self.current_epoch}")
            return loss

        def on_validation_epoch_start(self):
            self._val_correct, self._val_macs, self._val_count = 0, 0.0, 0

        def validation_step(self, batch, _index):
            x, y = batch
            out = self.model(x)  # eval mode: real per-sample decisions
            self._val_correct += int((out.logits.argmax(1) == y).sum())
            self._val_macs += float(out.trace.macs_per_sample(self.model.component_macs()).sum())
            self._val_count += len(y)

        def validation_metrics(self) -> dict[str, float]:
            """This epoch's validation accuracy and mean MACs (NaN before any validation)."""
            if not self._val_count:
                return {"accuracy": float("nan"), "macs": float("nan")}
            return {"accuracy": self._val_correct / self._val_count, "macs": self._val_macs / self._val_count}

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=lr)

    return DynamicModule()


def make_report_callback(report: Report, objectives: list[str] = ()):
    """A Lightning callback that reports each epoch's validation metrics through ``report``.

    Every objective is named in each report (Ray checks that); those not
    measured per epoch (latency, params) are NaN there. Only the final report
    (``final: True``) reaches the study.
    """
    pl = _lightning()

    class ReportCallback(pl.Callback):
        def on_train_epoch_end(self, trainer, module):  # after the epoch's validation
            metrics = {name: float("nan") for name in objectives}
            metrics.update(module.validation_metrics())
            report({**metrics, "epoch": trainer.current_epoch, "final": False})

    return ReportCallback()


def train_model(config: dict[str, Any], splits, report: Report | None = None, accelerator: str = "cpu",
                callbacks: list | None = None, objectives: list[str] = ()) -> DynamicModel:
    """Train the model a trial config describes on ``splits`` with Lightning.

    ``accelerator`` is Lightning's ("cpu" or "gpu"); the trained model is
    returned on the CPU, where it is measured.
    """
    pl = _lightning()
    train = config["train"]
    torch.manual_seed(int(train["seed"]))
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
    callbacks = [*(callbacks or []), *([make_report_callback(report, objectives)] if report else [])]
    trainer = pl.Trainer(
        max_epochs=int(train["epochs"]),
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
    trainer.fit(make_module(model, float(train["lr"])), train_loader, val_loader)
    model.cpu().eval()
    return model


def evaluate(model: DynamicModel, splits) -> dict[str, Any]:
    """The objectives of a trained model: validation for selection, test for reporting only."""
    val = measure(model, splits.val_x, splits.val_y, batch_size=MEASURE_BATCH_SIZE)
    test = measure(model, splits.test_x, splits.test_y, batch_size=MEASURE_BATCH_SIZE)
    metrics = {
        "accuracy": val["accuracy"],
        "macs": val["macs"],
        "macs_full": val["macs_full"],
        "params": count_params(model),
        "test_accuracy": test["accuracy"],
        "test_macs": test["macs"],
        "stats": val["stats"],
        "test_stats": test["stats"],
        # Decisions at a threshold can flip with round-off: exports re-measure under these settings.
        "measured_with": {"batch_size": MEASURE_BATCH_SIZE, "threads": torch.get_num_threads()},
    }
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise NonFiniteError(f"non-finite metric(s) {bad}: {[metrics[k] for k in bad]}")
    return metrics


def trial_files(config: dict[str, Any], model: DynamicModel | None, metrics: dict[str, Any]) -> dict[str, bytes]:
    """A trial folder's files as bytes: config.json, model.safetensors, metrics.json (written last)."""
    import hashlib

    from safetensors.torch import save

    files = {"config.json": json_bytes(config)}
    if model is not None:
        weights = save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
        files["model.safetensors"] = weights
        # Exports check the weights against this checksum (tampering, truncation).
        metrics = {**metrics, "weights_sha256": hashlib.sha256(weights).hexdigest()}
    files["metrics.json"] = json_bytes(metrics)
    return files


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    """Write each file atomically (temporary name, then rename), in the order given."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        tmp = folder / (name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, folder / name)


def save_trial(folder: Path, config: dict[str, Any], model: DynamicModel | None, metrics: dict[str, Any]) -> None:
    """Write config.json, model.safetensors and metrics.json into ``folder``."""
    write_files(folder, trial_files(config, model, metrics))


def json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")


def write_json(path: Path, data: Any) -> None:
    write_files(path.parent, {path.name: json_bytes(data)})
