"""Mislabeled-data triage: suspicion scores from TRAK, baselines, metrics, neighbours, decisions.

Signals per training example z_i (all "higher = more suspicious" except cleanlab's quality):

* ``self_influence``: tau(z_i)_i = (1/M sum_m phi_m,i^T K_m^-1 phi_m,i) * Qbar_i, the example's
  TRAK score on itself. It is large for examples the model had to memorize (atypical or
  mislabeled): a high leverage phi^T K^-1 phi times a high out-to-loss term Q = 1 - p(label).
* ``own_class_harm``: minus the mean score of z_i over the test examples whose true label is
  z_i's training label. Exposed as asked, but measured on the demo it is a poor detector (ROC
  AUC below 0.5): a "3 labeled 7" raises the class-7 logit broadly, so it tends to help the
  test 7s, and it is the test 3s that it harms.
* ``other_class_harm``: the largest harm to any other class, max over c != label of minus the
  mean score over test examples of true class c (``most_harmed_class`` is that c).
* ``suspicion``: the rank average of ``self_influence`` and ``other_class_harm`` (each ranked
  1..n, average ranks for ties, divided by n), in (0, 1]. On the demo build it found more
  flips in its top 100 and 200 than either part alone; the per-example loss found more still.

Baselines on the same checkpoints: ``loss``, the cross-entropy of the training label under the
ensemble (mean softmax of the checkpoints), and ``cleanlab_quality``, cleanlab's label quality
from the same probabilities. The checkpoints were trained on every training example, so these
probabilities are in-sample, not the out-of-sample ones cleanlab recommends; with the default
``self_confidence`` method cleanlab's ranking would equal the loss ranking, so the
``normalized_margin`` method is used.

Triage decisions (keep / relabel / exclude) are stored in ``workdir/triage.csv``, rewritten
atomically after every change.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata

from explorer.artifacts import ExplorerData
from explorer.datasets import to_tensor
from explorer.demo import load_checkpoints, load_demo_config
from explorer.training import init_model, predict
from trak_engine.errors import ConfigMismatchError
from trak_engine.index import query_vectors
from trak_engine.store import FeatureStore, write_bytes_atomic

logger = logging.getLogger(__name__)

SUSPICION_PARTS = ("self_influence", "other_class_harm")
"""The signals whose rank average is ``suspicion``."""
DETECTORS: dict[str, tuple[str, float]] = {
    "TRAK suspicion": ("suspicion", 1.0),
    "TRAK self-influence": ("self_influence", 1.0),
    "TRAK own-class harm": ("own_class_harm", 1.0),
    "TRAK other-class harm": ("other_class_harm", 1.0),
    "loss (ensemble)": ("loss", 1.0),
    "cleanlab (ensemble)": ("cleanlab_quality", -1.0),
}
"""Method name -> (signals column, sign making higher = more suspicious)."""
CLEANLAB_METHOD = "normalized_margin"


# --- TRAK signals -------------------------------------------------------------------------


def load_index_vectors(workdir: str | os.PathLike[str]) -> np.ndarray:
    """The stored training vectors v_i of ``workdir/index.faiss``: (n_train, M*k) float32."""
    path = Path(workdir) / "index.faiss"
    if not path.exists():
        raise FileNotFoundError(f"no attribution index at {path}; build the artifacts first")
    index = faiss.read_index(str(path))
    return index.reconstruct_n(0, index.ntotal)


def load_train_queries(workdir: str | os.PathLike[str], dim: int) -> np.ndarray:
    """Training features concatenated over checkpoints, like test queries: (n_train, dim) float32.

    Args:
        workdir: holds the feature store in ``workdir/features``.
        dim: the index dimension M*k; the first M checkpoints of the store are used.

    Raises:
        ConfigMismatchError: ``dim`` is not a multiple of the store's k.
    """
    store = FeatureStore.open(Path(workdir) / "features")
    k = int(store.meta["config"]["proj_dim"])
    if dim % k != 0:
        raise ConfigMismatchError(
            f"the index dimension {dim} is not a multiple of the stored proj_dim {k}: the index "
            f"and {store.root} were built from different features"
        )
    return query_vectors([store.load(m, "train")[0] for m in range(dim // k)])


def self_influence(train_queries: np.ndarray, index_vectors: np.ndarray) -> np.ndarray:
    """tau(z_i)_i = q(z_i) . v_i for every training example: (n_train,) float64.

    Args:
        train_queries: (n_train, dim) concatenated training features (``load_train_queries``).
        index_vectors: (n_train, dim) stored index vectors (``load_index_vectors``).
    """
    if train_queries.shape != index_vectors.shape:
        raise ValueError(
            f"train_queries and index_vectors must have the same shape; received "
            f"{train_queries.shape} and {index_vectors.shape}"
        )
    out = np.empty(train_queries.shape[0], dtype=np.float64)
    for start in range(0, len(out), 4096):
        q = np.asarray(train_queries[start : start + 4096], dtype=np.float64)
        v = np.asarray(index_vectors[start : start + 4096], dtype=np.float64)
        out[start : start + len(q)] = np.einsum("nd,nd->n", q, v)  # row-wise dot: (rows,)
    return out


def class_mean_scores(scores: np.ndarray, test_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Mean TRAK score of each training example over the test examples of each true class.

    Args:
        scores: (n_test, n_train) scores (a memmap is read one class at a time).
        test_labels: (n_test,) int true labels.

    Returns:
        (n_classes, n_train) float64; the row of a class without test examples is NaN.
    """
    out = np.full((n_classes, scores.shape[1]), np.nan)
    for c in range(n_classes):
        rows = np.flatnonzero(test_labels == c)
        if len(rows):
            out[c] = np.asarray(scores[rows], dtype=np.float64).mean(axis=0)  # (n_train,)
    return out


def own_class_harm(class_means: np.ndarray, train_labels: np.ndarray) -> np.ndarray:
    """Minus the mean score over test examples of the training label's class: (n_train,).

    A class without test examples gives 0 (no evidence either way), with a warning.
    """
    own = class_means[train_labels, np.arange(len(train_labels))]  # (n_train,)
    missing = np.isnan(own)
    if missing.any():
        absent = sorted(set(train_labels[missing].tolist()))
        logger.warning("no test examples of class(es) %s: their own-class harm is 0", absent)
    return np.where(missing, 0.0, -own)


def other_class_harm(
    class_means: np.ndarray, train_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The largest harm to another class, and that class.

    Returns:
        ``(harm, cls)``: (n_train,) float64, max over c != label of -class_means[c, i], and
        (n_train,) int64 the arg max. Classes without test examples are skipped.
    """
    harm = -class_means.copy()  # (n_classes, n_train)
    harm[train_labels, np.arange(len(train_labels))] = -np.inf
    harm[np.isnan(harm)] = -np.inf
    cls = harm.argmax(axis=0)
    best = harm[cls, np.arange(len(train_labels))]
    if not np.isfinite(best).all():
        raise ValueError("other_class_harm needs test examples of at least two classes")
    return best, cls.astype(np.int64)


def rank_average(*signals: np.ndarray) -> np.ndarray:
    """Mean of the normalized ranks (1..n average ranks over n) of the signals: (n,) in (0, 1]."""
    if not signals:
        raise ValueError("rank_average needs at least one signal; received none")
    for s in signals:
        if not np.isfinite(s).all():
            raise ValueError("rank_average received a signal with NaN or inf values")
    return np.mean([rankdata(s) / len(s) for s in signals], axis=0)


# --- Baselines ----------------------------------------------------------------------------


def ensemble_probabilities(workdir: str | os.PathLike[str], images: np.ndarray) -> np.ndarray:
    """Mean softmax over the demo checkpoints of ``workdir``: (n, n_classes) float64.

    Args:
        images: (n, 28, 28) uint8.
    """
    config = load_demo_config(workdir)
    x = to_tensor(images)
    model = init_model(config.model, 0)
    probs = []
    for state in load_checkpoints(workdir, config):
        model.load_state_dict(state)
        _, _, logits = predict(model, x)
        probs.append(torch.softmax(logits.double(), dim=1).numpy())
    return np.mean(probs, axis=0)  # (M, n, n_classes) -> (n, n_classes)


def per_example_loss(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy -log p(label): (n,) float64 (probabilities are floored at 1e-12)."""
    return -np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12))


def cleanlab_quality(
    probs: np.ndarray, labels: np.ndarray, method: str = CLEANLAB_METHOD
) -> np.ndarray:
    """cleanlab's label quality score (n,) float64 in [0, 1]; lower = more likely mislabeled."""
    try:
        from cleanlab.rank import get_label_quality_scores
    except ImportError as err:  # optional until pyproject lists it
        raise ImportError("the cleanlab baseline needs cleanlab: pip install cleanlab") from err
    return np.asarray(get_label_quality_scores(labels, probs, method=method), dtype=np.float64)


def compute_signals(workdir: str | os.PathLike[str], data: ExplorerData) -> pd.DataFrame:
    """Every signal for every training example of a demo workdir.

    Returns:
        One row per training example, index ``train_id``, columns ``label``,
        ``suggested_label`` (the ensemble's predicted class), ``flipped``, ``self_influence``,
        ``own_class_harm``, ``other_class_harm``, ``most_harmed_class``, ``suspicion``,
        ``loss``, ``cleanlab_quality``.

    Raises:
        FileNotFoundError: not a demo workdir (no index, feature store, config or checkpoint).
        ConfigMismatchError: the index and the feature store disagree.
    """
    labels = np.asarray(data.train_labels, dtype=np.int64)
    n_classes = len(data.class_names)
    vectors = load_index_vectors(workdir)
    self_inf = self_influence(load_train_queries(workdir, vectors.shape[1]), vectors)
    means = class_mean_scores(data.scores, data.test_labels, n_classes)
    other, harmed = other_class_harm(means, labels)
    probs = ensemble_probabilities(workdir, data.train_images)
    frame = pd.DataFrame(
        {
            "label": labels,
            "suggested_label": probs.argmax(axis=1),
            "flipped": np.asarray(data.flipped, dtype=bool),
            "self_influence": self_inf,
            "own_class_harm": own_class_harm(means, labels),
            "other_class_harm": other,
            "most_harmed_class": harmed,
            "suspicion": rank_average(self_inf, other),
            "loss": per_example_loss(probs, labels),
            "cleanlab_quality": cleanlab_quality(probs, labels),
        }
    )
    frame.index.name = "train_id"
    return frame


# --- Detection metrics --------------------------------------------------------------------


def _detection_inputs(scores: np.ndarray, is_positive: np.ndarray) -> tuple[np.ndarray, ...]:
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(is_positive)
    if scores.ndim != 1 or positive.shape != scores.shape:
        raise ValueError(
            f"scores and is_positive must be 1-D of the same length; received shapes "
            f"{scores.shape} and {positive.shape}"
        )
    if positive.dtype != bool:
        raise TypeError(f"is_positive must be a bool array; received dtype {positive.dtype}")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf; the ranking would be undefined")
    return scores, positive


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest scores; ties go to the smaller id."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an int >= 1; received {k!r}")
    return np.argsort(-scores, kind="stable")[:k]


def precision_at_k(scores: np.ndarray, is_positive: np.ndarray, k: int) -> float:
    """Fraction of positives among the k highest scores (k is capped at n)."""
    scores, positive = _detection_inputs(scores, is_positive)
    return float(positive[_top_k(scores, k)].mean())


def recall_at_k(scores: np.ndarray, is_positive: np.ndarray, k: int) -> float:
    """Fraction of all positives found among the k highest scores.

    Raises:
        ValueError: there are no positives.
    """
    scores, positive = _detection_inputs(scores, is_positive)
    if not positive.any():
        raise ValueError("recall needs at least one positive (recorded flip); received none")
    return float(positive[_top_k(scores, k)].sum() / positive.sum())


def roc_auc(scores: np.ndarray, is_positive: np.ndarray) -> float:
    """ROC AUC by the rank (Mann-Whitney U) formula, ties counted one half.

    AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg), R_pos the sum of the positives'
    average ranks: the probability that a random positive scores above a random negative.

    Raises:
        ValueError: there are no positives or no negatives.
    """
    scores, positive = _detection_inputs(scores, is_positive)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC AUC needs positives and negatives; received {n_pos} and {n_neg}")
    ranks = rankdata(scores)  # average ranks, 1..n
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def detector_scores(
    signals: pd.DataFrame, detectors: Mapping[str, tuple[str, float]] = DETECTORS
) -> dict[str, np.ndarray]:
    """Method name -> (n,) scores oriented so that higher = more suspicious."""
    return {name: sign * signals[col].to_numpy(float) for name, (col, sign) in detectors.items()}


def detection_metrics(
    scores: Mapping[str, np.ndarray], is_positive: np.ndarray, ks: Sequence[int] = (50, 100, 200)
) -> pd.DataFrame:
    """Precision and recall at each k and ROC AUC of each method against the recorded flips.

    Args:
        scores: method name -> (n,) scores, higher = more suspicious (``detector_scores``).
        is_positive: (n,) bool, the recorded flips.

    Returns:
        One row per method (index ``method``), columns ``precision@k``, ``recall@k`` for each
        k, then ``roc_auc``.
    """
    rows = {}
    for name, s in scores.items():
        row = {f"precision@{k}": precision_at_k(s, is_positive, k) for k in ks}
        row |= {f"recall@{k}": recall_at_k(s, is_positive, k) for k in ks}
        row["roc_auc"] = roc_auc(s, is_positive)
        rows[name] = row
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "method"
    return frame


# --- Similar training images --------------------------------------------------------------


class TrainNeighbors:
    """Cosine nearest neighbours among training examples.

    Args:
        features: (n_train, dim) features, e.g. ``load_train_queries`` (the concatenated
            projected gradients). A zero row has similarity 0 to everything.
    """

    def __init__(self, features: np.ndarray) -> None:
        feats = np.asarray(features, dtype=np.float32)
        if feats.ndim != 2 or feats.shape[0] < 2:
            raise ValueError(f"features must be (n_train >= 2, dim); received {feats.shape}")
        norms = np.linalg.norm(feats, axis=1, keepdims=True)  # (n_train, 1)
        self.unit = feats / np.maximum(norms, np.finfo(np.float32).tiny)

    def similar(self, train_id: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar other training examples, most similar first.

        Returns:
            ``(ids, similarities)``: (min(k, n_train - 1),) int64 and float32 cosines; the
            example itself is never included; ties go to the smaller id.
        """
        n = self.unit.shape[0]
        if not 0 <= train_id < n:
            raise IndexError(f"train_id must be in [0, {n}); received {train_id}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an int >= 1; received {k!r}")
        sims = self.unit @ self.unit[train_id]  # (n_train,)
        sims[train_id] = -np.inf
        order = np.argsort(-sims, kind="stable")[: min(k, n - 1)]
        return order.astype(np.int64), sims[order].astype(np.float32)


# --- Triage decisions ---------------------------------------------------------------------

ACTIONS = ("keep", "relabel", "exclude")
TRIAGE_FILE = "triage.csv"
TRIAGE_COLUMNS = ("train_id", "action", "new_label", "note", "updated_at")


@dataclass(frozen=True)
class Decision:
    """What to do with one training example; ``new_label`` only for ``relabel``."""

    train_id: int
    action: str
    new_label: int | None = None
    note: str = ""
    updated_at: str = ""


def triage_path(workdir: str | os.PathLike[str]) -> Path:
    return Path(workdir) / TRIAGE_FILE


class TriageBook:
    """Triage decisions of one training set, persisted to a CSV file.

    Every change re-reads the file, applies the change and rewrites the file atomically
    (temporary file + ``os.replace``), so a restart, or another book on the same file in the
    same process, loses nothing that was saved. Two processes writing at the same moment can
    still lose one change; share one book per workdir in the app.

    Args:
        path: the CSV file (created on the first decision).
        train_labels: (n_train,) int64 current training labels.
        n_classes: labels must be in [0, n_classes).

    Raises:
        ValueError: the existing file is malformed; names the line.
    """

    def __init__(
        self, path: str | os.PathLike[str], train_labels: np.ndarray, n_classes: int
    ) -> None:
        self.path = Path(path)
        self.train_labels = np.asarray(train_labels, dtype=np.int64)
        self.n_classes = int(n_classes)
        self._lock = threading.Lock()
        self._decisions = self._read()

    @classmethod
    def for_workdir(cls, workdir: str | os.PathLike[str], data: ExplorerData) -> TriageBook:
        return cls(triage_path(workdir), data.train_labels, len(data.class_names))

    def validate(self, decision: Decision) -> Decision:
        """Return ``decision`` if it is valid; raise ValueError naming what is wrong."""
        n = len(self.train_labels)
        t = decision.train_id
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < n:
            raise ValueError(f"train_id must be an int in [0, {n}); received {t!r}")
        if decision.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}; received {decision.action!r}")
        label = decision.new_label
        if decision.action != "relabel":
            if label is not None:
                raise ValueError(
                    f"new_label is only for action 'relabel'; received new_label={label!r} "
                    f"with action {decision.action!r}"
                )
            return decision
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
            raise ValueError(f"relabel needs new_label, an int class id; received {label!r}")
        if not 0 <= label < self.n_classes:
            raise ValueError(f"new_label must be in [0, {self.n_classes}); received {label}")
        if label == self.train_labels[t]:
            raise ValueError(
                f"new_label {label} is already the label of training example {t}; "
                "use action 'keep' instead"
            )
        return decision

    def decide(
        self, train_id: int, action: str, new_label: int | None = None, note: str = ""
    ) -> Decision:
        """Record (or replace) the decision for one example and save; returns it."""
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        decision = self.validate(Decision(train_id, action, new_label, str(note), stamp))
        label = None if new_label is None else int(new_label)
        decision = dataclasses.replace(decision, train_id=int(train_id), new_label=label)
        with self._lock:
            self._decisions = self._read()
            self._decisions[decision.train_id] = decision
            self._write()
        return decision

    def undo(self, train_id: int) -> None:
        """Forget the decision for one example (nothing happens if there is none) and save."""
        with self._lock:
            self._decisions = self._read()
            if self._decisions.pop(int(train_id), None) is not None:
                self._write()

    def get(self, train_id: int) -> Decision | None:
        return self._decisions.get(int(train_id))

    @property
    def decisions(self) -> dict[int, Decision]:
        """train_id -> decision, as last read or written (call ``reload`` to re-read)."""
        return dict(self._decisions)

    def reload(self) -> None:
        with self._lock:
            self._decisions = self._read()

    def to_frame(self) -> pd.DataFrame:
        """One row per decision, sorted by train_id, with the current ``label`` added."""
        rows = [
            {
                "train_id": d.train_id,
                "label": int(self.train_labels[d.train_id]),
                "action": d.action,
                "new_label": pd.NA if d.new_label is None else d.new_label,
                "note": d.note,
                "updated_at": d.updated_at,
            }
            for d in sorted(self._decisions.values(), key=lambda d: d.train_id)
        ]
        columns = ["train_id", "label", "action", "new_label", "note", "updated_at"]
        frame = pd.DataFrame(rows, columns=columns)
        return frame.astype({"train_id": "int64", "label": "int64", "new_label": "Int64"})

    def export_csv(self, dest: str | os.PathLike[str]) -> Path:
        """Write ``to_frame()`` as CSV to ``dest`` (atomically) and return the path."""
        text = self.to_frame().to_csv(index=False)
        return _write_text_atomic(Path(dest), text)

    def cleaned_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """The training set after the decisions.

        Returns:
            ``(labels, keep)``: (n_train,) int64 labels with relabels applied, and (n_train,)
            bool, False for excluded examples.
        """
        labels, keep = self.train_labels.copy(), np.ones(len(self.train_labels), dtype=bool)
        for d in self._decisions.values():
            if d.action == "relabel" and d.new_label is not None:
                labels[d.train_id] = d.new_label
            elif d.action == "exclude":
                keep[d.train_id] = False
        return labels, keep

    def _read(self) -> dict[int, Decision]:
        if not self.path.exists():
            return {}
        decisions: dict[int, Decision] = {}
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != TRIAGE_COLUMNS:
                raise ValueError(
                    f"{self.path} must have the header {','.join(TRIAGE_COLUMNS)}; "
                    f"found {reader.fieldnames}"
                )
            for line, row in enumerate(reader, start=2):
                decision = self._parse_row(row, line)
                decisions[decision.train_id] = decision
        return decisions

    def _parse_row(self, row: dict[str, str], line: int) -> Decision:
        try:
            new_label = int(row["new_label"]) if row["new_label"] else None
            decision = Decision(
                int(row["train_id"]), row["action"], new_label, row["note"], row["updated_at"]
            )
            return self.validate(decision)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{self.path}, line {line}: {err}") from err

    def _write(self) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(TRIAGE_COLUMNS)
        for d in sorted(self._decisions.values(), key=lambda d: d.train_id):
            label = "" if d.new_label is None else d.new_label
            writer.writerow([d.train_id, d.action, label, d.note, d.updated_at])
        _write_text_atomic(self.path, buffer.getvalue())


def _write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode())
    return path
