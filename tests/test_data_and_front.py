"""The generated datasets: shapes, labels and determinism (nothing is downloaded)."""
import numpy as np
import torch

from dynsearch.data import DATASETS, load_splits, parity_arrays


def test_parity_labels_count_plus_ones():
    x, y = parity_arrays(count=500, bits=12, seed=3)
    assert x.shape == (500, 12) and set(np.unique(x)) <= {-1.0, 0.0, 1.0}
    assert (np.abs(x).sum(axis=1) >= 1).all()  # at least one non-zero entry
    assert np.array_equal(y, (x == 1.0).sum(axis=1) % 2)
    assert 0.4 < y.mean() < 0.6
    x2, y2 = parity_arrays(count=500, bits=12, seed=3)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)


def test_digits_read_from_the_bundled_file_equal_load_digits():
    from sklearn.datasets import load_digits

    from dynsearch.data import _digits_arrays

    images, labels = _digits_arrays()
    bunch = load_digits()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == np.float32
    assert np.array_equal(images[:, 0] * 16.0, bunch.images.astype(np.float32))
    assert np.array_equal(labels, bunch.target)


def test_mnist1d_is_generated_with_fixed_splits():
    from dynsearch.data import _mnist1d_generated

    first, second = load_splits("mnist1d", 0), load_splits("mnist1d", 0)
    assert first.input_shape == (40,) and first.num_classes == 10
    assert len(first.train_y) + len(first.val_y) + len(first.test_y) == 5000
    assert first.train_x.shape[1:] == (40,)
    assert torch.equal(first.val_x, second.val_x)
    # A process generates MNIST-1D once; a second, independent generation gives the same arrays (as
    # another process, a Ray worker or a later load would make them).
    for cached, again in zip(_mnist1d_generated(), _mnist1d_generated.__wrapped__()):
        assert np.array_equal(cached, again)
    assert set(DATASETS) >= {"digits", "marked-majority", "mnist1d", "parity"}


def test_hypervolume_of_a_staircase():
    from dynsearch.run.front import hypervolume

    # two points, reference (0.5, 100): 0.4*60 + (0.5*... ) computed by hand
    # (0.9, 40) dominates [0.5,0.9]x[40,100] = 0.4*60 = 24; (0.7, 20) adds [0.5,0.7]x[20,40] = 0.2*20 = 4
    assert abs(hypervolume([(0.9, 40.0), (0.7, 20.0)], (0.5, 100.0)) - 28.0) < 1e-9
    assert hypervolume([(0.9, 40.0), (0.7, 20.0), (0.6, 30.0)], (0.5, 100.0)) == hypervolume([(0.9, 40.0), (0.7, 20.0)], (0.5, 100.0))
    assert hypervolume([(0.4, 10.0), (0.9, 120.0)], (0.5, 100.0)) == 0.0  # outside the box
