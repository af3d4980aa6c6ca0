"""The artifacts the app reads: arrays, scores and the FAISS index of one attributed task.

Layout of an artifact directory (written by ``save_explorer_data``, read by
``load_explorer_data``)::

    explorer.json   info: task name, config, timings, accuracy, class names; "complete": true
    arrays.npz      images, labels, predictions, flips
    scores.npy      (n_test, n_train) float32 TRAK scores
    queries.npy     (n_test, dim) float32 index queries of the test examples
    index.faiss     exact inner-product index over training examples
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trak_engine.index import AttributionIndex, TopK
from trak_engine.store import save_npy_atomic, write_json_atomic

ARRAY_FIELDS = (
    "train_images",
    "train_labels",
    "train_true_labels",
    "flipped",
    "test_images",
    "test_labels",
    "test_pred",
    "test_conf",
)


@dataclass(frozen=True)
class ExplorerData:
    """Everything the pages show about one task.

    Attributes:
        train_images: (n_train, H, W) uint8.
        train_labels: (n_train,) int64, the labels the model was trained on.
        train_true_labels: (n_train,) int64, the clean labels where known (demo), else a copy
            of ``train_labels``.
        flipped: (n_train,) bool, True where the training label was flipped on purpose.
        test_images: (n_test, H, W) uint8; test_labels (n_test,) int64.
        test_pred: (n_test,) int64 predicted class (ensemble of checkpoints).
        test_conf: (n_test,) float32 probability of the predicted class.
        scores: (n_test, n_train) float32 TRAK scores.
        queries: (n_test, dim) float32, the index queries of the test examples.
        index: the FAISS index; ``queries[j] . v_i == scores[j, i]``.
        info: task name, class names, config, timings, accuracy.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    train_true_labels: np.ndarray
    flipped: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    test_pred: np.ndarray
    test_conf: np.ndarray
    scores: np.ndarray
    queries: np.ndarray
    index: AttributionIndex
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        n_classes = int(max(self.train_labels.max(), self.test_labels.max())) + 1
        return list(self.info.get("class_names", [str(c) for c in range(n_classes)]))

    def top_k(self, test_id: int, k: int) -> tuple[TopK, TopK]:
        """(helpful, harmful) for one test example; each holds (1, min(k, n_train)) arrays."""
        if not 0 <= test_id < len(self.test_labels):
            raise IndexError(f"test_id must be in [0, {len(self.test_labels)}), got {test_id}")
        query = self.queries[test_id]
        return self.index.helpful(query, k), self.index.harmful(query, k)


class ArtifactError(ValueError):
    """An artifact file exists but cannot be read (truncated, corrupt, inconsistent)."""


def _read(path: Path, reader: Callable[[Path], Any]) -> Any:
    """``reader(path)``, with any failure turned into an ArtifactError naming the file."""
    try:
        return reader(path)
    except FileNotFoundError:
        raise
    except Exception as err:  # numpy, zipfile, json and FAISS each raise their own types
        raise ArtifactError(f"{path} cannot be read ({type(err).__name__}: {err})") from err


def is_complete(workdir: str | os.PathLike[str]) -> bool:
    """True when ``explorer.json`` is there and marks the build complete."""
    path = Path(workdir) / "explorer.json"
    if not path.is_file():
        return False
    return bool(_read(path, lambda p: json.loads(p.read_text())).get("complete"))


def save_explorer_data(workdir: str | os.PathLike[str], data: ExplorerData) -> None:
    """Write every artifact, then mark the directory complete (last, atomically)."""
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / ".arrays.npz.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **{name: getattr(data, name) for name in ARRAY_FIELDS})
    os.replace(tmp, root / "arrays.npz")
    save_npy_atomic(root / "scores.npy", data.scores.astype(np.float32))
    save_npy_atomic(root / "queries.npy", data.queries.astype(np.float32))
    data.index.save(root / "index.faiss")
    write_json_atomic(root / "explorer.json", {**data.info, "complete": True})


def load_explorer_data(workdir: str | os.PathLike[str]) -> ExplorerData:
    """Read an artifact directory written by ``save_explorer_data``.

    Raises:
        FileNotFoundError: the directory is missing or was never completed; says how to build.
        ArtifactError: a file is there but cannot be read, or the files disagree; names it.
    """
    root = Path(workdir)
    if not is_complete(root):
        raise FileNotFoundError(
            f"no complete TRAK Explorer artifacts in {root}; build them with "
            f"`trak-explorer demo --workdir {root}`"
        )
    arrays = _read(root / "arrays.npz", lambda p: dict(np.load(p)))
    missing = [name for name in ARRAY_FIELDS if name not in arrays]
    if missing:
        raise ArtifactError(f"{root / 'arrays.npz'} lacks the arrays {missing}")
    data = ExplorerData(
        **{name: arrays[name] for name in ARRAY_FIELDS},
        scores=_read(root / "scores.npy", lambda p: np.load(p, mmap_mode="r")),
        queries=_read(root / "queries.npy", np.load),
        index=_read(root / "index.faiss", AttributionIndex.load),
        info=_read(root / "explorer.json", lambda p: json.loads(p.read_text())),
    )
    check_consistent(root, data)
    return data


def check_consistent(root: Path, data: ExplorerData) -> None:
    """Raise ArtifactError when the arrays disagree in size (a mix of two builds)."""
    n_train, n_test = len(data.train_labels), len(data.test_labels)
    problems = []
    if data.scores.shape != (n_test, n_train):
        problems.append(f"scores.npy has shape {data.scores.shape}, expected {(n_test, n_train)}")
    if data.queries.shape != (n_test, data.index.dim):
        problems.append(
            f"queries.npy has shape {data.queries.shape}, expected {(n_test, data.index.dim)}"
        )
    if data.index.n_train != n_train:
        problems.append(f"index.faiss holds {data.index.n_train} vectors, expected {n_train}")
    if problems:
        raise ArtifactError(f"the artifacts in {root} are inconsistent: " + "; ".join(problems))
