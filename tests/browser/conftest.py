"""Shared helpers of the browser tests, as fixtures (test modules cannot import each other
under ``--import-mode=importlib``): start ``explorer.serve.serve`` on a workdir, open headless
Chromium in a light or dark colour scheme, and wait for Streamlit to go idle.

The recipe is BROWSER_TESTS.md's; ``test_explore_browser.py`` keeps its own copies.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]  # fmt: skip
VIEWPORT = {"width": 1400, "height": 1600}
IDLE = (
    "[data-testid=stApp][data-test-connection-state=CONNECTED][data-test-script-state=notRunning]"
)
START_TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read() == b"ok":
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"no healthy server at {url} after {START_TIMEOUT_S} s")


def _stop(process: subprocess.Popen) -> None:
    """Ctrl-C the serve() process group (serve and its Streamlit child), then make sure."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def serving(workdir: Path, log: Path) -> Iterator[str]:
    """URL of ``serve(workdir, port)`` run in its own process group; stopped on exit."""
    port = _free_port()
    code = (
        "import sys; from pathlib import Path; from explorer.serve import serve; "
        f"sys.exit(serve(Path({str(workdir)!r}), {port}, open_browser=False))"
    )
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process)
        yield url
    finally:
        _stop(process)
    assert process.returncode in (0, 130), log.read_text()[-3000:]


@contextmanager
def chromium(profile: Path, color_scheme: str = "light") -> Iterator:
    """A Playwright page in headless Chromium; fails on uncaught page errors at exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,
            color_scheme=color_scheme,
        )
        page = context.pages[0] if context.pages else context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        yield page
        context.close()
        assert not errors, errors


def wait_idle(page, timeout_ms: int = 30_000) -> None:
    page.wait_for_timeout(250)
    page.wait_for_selector(IDLE, timeout=timeout_ms)


@pytest.fixture(scope="session")
def browser_tools() -> SimpleNamespace:
    """``serving(workdir, log)``, ``chromium(profile, color_scheme)`` and ``wait_idle(page)``."""
    return SimpleNamespace(serving=serving, chromium=chromium, wait_idle=wait_idle)
