"""The command line and environment ``serve`` starts Streamlit with (no server is started)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from explorer import serve as serve_module
from explorer.cli import default_workdir
from explorer.serve import (
    WORKDIR_ENV,
    app_path,
    has_display,
    serve,
    streamlit_command,
    workdir_from_env,
)

REPO = Path(__file__).resolve().parents[2]


class FakePopen:
    """Records the command and environment instead of starting a process."""

    calls: list[dict[str, Any]] = []

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        FakePopen.calls.append({"command": command, "env": env})

    def wait(self, timeout: float | None = None) -> int:
        return 3


@pytest.fixture
def fake_popen(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    FakePopen.calls = []
    monkeypatch.setattr(serve_module.subprocess, "Popen", FakePopen)
    return FakePopen.calls


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_app_path_is_the_repository_entry_script() -> None:
    assert app_path() == REPO / "explorer" / "streamlit_app.py"


def test_app_path_missing_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "explorer").mkdir()
    monkeypatch.setattr(serve_module.explorer, "__file__", str(tmp_path / "explorer" / "x.py"))
    with pytest.raises(FileNotFoundError, match="Install it editable"):
        app_path()


def test_streamlit_command() -> None:
    command = streamlit_command(Path("/x/app.py"), 8123, "0.0.0.0", headless=True)
    assert command[:5] == [sys.executable, "-m", "streamlit", "run", "/x/app.py"]
    assert option(command, "--server.port") == "8123"
    assert option(command, "--server.address") == "0.0.0.0"
    assert option(command, "--server.headless") == "true"
    assert option(command, "--browser.gatherUsageStats") == "false"


def test_workdir_from_env() -> None:
    assert workdir_from_env({WORKDIR_ENV: "/data/run1"}) == Path("/data/run1")
    assert workdir_from_env({WORKDIR_ENV: "  "}) == default_workdir()
    assert workdir_from_env({}) == default_workdir()


def test_has_display() -> None:
    assert not has_display({}, platform="linux")
    assert has_display({"DISPLAY": ":0"}, platform="linux")
    assert has_display({"WAYLAND_DISPLAY": "wayland-0"}, platform="linux")
    assert has_display({}, platform="darwin")


@pytest.mark.parametrize(
    ("display", "open_browser", "headless"),
    [
        (None, None, "true"),
        (None, True, "true"),
        (":0", None, "false"),
        (":0", False, "true"),
        (":0", True, "false"),
    ],
)
def test_serve_headless_and_env(
    fake_popen: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    display: str | None,
    open_browser: bool | None,
    headless: str,
) -> None:
    monkeypatch.setattr(serve_module.sys, "platform", "linux")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if display is None:
        monkeypatch.delenv("DISPLAY", raising=False)
    else:
        monkeypatch.setenv("DISPLAY", display)
    monkeypatch.chdir(tmp_path)
    assert serve(Path("art"), 8502, open_browser=open_browser) == 3
    (call,) = fake_popen
    assert option(call["command"], "--server.headless") == headless
    assert option(call["command"], "--server.port") == "8502"
    assert option(call["command"], "--server.address") == "127.0.0.1"
    assert call["command"][4] == str(REPO / "explorer" / "streamlit_app.py")
    assert call["env"][WORKDIR_ENV] == str(tmp_path / "art")


@pytest.mark.parametrize("port", [0, 70000, "8501", True])
def test_serve_rejects_bad_ports(fake_popen: list[dict[str, Any]], port: object) -> None:
    with pytest.raises(ValueError, match=r"port must be an int in \[1, 65535\]"):
        serve(Path("art"), port)  # type: ignore[arg-type]
    assert fake_popen == []
