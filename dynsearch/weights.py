"""Loading trained weights: safetensors only, never a pickle.

A pickle checkpoint (``torch.save``) can run code when it is loaded, so it is
refused without being opened by an unpickler.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from dynsearch.errors import UserError

WEIGHTS_FILE = "model.safetensors"


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; anything else is a one-line UserError."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such weights file; pass a {WEIGHTS_FILE} that dynsearch wrote")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise UserError(
            f"{path}: not a safetensors file ({exc.__class__.__name__}); dynsearch loads weights only from "
            "safetensors, never pickle checkpoints: use the model.safetensors a dynsearch run wrote"
        ) from None


def load_trial_model(trial_dir: str | Path):
    """The trained model of a trial folder (``config.json`` + ``model.safetensors``), in eval mode."""
    from dynsearch.dynamic import build_model

    folder = Path(trial_dir)
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{config_path}: missing or corrupt ({exc.__class__.__name__}); pass a trial folder") from None
    model = build_model(config)
    state = load_weights(folder / WEIGHTS_FILE)
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise UserError(f"{folder / WEIGHTS_FILE}: does not match {config_path}; the trial folder is inconsistent") from None
    return model.eval()
