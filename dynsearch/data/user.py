"""A user's own dataset: a Python callable, a ``.npz`` / ``.pt`` tensor file, or (with
torchvision, the optional extra ``vision``) a torchvision dataset or image folder on disk.

Accepted forms (the callable's return value, or a file's arrays):

- the whole dataset, ``(x, y)`` or ``{"x": x, "y": y}``: dynsearch splits it into
  train / validation / test, stratified and seeded (``split_seed``, ``val_fraction``,
  ``test_fraction``);
- the three splits, ``{"train": (x, y), "val": (x, y), "test": (x, y)}`` or flat
  ``train_x, train_y, val_x, val_y, test_x, test_y`` (how a ``.npz`` holds them).

``x`` is a numeric array / tensor ``[N, ...]`` (used as float32, as given: no
scaling), ``y`` an integer array ``[N]`` of labels 0..K-1. In place of an
``(x, y)`` pair a torch ``Dataset`` of ``(x, y)`` items is read into tensors.
``.pt`` files are read with ``torch.load(weights_only=True)`` (never unpickled)
and must hold those tensors in a dict. Nothing is downloaded unless
``download: true`` is set for a torchvision dataset.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynsearch.data.splits import Splits, split_arrays
from dynsearch.errors import UserError
from dynsearch.user_code import call_user

SOURCES = ("callable", "file", "torchvision", "image_folder")
_SPLIT_KEYS = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
_FORMS = ("(x, y), {'x': x, 'y': y}, {'train': (x, y), 'val': (x, y), 'test': (x, y)} "
          "or train_x/train_y/val_x/val_y/test_x/test_y arrays")


def source_of(data: dict[str, Any]) -> str | None:
    """Which user source a data section names (None: a built-in dataset)."""
    return next((key for key in SOURCES if data.get(key) is not None), None)


def describe(data: dict[str, Any]) -> str:
    source = source_of(data)
    return f"user data ({source}: {data[source]})"


def load_user_splits(data: dict[str, Any]):
    """The Splits of a user data section (see the module docstring for the accepted forms)."""
    source = source_of(data)
    where = f"data.{source} {data[source]!r}"
    if source == "callable":
        raw = call_user(data["callable"], data.get("module_path"), "data.callable")
    elif source == "file":
        raw = _read_file(Path(data["file"]), where)
    else:
        raw = _read_torchvision(data, where)
    arrays = _as_arrays(raw, where)
    if "x" in arrays:
        arrays = _split(arrays["x"], arrays["y"], data, where)
    return _checked_splits(arrays, where)


def _read_file(path: Path, where: str) -> Any:
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {key: npz[key] for key in npz.files}
        except (OSError, ValueError) as exc:
            raise UserError(f"{where}: not a readable .npz of plain arrays ({exc.__class__.__name__}); "
                            "write it with numpy.savez") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses any pickled object that is not a tensor or container
        raise UserError(f"{where}: not a .pt file of tensors loadable with weights_only=True "
                        f"({exc.__class__.__name__}); save a dict of tensors with torch.save") from None


def _as_arrays(raw: Any, where: str) -> dict[str, Any]:
    """``{"x", "y"}`` (whole dataset) or the six split arrays, from any accepted form."""
    if isinstance(raw, torch.utils.data.Dataset):
        raw = _read_dataset(raw, where)
    if isinstance(raw, (tuple, list)) and len(raw) == 2:
        return {"x": raw[0], "y": raw[1]}
    if isinstance(raw, dict):
        if {"x", "y"} <= raw.keys():
            return {"x": raw["x"], "y": raw["y"]}
        if set(_SPLIT_KEYS) <= raw.keys():
            return {key: raw[key] for key in _SPLIT_KEYS}
        if {"train", "val", "test"} <= raw.keys():
            arrays = {}
            for split in ("train", "val", "test"):
                pair = raw[split]
                if isinstance(pair, torch.utils.data.Dataset):
                    pair = _read_dataset(pair, f"{where} ({split})")
                if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                    raise UserError(f"{where}: split {split!r} is {type(pair).__name__}, not an (x, y) pair; "
                                    "give (x, y) arrays or a Dataset of (x, y) items")
                arrays[f"{split}_x"], arrays[f"{split}_y"] = pair
            return arrays
        raise UserError(f"{where}: gave keys {sorted(map(str, raw))[:8]}; give {_FORMS}")
    raise UserError(f"{where}: gave {type(raw).__name__}; give {_FORMS}")


def _read_dataset(dataset, where: str):
    """A map-style Dataset of ``(x, y)`` items as stacked ``(x, y)`` tensors."""
    try:
        items = [dataset[i] for i in range(len(dataset))]
        xs = torch.stack([torch.as_tensor(np.asarray(item[0])) for item in items])
        ys = torch.as_tensor([int(item[1]) for item in items])
    except Exception as exc:
        raise UserError(f"{where}: its Dataset could not be read into (x, y) tensors ({exc.__class__.__name__}: "
                        f"{str(exc)[:200]}); items must be (x, y) of one shape and an integer label") from None
    return xs, ys


def _tensor(value: Any, name: str, where: str) -> torch.Tensor:
    try:
        return torch.as_tensor(np.asarray(value)) if not isinstance(value, torch.Tensor) else value
    except Exception:
        raise UserError(f"{where}: {name} is {type(value).__name__}, not a numeric array; "
                        "give numpy arrays or tensors") from None


def _split(x, y, data: dict[str, Any], where: str) -> dict[str, Any]:
    x, y = _check_pair(x, y, "x", where), _tensor(y, "y", where)
    _check_labels(y, "y", len(x), where)
    try:
        parts = split_arrays(x.numpy(), y.numpy(), int(data["split_seed"]), float(data["val_fraction"]),
                             float(data["test_fraction"]))
    except ValueError as exc:  # e.g. a class too small to stratify
        raise UserError(f"{where}: cannot split it stratified ({str(exc)[:200]}); "
                        "give more samples per class or the train/val/test splits yourself") from None
    return dict(zip(_SPLIT_KEYS, parts))


def _check_pair(x, y, name: str, where: str) -> torch.Tensor:
    x = _tensor(x, name, where)
    if x.dtype == torch.bool or not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int8, torch.int16,
                                                                          torch.int32, torch.int64)):
        raise UserError(f"{where}: {name} has dtype {x.dtype}; give numeric inputs")
    if x.dim() < 2:
        raise UserError(f"{where}: {name} has shape {tuple(x.shape)}; give inputs [N, features...] "
                        "(one row per sample)")
    x = x.float()
    if not torch.isfinite(x).all():
        raise UserError(f"{where}: {name} holds NaN or infinite values; clean the data")
    return x


def _check_labels(y: torch.Tensor, name: str, count: int, where: str) -> None:
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise UserError(f"{where}: {name} has dtype {y.dtype}, not integer class labels; "
                        "give integer labels 0..K-1 (e.g. y.astype(int))")
    if y.dim() != 1:
        raise UserError(f"{where}: {name} has shape {tuple(y.shape)}; give one label per sample, shape [N]")
    if len(y) != count:
        raise UserError(f"{where}: {count} inputs but {len(y)} labels in {name}; give one label per input")
    if len(y) == 0:
        raise UserError(f"{where}: {name} is empty; give at least one sample per split")
    if int(y.min()) < 0:
        raise UserError(f"{where}: {name} holds negative labels; give labels 0..K-1")


def _checked_splits(arrays: dict[str, Any], where: str):
    tensors: dict[str, torch.Tensor] = {}
    for split in ("train", "val", "test"):
        x = _check_pair(arrays[f"{split}_x"], arrays[f"{split}_y"], f"{split}_x", where)
        y = _tensor(arrays[f"{split}_y"], f"{split}_y", where)
        _check_labels(y, f"{split}_y", len(x), where)
        tensors[f"{split}_x"], tensors[f"{split}_y"] = x.contiguous(), y.long().contiguous()
    shapes = {split: tuple(tensors[f"{split}_x"].shape[1:]) for split in ("train", "val", "test")}
    if len(set(shapes.values())) > 1:
        raise UserError(f"{where}: the splits' inputs differ in shape {shapes}; give one input shape")
    num_classes = 1 + max(int(tensors[f"{s}_y"].max()) for s in ("train", "val", "test"))
    if num_classes < 2:
        raise UserError(f"{where}: every label is 0; give at least two classes")
    return Splits(**tensors, input_shape=shapes["train"], num_classes=num_classes)


def _read_torchvision(data: dict[str, Any], where: str):
    """A torchvision dataset already under ``root`` (train part + test part), or an image folder."""
    try:
        import torchvision  # the optional extra: pip install 'dynsearch[vision]'
    except Exception as exc:  # absent, or a build that does not match the installed torch
        raise UserError(f"{where}: needs torchvision, which cannot be imported ({exc.__class__.__name__}); "
                        "install it with pip install 'dynsearch[vision]' (a build matching your torch)") from None
    to_tensor = torchvision.transforms.ToTensor()
    if data.get("image_folder") is not None:
        return _read_dataset(torchvision.datasets.ImageFolder(data["image_folder"], transform=to_tensor), where)
    name = data["torchvision"]
    dataset_class = getattr(torchvision.datasets, name, None)
    if not isinstance(dataset_class, type):
        raise UserError(f"{where}: torchvision.datasets has no dataset {name!r}; use a class name such as MNIST")
    try:
        parts = [dataset_class(data["root"], train=train, download=bool(data.get("download")), transform=to_tensor)
                 for train in (True, False)]
    except TypeError:
        raise UserError(f"{where}: {name} has no train/test split argument; save it as .npz or use a callable") from None
    except RuntimeError as exc:  # torchvision: "Dataset not found. You can use download=True to download it"
        raise UserError(f"{where}: not found under {data['root']} ({str(exc)[:120]}); put the files there "
                        "or set data.download: true") from None
    from sklearn.model_selection import train_test_split

    (train_x, train_y), (test_x, test_y) = (_read_dataset(p, where) for p in parts)
    # The validation split is carved from the train part, stratified and seeded; the test part stays.
    train_x, val_x, train_y, val_y = train_test_split(
        train_x.numpy(), train_y.numpy(), test_size=float(data["val_fraction"]), random_state=int(data["split_seed"]),
        stratify=train_y.numpy(),
    )
    return dict(zip(_SPLIT_KEYS, (train_x, train_y, val_x, val_y, test_x, test_y)))
