"""What the Overview page shows, computed without Streamlit so it can be unit-tested.

The dataset (sizes, class counts, flipped labels), the model (accuracy, per-class accuracy,
confusion matrix), how the artifacts were made (from the ``info`` dict written with them) and
the class-by-class influence: the mean TRAK score of training examples of one label on test
examples of one true class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from explorer import views
from explorer.artifacts import ExplorerData

NOT_RECORDED = "not recorded"
SCORE_ROW_CHUNK = 1024
"""Test rows of the score matrix read at a time (it may be a memory map)."""


@dataclass(frozen=True)
class DatasetSummary:
    """Sizes of one task.

    Attributes:
        n_train, n_test: number of training and test examples.
        n_classes: number of classes (class names, or the largest label + 1).
        n_flipped: training labels flipped on purpose.
        counts: one row per class: class, train (labels trained with), train (true labels),
            test.
    """

    n_train: int
    n_test: int
    n_classes: int
    n_flipped: int
    counts: pd.DataFrame


def _checked(labels: np.ndarray, n_classes: int, name: str = "labels") -> np.ndarray:
    """``labels`` as int64, after checking they lie in [0, n_classes)."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"{name} must lie in [0, {n_classes}), got values in [{labels.min()}, {labels.max()}]"
        )
    return labels


def class_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes,) int64 number of examples of each class."""
    return np.bincount(_checked(labels, n_classes), minlength=n_classes).astype(np.int64)


def dataset_summary(data: ExplorerData) -> DatasetSummary:
    names = data.class_names
    n_classes = len(names)
    counts = pd.DataFrame(
        {
            "class": names,
            "train": class_counts(data.train_labels, n_classes),
            "train (true labels)": class_counts(data.train_true_labels, n_classes),
            "test": class_counts(data.test_labels, n_classes),
        }
    )
    return DatasetSummary(
        n_train=len(data.train_labels),
        n_test=len(data.test_labels),
        n_classes=n_classes,
        n_flipped=int(np.count_nonzero(data.flipped)),
        counts=counts,
    )


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 counts; row = true class, column = predicted class."""
    labels, preds = _checked(labels, n_classes), _checked(preds, n_classes, "preds")
    if labels.shape != preds.shape:
        raise ValueError(
            f"labels and preds must have the same shape, got {labels.shape} and {preds.shape}"
        )
    flat = np.bincount(labels * n_classes + preds, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes).astype(np.int64)


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Fraction of predictions equal to the labels; NaN for no examples (undefined)."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    return float(np.mean(labels == preds)) if labels.size else float("nan")


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """(n_classes,) float64 accuracy (recall) per true class; NaN for a class with no test
    examples."""
    confusion = np.asarray(confusion, dtype=np.float64)
    totals = confusion.sum(1)  # (n_classes, n_classes) -> (n_classes,) per true class
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(confusion) / totals, np.nan)


def class_influence(
    scores: np.ndarray, train_labels: np.ndarray, test_labels: np.ndarray, n_classes: int
) -> np.ndarray:
    """Mean TRAK score of each training class on each test class.

    Args:
        scores: (n_test, n_train) scores (a memory map is read in row chunks).
        train_labels: (n_train,) int, the labels the model was trained with.
        test_labels: (n_test,) int true labels.
        n_classes: number of classes.

    Returns:
        (n_classes, n_classes) float64; entry [a, b] is the mean of ``scores[j, i]`` over
        training examples i labelled a and test examples j of class b. NaN where either class
        has no examples (no mean exists).
    """
    n_test, n_train = scores.shape
    if len(train_labels) != n_train or len(test_labels) != n_test:
        raise ValueError(
            f"scores has shape {scores.shape}, train_labels {len(train_labels)} and "
            f"test_labels {len(test_labels)} entries: they must be (n_test, n_train), n_train "
            "and n_test"
        )
    train_counts = class_counts(train_labels, n_classes)
    test_counts = class_counts(test_labels, n_classes)
    # One-hot of training labels, (n_train, n_classes).
    train_onehot = np.eye(n_classes)[np.asarray(train_labels, dtype=np.int64)]
    sums = np.zeros((n_classes, n_classes))  # [train class, test class]
    for start in range(0, n_test, SCORE_ROW_CHUNK):
        rows = np.asarray(scores[start : start + SCORE_ROW_CHUNK], dtype=np.float64)
        per_train_class = rows @ train_onehot  # (chunk, n_train) @ (n_train, C) -> (chunk, C)
        chunk_labels = np.asarray(test_labels[start : start + SCORE_ROW_CHUNK], dtype=np.int64)
        np.add.at(sums.T, chunk_labels, per_train_class)  # accumulate rows per test class
    pairs = np.outer(train_counts, test_counts).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, sums / pairs, np.nan)


# --- how the artifacts were made -------------------------------------------------------------


def _get(info: dict[str, Any], *path: str) -> Any:
    value: Any = info
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _fmt(value: Any) -> str:
    if value is None:
        return NOT_RECORDED
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _n_checkpoints(info: dict[str, Any]) -> int | None:
    n = _get(info, "demo_config", "n_checkpoints")
    if n is None and isinstance(info.get("kernel"), list):
        n = len(info["kernel"])
    return n


def artifact_settings(info: dict[str, Any]) -> pd.DataFrame:
    """Rows (setting, value) of how the artifacts were made; absent fields say so.

    All values are strings (``NOT_RECORDED`` where the info dict lacks the field).
    """
    kernels = [k for k in info.get("kernel") or [] if isinstance(k, dict)]
    lam_abs = [k["lam_abs"] for k in kernels if isinstance(k.get("lam_abs"), (int, float))]
    accuracies = info.get("checkpoint_test_accuracy")
    rows = [
        ("model", _get(info, "demo_config", "model")),
        ("parameters", info.get("n_params")),
        ("checkpoints", _n_checkpoints(info)),
        ("epochs per checkpoint", _get(info, "demo_config", "epochs")),
        ("projection dimension k", _get(info, "trak_config", "proj_dim")),
        ("projection", _get(info, "trak_config", "proj_type")),
        ("projection seed", _get(info, "trak_config", "seed")),
        ("model output", _get(info, "trak_config", "model_output")),
        ("λ (relative)", _get(info, "trak_config", "lam")),
        ("λ (absolute, per checkpoint)", ", ".join(f"{v:.4g}" for v in lam_abs) or None),
        ("flipped label fraction", _get(info, "demo_config", "flip_fraction")),
        (
            "test accuracy per checkpoint",
            ", ".join(f"{a:.1%}" for a in accuracies) if accuracies else None,
        ),
    ]
    return pd.DataFrame({"setting": [r[0] for r in rows], "value": [_fmt(r[1]) for r in rows]})


STAGES = (
    ("train_s", "train checkpoints"),
    ("featurize_s", "featurize (gradients + projection)"),
    ("scores_and_index_s", "kernel, scores and index"),
)


def stage_timings(info: dict[str, Any]) -> pd.DataFrame:
    """Rows (stage, seconds, detail) from ``info["timings"]``; stages not recorded are left out.

    A stage timed per checkpoint (a list) is summed; ``detail`` lists the parts. Empty (with
    the same columns) when nothing was timed.
    """
    timings = info.get("timings") or {}
    rows = []
    for key, stage in STAGES:
        value = timings.get(key)
        if value is None:
            continue
        parts = [float(v) for v in value] if isinstance(value, list) else [float(value)]
        detail = (
            "per checkpoint: " + ", ".join(f"{p:.1f} s" for p in parts) if len(parts) > 1 else ""
        )
        rows.append((stage, sum(parts), detail))
    return pd.DataFrame(rows, columns=["stage", "seconds", "detail"])


def unrecorded_stages(info: dict[str, Any]) -> list[str]:
    """Names of the stages of ``STAGES`` that ``info["timings"]`` does not time."""
    timings = info.get("timings") or {}
    return [stage for key, stage in STAGES if timings.get(key) is None]


def total_seconds(info: dict[str, Any]) -> float | None:
    """The recorded wall time of the whole build, None when not recorded."""
    total = _get(info, "timings", "total_s")
    return None if total is None else float(total)


# --- figures -----------------------------------------------------------------------------------


def _layout(fig: go.Figure, height: int) -> go.Figure:
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30, b=10))
    return fig


def class_counts_figure(counts: pd.DataFrame) -> go.Figure:
    """Grouped bars: training (as trained) and test examples per class."""
    fig = go.Figure(
        [
            go.Bar(x=counts["class"], y=counts["train"], name="train", marker_color="#4c78a8"),
            go.Bar(x=counts["class"], y=counts["test"], name="test", marker_color="#f58518"),
        ]
    )
    fig.update_layout(
        barmode="group",
        xaxis=dict(title="class", type="category"),
        yaxis_title="examples",
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0),
    )
    return _layout(fig, 300)


def per_class_accuracy_figure(names: Sequence[str], accuracies: np.ndarray) -> go.Figure:
    fig = go.Figure(
        go.Bar(
            x=list(names),
            y=accuracies,
            marker_color="#4c78a8",
            text=[f"{a:.0%}" if np.isfinite(a) else "–" for a in accuracies],
            textposition="outside",
            cliponaxis=False,
        )
    )
    fig.update_layout(
        xaxis=dict(title="true class", type="category"),
        yaxis=dict(title="accuracy", range=[0, 1.12], tickformat=".0%"),
    )
    return _layout(fig, 300)


def _heatmap_axes(fig: go.Figure, x_title: str, y_title: str) -> go.Figure:
    fig.update_xaxes(title=x_title, type="category", side="bottom")
    fig.update_yaxes(title=y_title, type="category", autorange="reversed")
    return fig


def confusion_figure(confusion: np.ndarray, names: Sequence[str]) -> go.Figure:
    """Heatmap of counts (text) coloured by the fraction of each true class (row)."""
    confusion = np.asarray(confusion)
    totals = confusion.sum(1, keepdims=True)  # (C, C) -> (C, 1) examples per true class
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(totals > 0, confusion / totals, np.nan)
    fig = go.Figure(
        go.Heatmap(
            z=share,
            x=list(names),
            y=list(names),
            text=confusion,
            texttemplate="%{text}",
            customdata=confusion,
            hovertemplate="true %{y}, predicted %{x}: %{customdata} (%{z:.1%} of class %{y})"
            "<extra></extra>",
            colorscale="Blues",
            zmin=0,
            zmax=1,
            colorbar=dict(title="share of row", tickformat=".0%", thickness=12),
        )
    )
    return _layout(_heatmap_axes(fig, "predicted class", "true class"), 420)


def display_exponent(values: np.ndarray) -> int:
    """Power of ten e such that ``values / 10**e`` has its largest magnitude in [10, 100).

    0 when there is no finite non-zero value.
    """
    finite = np.abs(values[np.isfinite(values)])
    peak = float(finite.max()) if finite.size else 0.0
    return int(np.floor(np.log10(peak))) - 1 if peak > 0 else 0


def influence_figure(
    influence: np.ndarray, names: Sequence[str], fit_off_diagonal: bool = True
) -> go.Figure:
    """Heatmap of ``class_influence``: diverging colours centred at 0, symmetric range.

    Cells show the mean score times ``10**-e`` (``display_exponent``; the colour bar says so);
    hovering shows the unscaled value.

    Args:
        influence: (n_classes, n_classes), [training label, test class].
        names: class names.
        fit_off_diagonal: fit the colour range to the off-diagonal cells, so the mostly much
            larger same-class cells saturate and the help and harm between classes shows.
    """
    influence = np.asarray(influence, dtype=np.float64)
    exponent = display_exponent(influence)
    shown = influence / 10.0**exponent
    scale = f"<br>×1e{exponent}" if exponent else ""
    basis = shown[~np.eye(len(shown), dtype=bool)] if fit_off_diagonal else shown
    finite = np.abs(basis[np.isfinite(basis)])
    limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    fig = go.Figure(
        go.Heatmap(
            z=shown,
            x=list(names),
            y=list(names),
            texttemplate="%{z:.1f}",
            customdata=influence,
            hovertemplate="training label %{y} on test class %{x}: mean score %{customdata:.3g}"
            "<extra></extra>",
            colorscale=views.DIVERGING_SCALE,
            zmid=0.0,
            zmin=-limit,
            zmax=limit,
            colorbar=dict(title="mean score" + scale, thickness=12),
        )
    )
    return _layout(_heatmap_axes(fig, "test class (true label)", "training label"), 420)


def timings_figure(timings: pd.DataFrame) -> go.Figure:
    fig = go.Figure(
        go.Bar(
            x=timings["seconds"],
            y=timings["stage"],
            orientation="h",
            marker_color="#4c78a8",
            text=[f"{s:.1f} s" for s in timings["seconds"]],
            textposition="auto",
            hovertext=timings["detail"],
        )
    )
    fig.update_layout(xaxis_title="seconds", yaxis=dict(autorange="reversed"))
    return _layout(fig, 60 + 50 * max(1, len(timings)))
