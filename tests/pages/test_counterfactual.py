"""The counterfactual check: the background job on a tiny demo build (progress, result,
cancel, failure) and the Explore page's section driving it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from explorer import app_jobs
from explorer.artifacts import load_explorer_data
from explorer.demo import DemoConfig, build_demo
from explorer.serve import WORKDIR_ENV

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "explorer" / "streamlit_app.py"
TIMEOUT_S = 60
JOB_TIMEOUT_S = 120
TINY = DemoConfig(n_train=80, n_test=20, n_checkpoints=2, epochs=1, proj_dim=32, lam=0.01)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("demo") / "demo"
    build_demo(workdir, TINY)
    return workdir


def test_job_runs_to_completion_and_reports_progress(demo: Path) -> None:
    data = load_explorer_data(demo)
    reports: list[tuple[int, int]] = []
    work = app_jobs.counterfactual_work(demo, data, [0], k=5, n_seeds=2, same_label=False)

    def spy(progress, cancelled):
        return work(lambda d, t: (reports.append((d, t)), progress(d, t)), cancelled)

    registry = app_jobs.JobRegistry()
    job = registry.start(("cf", "session", 0), spy, {"k": 5})
    snap = job.wait(JOB_TIMEOUT_S)
    assert snap.state == app_jobs.DONE, snap.error
    assert snap.fraction == 1.0 and snap.done == snap.total == reports[-1][1]
    assert [d for d, _ in reports] == sorted(d for d, _ in reports)  # monotone
    runs = snap.result.runs
    assert runs["seed"].tolist() == [0, 1] and runs["test_id"].tolist() == [0, 0]
    assert registry.running(("cf", "session")) == []


def test_cancel_stops_the_job(demo: Path) -> None:
    data = load_explorer_data(demo)
    work = app_jobs.counterfactual_work(demo, data, [0], k=5, n_seeds=2, same_label=False)
    started = threading.Event()

    def reporting(progress, cancelled):
        return work(lambda d, t: (started.set(), progress(d, t)), cancelled)

    job = app_jobs.JobRegistry().start("key", reporting)
    assert started.wait(JOB_TIMEOUT_S)
    job.cancel()
    snap = job.wait(JOB_TIMEOUT_S)
    assert snap.state == app_jobs.CANCELLED and snap.result is None
    assert 0 < snap.done < snap.total  # stopped mid-run, not at the end


def test_a_second_start_under_a_running_key_is_refused_and_failures_are_reported() -> None:
    registry = app_jobs.JobRegistry()

    def slow(progress, cancelled):
        while not cancelled():
            time.sleep(0.01)
        raise ValueError("stopped on purpose")

    job = registry.start("k", slow)
    with pytest.raises(RuntimeError, match="already running under 'k'"):
        registry.start("k", slow)
    assert registry.running(()) == []  # the key is not a tuple
    job.cancel()
    snap = job.wait(10)
    assert snap.state == app_jobs.FAILED
    assert snap.error == "ValueError: stopped on purpose"


def test_explore_section_runs_the_check_in_the_background(demo: Path, monkeypatch) -> None:
    st.cache_resource.clear()
    monkeypatch.setenv(WORKDIR_ENV, str(demo))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    at.query_params.update({"test": "0", "cf_k": "5", "cf_seeds": "2"})
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    at.button(key="cf_start").click().run()
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not any("Removing the top-5" in m.value for m in at.markdown):
        assert time.monotonic() < deadline, "the counterfactual job did not finish"
        assert not at.exception, [e.message for e in at.exception]
        time.sleep(0.5)
        at.run()
    (table,) = [df for df in at.dataframe if "seed" in df.value.columns]
    assert table.value["seed"].tolist() == [0, 1]
    assert {"Δ top-5", "Δ 5 random", "flip top-5"} <= set(table.value.columns)
    assert not at.error
