"""Top-k attribution as exact inner-product search with FAISS.

Training example i is stored as v_i = (Qbar_i / M) * concat_m K_m^-1 phi_m,i and a target x is
queried with q(x) = concat_m phi_m(x), so q(x) . v_i is exactly the TRAK score tau(x)_i.
Helpful examples are the largest scores; harmful ones the smallest, found by searching with
-q(x) and reported with their true (negative) scores.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from trak_engine.errors import EmptyTrainingSetError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopK:
    """Top-k results for a batch of targets.

    Attributes:
        ids: (n_targets, k) int64 training ids, best first; k is capped at n_train.
        scores: (n_targets, k) float32 TRAK scores of those ids.
    """

    ids: np.ndarray
    scores: np.ndarray


def index_vectors(directions: Sequence[np.ndarray], mean_q: np.ndarray) -> np.ndarray:
    """Stored vectors (n_train, M*k) float32 from per-checkpoint K_m^-1 phi_m,i and Qbar."""
    n_ckpts = len(directions)
    # concat over checkpoints: (n_train, M*k), each row scaled by Qbar_i / M
    joined = np.concatenate([np.asarray(d, dtype=np.float64) for d in directions], axis=1)
    return (joined * (np.asarray(mean_q, dtype=np.float64)[:, None] / n_ckpts)).astype(np.float32)


def query_vectors(target_features: Sequence[np.ndarray]) -> np.ndarray:
    """Queries (n_targets, M*k) float32: the concatenation of phi_m(x) over checkpoints."""
    return np.ascontiguousarray(
        np.concatenate([np.asarray(f, dtype=np.float32) for f in target_features], axis=1)
    )


class AttributionIndex:
    """An exact (flat) FAISS inner-product index over training examples.

    Args:
        vectors: (n_train, dim) float32 training vectors (``index_vectors``).
        use_gpu: move the index to the GPU when FAISS reports one (None: automatic).

    Raises:
        EmptyTrainingSetError: ``vectors`` has no rows.
    """

    def __init__(self, vectors: np.ndarray, use_gpu: bool | None = None) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be 2-D (n_train, dim), got shape {vectors.shape}")
        if vectors.shape[0] == 0:
            raise EmptyTrainingSetError(
                "cannot build an attribution index over an empty training set (0 vectors)"
            )
        cpu_index = faiss.IndexFlatIP(vectors.shape[1])
        cpu_index.add(vectors)
        self._setup(cpu_index, use_gpu)

    def _setup(self, cpu_index: faiss.Index, use_gpu: bool | None) -> None:
        self._cpu_index = cpu_index
        self.dim = cpu_index.d
        self.n_train = cpu_index.ntotal
        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        self.on_gpu = bool(gpus > 0 if use_gpu is None else use_gpu and gpus > 0)
        self._index = faiss.index_cpu_to_all_gpus(cpu_index) if self.on_gpu else cpu_index

    def search(self, queries: np.ndarray, k: int, harmful: bool = False) -> TopK:
        """The k most helpful (largest) or most harmful (smallest) scores per query.

        Args:
            queries: (n_targets, dim) float32 (``query_vectors``), or (dim,) for one target.
            k: how many; more than n_train returns all n_train, never a -1 id.
            harmful: search for the smallest scores instead of the largest.

        Returns:
            TopK with ids and true scores, most helpful (or most harmful) first.
        """
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(
                f"queries must have shape (n_targets, {self.dim}), got {queries.shape}"
            )
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        k = int(min(k, self.n_train))
        sign = -1.0 if harmful else 1.0
        scores, ids = self._index.search(np.ascontiguousarray(sign * queries), k)
        return TopK(ids=ids.astype(np.int64), scores=(sign * scores).astype(np.float32))

    def helpful(self, queries: np.ndarray, k: int) -> TopK:
        return self.search(queries, k, harmful=False)

    def harmful(self, queries: np.ndarray, k: int) -> TopK:
        return self.search(queries, k, harmful=True)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the (CPU) index atomically."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        faiss.write_index(self._cpu_index, str(tmp))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], use_gpu: bool | None = None) -> AttributionIndex:
        """Read an index written by ``save``."""
        if not Path(path).exists():
            raise FileNotFoundError(f"no attribution index at {path}")
        self = cls.__new__(cls)
        self._setup(faiss.read_index(str(path)), use_gpu)
        return self
