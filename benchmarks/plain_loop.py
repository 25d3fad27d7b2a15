"""The baseline of the overhead benchmark: a trial's training written as a plain PyTorch loop.

Same model, data, seed, batches, optimiser and learning-rate schedule, layout (channels-last),
augmentation, steps, per-epoch validation and
final measurement as a dynsearch trial (trial.py: ``train_model`` then
``evaluate``, then the operating points a trial records of its model),
without Lightning, Ray, reporting or trial files. What a trial takes beyond
this loop is the framework's overhead.
"""
from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from dynsearch.dynamic import build_model
from dynsearch.measure.points import POINT_FRONT_OBJECTIVES, operating_points
from dynsearch.training.augment import augment_batch
from dynsearch.training.trial import evaluate


def plain_train(config: dict[str, Any], splits, threads: int = 1, keep_model: bool = False) -> tuple[float, dict[str, Any]]:
    """Train and measure the model a trial config describes, then record its operating points
    (the same work as a trial); return the wall seconds it took and the measured figures
    (``evaluate``'s: the trial's own when the training is the same), with ``train_s``, ``evaluate_s``
    and ``sweep_s`` (each part's seconds) and, with ``keep_model``, the trained ``model``."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    train = config["train"]
    torch.manual_seed(int(train["seed"]))
    model = build_model(config)
    model.component_macs()
    generator = torch.Generator().manual_seed(int(train["seed"]))
    train_loader = DataLoader(TensorDataset(splits.train_x, splits.train_y), batch_size=int(train["batch_size"]),
                              shuffle=True, generator=generator)
    val_loader = DataLoader(TensorDataset(splits.val_x, splits.val_y), batch_size=256)
    channels_last = bool(train.get("channels_last", False))
    if channels_last:  # as DynamicModule: before the optimizer holds the parameters
        model.to(memory_format=torch.channels_last)

    def layout(x):
        return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x

    augment, augment_generator = tuple(train.get("augment", ())), torch.Generator().manual_seed(int(train["seed"]))
    optimizer = torch.optim.Adam(model.parameters(), lr=float(train["lr"]))
    epochs = int(train["epochs"])
    total_steps, step = epochs * len(train_loader), 0
    cosine = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
              if train.get("lr_schedule", "constant") == "cosine" else None)
    for _ in range(epochs):
        model.train()
        for x, y in train_loader:
            model.set_training_progress(step / max(1, total_steps))
            if augment:
                x = augment_batch(x, augment, augment_generator)
            loss = model.training_loss(model(layout(x)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if cosine is not None:
                cosine.step()
            step += 1
        model.eval()
        with torch.no_grad():  # what the trial's validation_step computes
            for x, y in val_loader:
                out = model(layout(x))
                int((out.logits.argmax(1) == y).sum())
                float(out.trace.macs_per_sample(model.component_macs()).sum())
    model.to(memory_format=torch.contiguous_format)  # stored and measured contiguous, as train_model leaves it
    trained = time.perf_counter()
    metrics = evaluate(model, splits)
    sweep_started = time.perf_counter()
    operating_points(model, splits, metrics["measured_with"]["batch_size"], trained=metrics,
                     front_on=POINT_FRONT_OBJECTIVES)  # a trial records its operating points too
    done = time.perf_counter()
    timings = {"train_s": trained - started, "evaluate_s": sweep_started - trained, "sweep_s": done - sweep_started}
    return done - started, {**metrics, **timings, **({"model": model} if keep_model else {})}
