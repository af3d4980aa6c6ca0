"""What the Explore page shows, computed without Streamlit so it can be unit-tested.

The page (``pages/explore.py``) only lays out widgets; filtering the test gallery, paging it,
encoding thumbnails, building its tables, captions and the score histogram happen here.
"""

from __future__ import annotations

import base64
import io
import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from PIL import Image

from explorer.artifacts import ExplorerData

Outcome = Literal["all", "correct", "incorrect"]
OUTCOMES: tuple[Outcome, ...] = ("all", "correct", "incorrect")
ALL_CLASSES = "all"
"""The class-filter option that keeps every class."""

PAGE_SIZE = 48
GALLERY_SCALE = 2
"""Gallery thumbnails are 2x the stored images (56 px for 28 px digits), nearest neighbour."""
RESULT_SCALE = 4
TARGET_SCALE = 8
LOG_COUNTS_FROM = 1000
"""Score histograms of at least this many training examples count on a log axis."""
HELPFUL_COLOR = "#2e7d32"
HARMFUL_COLOR = "#c62828"
DIVERGING_SCALE = "PiYG"
"""Scores on maps and heatmaps: pink below 0 (harmful), green above (helpful), white at 0."""


@dataclass(frozen=True)
class Filters:
    """Which test examples the gallery lists.

    Attributes:
        true_class: keep this true class only; None keeps all.
        pred_class: keep this predicted class only; None keeps all.
        outcome: "all", "correct" (prediction equals label) or "incorrect".
    """

    true_class: int | None = None
    pred_class: int | None = None
    outcome: Outcome = "all"

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {self.outcome!r}")


def filter_test_ids(labels: np.ndarray, preds: np.ndarray, filters: Filters) -> np.ndarray:
    """Test ids that pass ``filters``.

    Args:
        labels: (n_test,) int true labels.
        preds: (n_test,) int predicted classes.
        filters: the gallery filters.

    Returns:
        (n_kept,) int64 ids in ascending order; empty when nothing matches.
    """
    labels, preds = np.asarray(labels), np.asarray(preds)
    if labels.shape != preds.shape:
        raise ValueError(
            f"labels and preds must have the same shape, got {labels.shape} and {preds.shape}"
        )
    keep = np.ones(labels.shape, dtype=bool)
    if filters.true_class is not None:
        keep &= labels == filters.true_class
    if filters.pred_class is not None:
        keep &= preds == filters.pred_class
    if filters.outcome == "correct":
        keep &= labels == preds
    elif filters.outcome == "incorrect":
        keep &= labels != preds
    return np.flatnonzero(keep).astype(np.int64)


@dataclass(frozen=True)
class GalleryPage:
    """One page of the gallery.

    Attributes:
        ids: (<= page_size,) int64 ids shown on this page; empty when nothing matched.
        page: 1-based page number after clamping into [1, n_pages].
        n_pages: number of pages, at least 1 (an empty result is one empty page).
        start: 0-based position of the first id in the filtered list.
        n_items: length of the filtered list.
    """

    ids: np.ndarray
    page: int
    n_pages: int
    start: int
    n_items: int


def count_pages(n_items: int, page_size: int = PAGE_SIZE) -> int:
    """Pages needed for ``n_items``; 1 for an empty list (it shows as one empty page)."""
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    if n_items < 0:
        raise ValueError(f"n_items must be >= 0, got {n_items}")
    return max(1, math.ceil(n_items / page_size))


def paginate(ids: np.ndarray, page: int, page_size: int = PAGE_SIZE) -> GalleryPage:
    """Cut ``ids`` into pages and return page ``page`` (1-based), clamped into range.

    A page past the end shows the last page, one below 1 the first; the last page can be
    partial.
    """
    ids = np.asarray(ids, dtype=np.int64)
    n_pages = count_pages(len(ids), page_size)
    page = min(max(int(page), 1), n_pages)
    start = (page - 1) * page_size
    return GalleryPage(
        ids=ids[start : start + page_size],
        page=page,
        n_pages=n_pages,
        start=start,
        n_items=len(ids),
    )


def table_height(n_rows: int, row_px: int, max_px: int, header_px: int = 35) -> int:
    """Pixel height of an st.dataframe that shows ``n_rows`` rows, capped at ``max_px``.

    A short page gets a short table instead of empty rows; a long one scrolls inside
    ``max_px``.
    """
    return min(max_px, header_px + n_rows * row_px + 2)


def page_of(ids: np.ndarray, item: int, page_size: int = PAGE_SIZE) -> int | None:
    """1-based page on which ``item`` appears in ``ids``, or None if it is not there."""
    where = np.flatnonzero(np.asarray(ids) == item)
    return int(where[0]) // page_size + 1 if len(where) else None


def row_of(page_ids: np.ndarray, item: int | None) -> int | None:
    """Row of ``item`` in one page of ids, or None when absent (or ``item`` is None)."""
    if item is None:
        return None
    where = np.flatnonzero(np.asarray(page_ids) == item)
    return int(where[0]) if len(where) else None


def step_target(ids: np.ndarray, current: int | None, delta: int) -> int | None:
    """The test id ``delta`` steps from ``current`` in the filtered, ascending ``ids``.

    From no selection, a step forward lands on the first id and a step back on the last. From
    an id the filters hide, a step forward lands on the next larger id and back on the next
    smaller one. None when the step leaves the list (or it is empty): nothing to step to.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if delta == 0:
        raise ValueError("delta must be a non-zero number of steps, got 0")
    if len(ids) == 0:
        return None
    if current is None:
        return int(ids[0] if delta > 0 else ids[-1])
    where = np.flatnonzero(ids == current)
    if len(where):
        position = int(where[0]) + delta
    else:
        # ids are ascending: the insertion point splits smaller from larger ids.
        insert = int(np.searchsorted(ids, current))
        position = insert + delta - 1 if delta > 0 else insert + delta
    return int(ids[position]) if 0 <= position < len(ids) else None


def step_page(page: int, n_pages: int, delta: int) -> int | None:
    """Page ``page + delta`` when it lies in [1, n_pages], else None."""
    target = page + delta
    return target if 1 <= target <= n_pages else None


SHORTCUTS: tuple[tuple[str, str], ...] = (
    ("J", "next test image in the gallery (in the filtered order)"),
    ("K", "previous test image in the gallery"),
    ("L", "next gallery page"),
    ("H", "previous gallery page"),
    ("?", "this list of shortcuts"),
    ("Esc", "close this list"),
)
"""(key, action) of every keyboard shortcut on the Explore page."""


def class_options(class_names: Sequence[str]) -> list[str]:
    """Options of a class filter: ``"all"`` then one per class name."""
    return [ALL_CLASSES, *class_names]


def parse_class_option(option: str | None, class_names: Sequence[str]) -> int | None:
    """Class index of a filter option; None for ``"all"`` or no choice."""
    if option is None or option == ALL_CLASSES:
        return None
    names = list(class_names)
    if option not in names:
        raise ValueError(f"class filter must be 'all' or one of {names}, got {option!r}")
    return names.index(option)


def encode_png(image: np.ndarray, scale: int = 1) -> bytes:
    """PNG bytes of one (H, W) or (H, W, 3) uint8 image, enlarged ``scale`` times.

    Enlargement repeats pixels (nearest neighbour) so small digits stay sharp in the browser.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(
            f"image must be (H, W) or (H, W, 3) uint8, got {image.shape} {image.dtype}"
        )
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    # (H, W[, C]) -> (H*scale, W*scale[, C])
    big = image.repeat(scale, axis=0).repeat(scale, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, format="PNG")
    return buffer.getvalue()


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for PNG bytes (tables and st.image take it as a URL)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


class Thumbnails:
    """PNG data URIs of a stack of images, encoded on first use and kept.

    Args:
        images: (n, H, W) or (n, H, W, 3) uint8.
        scale: enlargement factor of every thumbnail.
    """

    def __init__(self, images: np.ndarray, scale: int) -> None:
        self._images = images
        self.scale = scale
        self._uris: dict[int, str] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._images)

    @property
    def image_width(self) -> int:
        """Width in pixels of the stored images (before scaling)."""
        return int(self._images.shape[2])

    def uri(self, i: int) -> str:
        i = int(i)
        if not 0 <= i < len(self._images):
            raise IndexError(f"image id must be in [0, {len(self._images)}), got {i}")
        cached = self._uris.get(i)
        if cached is None:
            cached = png_data_uri(encode_png(np.asarray(self._images[i]), self.scale))
            with self._lock:
                self._uris[i] = cached
        return cached

    def uris(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        return [self.uri(i) for i in ids]


def class_name(c: int, class_names: Sequence[str]) -> str:
    return class_names[c] if 0 <= c < len(class_names) else str(c)


def label_text(label: int, true_label: int, flipped: bool, class_names: Sequence[str]) -> str:
    """``"label 3"``, or ``"label 3 (flipped, true 5)"`` for a label flipped on purpose."""
    text = f"label {class_name(label, class_names)}"
    if flipped:
        text += f" (flipped, true {class_name(true_label, class_names)})"
    return text


def gallery_table(data: ExplorerData, ids: np.ndarray, thumbs: Thumbnails) -> pd.DataFrame:
    """One row per test id in ``ids``: id, thumbnail URI, label, prediction, confidence, ok."""
    ids = np.asarray(ids, dtype=np.int64)
    names = data.class_names
    labels, preds = data.test_labels[ids], data.test_pred[ids]
    return pd.DataFrame(
        {
            "id": ids,
            "image": thumbs.uris(ids),
            "label": [class_name(int(c), names) for c in labels],
            "predicted": [class_name(int(c), names) for c in preds],
            "confidence": data.test_conf[ids].astype(np.float64),
            "ok": np.where(labels == preds, "✅", "❌"),
        }
    )


def nowrap(text: str) -> str:
    """``text`` with non-breaking spaces: a caption wraps around it, never inside it."""
    return text.replace(" ", "\u00a0")


def result_caption(
    train_id: int,
    score: float,
    label: int,
    true_label: int,
    flipped: bool,
    class_names: Sequence[str],
) -> str:
    """Caption of one training thumbnail: ``"#12 · +0.53 label 3"``.

    A flipped label reads ``"🚩 #12 · +0.53 label 3 (flipped, true 5)"``. Non-breaking spaces
    keep each part whole when the caption wraps under a narrow thumbnail.
    """
    head = nowrap(f"{'🚩 ' if flipped else ''}#{train_id} · {score:+.3g}")
    text = f"{head} {nowrap('label ' + class_name(label, class_names))}"
    if flipped:
        text += f" (flipped, {nowrap('true ' + class_name(true_label, class_names))})"
    return text


@dataclass(frozen=True)
class Attribution:
    """The top-k helpful or harmful training examples of one test example.

    Attributes:
        ids: (k,) int64 training ids, strongest first.
        scores: (k,) float32 TRAK scores of those ids.
        table: one row per id: rank, train id, score, label (e.g. "label 3 (flipped, true
            5)"), flipped, caption (the thumbnail caption, see ``result_caption``).
    """

    ids: np.ndarray
    scores: np.ndarray
    table: pd.DataFrame

    @property
    def captions(self) -> list[str]:
        return list(self.table["caption"])


def attribution(data: ExplorerData, ids: np.ndarray, scores: np.ndarray) -> Attribution:
    """Label each training id of a top-k list; ids and scores are (k,) arrays."""
    ids = np.asarray(ids, dtype=np.int64).ravel()
    scores = np.asarray(scores, dtype=np.float32).ravel()
    names = data.class_names
    labels = data.train_labels[ids].tolist()
    true_labels = data.train_true_labels[ids].tolist()
    flipped = data.flipped[ids].astype(bool).tolist()
    captions, label_texts = [], []
    for j, train_id in enumerate(ids.tolist()):
        lab, true, flip = labels[j], true_labels[j], flipped[j]
        label_texts.append(label_text(lab, true, flip, names))
        captions.append(result_caption(train_id, float(scores[j]), lab, true, flip, names))
    table = pd.DataFrame(
        {
            "rank": np.arange(1, len(ids) + 1),
            "train id": ids,
            "score": scores,
            "label": label_texts,
            "flipped": np.asarray(flipped, dtype=bool),
            "caption": captions,
        }
    )
    return Attribution(ids=ids, scores=scores, table=table)


def top_k_attributions(data: ExplorerData, test_id: int, k: int) -> tuple[Attribution, Attribution]:
    """(helpful, harmful) of ``test_id`` from the index; each holds min(k, n_train) rows."""
    helpful, harmful = data.top_k(test_id, k)
    return (
        attribution(data, helpful.ids[0], helpful.scores[0]),
        attribution(data, harmful.ids[0], harmful.scores[0]),
    )


def score_histogram(
    scores: np.ndarray, helpful_cut: float | None, harmful_cut: float | None, bins: int = 60
) -> go.Figure:
    """Histogram of one target's scores over all training examples, cut-offs marked.

    Args:
        scores: (n_train,) scores of one test example.
        helpful_cut: the k-th largest score (the weakest shown helpful example), or None.
        harmful_cut: the k-th smallest score (the weakest shown harmful example), or None.
        bins: number of histogram bins.
    """
    scores = np.asarray(scores, dtype=np.float64)
    fig = go.Figure(go.Histogram(x=scores, nbinsx=bins, marker_color="#8c9aae", name="scores"))
    low, high = (float(scores.min()), float(scores.max())) if scores.size else (0.0, 0.0)
    for cut, color, text, side, edge in (
        (helpful_cut, HELPFUL_COLOR, "helpful top-k", "top right", high),
        (harmful_cut, HARMFUL_COLOR, "harmful top-k", "top left", low),
    ):
        if cut is None:
            continue
        # Shade the tail the top-k list comes from and label it on its outer side.
        fig.add_vrect(
            x0=min(cut, edge), x1=max(cut, edge), fillcolor=color, opacity=0.12, line_width=0
        )
        fig.add_vline(
            x=float(cut),
            line_color=color,
            line_dash="dash",
            annotation_text=text,
            annotation_font_color=color,
            annotation_position=side,
        )
    fig.update_layout(
        height=240,
        margin=dict(l=10, r=10, t=20, b=10),
        showlegend=False,
        bargap=0.02,
        xaxis_title="TRAK score",
        yaxis_title="training examples",
    )
    if len(scores) >= LOG_COUNTS_FROM:
        # Log counts so the sparse tails the top-k lists come from stay visible.
        fig.update_yaxes(type="log", dtick=1)
    return fig


TOP_K_COLUMNS = ("id", "label", "true label", "flipped", "score", "rank", "kind")


def top_k_frame(data: ExplorerData, helpful: Attribution, harmful: Attribution) -> pd.DataFrame:
    """One row per shown training example: helpful rows (rank order), then harmful ones.

    Columns ``TOP_K_COLUMNS``: training id, the label it was trained with, its true label
    (they differ where ``flipped``), score, 1-based rank within its list, and kind
    (``"helpful"`` or ``"harmful"``). Labels are class names.
    """
    names = data.class_names
    frames = []
    for kind, result in (("helpful", helpful), ("harmful", harmful)):
        ids = result.ids
        frames.append(
            pd.DataFrame(
                {
                    "id": ids,
                    "label": [class_name(int(c), names) for c in data.train_labels[ids]],
                    "true label": [class_name(int(c), names) for c in data.train_true_labels[ids]],
                    "flipped": data.flipped[ids].astype(bool),
                    "score": result.scores.astype(np.float64),
                    "rank": np.arange(1, len(ids) + 1),
                    "kind": kind,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)[list(TOP_K_COLUMNS)]


def top_k_csv(frame: pd.DataFrame) -> str:
    """CSV text of ``top_k_frame`` (no index column; scores with full float32 precision)."""
    return frame.to_csv(index=False, float_format="%.9g")


def help_key_script(button_key: str) -> str:
    """A script making "?" click the button with key ``button_key`` (a shortcut-list button).

    Streamlit's own shortcuts take no punctuation keys; keys typed into inputs are ignored.
    """
    flag = "__trakHelpKey_" + re.sub(r"\W", "_", button_key)
    return f"""<script>
(() => {{
  if (window.{flag}) return;
  window.{flag} = true;
  document.addEventListener("keydown", (event) => {{
    if (event.key !== "?" || event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName)))
      return;
    const button = document.querySelector(".st-key-{button_key} button");
    if (button) {{
      event.preventDefault();
      button.click();
    }}
  }});
}})();
</script>"""
