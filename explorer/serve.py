"""Start the Streamlit app on an artifact directory.

The app finds its artifacts through one environment variable, ``TRAK_EXPLORER_WORKDIR``
(the directory written by ``save_explorer_data``); ``serve`` sets it for the server it starts.
Started by hand (``streamlit run explorer/streamlit_app.py``) without the variable, the app
reads the default directory of the ``trak-explorer`` command (``explorer.cli.default_workdir()``).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import explorer

logger = logging.getLogger(__name__)

WORKDIR_ENV = "TRAK_EXPLORER_WORKDIR"
"""Environment variable naming the artifact directory the app shows."""


def workdir_from_env(environ: Mapping[str, str] | None = None) -> Path:
    """The directory named by ``TRAK_EXPLORER_WORKDIR``, else the CLI's default workdir."""
    value = (os.environ if environ is None else environ).get(WORKDIR_ENV, "").strip()
    if value:
        return Path(value)
    from explorer.cli import default_workdir  # the CLI imports this module

    return default_workdir()


def app_path() -> Path:
    """``explorer/streamlit_app.py``, whose pages live in the checkout's ``pages/`` folder.

    Raises:
        FileNotFoundError: the package was installed without the repository (not editable),
            so the app's entry script and pages are not on disk next to it.
    """
    package = Path(explorer.__file__).resolve().parent
    path, pages = package / "streamlit_app.py", package.parent / "pages"
    if not path.is_file() or not pages.is_dir():
        raise FileNotFoundError(
            f"the app's pages are not at {pages}: the app runs from a checkout of the "
            "repository. Install it editable (`pip install -e .` in the checkout) or run "
            "`streamlit run explorer/streamlit_app.py` there."
        )
    return path


def has_display(environ: Mapping[str, str] | None = None, platform: str | None = None) -> bool:
    """Whether a browser window could open: on Linux a DISPLAY or WAYLAND_DISPLAY is set."""
    environ = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    if platform.startswith("linux"):
        return bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))
    return True


def streamlit_command(app: Path, port: int, host: str, headless: bool) -> list[str]:
    """The ``python -m streamlit run`` command line for ``app``.

    Besides address and port it turns off usage statistics, the developer toolbar ("Deploy"),
    the source-file watcher (a served tool does not reload on edits; the watcher also
    overflows inotify on a checkout with a virtual environment inside) and the developer
    warning logged when a page moves a widget through Session State (the Explore page resets
    the gallery page that way when a filter changes).
    """
    return [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.headless", "true" if headless else "false",
        "--server.address", host,
        "--server.port", str(port),
        "--server.fileWatcherType", "none",
        "--client.toolbarMode", "viewer",
        "--global.disableWidgetStateDuplicationWarning", "true",
        "--browser.gatherUsageStats", "false",
    ]  # fmt: skip


def serve(
    workdir: Path, port: int, host: str = "127.0.0.1", open_browser: bool | None = None
) -> int:
    """Run the app on ``workdir`` until the server stops; blocks.

    Args:
        workdir: artifact directory (``save_explorer_data``); passed to the app as
            ``TRAK_EXPLORER_WORKDIR``. A missing one is reported by the app itself.
        port: TCP port, 1-65535.
        host: address to listen on; the default serves this machine only.
        open_browser: open a browser tab; None opens one when a display is available. Without
            a display the server always runs headless.

    Returns:
        The exit code of the Streamlit process (130 after Ctrl-C).
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port must be an int in [1, 65535], got {port!r}")
    headless = open_browser is False or not has_display()
    command = streamlit_command(app_path(), port, host, headless)
    env = {**os.environ, WORKDIR_ENV: str(Path(workdir).resolve())}
    logger.info("serving %s at http://%s:%d", env[WORKDIR_ENV], host, port)
    process = subprocess.Popen(command, env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:
        # The server got the same Ctrl-C; give it time to shut down cleanly.
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.terminate()
            process.wait()
        return 130
