"""The Mislabeled page with AppTest on a tiny demo build, and the queue helpers it uses."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from explorer import app_views
from explorer import mislabel as ml
from explorer.artifacts import load_explorer_data
from explorer.demo import DemoConfig, build_demo
from explorer.serve import WORKDIR_ENV

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "explorer" / "streamlit_app.py"
PAGE = REPO / "pages" / "mislabeled.py"
TIMEOUT_S = 60
TINY = DemoConfig(n_train=80, n_test=20, n_checkpoints=2, epochs=1, proj_dim=32, lam=0.01)


@pytest.fixture(scope="module")
def built_demo(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("demo") / "demo"
    build_demo(workdir, TINY)
    return workdir


@pytest.fixture
def demo(built_demo: Path, tmp_path: Path) -> Path:
    """A private copy (the page writes triage.csv into it); caches start empty."""
    st.cache_resource.clear()
    return Path(shutil.copytree(built_demo, tmp_path / "demo"))


@pytest.fixture(scope="module")
def order(built_demo: Path) -> np.ndarray:
    signals = ml.compute_signals(built_demo, load_explorer_data(built_demo))
    return app_views.suspect_order(signals)


def open_page(workdir: Path, monkeypatch: pytest.MonkeyPatch, **params: str) -> AppTest:
    monkeypatch.setenv(WORKDIR_ENV, str(workdir))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    for name, value in params.items():
        at.query_params[name] = value
    at.run()
    at.switch_page(str(PAGE)).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def shown_suspect(at: AppTest) -> int:
    (heading,) = [h.value for h in at.subheader if h.value.startswith("Training image #")]
    return int(heading.split("#")[1])


def test_ranking_and_first_suspect_are_shown(demo: Path, order, monkeypatch) -> None:
    at = open_page(demo, monkeypatch)
    (table,) = [df for df in at.dataframe if df.key == "ranking"]
    assert table.value["id"].tolist() == order[: len(table.value)].tolist()
    assert shown_suspect(at) == order[0]
    (neighbors,) = [im for im in at.image if len(im.captions) == 12]
    assert all("cos\u00a0" in c for c in neighbors.captions)


def test_triage_actions_persist_and_survive_a_restart(demo: Path, order, monkeypatch) -> None:
    at = open_page(demo, monkeypatch)
    first, second = int(order[0]), int(order[1])
    at.button(key="do_keep").click().run()
    assert not at.exception
    assert shown_suspect(at) == second  # advanced to the next undecided suspect
    assert at.query_params["suspect"] == str(second)
    label = int(load_explorer_data(demo).train_labels[second])
    new = (label + 3) % 10
    at.selectbox(key=f"new_label_{second}").set_value(str(new)).run()
    at.button(key="do_relabel").click().run()
    saved = pd.read_csv(demo / ml.TRIAGE_FILE)
    assert saved[["train_id", "action"]].values.tolist() == sorted(
        [[first, "keep"], [second, "relabel"]]
    )
    assert saved.set_index("train_id").loc[second, "new_label"] == new

    st.cache_resource.clear()  # a restarted server reads the file again
    fresh = open_page(demo, monkeypatch)
    assert shown_suspect(fresh) == int(order[2])
    assert any(m.value == "2 of 80" for m in fresh.metric)
    (table,) = [df for df in fresh.dataframe if df.key == "ranking"]
    decisions = dict(zip(table.value["id"], table.value["decision"], strict=True))
    assert decisions[first] == "keep" and decisions[second] == f"relabel → {new}"


def test_deep_link_selects_a_suspect_and_undo_forgets(demo: Path, order, monkeypatch) -> None:
    at = open_page(demo, monkeypatch, suspect="5")
    assert shown_suspect(at) == 5
    at.button(key="do_exclude").click().run()
    assert ml.TriageBook.for_workdir(demo, load_explorer_data(demo)).get(5).action == "exclude"
    at.query_params["suspect"] = "5"
    at.session_state["suspect"] = 5
    at.run()
    at.button(key="undo").click().run()
    assert ml.TriageBook.for_workdir(demo, load_explorer_data(demo)).get(5) is None


def test_metrics_table_compares_ours_with_the_baselines(demo: Path, monkeypatch) -> None:
    at = open_page(demo, monkeypatch)
    (table,) = [df for df in at.dataframe if df.value.index.name == "method"]
    for method in app_views.MAIN_DETECTORS:
        assert method in table.value.index
    assert {"precision@50", "roc_auc"} <= set(table.value.columns)
    assert (table.value["roc_auc"].between(0, 1)).all()


def test_non_demo_artifacts_explain_instead_of_failing(small_artifact, monkeypatch) -> None:
    st.cache_resource.clear()
    at = open_page(small_artifact, monkeypatch)
    assert any("trak-explorer demo" in i.value for i in at.info)


def test_next_undecided_wraps_and_skips_decided() -> None:
    order = np.array([7, 3, 9, 1])
    assert app_views.next_undecided(order, set(), None) == 7
    assert app_views.next_undecided(order, {7, 3}, None) == 9
    assert app_views.next_undecided(order, {9}, 3) == 1
    assert app_views.next_undecided(order, {7}, 1) == 3  # wraps to the top
    assert app_views.next_undecided(order, {7, 3, 9, 1}, 3) is None
    assert app_views.previous_in_order(order, 9) == 3
    assert app_views.previous_in_order(order, 7) is None


def test_precision_curves_match_precision_at_k() -> None:
    rng = np.random.default_rng(0)
    scores, positive = rng.standard_normal(50), rng.random(50) < 0.2
    curves = app_views.precision_curves({"a": scores}, positive, max_k=30)
    for k in (1, 7, 30):
        got = curves.loc[curves["k"] == k, "precision"].item()
        assert got == pytest.approx(ml.precision_at_k(scores, positive, k))
