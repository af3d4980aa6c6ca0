"""LDS ground truth for the demo digits: retrain a model on random halves of the training set.

The subset models use the same architecture, optimizer and epochs as the attributed
checkpoints, so the measured margins are what the scores try to predict.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from explorer.datasets import DemoSplit, to_tensor
from explorer.training import init_model, predict, train_classifier
from trak_engine.lds import compute_ground_truth, make_subsets
from trak_engine.outputs import margin

# Subset models are seeded apart from the attributed checkpoints (which use seeds 0, 1, ...).
SUBSET_SEED_OFFSET = 100_000


@dataclass(frozen=True)
class GroundTruthConfig:
    """How the ground truth is made; its fields name the cache directory."""

    model: str = "cnn"
    epochs: int = 4
    lr: float = 0.05
    n_subsets: int = 100
    alpha: float = 0.5
    n_targets: int = 200
    subset_seed: int = 0

    def cache_name(self) -> str:
        return "gt-" + "-".join(f"{k}{v}" for k, v in asdict(self).items())


def subset_trainer(
    config: GroundTruthConfig, split: DemoSplit
) -> Callable[[np.ndarray, int], np.ndarray]:
    """``train_and_eval(train_ids, subset)``: margins (n_targets,) of a model trained on them."""
    x, y = to_tensor(split.train_images), torch.as_tensor(split.train_labels)
    tx = to_tensor(split.test_images[: config.n_targets])
    ty = torch.as_tensor(split.test_labels[: config.n_targets])

    def train_and_eval(train_ids: np.ndarray, subset: int) -> np.ndarray:
        seed = SUBSET_SEED_OFFSET + subset
        model = init_model(config.model, seed)
        ids = torch.as_tensor(train_ids)
        train_classifier(model, x[ids], y[ids], epochs=config.epochs, lr=config.lr, seed=seed)
        _, _, logits = predict(model, tx)
        return margin(logits, ty).numpy()

    return train_and_eval


def demo_ground_truth(
    cache_root: str | os.PathLike[str],
    config: GroundTruthConfig,
    split: DemoSplit,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Masks (n_subsets, n_train) bool and margins (n_subsets, n_targets), cached, resumable.

    The targets are the first ``config.n_targets`` test examples, with their true labels.
    """
    masks = make_subsets(split.n_train, config.n_subsets, config.alpha, config.subset_seed)
    cache = Path(cache_root) / config.cache_name()
    margins = compute_ground_truth(
        subset_trainer(config, split), masks, config.n_targets, cache, progress
    )
    return masks, margins
