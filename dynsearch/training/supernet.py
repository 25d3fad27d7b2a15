"""Training a one-shot supernet (dynamic/supernet.py) with Lightning: the sandwich rule and in-place distillation.

Each step (BigNAS, Yu et al. 2020, arXiv 2003.11142) trains, on the same batch, the largest
sub-network, the smallest and ``supernet.sandwich`` random ones drawn from the recipe's own space
(an Optuna RandomSampler on the space's ``define``: the same configs a multi-trial search draws).
Every sampled backbone trains all of its exit heads (``Supernet.training_config``). The largest
learns from the labels (cross-entropy at its final classifier, plus ``exit_loss_weight`` times
each exit's); with ``distill`` the others learn the largest's final soft labels (KL divergence
from its detached softmax), at their final classifier and at their exits alike -- in-place
distillation. One Adam step per batch on the summed gradients.

A finished epoch is checkpointed into the run directory (``supernet/checkpoint.*``: the weights
as safetensors, Adam's state loaded back with ``torch.load(weights_only=True)``, the epoch and
step), so a killed run resumes losing at most the epoch it was in. The trained supernet is
``supernet/supernet.safetensors`` with ``supernet/supernet.json`` (its sha256, the epochs, the
largest and smallest sub-networks' validation accuracy after each epoch, seconds).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from dynsearch.dynamic.supernet import Supernet, build_supernet, calibrated_subnet, calibration_images, supernet_class
from dynsearch.errors import UserError
from dynsearch.measure.evaluate import MEASURE_BATCH_SIZE, measure
from dynsearch.run.files import (
    CHECKPOINT_OPTIMIZER, CHECKPOINT_RECORD, CHECKPOINT_WEIGHTS, SUPERNET_RECORD, SUPERNET_WEIGHTS, json_bytes,
    weights_bytes, write_durable,
)
from dynsearch.training.augment import augment_batch
from dynsearch.training.lightning import NonFiniteError

Report = Callable[[dict[str, Any]], None]
FORMAT = "dynsearch-supernet/1"


# -- the recipe's space, as the one-shot strategy asks it -------------------------------------------
class BoundTrial:
    """A stand-in Optuna trial answering every suggestion with the top (``high``) or bottom of its
    range: the space's ``define`` on it gives the largest or the smallest sub-network. Boolean choices
    (an exit head here or not) are answered True: the extremes train every head."""

    def __init__(self, high: bool, number: int = 0):
        self.high = high
        self.number = number
        self.params: dict[str, Any] = {}

    def _keep(self, name: str, value: Any) -> Any:
        self.params[name] = value
        return value

    def suggest_int(self, name, low, high, step=1, log=False):
        value = high if self.high else low
        if step and step > 1:
            value = low + ((value - low) // step) * step
        return self._keep(name, int(value))

    def suggest_float(self, name, low, high, step=None, log=False):
        return self._keep(name, float(high if self.high else low))

    def suggest_categorical(self, name, choices):
        choices = list(choices)
        if all(isinstance(c, bool) for c in choices):
            return self._keep(name, True)
        if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in choices):
            return self._keep(name, max(choices) if self.high else min(choices))
        return self._keep(name, choices[-1] if self.high else choices[0])


class PinnedTrial:
    """An Optuna trial whose parameters named in ``fixed`` are answered without asking it: the training
    settings a supernet fixed, which an evaluation-only search cannot change."""

    def __init__(self, trial, fixed: dict[str, Any]):
        self._trial = trial
        self._fixed = fixed

    def __getattr__(self, name):
        return getattr(self._trial, name)

    def _ask(self, method: str, name: str, *args, **kwargs):
        if name in self._fixed:
            return self._fixed[name]
        return getattr(self._trial, method)(name, *args, **kwargs)

    def suggest_int(self, name, *args, **kwargs):
        return self._ask("suggest_int", name, *args, **kwargs)

    def suggest_float(self, name, *args, **kwargs):
        return self._ask("suggest_float", name, *args, **kwargs)

    def suggest_categorical(self, name, *args, **kwargs):
        return self._ask("suggest_categorical", name, *args, **kwargs)


class OneShotSpace:
    """The recipe's search space for a one-shot search: ``define(trial)`` is the config a multi-trial
    trial of the recipe would get, with the supernet's training settings (``training_params``) pinned."""

    def __init__(self, recipe, shape):
        from dynsearch.spaces import get_space

        self.recipe, self.shape = recipe, shape
        self.space = get_space(recipe.space)
        declared = supernet_class(recipe.space).training_params
        self.fixed = {name: getattr(recipe.supernet, field) for name, field in declared.items()}

    def define(self, trial) -> dict[str, Any]:
        return self.space.define(PinnedTrial(trial, self.fixed), self.recipe, self.shape)

    def bound(self, high: bool) -> dict[str, Any]:
        return self.define(BoundTrial(high))

    def build(self) -> Supernet:
        return build_supernet(self.recipe.space, self.bound(True), self.bound(False))


def calibration_of(recipe, splits) -> torch.Tensor:
    return calibration_images(splits.train_x, recipe.supernet.calibration_images, recipe.seed)


class SupernetModule(pl.LightningModule):
    """The sandwich rule over a Supernet (see the module docstring); validation after each epoch measures
    the largest and the smallest sub-network (batch-norm recomputed) on the validation split."""

    def __init__(self, space: OneShotSpace, supernet: Supernet, recipe, splits, start_epoch: int = 0,
                 start_step: int = 0):
        super().__init__()
        self.space = space
        self.supernet = supernet
        self.recipe = recipe
        self.spec = recipe.supernet
        self.splits = splits
        self.start_epoch = start_epoch
        self.start_step = start_step
        self.calibration = calibration_of(recipe, splits)
        self._augment_generator = torch.Generator().manual_seed(recipe.seed)
        self._random = None
        self.history: list[dict[str, Any]] = []
        self.optimizer_state: dict | None = None

    # -- sampling --------------------------------------------------------------------------------
    def _sampler_study(self):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        seed = self.recipe.seed * 1_000_003 + self.start_epoch + self.current_epoch
        return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))

    def on_train_epoch_start(self):
        self._random = self._sampler_study()  # a fresh in-memory study per epoch: its trials do not pile up

    def sandwich(self) -> list[dict[str, Any]]:
        """This step's sub-networks: the largest first, the smallest, then the random ones."""
        randoms = [self.space.define(self._random.ask()) for _ in range(self.spec.sandwich)]
        return [self.supernet.training_config(c) for c in (self.supernet.largest, self.supernet.smallest, *randoms)]

    # -- the step --------------------------------------------------------------------------------
    def heads_loss(self, head_logits: list[torch.Tensor], target: torch.Tensor | None,
                   teacher: torch.Tensor | None) -> torch.Tensor:
        """Final classifier's loss plus ``exit_loss_weight`` times each exit's: cross-entropy on the labels,
        or (``teacher``: the largest's detached final log-probabilities) KL(teacher || head)."""
        def one(logits):
            if teacher is None:
                return F.cross_entropy(logits, target)
            return F.kl_div(logits.log_softmax(dim=1), teacher, reduction="batchmean", log_target=True)

        *exits, final = head_logits
        return one(final) + self.spec.exit_loss_weight * sum((one(e) for e in exits), final.new_zeros(()))

    def training_step(self, batch, _index):
        x, y = batch
        if self.recipe.augment:
            x = augment_batch(x, self.recipe.augment, self._augment_generator)
        total = x.new_zeros(())
        teacher = None
        for k, config in enumerate(self.sandwich()):
            out = self.supernet.run(config, x)
            if k == 0:
                loss = self.heads_loss(out.head_logits, y, None)
                if self.spec.distill:
                    teacher = out.head_logits[-1].detach().log_softmax(dim=1)
            else:
                loss = self.heads_loss(out.head_logits, y, teacher)
            if not torch.isfinite(loss):
                raise NonFiniteError(f"supernet training loss is {float(loss)} at epoch {self.epoch}")
            total = total + loss
        return total

    @property
    def epoch(self) -> int:
        return self.start_epoch + self.current_epoch

    # -- validation: the extremes, batch-norm recomputed -------------------------------------------
    def validation_step(self, batch, _index):
        pass  # measured whole in on_validation_epoch_end

    @torch.no_grad()
    def extremes(self) -> dict[str, float]:
        figures = {}
        for name, config in (("largest", self.supernet.largest), ("smallest", self.supernet.smallest)):
            model = calibrated_subnet(self.supernet, config, self.calibration, MEASURE_BATCH_SIZE)
            result = measure(model, self.splits.val_x, self.splits.val_y, batch_size=MEASURE_BATCH_SIZE)
            figures[f"{name}_accuracy"] = result["accuracy"]
            figures[f"{name}_macs"] = result["macs"]
        return figures

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            return
        was_training = self.supernet.training
        figures = self.extremes()
        self.supernet.train(was_training)
        self.log_dict({f"val_{k}": v for k, v in figures.items()})

    # -- optimisation ----------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.supernet.parameters(), lr=self.spec.lr)
        if self.optimizer_state is not None:
            optimizer.load_state_dict(self.optimizer_state)
        if self.recipe.lr_schedule == "constant":
            return optimizer
        total = max(1, self.recipe.supernet.epochs * self.steps_per_epoch())
        start = self.start_step

        def factor(step: int) -> float:  # cosine to 0 over the whole training, resumed where it stopped
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (start + step) / total)))

        for group in optimizer.param_groups:
            group.setdefault("initial_lr", self.spec.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.splits.train_x) / self.recipe.batch_size)


class EpochCheckpoint(pl.Callback):
    """After each epoch (its validation included): the checkpoint files, the history, the report."""

    def __init__(self, folder: Path, report: Report | None):
        self.folder = folder
        self.report = report
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer, module: SupernetModule):
        metrics = {k[len("val_"):]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
        seconds = time.perf_counter() - self.started
        self.started = time.perf_counter()
        entry = {"epoch": module.epoch + 1, "seconds": round(seconds, 3), **metrics}
        module.history.append(entry)
        save_checkpoint(self.folder, module, trainer.optimizers[0])
        if self.report is not None:
            self.report({**entry, "final": False})


def save_checkpoint(folder: Path, module: SupernetModule, optimizer) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    write_durable(folder / CHECKPOINT_WEIGHTS, weights_bytes(module.supernet))
    write_durable(folder / CHECKPOINT_OPTIMIZER, buffer.getvalue())
    record = {"format": FORMAT, "epochs_done": module.epoch + 1, "steps_done": module.start_step + module.global_step,
              "history": module.history}
    write_durable(folder / CHECKPOINT_RECORD, json_bytes(record))  # last: it says the other two are whole


def load_checkpoint(folder: Path, supernet: Supernet) -> tuple[dict[str, Any], dict | None]:
    """The checkpoint record and Adam's state, the weights loaded into ``supernet``; ({}, None) without one."""
    from safetensors.torch import load_file

    record_path = folder / CHECKPOINT_RECORD
    if not record_path.is_file():
        return {}, None
    fix = f"delete {folder} to train the supernet from the start"
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        supernet.load_state_dict(load_file(str(folder / CHECKPOINT_WEIGHTS)))
        optimizer = torch.load(folder / CHECKPOINT_OPTIMIZER, weights_only=True)
    except Exception as exc:  # a damaged checkpoint: say which and how to start over
        raise UserError(f"supernet checkpoint in {folder}: unreadable ({exc.__class__.__name__}); {fix}") from None
    if record.get("format") != FORMAT:
        raise UserError(f"supernet checkpoint in {folder}: not a {FORMAT} checkpoint; {fix}")
    return record, optimizer


def train_supernet(recipe, splits, folder: Path, report: Report | None = None, accelerator: str = "cpu") -> dict:
    """Train (or finish training) the recipe's supernet; write ``supernet.safetensors`` and ``supernet.json``
    into ``folder``; return the record."""
    from types import SimpleNamespace

    shape = SimpleNamespace(input_shape=tuple(splits.input_shape), num_classes=int(splits.num_classes))
    torch.manual_seed(recipe.seed)
    space = OneShotSpace(recipe, shape)
    supernet = space.build()
    record, optimizer_state = load_checkpoint(folder, supernet)
    start_epoch, start_step = int(record.get("epochs_done", 0)), int(record.get("steps_done", 0))
    module = SupernetModule(space, supernet, recipe, splits, start_epoch, start_step)
    module.history = list(record.get("history", []))
    module.optimizer_state = optimizer_state
    started = time.time()
    remaining = recipe.supernet.epochs - start_epoch
    if remaining > 0:
        generator = torch.Generator().manual_seed(recipe.seed * 7919 + start_epoch)
        loader = DataLoader(TensorDataset(splits.train_x, splits.train_y), batch_size=recipe.batch_size,
                            shuffle=True, generator=generator)
        tiny_val = DataLoader(TensorDataset(splits.val_x[:1], splits.val_y[:1]), batch_size=1)
        trainer = pl.Trainer(
            max_epochs=remaining, accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
            callbacks=[EpochCheckpoint(folder, report)], deterministic=False,
        )
        trainer.fit(module, loader, tiny_val)  # validation measures the extremes whole (on_validation_epoch_end)
    supernet.cpu().eval()
    weights = weights_bytes(supernet)
    result = {
        "format": FORMAT,
        "space": recipe.space,
        "largest": supernet.largest,
        "smallest": supernet.smallest,
        "epochs": recipe.supernet.epochs,
        "settings": recipe.supernet.model_dump(),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "params": int(sum(p.numel() for p in supernet.parameters())),
        "history": module.history,
        "train_seconds": round(sum(e["seconds"] for e in module.history), 3),
        "this_run_seconds": round(time.time() - started, 3),
    }
    folder.mkdir(parents=True, exist_ok=True)
    write_durable(folder / SUPERNET_WEIGHTS, weights)
    write_durable(folder / SUPERNET_RECORD, json_bytes(result))  # last: the supernet is whole
    return result
