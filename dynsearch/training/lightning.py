"""Lightning pieces of a trial, at module level so they can be imported and subclassed.

- ``DynamicModule``: the LightningModule around a DynamicModel (training loss,
  eval-mode validation with real per-sample decisions; logs ``val_accuracy``
  and ``val_macs`` through ``self.log`` each epoch).
- ``ReportCallback``: reports each epoch's validation metrics (Lightning's
  callback metrics) through a ``report`` function (Ray Tune's, in a search).
- ``GateCallback``: holds this node's timing gate shared during each training
  epoch, so that no model is timed while a trial trains (training/timing.py).
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Callable

import pytorch_lightning as pl
import torch

from dynsearch.dynamic import DynamicModel
from dynsearch.recipe import LR_SCHEDULES
from dynsearch.training.augment import augment_batch

Report = Callable[[dict[str, Any]], None]

# Lightning sets its loggers to INFO when imported, so this runs after the import.
for _name in ("pytorch_lightning", "lightning_fabric"):
    logging.getLogger(_name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")


class NonFiniteError(RuntimeError):
    """A loss or metric came out NaN or infinite."""


class DynamicModule(pl.LightningModule):
    """A DynamicModel trained with Adam at learning rate ``lr``; validation runs in eval mode.

    ``lr_schedule``: ``constant``, or ``cosine`` (annealed to 0 over the fit's steps, stepped each batch).
    ``augment``: names from ``training/augment.py`` applied to each training batch (seeded by ``augment_seed``).
    ``channels_last``: the model's 4-D weights and each 4-D batch are in channels-last layout during the
    fit (a speed choice: the values are the same); ``train_model`` makes the weights contiguous after.
    """

    def __init__(self, model: DynamicModel, lr: float, lr_schedule: str = "constant", channels_last: bool = False,
                 augment=(), augment_seed: int = 0):
        super().__init__()
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {lr_schedule!r}; use one of {', '.join(LR_SCHEDULES)}")
        self.model = model
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.channels_last = bool(channels_last)
        self.augment = tuple(augment)
        self._augment_generator = torch.Generator().manual_seed(int(augment_seed))
        if self.channels_last:  # before any optimizer holds the parameters
            self.model.to(memory_format=torch.channels_last)
        self._val_correct = 0
        self._val_macs = 0.0
        self._val_count = 0

    def _layout(self, x):
        if self.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def on_train_batch_start(self, _batch, _index):
        # Multi-stage schemes (two-stage exits, SkipNet's RL stage) switch on this.
        self.model.set_training_progress(self.global_step / max(1, self.trainer.estimated_stepping_batches))

    def training_step(self, batch, _index):
        x, y = batch
        if self.augment:
            x = augment_batch(x, self.augment, self._augment_generator)
        loss = self.model.training_loss(self.model(self._layout(x)), y)
        if not torch.isfinite(loss):
            raise NonFiniteError(f"training loss is {float(loss)} at epoch {self.current_epoch}")
        return loss

    def on_validation_epoch_start(self):
        self._val_correct, self._val_macs, self._val_count = 0, 0.0, 0

    def validation_step(self, batch, _index):
        x, y = batch
        out = self.model(self._layout(x))  # eval mode: real per-sample decisions
        self._val_correct += int((out.logits.argmax(1) == y).sum())
        self._val_macs += float(out.trace.macs_per_sample(self.model.component_macs()).sum())
        self._val_count += len(y)

    def on_validation_epoch_end(self):
        # Exact over the split (counts, not a mean of batch means); Lightning keeps them as callback metrics.
        self.log_dict({f"val_{name}": value for name, value in self.validation_metrics().items()})

    def validation_metrics(self) -> dict[str, float]:
        """This epoch's validation accuracy and mean MACs (NaN before any validation)."""
        if not self._val_count:
            return {"accuracy": float("nan"), "macs": float("nan")}
        return {"accuracy": self._val_correct / self._val_count, "macs": self._val_macs / self._val_count}

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        if self.lr_schedule == "constant":
            return optimizer
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}


class ReportCallback(pl.Callback):
    """Reports each epoch's validation metrics through ``report``.

    Every objective is named in each report (Ray checks that); those not
    measured per epoch (latency, params) are NaN there. Only the final report
    (``final: True``, sent by the trainable) reaches the study.
    """

    def __init__(self, report: Report, objectives: list[str] = ()):
        self.report = report
        self.objectives = list(objectives)

    def on_train_epoch_end(self, trainer, module):  # after the epoch's validation
        metrics = {name: float("nan") for name in self.objectives}
        metrics.update({name[len("val_"):]: float(value) for name, value in trainer.callback_metrics.items()
                        if name.startswith("val_")})
        self.report({**metrics, "epoch": trainer.current_epoch, "final": False})


class GateCallback(pl.Callback):
    """Holds this node's CPU gate shared during each training epoch (timing waits for it)."""

    def __init__(self, trial: str):
        from dynsearch.training.timing import node_gate

        self.trial = trial
        self.gate = node_gate()

    def on_train_epoch_start(self, trainer, module):
        import ray

        ray.get(self.gate.enter_training.remote(self.trial))

    def on_train_epoch_end(self, trainer, module):
        import ray

        ray.get(self.gate.leave_training.remote(self.trial))

    def on_exception(self, trainer, module, exception):
        import ray

        ray.get(self.gate.leave_training.remote(self.trial))
