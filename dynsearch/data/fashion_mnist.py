"""Fashion-MNIST (Xiao et al. 2017) read from its four IDX files on disk; never downloaded.

Where the files are looked up, first found wins: the recipe's ``data.root``, the folder named by
the environment variable ``DYNSEARCH_FASHION_MNIST``, then the Debian package's folder
(``apt-get install dataset-fashion-mnist``: /usr/share/datasets/fashion-mnist). Each file may be
gzipped (``train-images-idx3-ubyte.gz``, as the package and the original site ship them) or not
(``train-images-idx3-ubyte``, as torchvision's ``raw`` folder holds them).

The official 10,000-image test set is the test split; the validation split is carved from the
60,000 training images (stratified, seeded), ``val_fraction`` of them. Preprocessing, the one
definition (``PREPROCESSING``, recorded in the dataset info and the model card): pixels / 255 as
float32, shape [N, 1, 28, 28]; no mean/std normalisation.
"""
from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np

from dynsearch.errors import UserError

ENV_VAR = "DYNSEARCH_FASHION_MNIST"
DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
COUNTS = {"train": 60000, "test": 10000}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
PREPROCESSING = ("uint8 pixels / 255 as float32, shape [N, 1, 28, 28] (values 0..1, no mean/std "
                 "normalisation); labels 0-9: " + ", ".join(CLASSES))
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def missing_error(folder: Path, why: str) -> UserError:
    return UserError(f"fashion-mnist: {why} in {folder}; install them with `apt-get install "
                     f"dataset-fashion-mnist`, or set data.root (or ${ENV_VAR}) to a folder holding the "
                     "four files (gzipped or not)")


def data_folder(root: str | os.PathLike | None = None) -> Path:
    """The folder the files are read from: ``root``, else $DYNSEARCH_FASHION_MNIST, else Debian's."""
    if root:
        return Path(root).expanduser().resolve()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser().resolve()
    return DEBIAN_FOLDER


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as an array: magic 0x0000TTDD (type, number of dims), then
    DD big-endian uint32 sizes, then the data. A corrupt or short file is a one-line UserError."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UserError(f"fashion-mnist: {path} cannot be read ({exc.__class__.__name__}: {exc}); "
                        "replace the file (apt-get install --reinstall dataset-fashion-mnist)") from None

    def corrupt(why: str) -> UserError:
        return UserError(f"fashion-mnist: {path} is not a valid IDX file ({why}); replace the file "
                         "(apt-get install --reinstall dataset-fashion-mnist)")

    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise corrupt(f"bad magic number {raw[:4].hex() or 'empty'}")
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise corrupt("header cut short")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise corrupt(f"{len(raw):,} bytes where its header {shape} says {expected:,}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


@functools.lru_cache(maxsize=2)
def _raw(folder: Path) -> dict[str, np.ndarray]:
    """The four files of ``folder`` parsed and checked (uint8 images, int64 labels); cached per process."""
    if not folder.is_dir():
        raise missing_error(folder, "no such folder")
    paths = {key: _find(folder, stem) for key, stem in FILES.items()}
    absent = [FILES[key] for key, path in paths.items() if path is None]
    if absent:
        raise missing_error(folder, f"{len(absent)} of its 4 IDX files ({', '.join(absent)}) not found")
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for part, count in COUNTS.items():
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.shape != (count, 28, 28) or images.dtype != np.uint8 or labels.shape != (count,):
            raise UserError(f"fashion-mnist: {paths[part + '_images']} / {paths[part + '_labels']}: expected "
                            f"{count:,} uint8 28x28 images and labels, got {images.shape} {images.dtype} and "
                            f"{labels.shape}; replace the files (apt-get install --reinstall dataset-fashion-mnist)")
        if labels.size and int(labels.max()) > 9:
            raise UserError(f"fashion-mnist: {paths[part + '_labels']} has a label above 9; replace the file")
        arrays[f"{part}_labels"] = labels.astype(np.int64)
        images.setflags(write=False)
        arrays[f"{part}_labels"].setflags(write=False)
    return arrays


def preprocess(images: np.ndarray) -> np.ndarray:
    """The one input definition (PREPROCESSING): uint8 [N, 28, 28] -> float32 [N, 1, 28, 28] in 0..1."""
    return (np.asarray(images, dtype=np.float32) / np.float32(255.0))[:, None, :, :]


def fashion_mnist_arrays(root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All 70,000 images (training then test) preprocessed, with their labels."""
    raw = _raw(data_folder(root))
    return (preprocess(np.concatenate([raw["train_images"], raw["test_images"]])),
            np.concatenate([raw["train_labels"], raw["test_labels"]]))


def fashion_mnist_splits(split_seed: int, val_fraction: float, root: str | None = None):
    """``(train_x, train_y, val_x, val_y, test_x, test_y)``: validation is ``val_fraction`` of the
    60,000 training images (stratified, seeded by ``split_seed``); test is the official 10,000."""
    from sklearn.model_selection import train_test_split

    raw = _raw(data_folder(root))
    index = np.arange(len(raw["train_labels"]))
    train_i, val_i = train_test_split(index, test_size=val_fraction, random_state=split_seed,
                                      stratify=raw["train_labels"])
    train_i, val_i = np.sort(train_i), np.sort(val_i)
    return (preprocess(raw["train_images"][train_i]), raw["train_labels"][train_i],
            preprocess(raw["train_images"][val_i]), raw["train_labels"][val_i],
            preprocess(raw["test_images"]), raw["test_labels"].copy())
