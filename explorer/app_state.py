"""Artifacts and thumbnails shared by every session of one Streamlit server.

Everything here is cached with ``st.cache_resource``: one object per server, never copied.
The cache key includes the modification time of ``explorer.json`` (written last by
``save_explorer_data``), so rebuilding the artifacts while the server runs is picked up on the
next rerun.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from explorer import app_jobs, maps, mislabel, overview, upload, views
from explorer.artifacts import ExplorerData, load_explorer_data
from explorer.serve import workdir_from_env


def artifact_stamp(workdir: Path) -> int:
    """Modification time (ns) of ``explorer.json``; 0 when it does not exist."""
    try:
        return (workdir / "explorer.json").stat().st_mtime_ns
    except FileNotFoundError:
        return 0


@st.cache_resource(show_spinner="Loading attribution artifacts…", max_entries=2)
def _load(workdir: str, stamp: int) -> ExplorerData:
    return load_explorer_data(workdir)


@st.cache_resource(max_entries=8)
def _thumbnails(workdir: str, stamp: int, split: str, scale: int) -> views.Thumbnails:
    data = _load(workdir, stamp)
    images = data.test_images if split == "test" else data.train_images
    return views.Thumbnails(images, scale)


def current_workdir() -> Path:
    """The artifact directory this server shows (``TRAK_EXPLORER_WORKDIR``)."""
    return workdir_from_env()


def load_data(workdir: Path | None = None) -> ExplorerData:
    """The artifacts of ``workdir`` (default: ``current_workdir()``), loaded once per server.

    Raises:
        FileNotFoundError: no complete artifacts there; the message says how to build them.
    """
    workdir = current_workdir() if workdir is None else workdir
    return _load(str(workdir), artifact_stamp(workdir))


def load_or_stop() -> ExplorerData:
    """The artifacts, or an error on the page that says how to build them (the script stops)."""
    workdir = current_workdir()
    build = f"`trak-explorer demo --workdir {workdir}`"
    try:
        return load_data(workdir)
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


def thumbnails(split: str, scale: int, workdir: Path | None = None) -> views.Thumbnails:
    """Shared thumbnail encoder of the ``"test"`` or ``"train"`` images at ``scale``."""
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    workdir = current_workdir() if workdir is None else workdir
    return _thumbnails(str(workdir), artifact_stamp(workdir), split, scale)


@st.cache_resource(show_spinner="Averaging scores class by class…", max_entries=2)
def _class_influence(workdir: str, stamp: int) -> np.ndarray:
    data = _load(workdir, stamp)
    n_classes = len(data.class_names)
    return overview.class_influence(data.scores, data.train_labels, data.test_labels, n_classes)


@st.cache_resource(show_spinner="Mapping the training set (PCA of its features)…", max_entries=2)
def _train_map(workdir: str, stamp: int) -> maps.TrainMap:
    return maps.train_map(workdir, len(_load(workdir, stamp).train_labels))


def class_influence(workdir: Path | None = None) -> np.ndarray:
    """(n_classes, n_classes) mean score of each training label on each test class, once per
    server (``overview.class_influence``)."""
    workdir = current_workdir() if workdir is None else workdir
    return _class_influence(str(workdir), artifact_stamp(workdir))


def train_map(workdir: Path | None = None) -> maps.TrainMap:
    """The 2-D training map (``maps.train_map``): read from the workdir, or computed once."""
    workdir = current_workdir() if workdir is None else workdir
    return _train_map(str(workdir), artifact_stamp(workdir))


# --- Mislabeled data, uploads and background jobs (one object per server) ---------------------


@st.cache_resource
def jobs() -> app_jobs.JobRegistry:
    """The server's background jobs (``explorer.app_jobs``), shared by every session."""
    return app_jobs.JobRegistry()


@st.cache_resource(show_spinner="Scoring every training example for mislabels…", max_entries=2)
def _mislabel_signals(workdir: str, stamp: int) -> pd.DataFrame:
    return mislabel.compute_signals(workdir, _load(workdir, stamp))


@st.cache_resource(show_spinner="Indexing similar training images…", max_entries=2)
def _train_neighbors(workdir: str, stamp: int) -> mislabel.TrainNeighbors:
    vectors_dim = _load(workdir, stamp).index.dim
    return mislabel.TrainNeighbors(mislabel.load_train_queries(workdir, vectors_dim))


@st.cache_resource(max_entries=2)
def _triage_book(workdir: str, stamp: int) -> mislabel.TriageBook:
    return mislabel.TriageBook.for_workdir(workdir, _load(workdir, stamp))


@st.cache_resource(show_spinner="Loading checkpoints and projectors…", max_entries=1)
def _upload_attributor(workdir: str, stamp: int) -> upload.UploadAttributor:
    return upload.UploadAttributor(workdir, _load(workdir, stamp))


def mislabel_signals(workdir: Path | None = None) -> pd.DataFrame:
    """Suspicion and baseline signals per training example (``mislabel.compute_signals``).

    Raises:
        FileNotFoundError: not a demo workdir (no checkpoints, feature store or config).
    """
    workdir = current_workdir() if workdir is None else workdir
    return _mislabel_signals(str(workdir), artifact_stamp(workdir))


def train_neighbors(workdir: Path | None = None) -> mislabel.TrainNeighbors:
    """Cosine neighbours among training examples, from their TRAK features."""
    workdir = current_workdir() if workdir is None else workdir
    return _train_neighbors(str(workdir), artifact_stamp(workdir))


def triage_book(workdir: Path | None = None) -> mislabel.TriageBook:
    """The one TriageBook of ``workdir/triage.csv`` shared by every session."""
    workdir = current_workdir() if workdir is None else workdir
    return _triage_book(str(workdir), artifact_stamp(workdir))


def upload_attributor(workdir: Path | None = None) -> upload.UploadAttributor:
    """The ``UploadAttributor`` of the demo workdir, built once per server."""
    workdir = current_workdir() if workdir is None else workdir
    return _upload_attributor(str(workdir), artifact_stamp(workdir))
