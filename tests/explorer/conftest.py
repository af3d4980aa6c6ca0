"""Fixtures shared by the explorer tests."""

from __future__ import annotations

import pytest
from tiny_demo import TINY

from explorer.artifacts import load_explorer_data
from explorer.demo import build_demo


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """``(workdir, ExplorerData)`` of a demo built once with TINY; tests only read it."""
    workdir = tmp_path_factory.mktemp("tiny-demo")
    build_demo(workdir, TINY)
    return workdir, load_explorer_data(workdir)
