"""Overview: the dataset, the model, how the artifacts were made, and class-by-class influence.

Every number comes from ``explorer.overview``; this file only lays it out.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from explorer import app_state, views
from explorer import overview as ov
from explorer.artifacts import ExplorerData

CHART_CONFIG = {"displayModeBar": False}
ROW_PX = 35  # st.dataframe's default row height


def dataset_section(summary: ov.DatasetSummary) -> None:
    st.header("🗂️ Dataset")
    a, b, c, d = st.columns(4)
    a.metric("Training images", f"{summary.n_train:,}")
    b.metric("Test images", f"{summary.n_test:,}")
    c.metric("Classes", summary.n_classes)
    share = summary.n_flipped / summary.n_train if summary.n_train else 0.0
    d.metric(
        "Flipped training labels",
        f"{summary.n_flipped:,}",
        f"{share:.1%} of train",
        "off",
        delta_arrow="off",
        help="Training labels changed on purpose before training (known mislabels).",
    )
    chart, table = st.columns([3, 2], gap="medium")
    with chart:
        st.markdown("**Examples per class** (training counts use the labels trained with)")
        fig = ov.class_counts_figure(summary.counts)
        st.plotly_chart(fig, key="class_counts", config=CHART_CONFIG)
    with table:
        height = views.table_height(len(summary.counts), ROW_PX, max_px=600)
        st.dataframe(summary.counts, hide_index=True, key="class_counts_table", height=height)


def model_section(data: ExplorerData) -> None:
    st.header("🎯 Model")
    names = data.class_names
    confusion = ov.confusion_matrix(data.test_labels, data.test_pred, len(names))
    st.metric(
        "Test accuracy (ensemble of checkpoints)",
        f"{ov.accuracy(data.test_labels, data.test_pred):.1%}",
    )
    left, right = st.columns(2, gap="medium")
    with left:
        st.markdown("**Accuracy per true class**")
        fig = ov.per_class_accuracy_figure(names, ov.per_class_accuracy(confusion))
        st.plotly_chart(fig, key="per_class_accuracy", config=CHART_CONFIG)
    with right:
        st.markdown("**Confusion matrix** (counts; colour = share of the true class)")
        fig = ov.confusion_figure(confusion, names)
        st.plotly_chart(fig, key="confusion", config=CHART_CONFIG)


def influence_section(data: ExplorerData) -> None:
    st.header("🧮 Class-by-class influence")
    st.markdown(
        "Mean TRAK score of the training images of each **label** (rows) on the test images "
        "of each **true class** (columns): green cells help that class, pink ones harm it."
    )
    influence = app_state.class_influence()
    fit = st.toggle(
        "Fit colours to the cells between different classes",
        value=True,
        key="fit_off_diagonal",
        help="Same-class cells are usually much larger; fitting the colour range to the other "
        "cells saturates them and shows which classes help or harm one another.",
    )
    fig = ov.influence_figure(influence, data.class_names, fit_off_diagonal=fit)
    left, right = st.columns([3, 2], gap="medium")
    left.plotly_chart(fig, key="influence", config=CHART_CONFIG)
    with right:
        off = influence.copy()
        np.fill_diagonal(off, np.nan)
        if np.isfinite(off).any():
            names = data.class_names
            worst = np.unravel_index(np.nanargmin(off), off.shape)
            best = np.unravel_index(np.nanargmax(off), off.shape)
            st.markdown(
                f"- Most harmful pair: label **{names[worst[0]]}** on class "
                f"**{names[worst[1]]}** ({off[worst]:+.3g})\n"
                + (
                    f"- Most helpful pair across classes: label **{names[best[0]]}** on class "
                    f"**{names[best[1]]}** ({off[best]:+.3g})"
                    if off[best] > 0
                    else f"- No pair across classes helps on average; the least harmful is "
                    f"label **{names[best[0]]}** on class **{names[best[1]]}** ({off[best]:+.3g})"
                )
            )
        st.caption(
            "Training labels are the ones the model was trained with, flipped ones included; "
            "test classes are the true labels."
        )


def build_section(data: ExplorerData) -> None:
    st.header("🛠️ How these artifacts were made")
    settings, timing = st.columns(2, gap="medium")
    with settings:
        table = ov.artifact_settings(data.info)
        height = views.table_height(len(table), ROW_PX, max_px=1000)
        st.dataframe(table, hide_index=True, key="settings", height=height)
    with timing:
        timings = ov.stage_timings(data.info)
        total = ov.total_seconds(data.info)
        if timings.empty:
            st.info("No build timings were recorded with these artifacts.")
        else:
            st.markdown("**Time per stage**")
            fig = ov.timings_figure(timings)
            st.plotly_chart(fig, key="timings", config=CHART_CONFIG)
        missing = ov.unrecorded_stages(data.info)
        if missing and not timings.empty:
            st.caption(
                f"Not timed (reused from an earlier build, or not recorded): {', '.join(missing)}."
            )
        if total is not None:
            st.caption(f"Whole build: {total:.1f} s (including data loading).")


def main() -> None:
    st.title("📊 Overview")
    data = app_state.load_or_stop()
    task = data.info.get("task")
    if task:
        st.caption(f"Task: {task}")
    summary = ov.dataset_summary(data)
    dataset_section(summary)
    if summary.n_test == 0:
        st.warning("These artifacts hold no test images: no accuracy or influence to show.")
        build_section(data)
        return
    model_section(data)
    influence_section(data)
    build_section(data)


main()
