"""Explore: pick a test image, see the training images that helped and harmed it most.

Everything a user picks lives in the URL (widgets bound to query parameters), so a link
reopens the same view: ``test`` (selected test id), ``true`` / ``pred`` (class filters),
``outcome`` (all, correct, incorrect), ``page`` (gallery page, 1-based) and ``k`` (top-k).

Keyboard shortcuts (``views.SHORTCUTS``): J / K step to the next / previous test image of the
filtered gallery, L / H turn its pages, ? lists them. The training map (PCA of the training
features, ``explorer.maps``) is coloured by the target's scores; a lasso or box selection on it
shows the selected training images.
"""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any

import streamlit as st

from explorer import app_jobs, app_state, app_views, maps, views
from explorer.artifacts import ExplorerData
from explorer.demo import load_demo_config

GALLERY_KEY = "gallery"
GALLERY_ROW_HEIGHT = 48
GALLERY_HEIGHT = 560
DEFAULT_K = 12
MAX_K = 48
MAP_KEY = "train_map"
MAX_SELECTED = 60  # training images shown for a map selection (the caption gives the count)
SELECTED_SCALE = 3
HELP_BUTTON_KEY = "shortcuts_help"
HELP_KEY_SCRIPT = views.help_key_script(HELP_BUTTON_KEY)


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


def _go_to_target(test_id: int, page: int) -> None:
    st.session_state["test"] = test_id
    _go_to_page(page)


def _turn_page(delta: int, n_pages: int) -> None:
    target = views.step_page(int(st.session_state.get("page") or 1), n_pages, delta)
    if target is not None:
        _go_to_page(target)


def sidebar_controls(
    data: ExplorerData,
) -> tuple[views.Filters, int | None, int, st.delta_generator.DeltaGenerator]:
    """Filters, selected test id, k (each bound to its URL parameter), and an empty container
    under the test id for the navigation buttons (they need the filtered ids)."""
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
        nav = st.container()
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
    return filters, None if test_id is None else int(test_id), int(k), nav


@st.dialog("⌨️ Keyboard shortcuts")
def shortcuts_dialog() -> None:
    rows = "\n".join(f"| `{key}` | {action} |" for key, action in views.SHORTCUTS)
    st.markdown(f"| key | action |\n| --- | --- |\n{rows}")
    st.caption("Shortcuts act when no text field has the focus (click an empty spot first).")


def navigation(ids, test_id: int | None) -> None:
    """Buttons (with shortcuts) stepping through the filtered test images and gallery pages,
    and the button (and ``?`` key) that lists the shortcuts."""
    n_pages = views.count_pages(len(ids))
    steps = (("◀ Prev", "K", -1, "previous"), ("Next ▶", "J", 1, "next"))
    for column, (label, key, delta, word) in zip(st.columns(2), steps, strict=True):
        target = views.step_target(ids, test_id, delta)
        page = None if target is None else views.page_of(ids, target)
        column.button(
            label,
            key=f"step_{word}",
            shortcut=key,
            help=f"Select the {word} test image of the gallery",
            on_click=_go_to_target,
            args=(target, page),
            disabled=target is None,
            width="stretch",
        )
    pages = (("⏪ Page", "H", -1, "previous"), ("Page ⏩", "L", 1, "next"))
    for column, (label, key, delta, word) in zip(st.columns(2), pages, strict=True):
        column.button(
            label,
            key=f"page_{word}",
            shortcut=key,
            help=f"Show the {word} page of the gallery",
            on_click=_turn_page,
            args=(delta, n_pages),
            disabled=n_pages == 1,
            width="stretch",
        )
    if st.button("⌨️ Shortcuts", key=HELP_BUTTON_KEY, help="Or press ?", width="stretch"):
        shortcuts_dialog()
    st.html(HELP_KEY_SCRIPT, unsafe_allow_javascript=True)


def gallery(data: ExplorerData, ids, test_id: int | None) -> None:
    """Paged table of the filtered test ``ids``; selecting a row selects that test image."""
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


def attribution_panel(
    data: ExplorerData, test_id: int, helpful: views.Attribution, harmful: views.Attribution
) -> None:
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
    csv = views.top_k_csv(views.top_k_frame(data, helpful, harmful))
    st.download_button(
        "⬇️ Download these top-k as CSV",
        csv,
        file_name=f"trak-test-{test_id}-top-{len(helpful.ids)}.csv",
        mime="text/csv",
        key="download_top_k",
        on_click="ignore",
        help="id, label, true label, flipped, score, rank and kind of every image shown above",
    )


def selected_gallery(data: ExplorerData, ids: list[int], scores) -> None:
    """Thumbnails of the training images selected on the map (at most ``MAX_SELECTED``)."""
    shown = ids[:MAX_SELECTED]
    order = "the strongest scores" if scores is not None else "the first ids"
    more = f", showing the {len(shown)} with {order}" if len(ids) > len(shown) else ""
    st.markdown(f"**🔍 {len(ids)} selected training images{more}**")
    names = data.class_names
    captions = []
    for i in shown:
        label = views.class_name(int(data.train_labels[i]), names)
        head = f"{'🚩 ' if data.flipped[i] else ''}#{i} · {label}"
        tail = "" if scores is None else f" {float(scores[i]):+.2g}"
        captions.append(views.nowrap(head) + tail)
    thumbs = app_state.thumbnails("train", SELECTED_SCALE)
    st.image(thumbs.uris(shown), caption=captions, width=SELECTED_SCALE * thumbs.image_width)


@st.fragment
def map_section(
    data: ExplorerData,
    test_id: int | None,
    helpful: views.Attribution | None,
    harmful: views.Attribution | None,
) -> None:
    """The training map; a selection on it reruns only this fragment."""
    st.subheader(
        "🗺️ Training set map",
        help="The first two principal components of the training images' TRAK features. "
        "Draw a lasso or a box to see the images inside.",
    )
    try:
        train_map = app_state.train_map()
    except (OSError, ValueError) as exc:
        st.warning(f"No map of the training set: {exc}")
        return
    scores = None if test_id is None else data.scores[test_id]
    fig = maps.map_figure(
        train_map.coords,
        data.train_labels,
        data.class_names,
        scores=scores,
        helpful=() if helpful is None else helpful.ids,
        harmful=() if harmful is None else harmful.ids,
    )
    colour = f"scores on test #{test_id}" if test_id is not None else "training label"
    pcs = " and ".join(f"{e:.0%}" for e in train_map.explained)
    st.caption(
        f"Coloured by {colour}. The two axes hold {pcs} of the variance of the "
        f"{'training features' if train_map.source == 'features' else 'index vectors'}."
    )
    if train_map.note:
        st.caption(f"ℹ️ {train_map.note}")
    event = st.plotly_chart(
        fig, key=MAP_KEY, on_select="rerun", selection_mode=("box", "lasso", "points")
    )
    selected = maps.strongest_first(maps.selected_train_ids(event.selection.points), scores)
    if selected:
        selected_gallery(data, selected, scores)
    else:
        st.caption("Draw a lasso or a box on the map to list the training images inside.")


# --- Counterfactual check (a background job, polled by a fragment) --------------------------

CF_MAX_K = 200
CF_DEFAULT_K = 50
CF_MAX_SEEDS = 3
CF_POLL_S = 1.0
SESSION_KEY = "session_key"


def _job_key(test_id: int) -> tuple[str, str, str, int]:
    """Jobs are keyed by session and target: one user never sees another's run."""
    session = st.session_state.setdefault(SESSION_KEY, uuid.uuid4().hex)
    return ("counterfactual", session, str(app_state.current_workdir()), int(test_id))


def _start_counterfactual(data: ExplorerData, test_id: int, params: dict[str, Any]) -> None:
    work = app_jobs.counterfactual_work(app_state.current_workdir(), data, [test_id], **params)
    try:
        app_state.jobs().start(_job_key(test_id), work, params | {"test_id": test_id})
    except RuntimeError as exc:
        st.session_state["cf_message"] = str(exc)


@st.fragment(run_every=CF_POLL_S)
def counterfactual_progress(key: tuple[str, str, str, int]) -> None:
    """Progress bar and cancel button of a running job; reruns the page when it ends."""
    job = app_state.jobs().get(key)
    if job is None:
        return
    snap = job.snapshot()
    if snap.finished:
        st.rerun()  # the whole page, to show the result and stop polling
    params = snap.params
    text = (
        f"Retraining without the top-{params['k']} and without {params['k']} random images "
        f"({params['n_seeds']} seed(s)): {snap.fraction:.0%} after {snap.seconds:.0f} s"
    )
    st.progress(snap.fraction, text=text)
    st.button("✖️ Cancel", key="cf_cancel", on_click=job.cancel)


def counterfactual_result(data: ExplorerData, snap: app_jobs.JobSnapshot) -> None:
    result = snap.result
    st.markdown(app_views.counterfactual_verdict(result))
    fig = app_views.counterfactual_figure(result)
    st.plotly_chart(
        fig, key="counterfactual_chart", theme="streamlit", config={"displayModeBar": False}
    )
    table = app_views.counterfactual_runs(result, data.class_names)
    st.dataframe(
        table,
        hide_index=True,
        key="counterfactual_runs",
        column_config={
            c: st.column_config.NumberColumn(c, format="%+.3f")
            for c in table.columns
            if "margin" in c or "Δ" in c
        },
    )


def counterfactual_section(data: ExplorerData, test_id: int) -> None:
    """Remove the top-k helpful training images, retrain, and compare with k random ones."""
    st.subheader(
        "🧪 Counterfactual check",
        help="Retrains the demo model without the target's top-k helpful training images, and "
        "without k random ones, with each saved checkpoint's seed; the margin change shows "
        "whether the attributions matter. Runs in the background: the page stays usable.",
    )
    try:
        n_checkpoints = load_demo_config(app_state.current_workdir()).n_checkpoints
    except FileNotFoundError:
        st.caption("Needs the demo's checkpoints and training recipe (`trak-explorer demo`).")
        return
    n_train = len(data.train_labels)
    a, b, c = st.columns([1, 1, 2], vertical_alignment="bottom")
    k = a.number_input(
        "k",
        1,
        min(CF_MAX_K, n_train - 1),
        min(CF_DEFAULT_K, n_train // 4 or 1),
        key="cf_k",
        bind="query-params",
    )
    seeds = b.number_input(
        "Seeds", 1, min(CF_MAX_SEEDS, n_checkpoints), 1, key="cf_seeds", bind="query-params"
    )
    same = c.toggle(
        "Only images with the target's label",
        value=True,
        key="cf_same",
        bind="query-params",
        help="The overall top helpful images are often mislabeled ones, whose "
        "removal cleans the data; restricted to the target's label, removal tests "
        "the attribution itself.",
    )
    params = {"k": int(k), "n_seeds": int(seeds), "same_label": bool(same)}
    key = _job_key(test_id)
    job = app_state.jobs().get(key)
    snap = None if job is None else job.snapshot()
    busy = app_state.jobs().running(key[:3])
    st.button(
        f"🧪 Remove the top-{params['k']} helpful and retrain",
        key="cf_start",
        on_click=_start_counterfactual,
        args=(data, test_id, params),
        disabled=bool(busy),
        help=f"{params['n_seeds'] * 2} trainings of the demo model, in the background",
    )
    message = st.session_state.pop("cf_message", None)
    if message:
        st.warning(message)
    if snap is None:
        other = [k[3] for k in busy]
        if other:
            st.caption(f"A check of test #{other[0]} is running; open it to follow or cancel.")
        return
    if not snap.finished:
        counterfactual_progress(key)
    elif snap.state == app_jobs.DONE:
        shown = {name: snap.params[name] for name in params}
        if shown != params:
            st.caption(f"Last run: {shown}. Press the button to run with the new settings.")
        counterfactual_result(data, snap)
    elif snap.state == app_jobs.CANCELLED:
        st.warning(f"Cancelled after {snap.seconds:.0f} s.")
    else:
        st.error(f"The counterfactual run failed: {snap.error}")


def main() -> None:
    st.title("🔎 Explore attributions")
    data = app_state.load_or_stop()
    if len(data.test_labels) == 0:
        st.warning("These artifacts hold no test images: there is nothing to explore.")
        return
    filters, test_id, k, nav = sidebar_controls(data)
    ids = views.filter_test_ids(data.test_labels, data.test_pred, filters)
    with nav:
        navigation(ids, test_id)
    helpful = harmful = None
    if test_id is not None:
        helpful, harmful = views.top_k_attributions(data, test_id, k)
    gallery_col, detail_col = st.columns([2, 3], gap="medium")
    with gallery_col:
        gallery(data, ids, test_id)
        map_section(data, test_id, helpful, harmful)
    with detail_col:
        if test_id is None:
            st.info("👈 Pick a test image in the gallery (or type its id in the sidebar).")
        else:
            attribution_panel(data, test_id, helpful, harmful)
            counterfactual_section(data, test_id)


main()
