"""The Upload page with AppTest on a tiny demo build: a valid PNG gives results, bad bytes an
error on the page."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

from explorer.artifacts import load_explorer_data
from explorer.demo import DemoConfig, build_demo
from explorer.serve import WORKDIR_ENV
from explorer.upload import UploadAttributor, preprocess_upload

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "explorer" / "streamlit_app.py"
PAGE = REPO / "pages" / "upload.py"
TIMEOUT_S = 60
TINY = DemoConfig(n_train=80, n_test=20, n_checkpoints=2, epochs=1, proj_dim=32, lam=0.01)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("demo") / "demo"
    build_demo(workdir, TINY)
    return workdir


def digit_png(workdir: Path, test_id: int = 0) -> bytes:
    """A test digit as a person would upload it: dark ink on white paper, 4x larger."""
    digit = load_explorer_data(workdir).test_images[test_id]
    paper = Image.fromarray(255 - digit).resize((112, 112), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    paper.save(buffer, format="PNG")
    return buffer.getvalue()


def open_page(workdir: Path, monkeypatch: pytest.MonkeyPatch, **params: str) -> AppTest:
    st.cache_resource.clear()
    monkeypatch.setenv(WORKDIR_ENV, str(workdir))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    for name, value in params.items():
        at.query_params[name] = value
    at.run()
    at.switch_page(str(PAGE)).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def caption_ids(captions: list[str]) -> list[int]:
    heads = [c.replace("\u00a0", " ").split(" · ")[0] for c in captions]
    return [int(h.split("#")[1]) for h in heads]


@pytest.mark.parametrize("label", [None, "3"])
def test_a_valid_png_shows_its_attributions(demo: Path, monkeypatch, label) -> None:
    at = open_page(demo, monkeypatch, **({"label": label} if label else {}))
    assert any("Upload an image" in i.value for i in at.info)
    png = digit_png(demo)
    at.file_uploader(key="upload").set_value(("digit.png", png, "image/png")).run()
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error
    data = load_explorer_data(demo)
    expected = UploadAttributor(demo, data).attribute(
        preprocess_upload(png), k=12, label=None if label is None else int(label)
    )
    headings = [h.value for h in at.subheader]
    assert "👍 12 most helpful training images" in headings
    grids = [im for im in at.image if len(im.captions) == 12]
    assert caption_ids(grids[0].captions) == expected.helpful.ids[0].tolist()
    assert caption_ids(grids[1].captions) == expected.harmful.ids[0].tolist()
    source = "predicted" if label is None else "chosen"
    assert any(f"({source})" in m.value for m in at.markdown)
    assert any("Upload to result" in c.value for c in at.caption)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not an image at all", "not an image"), (b"", "empty"), (None, "looks blank")],
)
def test_bad_uploads_show_an_error_not_a_traceback(demo: Path, monkeypatch, content, message):
    if content is None:  # a valid PNG with nothing drawn on it
        buffer = io.BytesIO()
        Image.fromarray(np.full((40, 40), 255, np.uint8)).save(buffer, format="PNG")
        content = buffer.getvalue()
    at = open_page(demo, monkeypatch)
    at.file_uploader(key="upload").set_value(("x.png", content, "image/png")).run()
    assert not at.exception, [e.message for e in at.exception]
    assert len(at.error) == 1 and message in at.error[0].value
    assert not [im for im in at.image if len(im.captions) == 12]


def test_non_demo_artifacts_explain_instead_of_failing(small_artifact, monkeypatch) -> None:
    at = open_page(small_artifact, monkeypatch)
    assert any("trak-explorer demo" in i.value for i in at.info)
    assert not at.file_uploader
