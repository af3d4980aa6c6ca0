"""Mislabeled: training images ranked by TRAK suspicion, triaged one at a time.

The current suspect is shown large beside its most similar training images; keep, relabel or
exclude it (buttons with shortcuts K, L, X) and the queue moves on to the next undecided one.
Decisions are saved to ``workdir/triage.csv`` (``explorer.mislabel.TriageBook``) as they are
made and can be downloaded as CSV. On the demo, where the flipped labels are known, the page
also compares our ranking with the per-example loss and cleanlab. The selected suspect lives in
the URL (``suspect``).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import streamlit as st

from explorer import app_state, app_views, mislabel, views
from explorer.artifacts import ExplorerData
from trak_engine.errors import ConfigMismatchError

N_NEIGHBORS = 12
N_RANKED = 100  # rows of the ranking table
TABLE_ROW_HEIGHT = 40
CHART_CONFIG = {"displayModeBar": False}
HELP_BUTTON_KEY = "triage_shortcuts_help"
MESSAGE_KEY = "triage_message"
HELP_KEY_SCRIPT = views.help_key_script(HELP_BUTTON_KEY)


def _go_to(train_id: int | None) -> None:
    if train_id is not None:
        st.session_state["suspect"] = int(train_id)


def _decide(
    book: mislabel.TriageBook, order: np.ndarray, train_id: int, action: str, names: list[str]
) -> None:
    """Record a decision, then move to the next undecided suspect."""
    new_label = None
    if action == "relabel":
        new_label = names.index(st.session_state[f"new_label_{train_id}"])
    try:
        book.decide(train_id, action, new_label)
    except (ValueError, OSError) as exc:  # a bad label, or a workdir that cannot be written
        st.session_state[MESSAGE_KEY] = f"⚠️ Not saved: {exc}"
        return
    word = app_views.decision_text(book.get(train_id), names)
    st.session_state[MESSAGE_KEY] = f"✅ #{train_id}: {word} (saved)"
    _go_to(app_views.next_undecided(order, set(book.decisions), train_id))


def _undo(book: mislabel.TriageBook, train_id: int) -> None:
    try:
        book.undo(train_id)
    except OSError as exc:
        st.session_state[MESSAGE_KEY] = f"⚠️ Not saved: {exc}"
        return
    st.session_state[MESSAGE_KEY] = f"↩️ #{train_id}: decision undone"


def _select_from_table(shown: list[int]) -> None:
    rows = st.session_state["ranking"].selection.rows
    if rows:
        _go_to(shown[rows[0]])


@st.dialog("⌨️ Keyboard shortcuts")
def shortcuts_dialog() -> None:
    rows = "\n".join(f"| `{key}` | {action} |" for key, action in app_views.TRIAGE_SHORTCUTS)
    st.markdown(f"| key | action |\n| --- | --- |\n{rows}")
    st.caption("Shortcuts act when no text field has the focus (click an empty spot first).")


def load_signals() -> pd.DataFrame:
    """The signals, or an explanation on the page (the script stops)."""
    try:
        return app_state.mislabel_signals()
    except FileNotFoundError as exc:
        st.info(
            "🧪 Suspicion scores need the demo's checkpoints and TRAK features, which these "
            f"artifacts lack ({exc}). Build them with `trak-explorer demo`."
        )
    except (ConfigMismatchError, ValueError, OSError) as exc:
        st.error(f"⚠️ Suspicion scores could not be computed: {exc}")
    st.stop()


def sidebar(data: ExplorerData, book: mislabel.TriageBook, n_train: int) -> int | None:
    """The suspect id (bound to the URL), triage progress and the CSV export."""
    with st.sidebar:
        st.header("🎯 Suspect")
        suspect = st.number_input(
            "Training id",
            min_value=0,
            max_value=n_train - 1,
            value=None,
            step=1,
            key="suspect",
            bind="query-params",
            placeholder="next undecided",
        )
        decisions = book.decisions
        counts = pd.Series([d.action for d in decisions.values()]).value_counts()
        st.header("🗳️ Decisions")
        st.metric("Decided", f"{len(decisions)} of {n_train}")
        st.caption(
            " · ".join(f"{a}: {int(counts.get(a, 0))}" for a in mislabel.ACTIONS)
            + f"\n\nSaved to `{book.path}`."
        )
        st.download_button(
            "⬇️ Download decisions as CSV",
            app_views.decisions_csv(book, data.class_names),
            file_name="triage-decisions.csv",
            mime="text/csv",
            key="download_decisions",
            on_click="ignore",
            disabled=not decisions,
            width="stretch",
        )
        if st.button("⌨️ Shortcuts", key=HELP_BUTTON_KEY, help="Or press ?", width="stretch"):
            shortcuts_dialog()
        st.html(HELP_KEY_SCRIPT, unsafe_allow_javascript=True)
    return None if suspect is None else int(suspect)


def suspect_panel(
    data: ExplorerData, signals: pd.DataFrame, book: mislabel.TriageBook, order, train_id: int
) -> None:
    """The suspect, large, with its label, score and the triage buttons."""
    names = data.class_names
    row = signals.loc[train_id]
    label, suggested = int(row["label"]), int(row["suggested_label"])
    rank = int(np.flatnonzero(order == train_id)[0]) + 1
    st.subheader(f"Training image #{train_id}")
    uri = app_state.thumbnails("train", views.TARGET_SCALE).uri(train_id)
    st.image(uri, caption=f"train #{train_id} · label {views.class_name(label, names)}")
    a, b, c = st.columns(3)
    a.metric("Label", views.class_name(label, names))
    b.metric("Model says", views.class_name(suggested, names))
    c.metric("Rank", f"{rank} / {len(order)}")
    decision = app_views.decision_text(book.get(train_id), names)
    st.markdown(f"Suspicion **{float(row['suspicion']):.3f}** · decision: **{decision}**")
    if data.flipped[train_id]:
        true = views.class_name(int(data.train_true_labels[train_id]), names)
        st.caption(f"🚩 Recorded flip in the demo: the true label is {true}.")
    actions(book, order, train_id, label, suggested, names)


def actions(book, order, train_id: int, label: int, suggested: int, names: list[str]) -> None:
    others = [n for c, n in enumerate(names) if c != label]
    default = names[suggested] if suggested != label else others[0]
    st.selectbox(
        "New label (for relabel)", others, index=others.index(default), key=f"new_label_{train_id}"
    )
    decide = partial(_decide, book, order, train_id, names=names)
    buttons = (
        ("✅ Keep", "K", "keep", "The label is right: keep it"),
        ("✏️ Relabel", "L", "relabel", "Give it the class chosen above"),
        ("🚫 Exclude", "X", "exclude", "Leave it out of the training set"),
    )
    for column, (text, key, action, help_text) in zip(st.columns(3), buttons, strict=True):
        column.button(
            text,
            key=f"do_{action}",
            shortcut=key,
            help=help_text,
            on_click=decide,
            args=(action,),
            width="stretch",
        )
    skip, back, undo = st.columns(3)
    skip.button(
        "⏭️ Next",
        key="skip",
        shortcut="N",
        help="Next undecided suspect",
        on_click=_go_to,
        args=(app_views.next_undecided(order, set(book.decisions), train_id),),
        width="stretch",
    )
    previous = app_views.previous_in_order(order, train_id)
    back.button(
        "⏮️ Prev",
        key="back",
        shortcut="P",
        on_click=_go_to,
        args=(previous,),
        disabled=previous is None,
        width="stretch",
    )
    undo.button(
        "↩️ Undo",
        key="undo",
        shortcut="U",
        on_click=_undo,
        args=(book, train_id),
        disabled=book.get(train_id) is None,
        width="stretch",
    )
    message = st.session_state.pop(MESSAGE_KEY, None)
    if message:
        st.caption(message)


def neighbors_panel(data: ExplorerData, train_id: int) -> None:
    """The most similar training images (cosine of TRAK features) with their labels."""
    names = data.class_names
    st.subheader(
        f"🧭 {N_NEIGHBORS} most similar training images",
        help="Cosine similarity of the training images' TRAK features (projected gradients): "
        "what the model treats as alike. A suspect whose neighbours carry another label is "
        "probably mislabeled.",
    )
    ids, sims = app_state.train_neighbors().similar(train_id, N_NEIGHBORS)
    captions = []
    for i, s in zip(ids.tolist(), sims.tolist(), strict=True):
        flag = "🚩 " if data.flipped[i] else ""
        head = views.nowrap(
            f"{flag}#{i} · label {views.class_name(int(data.train_labels[i]), names)}"
        )
        captions.append(f"{head} {views.nowrap(f'cos {s:.2f}')}")
    thumbs = app_state.thumbnails("train", views.RESULT_SCALE)
    st.image(thumbs.uris(ids), caption=captions, width=views.RESULT_SCALE * thumbs.image_width)
    labels = pd.Series([views.class_name(int(c), names) for c in data.train_labels[ids]])
    common = labels.value_counts()
    st.caption("Neighbour labels: " + ", ".join(f"{name} × {int(n)}" for name, n in common.items()))


def ranking_section(data: ExplorerData, signals, book, order) -> None:
    st.subheader(
        f"📋 The {min(N_RANKED, len(order))} most suspicious training images",
        help="Suspicion: the rank average of TRAK self-influence and of the largest harm to "
        "another class (explorer.mislabel). Select a row to triage it.",
    )
    shown = order[:N_RANKED]
    thumbs = app_state.thumbnails("train", views.GALLERY_SCALE)
    table = app_views.ranking_table(data, signals, shown, book.decisions, thumbs)
    st.dataframe(
        table,
        key="ranking",
        on_select=partial(_select_from_table, shown.tolist()),
        selection_mode="single-row",
        hide_index=True,
        row_height=TABLE_ROW_HEIGHT,
        height=views.table_height(len(table), TABLE_ROW_HEIGHT, 440),
        column_config={
            "image": st.column_config.ImageColumn("image", width=48),
            "suspicion": st.column_config.NumberColumn("suspicion", format="%.3f"),
            "loss": st.column_config.NumberColumn("loss", format="%.2f"),
        },
    )


def metrics_section(data: ExplorerData, signals: pd.DataFrame) -> None:
    """Detection of the recorded flips: ours vs the per-example loss vs cleanlab."""
    flipped = np.asarray(data.flipped, dtype=bool)
    n = len(flipped)
    st.subheader(
        "🎯 How well each ranking finds the recorded flips",
        help="The demo flipped some training labels on purpose; each method ranks all "
        "training images and is scored on how many flips it puts first.",
    )
    scores = mislabel.detector_scores(signals)
    ks = app_views.metric_ks(n)
    table = mislabel.detection_metrics(scores, flipped, ks)
    columns = [f"precision@{k}" for k in ks] + [f"recall@{k}" for k in ks] + ["roc_auc"]
    st.dataframe(
        table[columns],
        key="detection_metrics",
        column_config={c: st.column_config.NumberColumn(c, format="%.3f") for c in columns},
    )
    main = {name: scores[name] for name in app_views.MAIN_DETECTORS}
    curves = app_views.precision_curves(main, flipped, max_k=min(n, max(ks) * 2))
    fig = app_views.precision_figure(curves, float(flipped.mean()))
    st.plotly_chart(fig, key="precision_curves", theme="streamlit", config=CHART_CONFIG)
    st.caption(
        f"{int(flipped.sum())} of {n} training labels were flipped ({flipped.mean():.1%}). "
        "Loss and cleanlab use the same checkpoints' in-sample probabilities."
    )


def main() -> None:
    st.title("🚩 Mislabeled training data")
    data = app_state.load_or_stop()
    n_train = len(data.train_labels)
    signals = load_signals()
    book = app_state.triage_book()
    book.reload()  # another session may have decided since
    order = app_views.suspect_order(signals)
    suspect = sidebar(data, book, n_train)
    if suspect is None:
        suspect = app_views.next_undecided(order, set(book.decisions), None)
    if suspect is None:
        st.success("🎉 Every training image has a decision. Download them in the sidebar.")
    else:
        left, right = st.columns([2, 3], gap="medium")
        with left:
            suspect_panel(data, signals, book, order, suspect)
        with right:
            neighbors_panel(data, suspect)
    ranking_section(data, signals, book, order)
    if data.flipped.any():
        metrics_section(data, signals)


main()
