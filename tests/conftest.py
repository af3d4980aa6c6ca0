"""Fixtures shared by the explorer, page and browser tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from explorer.artifacts import ExplorerData, save_explorer_data
from trak_engine.index import AttributionIndex

SMALL_N_TRAIN = 60
SMALL_N_TEST = 30
SMALL_DIM = 16
SMALL_FLIPPED = (3, 17, 42)
"""Training ids whose labels the small artifact flips."""
SMALL_MISCLASSIFIED = (1, 8, 14, 25)
"""Test ids the small artifact's 'model' gets wrong (predicted label + 1)."""


def _shape_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 28, 28) uint8: faint noise plus a bright bar whose position encodes the label."""
    images = rng.integers(0, 40, size=(len(labels), 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        images[i, 2 + 2 * c : 5 + 2 * c, 4:24] = 255
    return images


def make_small_data(
    seed: int = 0, n_train: int = SMALL_N_TRAIN, n_test: int = SMALL_N_TEST
) -> ExplorerData:
    """60 train / 30 test consistent artifacts; ``scores == queries @ vectors.T`` exactly.

    Test labels cycle 0..9 (three of each class); the predictions equal the labels except at
    ``SMALL_MISCLASSIFIED``; the training labels at ``SMALL_FLIPPED`` are flipped (+1 mod 10).
    """
    rng = np.random.default_rng(seed)
    train_true = np.arange(n_train, dtype=np.int64) % 10
    train_labels = train_true.copy()
    flipped = np.zeros(n_train, dtype=bool)
    flipped[list(SMALL_FLIPPED)] = True
    train_labels[flipped] = (train_true[flipped] + 1) % 10
    test_labels = np.arange(n_test, dtype=np.int64) % 10
    test_pred = test_labels.copy()
    test_pred[list(SMALL_MISCLASSIFIED)] = (test_labels[list(SMALL_MISCLASSIFIED)] + 1) % 10
    vectors = rng.standard_normal((n_train, SMALL_DIM)).astype(np.float32)
    queries = rng.standard_normal((n_test, SMALL_DIM)).astype(np.float32)
    return ExplorerData(
        train_images=_shape_images(train_true, rng),
        train_labels=train_labels,
        train_true_labels=train_true,
        flipped=flipped,
        test_images=_shape_images(test_labels, rng),
        test_labels=test_labels,
        test_pred=test_pred,
        test_conf=rng.uniform(0.3, 1.0, n_test).astype(np.float32),
        # (n_test, dim) @ (dim, n_train) -> (n_test, n_train)
        scores=(queries @ vectors.T).astype(np.float32),
        queries=queries,
        index=AttributionIndex(vectors, use_gpu=False),
        info={"task": "small test artifact", "class_names": [str(c) for c in range(10)]},
    )


def save_small_artifact(workdir: Path, **sizes: int) -> Path:
    """Write ``make_small_data(**sizes)`` to ``workdir`` and return it."""
    save_explorer_data(workdir, make_small_data(**sizes))
    return workdir


@pytest.fixture
def small_artifact(tmp_path: Path) -> Path:
    """Directory holding a complete small artifact (see ``make_small_data``)."""
    return save_small_artifact(tmp_path / "artifact")


@pytest.fixture(scope="session")
def small_artifact_builder():
    """``save_small_artifact(workdir, n_train=..., n_test=...)``, for other sizes and for
    fixtures wider than a function (with tmp_path_factory); test modules cannot import it
    from here, since another conftest module shares the name."""
    return save_small_artifact
