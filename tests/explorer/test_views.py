"""Filtering, paging, thumbnails, tables and captions behind the Explore page."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from explorer import views
from explorer.artifacts import ExplorerData, load_explorer_data

LABELS = np.array([0, 1, 2, 0, 1, 2, 0])
PREDS = np.array([0, 2, 2, 1, 1, 2, 0])


@pytest.fixture
def data(small_artifact: Path) -> ExplorerData:
    return load_explorer_data(small_artifact)


def unwrap(text: str) -> str:
    return text.replace("\u00a0", " ")


# --- filtering ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (views.Filters(), [0, 1, 2, 3, 4, 5, 6]),
        (views.Filters(true_class=0), [0, 3, 6]),
        (views.Filters(pred_class=2), [1, 2, 5]),
        (views.Filters(outcome="correct"), [0, 2, 4, 5, 6]),
        (views.Filters(outcome="incorrect"), [1, 3]),
        (views.Filters(true_class=1, pred_class=2), [1]),
        (views.Filters(true_class=0, outcome="incorrect"), [3]),
    ],
)
def test_filter_test_ids(filters: views.Filters, expected: list[int]) -> None:
    ids = views.filter_test_ids(LABELS, PREDS, filters)
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, expected)


def test_filter_with_no_match_is_empty() -> None:
    filters = views.Filters(true_class=2, outcome="incorrect")
    ids = views.filter_test_ids(LABELS, PREDS, filters)
    assert ids.shape == (0,)
    page = views.paginate(ids, page=3)
    assert (page.page, page.n_pages, page.n_items, len(page.ids)) == (1, 1, 0, 0)


def test_filter_rejects_mismatched_arrays() -> None:
    with pytest.raises(ValueError, match=r"same shape, got \(7,\) and \(3,\)"):
        views.filter_test_ids(LABELS, PREDS[:3], views.Filters())


def test_filters_reject_unknown_outcome() -> None:
    with pytest.raises(ValueError, match="outcome must be one of .* got 'wrong'"):
        views.Filters(outcome="wrong")  # type: ignore[arg-type]


# --- paging ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "size", "pages"),
    [(0, 48, 1), (1, 48, 1), (48, 48, 1), (49, 48, 2), (100, 10, 10), (101, 10, 11)],
)
def test_count_pages(n: int, size: int, pages: int) -> None:
    assert views.count_pages(n, size) == pages


def test_count_pages_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="page_size must be >= 1, got 0"):
        views.count_pages(5, 0)
    with pytest.raises(ValueError, match="n_items must be >= 0, got -1"):
        views.count_pages(-1, 5)


def test_last_page_is_partial() -> None:
    ids = np.arange(100, 205)  # 105 ids
    page = views.paginate(ids, page=3, page_size=48)
    assert (page.page, page.n_pages, page.start, page.n_items) == (3, 3, 96, 105)
    np.testing.assert_array_equal(page.ids, np.arange(196, 205))


@pytest.mark.parametrize(
    ("asked", "shown"), [(-4, 1), (0, 1), (1, 1), (2, 2), (3, 3), (4, 3), (999, 3)]
)
def test_out_of_range_page_clamps(asked: int, shown: int) -> None:
    page = views.paginate(np.arange(105), page=asked, page_size=48)
    assert page.page == shown
    assert page.ids[0] == (shown - 1) * 48


def test_pages_cover_every_id_once() -> None:
    ids = np.random.default_rng(0).permutation(131)
    n_pages = views.count_pages(len(ids), 20)
    joined = np.concatenate([views.paginate(ids, p, 20).ids for p in range(1, n_pages + 1)])
    np.testing.assert_array_equal(joined, ids)


def test_table_height() -> None:
    assert views.table_height(3, 48, 560) == 35 + 3 * 48 + 2
    assert views.table_height(0, 48, 560) == 37
    assert views.table_height(48, 48, 560) == 560


def test_page_of_and_row_of() -> None:
    ids = np.array([5, 9, 12, 40, 41])
    assert views.page_of(ids, 12, page_size=2) == 2
    assert views.page_of(ids, 41, page_size=2) == 3
    assert views.page_of(ids, 7, page_size=2) is None
    assert views.row_of(np.array([40, 41]), 41) == 1
    assert views.row_of(np.array([40, 41]), 5) is None
    assert views.row_of(np.array([40, 41]), None) is None


# --- class options -----------------------------------------------------------------------


def test_class_options_round_trip() -> None:
    names = ["cat", "dog", "all birds"]
    options = views.class_options(names)
    assert options == ["all", "cat", "dog", "all birds"]
    assert [views.parse_class_option(o, names) for o in options] == [None, 0, 1, 2]
    assert views.parse_class_option(None, names) is None


def test_parse_class_option_rejects_unknown() -> None:
    with pytest.raises(ValueError, match=r"one of \['cat', 'dog'\], got 'cow'"):
        views.parse_class_option("cow", ["cat", "dog"])


# --- thumbnails --------------------------------------------------------------------------


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


@pytest.mark.parametrize("scale", [1, 3])
def test_encode_png_repeats_pixels(scale: int) -> None:
    image = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    decoded = decode(views.encode_png(image, scale))
    np.testing.assert_array_equal(decoded, np.kron(image, np.ones((scale, scale), np.uint8)))


def test_encode_png_color() -> None:
    image = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode(views.encode_png(image, 2))[::2, ::2], image)


def test_encode_png_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"uint8, got \(3, 4\) float64"):
        views.encode_png(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="scale must be >= 1, got 0"):
        views.encode_png(np.zeros((3, 4), np.uint8), scale=0)


def test_data_uri_round_trip() -> None:
    png = views.encode_png(np.full((2, 2), 7, np.uint8))
    uri = views.png_data_uri(png)
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == png


def test_thumbnails_encode_once_and_check_ids() -> None:
    images = np.random.default_rng(1).integers(0, 256, (4, 5, 5), dtype=np.uint8)
    thumbs = views.Thumbnails(images, scale=2)
    assert len(thumbs) == 4 and thumbs.image_width == 5
    first = thumbs.uri(3)
    assert thumbs.uri(3) is first
    assert thumbs.uris([3, 0]) == [first, thumbs.uri(0)]
    np.testing.assert_array_equal(
        decode(base64.b64decode(first.split(",")[1]))[::2, ::2], images[3]
    )
    with pytest.raises(IndexError, match=r"image id must be in \[0, 4\), got 4"):
        thumbs.uri(4)


# --- tables and captions -----------------------------------------------------------------


def test_label_text() -> None:
    names = ["zero", "one"]
    assert views.label_text(1, 1, False, names) == "label one"
    assert views.label_text(1, 0, True, names) == "label one (flipped, true zero)"
    assert views.label_text(5, 5, False, names) == "label 5"


def test_result_caption_marks_flips() -> None:
    names = [str(c) for c in range(10)]
    assert unwrap(views.result_caption(12, 0.5312, 3, 3, False, names)) == "#12 · +0.531 label 3"
    flipped = views.result_caption(7, -2.0, 3, 5, True, names)
    assert unwrap(flipped) == "🚩 #7 · -2 label 3 (flipped, true 5)"
    # breakable spaces only between the parts: id+score | label 3 | (flipped, | true 5)
    assert flipped.split(" ") == [
        "🚩\u00a0#7\u00a0·\u00a0-2",
        "label\u00a03",
        "(flipped,",
        "true\u00a05)",
    ]


def test_gallery_table(data: ExplorerData) -> None:
    ids = np.array([1, 2, 8])
    thumbs = views.Thumbnails(data.test_images, 2)
    table = views.gallery_table(data, ids, thumbs)
    assert list(table.columns) == ["id", "image", "label", "predicted", "confidence", "ok"]
    assert table["id"].tolist() == [1, 2, 8]
    assert table["label"].tolist() == ["1", "2", "8"]
    assert table["predicted"].tolist() == ["2", "2", "9"]
    assert table["ok"].tolist() == ["❌", "✅", "❌"]
    assert table["image"].tolist() == thumbs.uris(ids)
    np.testing.assert_allclose(table["confidence"], data.test_conf[ids])


def test_gallery_table_of_empty_page(data: ExplorerData) -> None:
    table = views.gallery_table(
        data, np.array([], dtype=np.int64), views.Thumbnails(data.test_images, 2)
    )
    assert len(table) == 0


@pytest.mark.parametrize("test_id", [0, 13, 29])
@pytest.mark.parametrize("k", [1, 12, 60, 100])
def test_top_k_attributions_match_argsort(data: ExplorerData, test_id: int, k: int) -> None:
    helpful, harmful = views.top_k_attributions(data, test_id, k)
    scores = np.asarray(data.scores[test_id], dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    n = min(k, len(scores))
    np.testing.assert_array_equal(helpful.ids, order[:n])
    np.testing.assert_array_equal(harmful.ids, order[::-1][:n])
    np.testing.assert_allclose(helpful.scores, scores[order[:n]], rtol=1e-5, atol=1e-5)
    assert helpful.table["rank"].tolist() == list(range(1, n + 1))
    assert [unwrap(c).split(" · ")[0].lstrip("🚩 ") for c in harmful.captions] == [
        f"#{i}" for i in harmful.ids
    ]


def test_attribution_labels_flipped_examples(data: ExplorerData) -> None:
    ids = np.flatnonzero(data.flipped)
    result = views.attribution(data, ids, np.zeros(len(ids)))
    assert result.table["flipped"].all()
    for i, label, caption in zip(ids, result.table["label"], result.captions, strict=True):
        true = data.train_true_labels[i]
        assert label == f"label {data.train_labels[i]} (flipped, true {true})"
        assert unwrap(caption).startswith(f"🚩 #{i} ")
    clean = views.attribution(data, np.array([0, 1]), np.array([1.0, -1.0]))
    assert not clean.table["flipped"].any()
    assert "flipped" not in "".join(clean.captions)


def test_score_histogram_marks_cutoffs() -> None:
    scores = np.linspace(-3, 5, 200)
    fig = views.score_histogram(scores, helpful_cut=4.0, harmful_cut=-2.0)
    assert len(fig.data) == 1 and len(fig.data[0].x) == 200
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert sorted(line.x0 for line in lines) == [-2.0, 4.0]
    assert sorted((r.x0, r.x1) for r in rects) == [(-3.0, -2.0), (4.0, 5.0)]
    texts = {a.text for a in fig.layout.annotations}
    assert texts == {"helpful top-k", "harmful top-k"}


def test_score_histogram_without_cutoffs() -> None:
    fig = views.score_histogram(np.zeros(3), None, None)
    assert len(fig.layout.shapes) == 0


def test_score_histogram_counts_on_log_axis_when_large() -> None:
    assert views.score_histogram(np.zeros(999), 0, 0).layout.yaxis.type != "log"
    assert views.score_histogram(np.zeros(1000), 0, 0).layout.yaxis.type == "log"


# --- keyboard stepping ---------------------------------------------------------------------

STEP_IDS = np.array([2, 5, 9])


@pytest.mark.parametrize(
    ("current", "delta", "expected"),
    [
        (None, 1, 2),  # nothing selected: forward starts at the first id
        (None, -1, 9),  # and back at the last
        (2, 1, 5),
        (5, -1, 2),
        (9, 1, None),  # past the end
        (2, -1, None),  # before the start
        (6, 1, 9),  # hidden by the filters: the next larger id
        (6, -1, 5),  # the next smaller id
        (0, -1, None),
        (12, 1, None),
        (12, -1, 9),
    ],
)
def test_step_target(current: int | None, delta: int, expected: int | None) -> None:
    assert views.step_target(STEP_IDS, current, delta) == expected


def test_step_target_edges() -> None:
    assert views.step_target(np.array([], dtype=np.int64), 3, 1) is None
    with pytest.raises(ValueError, match="non-zero"):
        views.step_target(STEP_IDS, 2, 0)


def test_step_page() -> None:
    assert [views.step_page(p, 3, 1) for p in (1, 2, 3)] == [2, 3, None]
    assert [views.step_page(p, 3, -1) for p in (1, 2, 3)] == [None, 1, 2]


# --- CSV export ----------------------------------------------------------------------------


def test_top_k_frame_and_csv(data: ExplorerData) -> None:
    helpful, harmful = views.top_k_attributions(data, 3, 48)  # covers every flipped id
    frame = views.top_k_frame(data, helpful, harmful)
    assert tuple(frame.columns) == views.TOP_K_COLUMNS
    assert frame["kind"].tolist() == ["helpful"] * 48 + ["harmful"] * 48
    assert frame["id"].tolist() == [*helpful.ids, *harmful.ids]
    assert frame["rank"].tolist() == [*range(1, 49)] * 2
    ids = frame["id"].to_numpy()
    assert frame["label"].tolist() == [str(c) for c in data.train_labels[ids]]
    assert frame["true label"].tolist() == [str(c) for c in data.train_true_labels[ids]]
    np.testing.assert_array_equal(frame["flipped"], data.flipped[ids])
    assert frame["flipped"].any()
    shown = np.concatenate([helpful.scores, harmful.scores])  # the index's float32 scores
    np.testing.assert_array_equal(frame["score"], shown.astype(np.float64))
    np.testing.assert_allclose(frame["score"], data.scores[3, ids], rtol=1e-5, atol=1e-6)

    parsed = pd.read_csv(io.StringIO(views.top_k_csv(frame)))
    assert tuple(parsed.columns) == views.TOP_K_COLUMNS
    # float32 scores survive the text round trip exactly
    np.testing.assert_array_equal(parsed["score"].astype(np.float32), shown)
    assert parsed["id"].tolist() == frame["id"].tolist()
