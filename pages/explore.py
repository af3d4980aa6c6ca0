"""Explore: pick a test image, see the training images that helped and harmed it most.

Everything a user picks lives in the URL (widgets bound to query parameters), so a link
reopens the same view: ``test`` (selected test id), ``true`` / ``pred`` (class filters),
``outcome`` (all, correct, incorrect), ``page`` (gallery page, 1-based) and ``k`` (top-k).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import streamlit as st

from explorer import app_state, views
from explorer.artifacts import ExplorerData

GALLERY_KEY = "gallery"
GALLERY_ROW_HEIGHT = 48
GALLERY_HEIGHT = 560
DEFAULT_K = 12
MAX_K = 48


def load_or_stop() -> ExplorerData:
    """The artifacts, or an error that says how to build them (and the script stops)."""
    workdir = app_state.current_workdir()
    build = f"`trak-explorer demo --workdir {workdir}`"
    try:
        return app_state.load_data(workdir)
    except FileNotFoundError:
        st.error(
            f"📂 No TRAK Explorer artifacts in `{workdir}`.\n\nBuild them with {build}, or point "
            "`TRAK_EXPLORER_WORKDIR` at a directory that has them, then reload this page."
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        st.error(
            f"⚠️ The artifacts in `{workdir}` could not be read: {exc}\n\nRebuild them with {build}."
        )
    st.stop()


def _first_page() -> None:
    # Setting a widget's value through Session State logs a one-time warning; skip no-ops.
    if st.session_state.get("page", 1) != 1:
        st.session_state["page"] = 1


def _select_from_gallery(page_ids: list[int]) -> None:
    rows = st.session_state[GALLERY_KEY].selection.rows
    if rows:
        st.session_state["test"] = page_ids[rows[0]]


def _go_to_page(page: int) -> None:
    st.session_state["page"] = page


def sidebar_controls(data: ExplorerData) -> tuple[views.Filters, int | None, int]:
    """Filters, selected test id and k, each bound to its URL parameter."""
    names = data.class_names
    options = views.class_options(names)
    with st.sidebar:
        st.header("🎯 Target")
        test_id = st.number_input(
            "Test id",
            min_value=0,
            max_value=len(data.test_labels) - 1,
            value=None,
            step=1,
            key="test",
            bind="query-params",
            placeholder="pick one in the gallery",
        )
        n_train = len(data.train_labels)
        k = min(DEFAULT_K, n_train)
        if n_train > 1:
            k = st.slider("Top-k", 1, min(MAX_K, n_train), k, key="k", bind="query-params")
        st.header("🗂️ Gallery filters")
        # A new filter starts the gallery on its first page.
        true_class = st.selectbox(
            "True class", options, key="true", bind="query-params", on_change=_first_page
        )
        pred_class = st.selectbox(
            "Predicted class", options, key="pred", bind="query-params", on_change=_first_page
        )
        outcome = st.radio(
            "Prediction",
            views.OUTCOMES,
            key="outcome",
            horizontal=True,
            bind="query-params",
            on_change=_first_page,
        )
    filters = views.Filters(
        true_class=views.parse_class_option(true_class, names),
        pred_class=views.parse_class_option(pred_class, names),
        outcome=outcome,
    )
    return filters, None if test_id is None else int(test_id), int(k)


def gallery(data: ExplorerData, filters: views.Filters, test_id: int | None) -> None:
    """Paged table of the filtered test images; selecting a row selects that test image."""
    ids = views.filter_test_ids(data.test_labels, data.test_pred, filters)
    st.subheader("🖼️ Test images")
    if len(ids) == 0:
        st.info("No test images match these filters.")
        return
    n_pages = views.count_pages(len(ids))
    # st.pagination itself resets a page out of [1, n_pages] (e.g. from the URL) to 1.
    table_box = st.container()
    page = views.paginate(ids, st.pagination(n_pages, key="page", bind="query-params"))
    st.caption(
        f"Showing {page.start + 1}–{page.start + len(page.ids)} of {page.n_items} matching "
        f"({len(data.test_labels)} test images in all). Select a row to explore it."
    )
    target_page = None if test_id is None else views.page_of(ids, test_id)
    if target_page is not None and target_page != page.page:
        st.button(
            f"📍 Go to #{test_id} (page {target_page})",
            on_click=_go_to_page,
            args=(target_page,),
        )
    # Highlight the selected test image when it is on this page (and only then).
    row = views.row_of(page.ids, test_id)
    wanted = [] if row is None else [row]
    state = st.session_state.get(GALLERY_KEY)
    if state is None or list(state["selection"]["rows"]) != wanted:
        st.session_state[GALLERY_KEY] = {"selection": {"rows": wanted, "columns": []}}
    table = views.gallery_table(data, page.ids, app_state.thumbnails("test", views.GALLERY_SCALE))
    with table_box:
        st.dataframe(
            table,
            key=GALLERY_KEY,
            on_select=partial(_select_from_gallery, page.ids.tolist()),
            selection_mode="single-row",
            hide_index=True,
            row_height=GALLERY_ROW_HEIGHT,
            height=views.table_height(len(page.ids), GALLERY_ROW_HEIGHT, GALLERY_HEIGHT),
            column_config=_gallery_columns(),
        )


def _gallery_columns() -> dict[str, Any]:
    return {
        "id": st.column_config.NumberColumn("id", width=44),
        "image": st.column_config.ImageColumn("image", width=52),
        "label": st.column_config.TextColumn("label", width=52),
        "predicted": st.column_config.TextColumn("predicted", width=76),
        "confidence": st.column_config.NumberColumn("conf.", format="%.2f", width=52),
        "ok": st.column_config.TextColumn("", width=36),
    }


def target_summary(data: ExplorerData, test_id: int) -> None:
    """The selected test image with its label, prediction and confidence."""
    names = data.class_names
    label, pred = int(data.test_labels[test_id]), int(data.test_pred[test_id])
    verdict = "✅ correct" if label == pred else "❌ misclassified"
    image_col, text_col = st.columns([1, 2], vertical_alignment="center")
    with image_col:
        uri = app_state.thumbnails("test", views.TARGET_SCALE).uri(test_id)
        st.image(uri, caption=f"test #{test_id}", width="stretch")
    with text_col:
        st.subheader(f"Test image #{test_id}")
        st.markdown(verdict)
        a, b, c = st.columns(3)
        a.metric("Label", views.class_name(label, names))
        b.metric("Predicted", views.class_name(pred, names))
        c.metric("Confidence", f"{float(data.test_conf[test_id]):.1%}")


def result_grid(title: str, help_text: str, result: views.Attribution) -> None:
    st.subheader(title, help=help_text)
    thumbs = app_state.thumbnails("train", views.RESULT_SCALE)
    width = views.RESULT_SCALE * thumbs.image_width
    st.image(thumbs.uris(result.ids), caption=result.captions, width=width)


def attribution_panel(data: ExplorerData, test_id: int, k: int) -> None:
    helpful, harmful = views.top_k_attributions(data, test_id, k)
    target_summary(data, test_id)
    fig = views.score_histogram(
        data.scores[test_id], float(helpful.scores[-1]), float(harmful.scores[-1])
    )
    st.markdown(f"**📊 Scores of all {len(data.train_labels)} training images**")
    st.plotly_chart(fig, key="histogram", config={"displayModeBar": False})
    result_grid(
        f"👍 {len(helpful.ids)} most helpful training images",
        "Largest TRAK scores: training on these raised the model's margin for this image's "
        "true label.",
        helpful,
    )
    result_grid(
        f"👎 {len(harmful.ids)} most harmful training images",
        "Smallest TRAK scores: training on these lowered the model's margin for this image's "
        "true label, pushing it toward another class.",
        harmful,
    )
    with st.expander("📋 Scores as tables"):
        columns = ["rank", "train id", "score", "label"]
        left, right = st.columns(2)
        left.dataframe(helpful.table[columns], hide_index=True, key="helpful_table")
        right.dataframe(harmful.table[columns], hide_index=True, key="harmful_table")


def main() -> None:
    st.title("🔎 Explore attributions")
    data = load_or_stop()
    if len(data.test_labels) == 0:
        st.warning("These artifacts hold no test images: there is nothing to explore.")
        return
    filters, test_id, k = sidebar_controls(data)
    gallery_col, detail_col = st.columns([2, 3], gap="medium")
    with gallery_col:
        gallery(data, filters, test_id)
    with detail_col:
        if test_id is None:
            st.info("👈 Pick a test image in the gallery (or type its id in the sidebar).")
        else:
            attribution_panel(data, test_id, k)


main()
