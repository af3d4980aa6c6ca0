"""The app's pages (Explore, Overview) in headless Chromium, served by ``explorer.serve.serve``.

Follows the recipe in BROWSER_TESTS.md. Screenshots and measured timings are written to
``test-artifacts/`` at the repository root (gitignored) and kept for a person to look at.
"""

from __future__ import annotations

import json
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

import pytest

from explorer.artifacts import load_explorer_data

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]  # fmt: skip
VIEWPORT = {"width": 1400, "height": 1900}
IDLE = (
    "[data-testid=stApp][data-test-connection-state=CONNECTED][data-test-script-state=notRunning]"
)
HEADER_PX = 35  # st.dataframe header row
ROW_PX = 48  # GALLERY_ROW_HEIGHT in pages/explore.py
START_TIMEOUT_S = 60
K = 12

if not CHROMIUM.exists():
    pytest.skip(f"headless browser tests need Chromium at {CHROMIUM}", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="headless browser tests need `pip install playwright`"
)
expect = sync_api.expect
expect.set_options(timeout=20_000)  # generous: these machines are often busy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen) -> None:
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


def stop(process: subprocess.Popen) -> None:
    """Ctrl-C the serve() process group (serve and its Streamlit child), then make sure."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, small_artifact_builder) -> Path:
    return small_artifact_builder(tmp_path_factory.mktemp("browser") / "artifact")


@contextmanager
def serving(workdir: Path, log: Path) -> Iterator[str]:
    """URL of ``serve(workdir, port)`` run in its own process group; stopped on exit."""
    port = free_port()
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
        wait_healthy(url, process)
        yield url
    finally:
        stop(process)
    assert process.returncode in (0, 130), log.read_text()[-3000:]


@pytest.fixture(scope="module")
def server(workdir: Path, tmp_path_factory) -> Iterator[str]:
    with serving(workdir, tmp_path_factory.mktemp("server") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def timings() -> Iterator[dict[str, float]]:
    measured: dict[str, float] = {}
    yield measured
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "explore-timings.json").write_text(json.dumps(measured, indent=2))


@pytest.fixture
def page(tmp_path: Path):
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,
        )
        page = context.pages[0] if context.pages else context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        yield page
        context.close()
        assert not errors, errors


def wait_idle(page) -> None:
    page.wait_for_timeout(250)
    page.wait_for_selector(IDLE, timeout=30_000)


def expect_results(page, test_id: int, k: int = K) -> None:
    """The target, both grids with k images each, and the histogram are on screen."""
    expect(page.get_by_role("heading", name=f"Test image #{test_id}")).to_be_visible()
    expect(page.get_by_role("heading", name=f"{k} most helpful training images")).to_be_visible()
    expect(page.get_by_role("heading", name=f"{k} most harmful training images")).to_be_visible()
    images = page.locator("[data-testid=stImage] img")
    expect(images).to_have_count(1 + 2 * k)
    for i in range(images.count()):
        expect(images.nth(i)).to_be_visible()
    expect(page.locator(".js-plotly-plot").first).to_be_visible()


def result_captions(page) -> list[str]:
    captions = page.locator("[data-testid=stImageCaption]").all_inner_texts()
    return [c.replace("\u00a0", " ") for c in captions]


def test_pick_a_test_image_in_the_gallery(server: str, workdir: Path, page, timings) -> None:
    started = time.perf_counter()
    page.goto(f"{server}/")
    wait_idle(page)
    gallery = page.locator(".st-key-gallery [data-testid=stDataFrame]")
    expect(gallery).to_be_visible()
    expect(page.get_by_text("Pick a test image")).to_be_visible()
    timings["open_page_s"] = round(time.perf_counter() - started, 2)
    page.wait_for_timeout(800)  # thumbnails land on the table's canvas after the run ends
    page.screenshot(path=str(ARTIFACTS / "explore-start.png"))

    # Click the row-selection checkbox of the third row (test id 2).
    box = gallery.bounding_box()
    assert box is not None
    started = time.perf_counter()
    page.mouse.click(box["x"] + 15, box["y"] + HEADER_PX + 2 * ROW_PX + ROW_PX / 2)
    wait_idle(page)
    expect_results(page, test_id=2)
    timings["select_in_gallery_s"] = round(time.perf_counter() - started, 2)
    assert "test=2" in page.url

    data = load_explorer_data(workdir)
    helpful, harmful = data.top_k(2, K)
    captions = result_captions(page)
    expected = [f"#{i} " for i in [*helpful.ids[0], *harmful.ids[0]]]
    shown = [c.removeprefix("🚩 ").split("·")[0] for c in captions[1:]]
    assert shown == expected, captions
    page.mouse.move(0, 0)  # no hover toolbar over the gallery
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / "explore.png"))

    # Next, narrow the gallery: the URL keeps the filter and the selection.
    started = time.perf_counter()
    page.get_by_text("incorrect", exact=True).click()
    wait_idle(page)
    expect(page.get_by_text("Showing 1–4 of 4 matching")).to_be_visible()
    timings["filter_gallery_s"] = round(time.perf_counter() - started, 2)
    assert "outcome=incorrect" in page.url and "test=2" in page.url


def test_deep_link_reopens_a_view(server: str, page, timings) -> None:
    started = time.perf_counter()
    page.goto(f"{server}/?test=17&k=5&true=7")
    wait_idle(page)
    expect_results(page, test_id=17, k=5)
    timings["deep_link_s"] = round(time.perf_counter() - started, 2)
    expect(page.get_by_label("Test id")).to_have_value("17")
    expect(page.get_by_text("Showing 1–3 of 3 matching")).to_be_visible()
    captions = result_captions(page)
    assert captions[0] == "test #17"
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / "explore-deeplink.png"))


def test_missing_artifacts_show_an_error(tmp_path: Path, page) -> None:
    with serving(tmp_path / "none", tmp_path / "server.log") as url:
        page.goto(f"{url}/?test=3")
        wait_idle(page)
        alert = page.locator("[data-testid=stAlertContentError]")
        expect(alert).to_contain_text("trak-explorer demo")
        expect(page.locator("[data-testid=stException]")).to_have_count(0)
        page.screenshot(path=str(ARTIFACTS / "explore-missing.png"))


def test_keyboard_steps_and_help_dialog(server: str, page, timings) -> None:
    page.goto(f"{server}/?test=2")
    wait_idle(page)
    expect_results(page, test_id=2)
    # Shortcuts act on the page, not on a focused widget (BROWSER_TESTS.md).
    page.evaluate("document.activeElement && document.activeElement.blur()")
    started = time.perf_counter()
    page.keyboard.press("j")
    wait_idle(page)
    expect_results(page, test_id=3)
    timings["shortcut_next_s"] = round(time.perf_counter() - started, 2)
    assert "test=3" in page.url
    page.keyboard.press("k")
    wait_idle(page)
    expect(page.get_by_role("heading", name="Test image #2")).to_be_visible()
    assert "test=2" in page.url

    page.keyboard.press("?")
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Keyboard shortcuts")
    expect(dialog.get_by_role("row")).to_have_count(7)  # header + 6 shortcuts
    expect(dialog).to_contain_text("next test image in the gallery")
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / "explore-shortcuts.png"))
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)


def test_lasso_on_the_map_lists_the_selected_images(server: str, page, timings) -> None:
    page.goto(f"{server}/?test=2")
    wait_idle(page)
    expect_results(page, test_id=2)
    chart = page.locator(".st-key-train_map")
    chart.scroll_into_view_if_needed()
    drag = chart.locator(".nsewdrag").first
    expect(drag).to_be_visible()
    expect(page.get_by_text("Draw a lasso or a box on the map")).to_be_visible()
    box = drag.bounding_box()
    assert box is not None
    # A lasso is a drag (mouse down, moves, up); a plain click selects nothing in lasso mode.
    corners = [(0.02, 0.02), (0.98, 0.02), (0.98, 0.98), (0.02, 0.98), (0.02, 0.03)]
    page.mouse.move(
        box["x"] + corners[0][0] * box["width"], box["y"] + corners[0][1] * box["height"]
    )
    page.mouse.down()
    for fx, fy in corners[1:]:
        page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"], steps=6)
    started = time.perf_counter()
    page.mouse.up()
    wait_idle(page)
    heading = page.get_by_text("selected training images")
    expect(heading).to_be_visible()
    timings["map_selection_s"] = round(time.perf_counter() - started, 2)
    n_selected = int(heading.inner_text().split("🔍")[-1].split()[0])
    assert 0 < n_selected <= 60
    # the target, the two top-k grids, then the selected images (at most MAX_SELECTED = 60)
    images = page.locator("[data-testid=stImage] img")
    expect(images).to_have_count(1 + 2 * K + n_selected)
    page.mouse.move(0, 0)
    heading.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "explore-map.png"))


def nav_links(page) -> list[str]:
    """Titles of the sidebar's page links (each link's text ends with its title)."""
    return [t.split()[-1] for t in page.locator("[data-testid=stSidebarNav] a").all_inner_texts()]


def test_overview_page(server: str, page, timings) -> None:
    page.set_viewport_size({"width": 1400, "height": 2700})  # the whole page in one shot
    page.goto(f"{server}/")
    wait_idle(page)
    started = time.perf_counter()
    page.locator("[data-testid=stSidebarNav] a", has_text="Overview").click()
    wait_idle(page)
    for name in ("Dataset", "Model", "Class-by-class influence", "How these artifacts were made"):
        expect(page.get_by_role("heading", name=name)).to_be_visible()
    charts = page.locator(".js-plotly-plot")
    expect(charts).to_have_count(4)  # class counts, accuracy, confusion, influence
    for i in range(4):
        expect(charts.nth(i)).to_be_visible()
    timings["open_overview_s"] = round(time.perf_counter() - started, 2)
    assert page.url.endswith("/overview")
    assert nav_links(page) == ["Explore", "Overview", "Mislabeled", "Upload"]
    expect(page.get_by_text("86.7%")).to_be_visible()
    expect(page.locator("[data-testid=stException]")).to_have_count(0)
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "overview.png"))


def test_overview_deep_link_on_a_fresh_server(workdir: Path, tmp_path: Path, page) -> None:
    with serving(workdir, tmp_path / "server.log") as url:
        page.goto(f"{url}/overview")
        wait_idle(page)
        expect(page.get_by_role("heading", name="Dataset")).to_be_visible()
        assert nav_links(page) == ["Explore", "Overview", "Mislabeled", "Upload"]
