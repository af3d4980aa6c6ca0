"""What the Mislabeled, Upload and counterfactual views show, computed without Streamlit.

The pages (``pages/mislabeled.py``, ``pages/upload.py``, the counterfactual section of
``pages/explore.py``) only lay out widgets; the queue order, tables and figures are built here.
Figures set no colours of their own for backgrounds or text, so ``st.plotly_chart``'s
Streamlit theme gives them the light or dark look of the app.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from explorer import mislabel, views
from explorer.artifacts import ExplorerData
from explorer.counterfactual import CounterfactualResult

MAIN_DETECTORS = ("TRAK suspicion", "loss (ensemble)", "cleanlab (ensemble)")
"""Detectors compared in the chart: ours and the two baselines."""
METRIC_KS = (50, 100, 200)

TRIAGE_SHORTCUTS: tuple[tuple[str, str], ...] = (
    ("K", "keep the label of this suspect, go to the next"),
    ("L", "relabel it with the class chosen under New label, go to the next"),
    ("X", "exclude it from the training set, go to the next"),
    ("N", "skip to the next undecided suspect"),
    ("P", "back to the previous suspect in the ranking"),
    ("U", "undo the decision on this suspect"),
    ("?", "this list of shortcuts"),
    ("Esc", "close this list"),
)
"""(key, action) of every keyboard shortcut on the Mislabeled page."""


# --- Mislabeled: queue ------------------------------------------------------------------------


def suspect_order(signals: pd.DataFrame) -> np.ndarray:
    """Training ids by decreasing ``suspicion`` (ties: smaller id first): (n_train,) int64."""
    values = signals["suspicion"].to_numpy(np.float64)
    return signals.index.to_numpy(np.int64)[np.argsort(-values, kind="stable")]


def next_undecided(order: np.ndarray, decided: Collection[int], after: int | None) -> int | None:
    """The first undecided id after ``after`` in ``order``, wrapping to the start.

    From ``after=None`` (or an id not in ``order``) the search starts at the top. None when
    every id is decided.
    """
    order = np.asarray(order, dtype=np.int64)
    start = 0
    if after is not None:
        where = np.flatnonzero(order == after)
        start = int(where[0]) + 1 if len(where) else 0
    for i in (*range(start, len(order)), *range(0, start)):
        if int(order[i]) not in decided:
            return int(order[i])
    return None


def previous_in_order(order: np.ndarray, current: int | None) -> int | None:
    """The id ranked just above ``current``; None at the top or for an id not ranked."""
    where = np.flatnonzero(np.asarray(order) == current) if current is not None else []
    return int(order[where[0] - 1]) if len(where) and where[0] > 0 else None


def decision_text(decision: mislabel.Decision | None, class_names: Sequence[str]) -> str:
    """``"undecided"``, ``"keep"``, ``"exclude"`` or ``"relabel → 3"``."""
    if decision is None:
        return "undecided"
    if decision.action == "relabel" and decision.new_label is not None:
        return f"relabel → {views.class_name(decision.new_label, class_names)}"
    return decision.action


def ranking_table(
    data: ExplorerData,
    signals: pd.DataFrame,
    order: np.ndarray,
    decisions: Mapping[int, mislabel.Decision],
    thumbs: views.Thumbnails,
) -> pd.DataFrame:
    """One row per id of ``order`` (already cut to what is shown), most suspicious first.

    Columns: rank, id, image (data URI), label, suggested (the ensemble's class), suspicion,
    loss, decision.
    """
    names = data.class_names
    ids = np.asarray(order, dtype=np.int64)
    rows = signals.loc[ids]
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(ids) + 1),
            "id": ids,
            "image": thumbs.uris(ids),
            "label": [views.class_name(int(c), names) for c in rows["label"]],
            "suggested": [views.class_name(int(c), names) for c in rows["suggested_label"]],
            "suspicion": rows["suspicion"].to_numpy(np.float64),
            "loss": rows["loss"].to_numpy(np.float64),
            "decision": [decision_text(decisions.get(int(i)), names) for i in ids],
        }
    )


def decisions_csv(book: mislabel.TriageBook, class_names: Sequence[str]) -> str:
    """CSV of the decisions (``TriageBook.to_frame``) with class names beside the class ids."""
    frame = book.to_frame()
    frame.insert(2, "label_name", [views.class_name(int(c), class_names) for c in frame["label"]])
    frame["new_label_name"] = [
        "" if pd.isna(c) else views.class_name(int(c), class_names) for c in frame["new_label"]
    ]
    return frame.to_csv(index=False)


# --- Mislabeled: detection metrics --------------------------------------------------------------


def metric_ks(n_train: int, ks: Sequence[int] = METRIC_KS) -> tuple[int, ...]:
    """The ks of ``ks`` below ``n_train``; ``(n_train // 2,)`` when none is (tiny sets)."""
    kept = tuple(k for k in ks if k < n_train)
    return kept or (max(1, n_train // 2),)


def precision_curves(
    scores: Mapping[str, np.ndarray], is_positive: np.ndarray, max_k: int
) -> pd.DataFrame:
    """Precision at every k in 1..max_k of each method (higher score = more suspicious).

    Returns:
        Long table with columns method, k, precision (``len(scores) * max_k`` rows; max_k is
        capped at n).
    """
    positive = np.asarray(is_positive, dtype=bool)
    max_k = min(int(max_k), len(positive))
    ks = np.arange(1, max_k + 1)
    frames = []
    for name, s in scores.items():
        order = np.argsort(-np.asarray(s, dtype=np.float64), kind="stable")[:max_k]
        hits = np.cumsum(positive[order])  # (max_k,) positives among the top k
        frames.append(pd.DataFrame({"method": name, "k": ks, "precision": hits / ks}))
    return pd.concat(frames, ignore_index=True)


def precision_figure(curves: pd.DataFrame, base_rate: float) -> go.Figure:
    """Lines of precision@k per method, with the share of flips (a random ranking) dashed."""
    fig = go.Figure()
    for name, part in curves.groupby("method", sort=False):
        fig.add_trace(go.Scatter(x=part["k"], y=part["precision"], mode="lines", name=name))
    fig.add_hline(
        y=base_rate,
        line_dash="dot",
        annotation_text="random ranking",
        annotation_position="bottom right",
    )
    fig.update_layout(
        height=300,
        margin=dict(l=10, r=10, t=20, b=10),
        xaxis_title="k (top-k most suspicious)",
        yaxis_title="precision@k (share flipped)",
        yaxis_range=[0, 1.02],
        legend=dict(orientation="h", y=-0.25),
    )
    return fig


# --- Counterfactual -----------------------------------------------------------------------------


def counterfactual_runs(result: CounterfactualResult, class_names: Sequence[str]) -> pd.DataFrame:
    """Per seed: baseline margin and prediction, then the margin change (Δ, retrained minus
    baseline) and whether the prediction flipped, after removing the top-k and k random."""
    runs = result.runs
    k = result.k
    flips = {True: "yes", False: "no"}
    return pd.DataFrame(
        {
            "seed": runs["seed"],
            "baseline margin": runs["baseline_margin"],
            "predicted": [views.class_name(int(c), class_names) for c in runs["baseline_pred"]],
            f"Δ top-{k}": runs["top_k_change"],
            f"flip top-{k}": runs["top_k_flips"].map(flips),
            f"Δ {k} random": runs["random_change"],
            f"flip {k} random": runs["random_flips"].map(flips),
        }
    )


def counterfactual_figure(result: CounterfactualResult) -> go.Figure:
    """Grouped bars of the margin change per seed and on average: top-k vs k random."""
    runs = result.runs
    x = [f"seed {s}" for s in runs["seed"]] + ["mean"]
    fig = go.Figure()
    for column, label, colour in (
        ("top_k_change", f"top-{result.k} helpful removed", views.HARMFUL_COLOR),
        ("random_change", f"{result.k} random removed", "#8c9aae"),
    ):
        values = [*runs[column].tolist(), float(runs[column].mean())]
        fig.add_trace(go.Bar(x=x, y=values, name=label, marker_color=colour))
    fig.add_hline(y=0, line_width=1)
    fig.update_layout(
        barmode="group",
        height=280,
        margin=dict(l=10, r=10, t=20, b=10),
        yaxis_title="margin change (retrained − baseline)",
        legend=dict(orientation="h", y=-0.2),
    )
    return fig


def counterfactual_verdict(result: CounterfactualResult) -> str:
    """One sentence on the mean margin changes and the flips."""
    summary = result.summary.iloc[0]
    top, rand = float(summary["mean_top_k_change"]), float(summary["mean_random_change"])
    n = int(summary["n_seeds"])
    direction = "dropped" if top < 0 else "rose"
    compare = "more than" if top < rand else "not more than"
    return (
        f"Removing the top-{result.k} helpful training images {direction} the margin by "
        f"{abs(top):.3g} on average over {n} seed(s), {compare} removing {result.k} random "
        f"ones ({rand:+.3g}). The prediction flipped in {int(summary['top_k_flips'])} of {n} "
        f"seed(s) (random: {int(summary['random_flips'])} of {n}). Took {result.seconds:.1f} s."
    )


# --- Upload -------------------------------------------------------------------------------------


def probability_figure(probs: np.ndarray, class_names: Sequence[str], label: int) -> go.Figure:
    """Bars of the ensemble's class probabilities; the attributed label's bar highlighted."""
    colours = [views.HELPFUL_COLOR if c == label else "#8c9aae" for c in range(len(probs))]
    fig = go.Figure(go.Bar(x=list(class_names), y=np.asarray(probs), marker_color=colours))
    fig.update_layout(
        height=220,
        margin=dict(l=10, r=10, t=10, b=10),
        yaxis_title="probability",
        yaxis_range=[0, 1],
        xaxis_type="category",
    )
    return fig
