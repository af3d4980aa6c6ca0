"""Bring your own image: upload a digit, see which training images helped and harmed it.

The upload is validated and turned into an MNIST-style 28x28 digit (``explorer.upload``); its
margin is attributed for the class the models predict, or for the class chosen under "Label".
The label and k live in the URL (``label``, ``k``); the image itself cannot, so a link opens
the page ready for an upload.
"""

from __future__ import annotations

import hashlib
import time

import streamlit as st

from explorer import app_state, app_views, views
from explorer.artifacts import ExplorerData
from explorer.upload import UploadError, UploadResult, preprocess_upload
from trak_engine.errors import ConfigMismatchError

PREDICTED = "predicted"
DEFAULT_K = 12
MAX_K = 48
RESULTS_KEY = "upload_results"
CHART_CONFIG = {"displayModeBar": False}


def load_attributor():
    """The server's UploadAttributor, or an explanation on the page (the script stops)."""
    try:
        return app_state.upload_attributor()
    except FileNotFoundError as exc:
        st.info(
            "🧪 Attributing new images needs the demo's checkpoints and TRAK features, which "
            f"these artifacts lack ({exc}). Build them with `trak-explorer demo`."
        )
    except (ConfigMismatchError, ValueError, OSError) as exc:
        st.error(f"⚠️ New images cannot be attributed against these artifacts: {exc}")
    st.stop()


def attribute_upload(
    attributor, content: bytes, name: str, mime: str | None, label: int | None, k: int
) -> tuple[UploadResult, float]:
    """Preprocess and attribute one upload; returns the result and the seconds from bytes to
    result (preprocessing included). Results are kept per session, keyed by the file's hash,
    the label and k, so reruns do not recompute.

    Raises:
        UploadError: the file is not a usable PNG or JPEG image.
    """
    key = (hashlib.sha256(content).hexdigest(), label, k)
    cache = st.session_state.setdefault(RESULTS_KEY, {})
    if key not in cache:
        start = time.perf_counter()
        image = preprocess_upload(content, name, mime)
        result = attributor.attribute(image, k=k, label=label)
        cache.clear()  # keep one result: images are small, but sessions are many
        cache[key] = (result, time.perf_counter() - start)
    return cache[key]


def controls(names: list[str]) -> tuple[int | None, int]:
    """Label (``None`` = predicted) and k, both bound to the URL."""
    with st.sidebar:
        st.header("⚙️ Attribution")
        option = st.selectbox(
            "Label",
            [PREDICTED, *names],
            key="label",
            bind="query-params",
            help="The class whose margin is attributed: by default the one the models predict.",
        )
        k = st.slider("Top-k", 1, MAX_K, DEFAULT_K, key="k", bind="query-params")
    return (None if option == PREDICTED else names.index(option)), int(k)


def preview(content: bytes, result: UploadResult, names: list[str]) -> None:
    """The file as uploaded, the 28x28 digit the models saw, and the class probabilities."""
    original, digit, probs = st.columns([1, 1, 2], gap="medium")
    original.image(content, caption="uploaded", width=180)
    uri = views.png_data_uri(views.encode_png(result.image, views.TARGET_SCALE))
    digit.image(uri, caption="model input (28×28)", width=180)
    with probs:
        predicted = int(result.probs.argmax())
        st.markdown(
            f"Models predict **{views.class_name(predicted, names)}** "
            f"({float(result.probs[predicted]):.1%}); attributing label "
            f"**{views.class_name(result.label, names)}** ({result.label_source})."
        )
        fig = app_views.probability_figure(result.probs, names, result.label)
        st.plotly_chart(fig, key="probabilities", theme="streamlit", config=CHART_CONFIG)


def result_grid(data: ExplorerData, title: str, help_text: str, top) -> None:
    shown = views.attribution(data, top.ids[0], top.scores[0])
    st.subheader(title, help=help_text)
    thumbs = app_state.thumbnails("train", views.RESULT_SCALE)
    width = views.RESULT_SCALE * thumbs.image_width
    st.image(thumbs.uris(shown.ids), caption=shown.captions, width=width)


def results(data: ExplorerData, result: UploadResult, seconds: float, setup_s: float) -> None:
    k = result.helpful.ids.shape[1]
    result_grid(
        data,
        f"👍 {k} most helpful training images",
        "Largest TRAK scores: training on these raised the models' margin for this label.",
        result.helpful,
    )
    result_grid(
        data,
        f"👎 {k} most harmful training images",
        "Smallest TRAK scores: training on these lowered the margin for this label.",
        result.harmful,
    )
    st.caption(
        f"⏱️ Upload to result: {seconds:.2f} s (attribution {result.seconds:.2f} s). "
        f"Loading the checkpoints and projectors took {setup_s:.1f} s, once per server."
    )


def main() -> None:
    st.title("📤 Bring your own image")
    data = app_state.load_or_stop()
    names = data.class_names
    st.markdown(
        "Upload a photo or drawing of a handwritten digit (PNG or JPEG). It is cropped to the "
        "digit, scaled and centred like MNIST, then attributed to the training images."
    )
    attributor = load_attributor()
    label, k = controls(names)
    upload = st.file_uploader("Digit image", type=["png", "jpg", "jpeg"], key="upload")
    if upload is None:
        st.info("⬆️ Upload an image to see the training images behind its prediction.")
        return
    content = upload.getvalue()
    try:
        result, seconds = attribute_upload(attributor, content, upload.name, upload.type, label, k)
    except UploadError as exc:
        st.error(f"🚫 This file cannot be used: {exc}")
        return
    preview(content, result, names)
    results(data, result, seconds, attributor.setup_seconds)


main()
