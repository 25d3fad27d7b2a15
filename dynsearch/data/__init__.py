"""Dataset registry. Every dataset is made or read locally: nothing is downloaded.

The embedded default is scikit-learn's bundled 8x8 digits (1,797 images);
``marked-majority`` is a seeded synthetic sequence-classification task
generated on the fly (for Transformer backbones); ``mnist1d`` is MNIST-1D
(Greydanus 2020) generated locally with ``mnist1d.data.make_dataset`` (its
``get_dataset`` downloads, so it is never called); ``parity`` is the parity
task of ACT (Graves 2016), seeded; ``fashion-mnist`` is read from its IDX files on disk
(data/fashion_mnist.py: the Debian package's folder, ``data.root`` or $DYNSEARCH_FASHION_MNIST), with its
official test split. A user's own data (a callable, an .npz / .pt
file, torchvision) is read by data/user.py through ``load_data``. Splits into train / validation / test are stratified and fixed by the seed.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from dynsearch.data import fashion_mnist
from dynsearch.data.splits import Splits, split_arrays, train_subset_of
from dynsearch.data.user import describe, load_user_splits, source_of


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    input_shape: tuple[int, ...]
    num_classes: int
    load_arrays: Callable[[], tuple[np.ndarray, np.ndarray]]
    # How the arrays were made from the raw data: recorded in the model card so that a user of the
    # exported model feeds it inputs made the same way.
    preprocessing: str | None = None
    # A dataset with official splits: (split_seed, val_fraction, root) -> the six split arrays;
    # test_fraction does not apply. None: load_arrays is split by split_arrays.
    load_split_arrays: Callable[..., tuple] | None = None
    takes_root: bool = False  # reads its files from data.root when given


DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo) -> None:
    DATASETS[info.name] = info


def _digits_arrays():
    """scikit-learn's digits: its bundled CSV read directly (importing sklearn.datasets takes
    ~1.5 s, a fifth of a search's start-up); ``load_digits`` where that file is not found."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec else []
    csv = [Path(folder) / "datasets" / "data" / "digits.csv.gz" for folder in locations]
    if csv and csv[0].is_file():
        table = np.loadtxt(csv[0], delimiter=",")  # 64 pixel columns, then the label
        pixels, labels = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    else:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        pixels, labels = bunch.images, bunch.target
    images = pixels.astype(np.float32) / 16.0  # pixel values 0..16
    return images[:, None, :, :], labels.astype(np.int64)


register_dataset(
    DatasetInfo(
        "digits",
        "scikit-learn's bundled 8x8 handwritten digits, 1,797 images, 10 classes",
        (1, 8, 8),
        10,
        _digits_arrays,
        preprocessing="pixel values 0..16 / 16 as float32, shape [N, 1, 8, 8]",
    )
)

register_dataset(
    DatasetInfo(
        "fashion-mnist",
        "Fashion-MNIST (Xiao et al. 2017), 28x28 greyscale clothing images read from the IDX files on disk: "
        "60,000 training (validation carved from them) + the official 10,000 test, 10 classes",
        (1, 28, 28),
        10,
        fashion_mnist.fashion_mnist_arrays,
        preprocessing=fashion_mnist.PREPROCESSING,
        load_split_arrays=fashion_mnist.fashion_mnist_splits,
        takes_root=True,
    )
)


MARKER_TOKEN, NUM_TOKENS, NUM_LABELS = 7, 8, 4


def marked_majority_arrays(count: int = 2400, length: int = 16, seed: int = 0, lean_max: float = 0.5):
    """Sequences of ``length`` one-hot tokens; the label is the majority label
    token (0-3) among the tokens *after* the single marker token (7).

    Tokens 4-6 are filler. Before the marker the tokens lean towards a
    distractor label, so counting the whole sequence misleads: a model must
    find the marker (attention), then count after it. How strongly the part
    after the marker leans towards its label varies per sequence, so some
    sequences are easy and others are decided by one token. Ties are dropped.
    Deterministic in ``seed``; nothing is downloaded.
    """
    rng = np.random.default_rng(seed)
    tokens_out, labels = [], []
    while len(labels) < count:
        label, distractor = rng.choice(NUM_LABELS, size=2, replace=False)
        marker = int(rng.integers(2, length // 2 + 1))
        tokens = np.empty(length, dtype=np.int64)
        for lo, hi, lean_to, lean in ((0, marker, distractor, 0.4), (marker + 1, length, label, rng.uniform(0.0, lean_max))):
            probs = np.full(MARKER_TOKEN, (1.0 - lean) / MARKER_TOKEN)
            probs[lean_to] += lean
            tokens[lo:hi] = rng.choice(MARKER_TOKEN, size=hi - lo, p=probs)
        tokens[marker] = MARKER_TOKEN
        after = tokens[marker + 1 :]
        votes = np.bincount(after[after < NUM_LABELS], minlength=NUM_LABELS)
        if (votes == votes.max()).sum() > 1:
            continue  # a tie has no label
        tokens_out.append(tokens)
        labels.append(int(votes.argmax()))
    one_hot = np.eye(NUM_TOKENS, dtype=np.float32)[np.stack(tokens_out)]
    return one_hot, np.asarray(labels, dtype=np.int64)


register_dataset(
    DatasetInfo(
        "marked-majority",
        "synthetic sequences (seeded, generated): majority label token after a marker; 2,400 x 16 tokens, 4 classes",
        (16, NUM_TOKENS),
        NUM_LABELS,
        marked_majority_arrays,
        preprocessing="one-hot tokens as float32, shape [N, 16, 8] (token 7 the marker)",
    )
)


def _mnist1d_arrays():
    """MNIST-1D's arrays, copies of the one generation this process makes."""
    x, y = _mnist1d_generated()
    return x.copy(), y.copy()


@functools.lru_cache(maxsize=1)
def _mnist1d_generated():
    """make_dataset takes seconds (about 10 on one busy core) and gives the same arrays every time (its
    seed is fixed by the package): a process that loads MNIST-1D again (export, operating points,
    several recipes) generates it once."""
    from mnist1d.data import get_dataset_args, make_dataset

    made = make_dataset(get_dataset_args())  # the standard 4,000 + 1,000 samples, seed fixed by the package
    x = np.concatenate([made["x"], made["x_test"]]).astype(np.float32)
    y = np.concatenate([made["y"], made["y_test"]]).astype(np.int64)
    return x, y


register_dataset(
    DatasetInfo(
        "mnist1d",
        "MNIST-1D (Greydanus 2020), generated locally with make_dataset: 5,000 signals of length 40, 10 classes",
        (40,),
        10,
        _mnist1d_arrays,
        preprocessing="the signals as make_dataset gives them, float32, shape [N, 40] (no scaling)",
    )
)


PARITY_BITS = 8  # ACT used 64; 8 (the issue allows 8-16) learns on 2 CPU cores in minutes
PARITY_COUNT = 20000


def parity_arrays(count: int = PARITY_COUNT, bits: int = PARITY_BITS, seed: int = 0):
    """The parity task of ACT (Graves 2016, section 3.1): a vector of ``bits``
    entries, a random number (1..bits) of them set to +1 or -1 at random
    positions, the rest 0; the label is 1 when the number of +1 entries is odd.
    Deterministic in ``seed``; generated, nothing downloaded."""
    rng = np.random.default_rng(seed)
    x = np.zeros((count, bits), dtype=np.float32)
    for row in x:
        nonzero = int(rng.integers(1, bits + 1))
        where = rng.choice(bits, size=nonzero, replace=False)
        row[where] = rng.choice([-1.0, 1.0], size=nonzero)
    y = ((x == 1.0).sum(axis=1) % 2).astype(np.int64)
    return x, y


register_dataset(
    DatasetInfo(
        "parity",
        f"ACT's parity task (Graves 2016), seeded: {PARITY_COUNT:,} vectors of {PARITY_BITS} entries in {{-1, 0, 1}}, 2 classes",
        (PARITY_BITS,),
        2,
        parity_arrays,
        preprocessing=f"entries -1 / 0 / +1 as float32, shape [N, {PARITY_BITS}]",
    )
)


def load_splits(name: str, split_seed: int, val_fraction: float = 0.2, test_fraction: float = 0.2,
                root: str | None = None, train_subset: int | None = None) -> Splits:
    """Load dataset ``name`` and split it deterministically from ``split_seed``.

    A dataset with official splits (fashion-mnist) keeps its test split and carves validation
    (``val_fraction`` of its training part) from the rest; ``test_fraction`` does not apply.
    ``root``: the folder a dataset that reads files takes them from. ``train_subset``: keep that
    many training samples (stratified, seeded by ``split_seed``); validation and test are unchanged.
    """
    info = DATASETS[name]
    if info.load_split_arrays is not None:
        parts = info.load_split_arrays(split_seed, val_fraction, root)
    else:
        x, y = info.load_arrays()
        parts = split_arrays(x, y, split_seed, val_fraction, test_fraction)
    if train_subset is not None:
        parts = (*train_subset_of(parts[0], parts[1], train_subset, split_seed, f"data {name!r}"), *parts[2:])
    return Splits(*(torch.from_numpy(np.ascontiguousarray(part)) for part in parts), info.input_shape,
                  info.num_classes)


def load_data(data: dict[str, Any] | Any) -> Splits:
    """The splits a recipe's ``data`` section (a DataSpec or its dict) describes: a built-in
    dataset by ``name``, or the user's own (callable, file, torchvision; see user_data.py)."""
    if not isinstance(data, dict):
        data = data.model_dump()
    if source_of(data) is not None:
        splits = load_user_splits(data)
        if data.get("train_subset") is not None:
            x, y = train_subset_of(splits.train_x.numpy(), splits.train_y.numpy(), int(data["train_subset"]),
                                   int(data["split_seed"]), describe(data))
            splits.train_x, splits.train_y = torch.from_numpy(x), torch.from_numpy(y)
        return splits
    subset = data.get("train_subset")
    return load_splits(data["name"], int(data["split_seed"]), float(data["val_fraction"]), float(data["test_fraction"]),
                       root=data.get("root"), train_subset=None if subset is None else int(subset))


# Keys a model card adds to a recipe's data section (card.py): not part of what the data is.
_CARD_KEYS = ("description", "input_shape", "num_classes", "preprocessing")


def cached_splits(data: dict[str, Any] | Any) -> Splits:
    """``load_data`` for a recipe's data section (a DataSpec) or a card's (its dict), cached: exports
    and operating points measure several models on the same data."""
    if not isinstance(data, dict):
        data = data.model_dump()
    key = {k: v for k, v in data.items() if k not in _CARD_KEYS}
    if source_of(key) is None:
        key = {k: key.get(k) for k in ("name", "split_seed", "val_fraction", "test_fraction", "root", "train_subset")}
    return _cached_splits(json.dumps(key, sort_keys=True))


@functools.lru_cache(maxsize=4)
def _cached_splits(data_json: str) -> Splits:
    return load_data(json.loads(data_json))
