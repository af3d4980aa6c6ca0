"""The Mislabeled and Upload pages, and the dark theme, in headless Chromium on a tiny demo.

Screenshots and timings go to ``test-artifacts/`` (gitignored) for a person to look at.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from explorer import app_views
from explorer import mislabel as ml
from explorer.artifacts import load_explorer_data
from explorer.demo import DemoConfig, build_demo

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
TINY = DemoConfig(n_train=80, n_test=20, n_checkpoints=2, epochs=1, proj_dim=32, lam=0.01)

if not Path("/usr/bin/chromium").exists():
    pytest.skip(
        "headless browser tests need Chromium at /usr/bin/chromium", allow_module_level=True
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="headless browser tests need `pip install playwright`"
)
expect = sync_api.expect
expect.set_options(timeout=30_000)  # generous: these machines are often busy


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("browser-demo") / "demo"
    build_demo(workdir, TINY)
    return workdir


@pytest.fixture(scope="module")
def server(demo: Path, browser_tools, tmp_path_factory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    with browser_tools.serving(demo, log) as url:
        yield url


@pytest.fixture(scope="module")
def timings() -> Iterator[dict[str, float]]:
    measured: dict[str, float] = {}
    yield measured
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "pages-timings.json").write_text(json.dumps(measured, indent=2))


@pytest.fixture
def page(browser_tools, tmp_path: Path):
    ARTIFACTS.mkdir(exist_ok=True)
    with browser_tools.chromium(tmp_path / "profile") as page:
        yield page


def test_triage_a_suspect_with_a_hotkey(server: str, demo: Path, page, browser_tools) -> None:
    data = load_explorer_data(demo)
    order = app_views.suspect_order(ml.compute_signals(demo, data))
    first, second = int(order[0]), int(order[1])
    page.set_viewport_size({"width": 1400, "height": 2500})  # the whole page in one shot
    page.goto(f"{server}/mislabeled")
    browser_tools.wait_idle(page)
    expect(page.get_by_role("heading", name=f"Training image #{first}")).to_be_visible()
    expect(page.get_by_role("heading", name="most similar training images")).to_be_visible()
    expect(page.locator(".js-plotly-plot").first).to_be_visible()
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.keyboard.press("x")  # exclude
    browser_tools.wait_idle(page)
    expect(page.get_by_role("heading", name=f"Training image #{second}")).to_be_visible()
    assert f"suspect={second}" in page.url
    book = ml.TriageBook.for_workdir(demo, data)
    assert book.get(first).action == "exclude"
    expect(page.get_by_text(f"#{first}: exclude (saved)")).to_be_visible()
    page.mouse.move(0, 0)
    page.wait_for_timeout(800)
    page.screenshot(path=str(ARTIFACTS / "mislabeled.png"), full_page=True)

    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.keyboard.press("?")
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Keyboard shortcuts")
    expect(dialog.get_by_role("row")).to_have_count(1 + len(app_views.TRIAGE_SHORTCUTS))
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)


def digit_png(demo: Path, path: Path) -> Path:
    """A test digit as a person would upload it: dark ink on white paper, 6x larger."""
    digit = load_explorer_data(demo).test_images[3]
    paper = Image.fromarray(255 - digit).resize((168, 168), Image.Resampling.BILINEAR)
    paper.save(path, format="PNG")
    return path


def test_upload_an_image_through_the_file_chooser(
    server: str, demo: Path, page, browser_tools, timings, tmp_path: Path
) -> None:
    page.goto(f"{server}/upload")
    browser_tools.wait_idle(page)
    expect(page.get_by_text("Upload an image to see")).to_be_visible()
    chooser = page.locator("[data-testid=stFileUploaderDropzoneInput]")
    started = time.perf_counter()
    chooser.set_input_files(str(digit_png(demo, tmp_path / "digit.png")))
    expect(page.get_by_role("heading", name="12 most helpful training images")).to_be_visible()
    browser_tools.wait_idle(page)
    timings["upload_to_result_s"] = round(time.perf_counter() - started, 2)
    expect(page.get_by_role("heading", name="12 most harmful training images")).to_be_visible()
    expect(page.get_by_text("Upload to result")).to_be_visible()
    images = page.locator("[data-testid=stImage] img")
    expect(images).to_have_count(2 + 2 * 12)  # upload, model input, two grids
    page.mouse.move(0, 0)
    page.wait_for_timeout(800)
    page.screenshot(path=str(ARTIFACTS / "upload.png"), full_page=True)

    chooser.set_input_files(
        files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not a png"}]
    )
    expect(page.locator("[data-testid=stAlertContentError]")).to_contain_text("not an image")
    expect(page.locator("[data-testid=stException]")).to_have_count(0)


def background(page) -> tuple[int, ...]:
    colour = page.evaluate(
        "getComputedStyle(document.querySelector('[data-testid=stApp]')).backgroundColor"
    )
    return tuple(int(float(c)) for c in colour[colour.index("(") + 1 : -1].split(",")[:3])


def test_dark_theme_and_the_counterfactual_check(
    server: str, browser_tools, tmp_path: Path, timings
) -> None:
    with browser_tools.chromium(tmp_path / "dark", color_scheme="dark") as page:
        page.goto(f"{server}/?test=2&cf_k=5&cf_seeds=2")
        browser_tools.wait_idle(page)
        expect(page.get_by_role("heading", name="Test image #2")).to_be_visible()
        assert np.mean(background(page)) < 60  # the dark theme follows the system setting
        started = time.perf_counter()
        page.get_by_role("button", name="Remove the top-5 helpful and retrain").click()
        expect(page.get_by_text("Removing the top-5 helpful training images")).to_be_visible()
        timings["counterfactual_tiny_k5_2_seeds_s"] = round(time.perf_counter() - started, 2)
        browser_tools.wait_idle(page)
        chart = page.locator(".st-key-counterfactual_chart")
        expect(chart).to_be_visible()
        page.locator("[data-testid=stDataFrame]").last.scroll_into_view_if_needed()
        page.mouse.move(0, 0)
        page.wait_for_timeout(800)
        page.screenshot(path=str(ARTIFACTS / "explore-dark.png"), full_page=True)
