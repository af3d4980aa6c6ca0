"""A 2-D map of the training set: PCA of the training features, cached in the workdir.

The map is the first two principal components of the concatenated per-checkpoint training
features ``phi_m`` (the projected gradients in ``<workdir>/features``). When that feature store
is missing or unreadable, it falls back to the vectors stored in the attribution index
(``index.faiss``, read with ``reconstruct_n``), and says so in ``TrainMap.note``.

Stored next to the other artifacts::

    train_map.npy    (n_train, 2) float32 coordinates
    train_map.json   source, explained variance, note, and the stamp of explorer.json

A map whose stamp differs from the current ``explorer.json`` (the artifacts were rebuilt) is
recomputed. A workdir that cannot be written is not an error: the map is computed and used,
only not kept.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import plotly.graph_objects as go

from explorer import views
from trak_engine.errors import ConfigMismatchError
from trak_engine.store import FeatureStore, save_npy_atomic, write_json_atomic

logger = logging.getLogger(__name__)

Source = Literal["features", "index"]
MAP_FILE = "train_map.npy"
META_FILE = "train_map.json"
EXACT_MAX_ENTRIES = 4_000_000
"""Matrices with at most this many entries get an exact SVD; larger ones a randomized one."""
ROW_CHUNK = 4096
OVERSAMPLE = 8
POWER_ITERATIONS = 4
LABEL_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip


@dataclass(frozen=True)
class TrainMap:
    """2-D coordinates of every training example.

    Attributes:
        coords: (n_train, 2) float32, the first two principal components.
        source: ``"features"`` (the feature store) or ``"index"`` (the index's vectors).
        explained: fraction of the total variance along each of the two components.
        note: why the fallback source was used; empty for ``"features"``.
    """

    coords: np.ndarray
    source: Source
    explained: tuple[float, float]
    note: str = ""


# --- PCA ----------------------------------------------------------------------------------


def _row_chunks(block: np.ndarray) -> Iterable[tuple[int, np.ndarray]]:
    """(start, rows as float64) over ``block`` in chunks; works on memory maps."""
    for start in range(0, block.shape[0], ROW_CHUNK):
        yield start, np.asarray(block[start : start + ROW_CHUNK], dtype=np.float64)


def _means_and_total(blocks: Sequence[np.ndarray]) -> tuple[list[np.ndarray], float]:
    """Column means of each block and the total sum of squares of the centred matrix."""
    means, total = [], 0.0
    n = blocks[0].shape[0]
    for block in blocks:
        col_sum, sq = np.zeros(block.shape[1]), 0.0
        for _, rows in _row_chunks(block):
            col_sum += rows.sum(0)  # (chunk, d) -> (d,)
            sq += float(np.square(rows).sum())
        mean = col_sum / n
        means.append(mean)
        total += sq - n * float(mean @ mean)
    return means, max(total, 0.0)


def _times(blocks: Sequence[np.ndarray], means: list[np.ndarray], right: list[np.ndarray]):
    """Xc @ R for X = concat(blocks) centred; ``right`` split like the blocks. (n, r)."""
    n, r = blocks[0].shape[0], right[0].shape[1]
    out = np.zeros((n, r))
    for block, mean, part in zip(blocks, means, right, strict=True):
        for start, rows in _row_chunks(block):
            out[start : start + len(rows)] += rows @ part  # (chunk, d) @ (d, r)
        out -= mean @ part  # subtract the centring term, (r,) broadcast over rows
    return out


def _times_t(blocks: Sequence[np.ndarray], means: list[np.ndarray], left: np.ndarray):
    """Xc^T @ L for L (n, r), returned split like the blocks: [(d_m, r), ...]."""
    col_sum = left.sum(0)  # (n, r) -> (r,)
    parts = []
    for block, mean in zip(blocks, means, strict=True):
        acc = np.zeros((block.shape[1], left.shape[1]))
        for start, rows in _row_chunks(block):
            acc += rows.T @ left[start : start + len(rows)]  # (d, chunk) @ (chunk, r)
        parts.append(acc - np.outer(mean, col_sum))
    return parts


def _split(matrix: np.ndarray, widths: list[int]) -> list[np.ndarray]:
    return np.split(matrix, np.cumsum(widths)[:-1], axis=0)


def _randomized_u_s(blocks, means, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Leading left singular vectors (n, r) and values (r,) of the centred matrix (Halko)."""
    widths = [b.shape[1] for b in blocks]
    r = min(2 + OVERSAMPLE, blocks[0].shape[0], sum(widths))
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(_times(blocks, means, [rng.standard_normal((d, r)) for d in widths]))
    for _ in range(POWER_ITERATIONS):
        z, _ = np.linalg.qr(np.concatenate(_times_t(blocks, means, q)))  # (D, r)
        q, _ = np.linalg.qr(_times(blocks, means, _split(z, widths)))  # (n, r)
    b = np.concatenate(_times_t(blocks, means, q)).T  # B = Q^T Xc, (r, D)
    u_b, s, _ = np.linalg.svd(b, full_matrices=False)
    return q @ u_b, s  # (n, r) @ (r, r)


def pca_2d(
    blocks: Sequence[np.ndarray], seed: int = 0, exact: bool | None = None
) -> tuple[np.ndarray, tuple[float, float]]:
    """First two principal components of the column-wise concatenation of ``blocks``.

    Args:
        blocks: (n, d_m) arrays (memory maps welcome), one per checkpoint; read in row chunks
            and never concatenated unless the exact path is taken.
        seed: seed of the randomized SVD.
        exact: force the exact (True) or randomized (False) SVD; None picks exact for
            matrices of at most ``EXACT_MAX_ENTRIES`` entries.

    Returns:
        ``(coords (n, 2) float32, explained)``: the projections on the two components, each
        column signed so its largest-magnitude entry is positive, and the fraction of total
        variance each explains (0 when there is no variance). With fewer than two non-zero
        components the missing coordinates are 0.
    """
    if not blocks:
        raise ValueError("blocks must hold at least one (n, d) array, got none")
    n = blocks[0].shape[0]
    if any(b.ndim != 2 or b.shape[0] != n for b in blocks):
        raise ValueError(f"blocks must be 2-D with the same rows, got {[b.shape for b in blocks]}")
    means, total = _means_and_total(blocks)
    if exact is None:
        exact = n * sum(b.shape[1] for b in blocks) <= EXACT_MAX_ENTRIES
    if exact:
        parts = [np.asarray(b, np.float64) - m for b, m in zip(blocks, means, strict=True)]
        centred = np.concatenate(parts, axis=1)  # (n, sum of d_m)
        u, s, _ = np.linalg.svd(centred, full_matrices=False)
    else:
        u, s = _randomized_u_s(blocks, means, seed)
    coords = np.zeros((n, 2))
    kept = min(2, len(s))
    coords[:, :kept] = u[:, :kept] * s[:kept]  # (n, kept) principal-component scores
    # A deterministic sign per component: its largest-magnitude entry is positive.
    if n:
        peaks = coords[np.abs(coords).argmax(0), np.arange(2)]
        coords *= np.where(peaks < 0, -1.0, 1.0)
    variance = np.zeros(2)
    variance[:kept] = np.square(s[:kept])
    explained = variance / total if total > 0 else np.zeros(2)
    return coords.astype(np.float32), (float(explained[0]), float(explained[1]))


# --- training vectors ---------------------------------------------------------------------


def feature_blocks(workdir: str | os.PathLike[str], n_train: int) -> list[np.ndarray]:
    """Memory maps (n_train, k) float32 of every checkpoint's training features.

    Raises:
        FileNotFoundError: no feature store, or a checkpoint's training features are
            incomplete.
        ValueError: the store holds another number of training examples than ``n_train``.
    """
    store = FeatureStore.open(Path(workdir) / "features")
    n_ckpts = len(store.meta.get("checkpoints", []))
    if n_ckpts == 0:
        raise FileNotFoundError(f"the feature store at {store.root} lists no checkpoints")
    blocks = [store.load(m, "train")[0] for m in range(n_ckpts)]
    rows = {b.shape[0] for b in blocks}
    if rows != {n_train}:
        raise ValueError(
            f"the feature store at {store.root} holds {sorted(rows)} training rows, the "
            f"artifacts {n_train}"
        )
    return blocks


def index_vectors(workdir: str | os.PathLike[str]) -> np.ndarray:
    """(n_train, dim) float32 vectors stored in ``<workdir>/index.faiss``."""
    path = Path(workdir) / "index.faiss"
    if not path.exists():
        raise FileNotFoundError(f"no attribution index at {path}")
    index = faiss.read_index(str(path))
    return index.reconstruct_n(0, index.ntotal)


def training_blocks(
    workdir: str | os.PathLike[str], n_train: int
) -> tuple[list[np.ndarray], Source, str]:
    """The blocks to map, their source, and a note saying why the fallback was used."""
    try:
        return feature_blocks(workdir, n_train), "features", ""
    except (OSError, ValueError, KeyError, ConfigMismatchError) as exc:
        note = f"training features unavailable ({exc}); mapped the index's vectors instead"
        logger.info(note)
    vectors = index_vectors(workdir)
    if vectors.shape[0] != n_train:
        raise ValueError(
            f"the index at {workdir} holds {vectors.shape[0]} vectors, the artifacts {n_train}"
        )
    return [vectors], "index", note


# --- the stored artifact ------------------------------------------------------------------


def train_map_path(workdir: str | os.PathLike[str]) -> Path:
    return Path(workdir) / MAP_FILE


def _stamp(workdir: str | os.PathLike[str]) -> int:
    """Modification time (ns) of ``explorer.json``; 0 when it does not exist."""
    try:
        return (Path(workdir) / "explorer.json").stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def train_map_exists(workdir: str | os.PathLike[str], n_train: int) -> bool:
    """True when a stored map matches the current artifacts (stamp and size)."""
    meta_path = Path(workdir) / META_FILE
    if not (meta_path.exists() and train_map_path(workdir).exists()):
        return False
    meta = json.loads(meta_path.read_text())
    return meta.get("stamp") == _stamp(workdir) and meta.get("n_train") == n_train


def save_train_map(workdir: str | os.PathLike[str], train_map: TrainMap) -> None:
    """Write the coordinates, then the metadata that marks them current."""
    save_npy_atomic(train_map_path(workdir), train_map.coords.astype(np.float32))
    meta = {
        "source": train_map.source,
        "explained": list(train_map.explained),
        "note": train_map.note,
        "n_train": int(train_map.coords.shape[0]),
        "stamp": _stamp(workdir),
    }
    write_json_atomic(Path(workdir) / META_FILE, meta)


def load_train_map(workdir: str | os.PathLike[str]) -> TrainMap:
    meta = json.loads((Path(workdir) / META_FILE).read_text())
    coords = np.load(train_map_path(workdir))
    return TrainMap(coords, meta["source"], tuple(meta["explained"]), meta.get("note", ""))


def compute_train_map(workdir: str | os.PathLike[str], n_train: int, seed: int = 0) -> TrainMap:
    """PCA of the training features of ``workdir`` (or of the index's vectors)."""
    blocks, source, note = training_blocks(workdir, n_train)
    coords, explained = pca_2d(blocks, seed=seed)
    return TrainMap(coords, source, explained, note)


def train_map(workdir: str | os.PathLike[str], n_train: int) -> TrainMap:
    """The stored map when current, else computed and stored (if the workdir is writable)."""
    if train_map_exists(workdir, n_train):
        return load_train_map(workdir)
    computed = compute_train_map(workdir, n_train)
    try:
        save_train_map(workdir, computed)
    except OSError as exc:
        logger.warning("could not keep the training map in %s: %s", workdir, exc)
    return computed


# --- the figure and its selection -----------------------------------------------------------


def selected_train_ids(points: Iterable[Mapping[str, Any]]) -> list[int]:
    """Training ids of the points of a plotly selection, first occurrence order, no repeats.

    Every trace of ``map_figure`` carries the training id as ``customdata``; a point drawn
    twice (a top-k overlay over the base layer) counts once.
    """
    seen: dict[int, None] = {}
    for point in points:
        data = point.get("customdata")
        if isinstance(data, (list, tuple)):
            data = data[0] if data else None
        if data is not None:
            seen.setdefault(int(data), None)
    return list(seen)


def strongest_first(ids: Sequence[int], scores: np.ndarray | None) -> list[int]:
    """``ids`` by decreasing |score| (ties keep their order); ascending ids without scores."""
    if scores is None:
        return sorted(ids)
    strength = np.abs(np.asarray(scores, dtype=np.float64)[np.asarray(ids, dtype=np.int64)])
    return [ids[j] for j in np.argsort(-strength, kind="stable")]


def _hover(ids: np.ndarray, labels: np.ndarray, names: Sequence[str], scores) -> list[str]:
    """Hover text of training ``ids``; ``labels`` and ``scores`` cover all training ids."""
    parts = [f"train #{i} · label {views.class_name(int(labels[i]), names)}" for i in ids]
    if scores is None:
        return parts
    return [f"{p} · score {scores[i]:+.3g}" for p, i in zip(parts, ids, strict=True)]


def _label_traces(coords, labels, names) -> list[go.Scatter]:
    traces = []
    for c in np.unique(labels):
        ids = np.flatnonzero(labels == c)
        traces.append(
            go.Scatter(
                x=coords[ids, 0],
                y=coords[ids, 1],
                mode="markers",
                name=f"label {views.class_name(int(c), names)}",
                customdata=ids,
                hovertext=_hover(ids, labels, names, None),
                hoverinfo="text",
                marker=dict(size=5, color=LABEL_COLORS[int(c) % len(LABEL_COLORS)], opacity=0.75),
            )
        )
    return traces


def _score_traces(coords, labels, names, scores, helpful, harmful) -> list[go.Scatter]:
    # Strong scores drawn last, on top; the colour range is clipped at the 99th percentile
    # of |score| so the bulk is not washed out by a few extremes.
    order = np.argsort(np.abs(scores), kind="stable")
    limit = float(np.quantile(np.abs(scores), 0.99)) if scores.size else 1.0
    limit = limit if limit > 0 else 1.0
    colors = dict(colorscale=views.DIVERGING_SCALE, cmid=0.0, cmin=-limit, cmax=limit)
    traces = [
        go.Scatter(
            x=coords[order, 0],
            y=coords[order, 1],
            mode="markers",
            name="all training images",
            customdata=order,
            hovertext=_hover(order, labels, names, scores),
            hoverinfo="text",
            marker=dict(
                size=5,
                color=scores[order],
                colorbar=dict(title="score", thickness=12),
                **colors,
            ),
        )
    ]
    for ids, name, line in (
        (harmful, "harmful top-k", views.HARMFUL_COLOR),
        (helpful, "helpful top-k", views.HELPFUL_COLOR),
    ):
        ids = np.asarray(ids, dtype=np.int64)
        traces.append(
            go.Scatter(
                x=coords[ids, 0],
                y=coords[ids, 1],
                mode="markers",
                name=name,
                customdata=ids,
                hovertext=_hover(ids, labels, names, scores),
                hoverinfo="text",
                marker=dict(size=11, color=scores[ids], line=dict(color=line, width=2), **colors),
            )
        )
    return traces


def map_figure(
    coords: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    scores: np.ndarray | None = None,
    helpful: Sequence[int] | np.ndarray = (),
    harmful: Sequence[int] | np.ndarray = (),
    height: int = 460,
) -> go.Figure:
    """Scatter of the training map, ready for lasso and box selection.

    Args:
        coords: (n_train, 2) map coordinates.
        labels: (n_train,) int training labels; without scores, one trace (colour) per label.
        class_names: names of the classes.
        scores: (n_train,) scores of one target; colours the points on a diverging scale
            centred at 0, with the top-k ``helpful`` and ``harmful`` ids drawn large on top.
        helpful: training ids of the helpful top-k (used with ``scores``).
        harmful: training ids of the harmful top-k (used with ``scores``).
        height: figure height in pixels.
    """
    coords, labels = np.asarray(coords), np.asarray(labels)
    if coords.ndim != 2 or coords.shape != (len(labels), 2):
        raise ValueError(
            f"coords must have shape (n_train, 2) = ({len(labels)}, 2), got {coords.shape}"
        )
    if scores is None:
        traces = _label_traces(coords, labels, class_names)
    else:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != labels.shape:
            raise ValueError(f"scores must have shape {labels.shape}, got {scores.shape}")
        traces = _score_traces(coords, labels, class_names, scores, helpful, harmful)
    fig = go.Figure(traces)
    fig.update_layout(
        height=height,
        margin=dict(l=10, r=10, t=10, b=10),
        dragmode="lasso",
        legend=dict(orientation="h", yanchor="top", y=-0.02, x=0, itemsizing="constant"),
        xaxis=dict(title=None, showticklabels=False, zeroline=False),
        yaxis=dict(title=None, showticklabels=False, zeroline=False),
    )
    return fig
