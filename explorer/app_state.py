"""Artifacts and thumbnails shared by every session of one Streamlit server.

Everything here is cached with ``st.cache_resource``: one object per server, never copied.
The cache key includes the modification time of ``explorer.json`` (written last by
``save_explorer_data``), so rebuilding the artifacts while the server runs is picked up on the
next rerun.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from explorer import views
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


def thumbnails(split: str, scale: int, workdir: Path | None = None) -> views.Thumbnails:
    """Shared thumbnail encoder of the ``"test"`` or ``"train"`` images at ``scale``."""
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    workdir = current_workdir() if workdir is None else workdir
    return _thumbnails(str(workdir), artifact_stamp(workdir), split, scale)
